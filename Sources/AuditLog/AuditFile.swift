import AttestationCore
import Foundation
import Synchronization

/// One audited decision.
public struct AuditEvent: Sendable, Equatable {
    public var event: String
    public var worker: String?
    public var decision: String?
    public var reasons: [String]
    public var detail: [String: String]

    public init(event: String, worker: String? = nil, decision: String? = nil, reasons: [String] = [],
                detail: [String: String] = [:]) {
        self.event = event
        self.worker = worker
        self.decision = decision
        self.reasons = reasons
        self.detail = detail
    }
}

/// An append-only JSON Lines audit file. Each line carries `prev`, the SHA-256 of the previous
/// line's bytes (64 zeros for the first), so removing, reordering or editing any line breaks
/// the chain from there on.
///
/// Threat: an operator or intruder editing the log after the fact. `verify` names the first
/// line whose link fails. (Signed checkpoints, which also stop truncation of the tail, are part
/// of the audit subsystem's later work.)
public final class AuditFile: Sendable {
    public let url: URL
    private struct State {
        var handle: FileHandle
        var head: String
        var sequence: Int
    }
    private let state: Mutex<State>
    private let clock: any AttestationClock

    public static let genesis = String(repeating: "0", count: 64)

    public enum AuditError: Error, CustomStringConvertible {
        case io(String)
        case broken(line: Int, String)
        public var description: String {
            switch self {
            case .io(let s): "audit log: \(s)"
            case .broken(let line, let s): "audit log line \(line): \(s)"
            }
        }
    }

    /// Opens (or creates) the file and continues its chain; a broken existing chain is refused.
    public init(url: URL, clock: any AttestationClock = SystemClock()) throws {
        self.url = url
        self.clock = clock
        let fm = FileManager.default
        if !fm.fileExists(atPath: url.path) {
            try fm.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            guard fm.createFile(atPath: url.path, contents: nil, attributes: [.posixPermissions: 0o600]) else {
                throw AuditError.io("cannot create \(url.path)")
            }
        }
        let (head, count) = try Self.verify(contentsOf: url)
        let handle = try FileHandle(forWritingTo: url)
        try handle.seekToEnd()
        state = Mutex(State(handle: handle, head: head, sequence: count))
    }

    /// Appends one event and flushes it to disk before returning.
    @discardableResult
    public func append(_ event: AuditEvent) throws -> Int {
        try state.withLock { s in
            var object: [String: Any] = [
                "seq": s.sequence + 1, "time": clock.now().rfc3339, "event": event.event, "prev": s.head,
                "reasons": event.reasons,
            ]
            if let worker = event.worker { object["worker"] = worker }
            if let decision = event.decision { object["decision"] = decision }
            if !event.detail.isEmpty { object["detail"] = event.detail }
            let line = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            try s.handle.write(contentsOf: line + Data("\n".utf8))
            try s.handle.synchronize()
            s.head = HashAlgorithm.sha256.hash(line).hex
            s.sequence += 1
            return s.sequence
        }
    }

    /// Checks the chain of a whole file; returns the head hash and the number of entries.
    public static func verify(contentsOf url: URL) throws -> (head: String, count: Int) {
        guard let data = FileManager.default.contents(atPath: url.path) else { throw AuditError.io("cannot read \(url.path)") }
        var head = genesis
        var count = 0
        for line in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            if line.isEmpty { continue }
            count += 1
            guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else {
                throw AuditError.broken(line: count, "not a JSON object")
            }
            guard object["prev"] as? String == head else { throw AuditError.broken(line: count, "prev does not match the line before") }
            guard object["seq"] as? Int == count else { throw AuditError.broken(line: count, "sequence number is not \(count)") }
            head = HashAlgorithm.sha256.hash(Data(line)).hex
        }
        return (head, count)
    }
}
