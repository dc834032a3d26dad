import AttestationCore
import AuditLog
import Foundation

/// The rows one append writes, inside a store's open transaction. The database stores implement
/// these writes; ``appendDrafts`` turns drafts into linked entries the same way for each.
protocol ChainTables {
    /// Stores an evidence envelope once per digest (a second copy is ignored).
    func insertEvidence(_ evidence: StoredEvidence) throws
    /// Stores the next policy version and returns its number.
    func insertPolicy(_ policy: NewPolicy, actor: String, at time: Date) throws -> Int
    func apply(_ change: WorkerChange) throws
    func insertEntry(_ entry: AuditEntry) throws
    /// Writes a named API key's row, replacing the one with its id.
    func upsertClientKey(_ key: ClientKeyRecord) throws
    /// The revision of the stored row with `id` (nil: none; 0: one that does not read as a key).
    func clientKeyRevision(id: String) throws -> Int?
}

extension ChainTables {
    /// Links `drafts` after `start`. `gateway`, when known, is named on every entry that does not
    /// name one (the chain is shared by every gateway on the database).
    func appendDrafts(
        _ drafts: [AuditDraft], after start: ChainHead, at time: Date, key: Ed25519PrivateKey?, gateway: String?
    ) throws -> [AuditEntry] {
        var head = start
        var out = [AuditEntry]()
        out.reserveCapacity(drafts.count)
        for draft in drafts {
            var event: AuditEvent
            switch draft {
            case .event(let e, let evidence, let worker):
                event = e
                if let worker { try apply(worker) }
                if let evidence {
                    try insertEvidence(evidence)
                    event.evidenceSHA256 = evidence.sha256
                }
            case .policy(let e, let policy):
                event = e
                let version = try insertPolicy(policy, actor: e.actor, at: time)
                if let after = policy.after, version != after + 1 {
                    throw PolicyVersionConflict(expected: after, found: version - 1)
                }
                event.policyVersion = version
            case .clientKey(let e, let record):
                event = e
                // Compare and swap: a change made from revision n lands only on revision n, so
                // two changes of one key made at once (here or on another gateway) cannot both
                // land, the second undoing the first.
                let found = try clientKeyRevision(id: record.id) ?? 0
                guard found == record.revision - 1 else {
                    throw ClientKeyConflict(id: record.id, expected: record.revision - 1, found: found)
                }
                try upsertClientKey(record)
            case .checkpoint:
                guard let key else { throw StoreError("a checkpoint needs the gateway key") }
                event = Checkpoint.event(head: head, time: time, key: key)
            }
            if event.gateway == nil { event.gateway = gateway }
            let entry = AuditEntry(seq: head.count + 1, time: time, prev: head.hash, event: event)
            try insertEntry(entry)
            head = ChainHead(count: entry.seq, hash: entry.hash)
            out.append(entry)
        }
        return out
    }
}

extension GatewayStore {
    /// `entries` for a store that keeps lines: each read back and checked against its own hash.
    func parsedEntries(_ query: AuditQuery, source: String, _ body: (AuditEntry) throws -> Bool) throws {
        try lines(query) { seq, line in
            guard case .success(let entry) = AuditEntry.parse(line: line) else {
                throw StoreError("\(source): audit entry \(seq) in the database does not match its hash")
            }
            return try body(entry)
        }
    }
}

/// A gateway that writes to a store: its key's fingerprint names it on entries and worker rows.
public struct GatewayRecord: Sendable, Equatable {
    public let id: String
    /// The Ed25519 public key (base64 of its 32 bytes) that signs this gateway's checkpoints.
    public let publicKey: String
    public let firstSeen: Date
    public let lastSeen: Date
    public init(id: String, publicKey: String, firstSeen: Date, lastSeen: Date) {
        self.id = id
        self.publicKey = publicKey
        self.firstSeen = firstSeen
        self.lastSeen = lastSeen
    }
}

/// Worker rows as JSON, the same bytes in every store.
enum WorkerJSON {
    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .secondsSince1970
        e.outputFormatting = .sortedKeys
        return e
    }()
    static let decoder: JSONDecoder = {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .secondsSince1970
        return d
    }()
    static func text(_ worker: WorkerRecord) throws -> String {
        String(decoding: try encoder.encode(worker), as: UTF8.self)
    }
}
