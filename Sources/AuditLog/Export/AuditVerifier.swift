import AttestationCore
import Foundation

/// Checks an exported chain (JSON Lines, one entry per line) offline: every entry's own hash,
/// every link, the sequence, and every checkpoint's signature under the gateway's public key —
/// or, for a chain several gateways share, under the key of the gateway that signed it, which
/// must be one of the keys given. Reports the first bad entry by number.
///
/// Threat: an export (or the database behind it) edited after the fact — an entry changed,
/// removed, reordered or inserted, or the chain rewritten and re-linked from some point on.
/// Changes show as a broken self-hash or link; a consistent rewrite fails at the next signed
/// checkpoint. What a chain cannot show is a cut after its last checkpoint, so the result says
/// how many entries at the end no checkpoint covers.
public struct AuditVerifier {
    /// The gateway keys whose checkpoints count, by fingerprint.
    public let keys: [String: Ed25519PublicKey]
    private let firstKey: Ed25519PublicKey
    /// Accept gaps in the sequence (an export filtered by worker): links are then checked only
    /// between consecutive entries.
    public let allowGaps: Bool

    private var head: ChainHead?
    private var firstSeq: Int?
    private var entries = 0
    private var checkpoints = 0
    private var lastCheckpointSeq: Int?
    private var gaps = 0
    private var anchoredOn = AuditEntry.genesis
    private var signers: [String: Int] = [:]

    public init(key: Ed25519PublicKey, allowGaps: Bool = false) {
        self.init(keys: [key], allowGaps: allowGaps)
    }

    /// `keys`: at least one.
    public init(keys: [Ed25519PublicKey], allowGaps: Bool = false) {
        precondition(!keys.isEmpty, "an audit verifier needs a gateway key")
        self.keys = Dictionary(keys.map { ($0.fingerprint, $0) }, uniquingKeysWith: { a, _ in a })
        firstKey = keys[0]
        self.allowGaps = allowGaps
    }

    /// What a verified export holds.
    public struct Summary: Sendable, Equatable {
        public let entries: Int
        public let firstSeq: Int
        public let lastSeq: Int
        /// The hash of the entry before the first (the genesis hash for a whole chain).
        public let anchoredOn: String
        public let head: String
        public let checkpoints: Int
        public let lastCheckpointSeq: Int?
        /// Entries after the last checkpoint: linked, but not yet signed.
        public let unsignedTail: Int
        public let gaps: Int
        /// Checkpoints per signing key (fingerprint).
        public var signers: [String: Int] = [:]
    }

    /// The first problem found.
    public struct Failure: Error, CustomStringConvertible, Equatable {
        /// The entry named (its sequence number, or the one expected there).
        public let entry: Int
        /// The line of the export it was found on (1-based).
        public let line: Int
        public let message: String
        public var description: String { "entry \(entry) (line \(line)): \(message)" }
    }

    public mutating func feed(line bytes: some Collection<UInt8>, lineNumber: Int) throws(Failure) {
        let expected = (head?.count ?? 0) + 1
        let entry: AuditEntry
        switch AuditEntry.parse(line: bytes) {
        case .success(let e): entry = e
        case .failure(let problem):
            let seq = CanonicalJSON.parse(bytes)?.object?["seq"]?.int ?? expected
            throw Failure(entry: seq, line: lineNumber, message: problem.message)
        }
        if let head {
            let previous = head.count
            if entry.seq == previous {
                throw Failure(
                    entry: entry.seq, line: lineNumber,
                    message: "entry \(entry.seq) appears twice: an entry was inserted or duplicated")
            }
            if entry.seq < previous {
                throw Failure(
                    entry: entry.seq, line: lineNumber,
                    message: "entry \(entry.seq) follows entry \(previous): entries were reordered")
            }
            if entry.seq > previous + 1 {
                guard allowGaps else {
                    let missing =
                        previous + 1 == entry.seq - 1 ? "\(previous + 1) is" : "\(previous + 1)–\(entry.seq - 1) are"
                    throw Failure(
                        entry: previous + 1, line: lineNumber,
                        message:
                            "entry \(missing) missing: the export jumps from \(previous) to \(entry.seq) (removed or reordered)"
                    )
                }
                gaps += 1
            } else if entry.prev != head.hash {
                throw Failure(
                    entry: previous, line: lineNumber - 1,
                    message:
                        "entry \(previous) was altered or replaced: its hash is not the one entry \(entry.seq) links to (or entry \(entry.seq) was inserted in its place)"
                )
            }
        } else {
            if entry.seq == 1, entry.prev != AuditEntry.genesis {
                throw Failure(
                    entry: 1, line: lineNumber, message: "the first entry does not start from the genesis hash")
            }
            firstSeq = entry.seq
            anchoredOn = entry.prev
        }
        if entry.event.event == "checkpoint" {
            // A checkpoint states the head before it; after a gap only its signature can be checked.
            let before = ChainHead(count: entry.seq - 1, hash: entry.prev)
            // The key the checkpoint names, when it is one of ours; else the first, which then fails.
            let key = entry.event.detail["key"].flatMap { keys[$0] } ?? firstKey
            if let problem = Checkpoint.problem(with: entry, head: before, key: key) {
                throw Failure(entry: entry.seq, line: lineNumber, message: problem)
            }
            checkpoints += 1
            signers[key.fingerprint, default: 0] += 1
            lastCheckpointSeq = entry.seq
        }
        head = ChainHead(count: entry.seq, hash: entry.hash)
        entries += 1
    }

    /// Ends the check; an export with entries but no checkpoint is not authenticated at all.
    public func finish() throws(Failure) -> Summary {
        guard let head, let firstSeq else {
            return Summary(
                entries: 0, firstSeq: 0, lastSeq: 0, anchoredOn: AuditEntry.genesis, head: AuditEntry.genesis,
                checkpoints: 0, lastCheckpointSeq: nil, unsignedTail: 0, gaps: 0)
        }
        guard checkpoints > 0 else {
            throw Failure(
                entry: head.count, line: entries,
                message:
                    "no signed checkpoint: nothing in this export is authenticated by the gateway key (export through the admin API, which signs one first)"
            )
        }
        return Summary(
            entries: entries, firstSeq: firstSeq, lastSeq: head.count, anchoredOn: anchoredOn, head: head.hash,
            checkpoints: checkpoints, lastCheckpointSeq: lastCheckpointSeq,
            unsignedTail: head.count - (lastCheckpointSeq ?? 0), gaps: gaps, signers: signers)
    }

    /// Verifies a whole export held in memory or read from a file.
    public static func verify(_ data: Data, key: Ed25519PublicKey, allowGaps: Bool = false) throws(Failure) -> Summary {
        try verify(data, keys: [key], allowGaps: allowGaps)
    }

    public static func verify(_ data: Data, keys: [Ed25519PublicKey], allowGaps: Bool = false) throws(Failure)
        -> Summary
    {
        var verifier = AuditVerifier(keys: keys, allowGaps: allowGaps)
        var lineNumber = 0
        for line in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNumber += 1
            if line.isEmpty { continue }
            try verifier.feed(line: line, lineNumber: lineNumber)
        }
        return try verifier.finish()
    }
}
