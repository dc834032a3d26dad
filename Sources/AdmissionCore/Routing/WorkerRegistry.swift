import AttestationCore
import AuditLog
import GatewayState
import Foundation
import Policy
import Synchronization

/// The admitted workers. Routing picks, among the workers serving a model, the one with the
/// fewest requests in flight.
public final class WorkerRegistry: Sendable {
    public struct Summary: Sendable, Equatable {
        public let workerID: String
        public let models: [String]
        public let inFlight: Int
        public let admittedAt: Date
        public let record: WorkerRecord
    }

    private struct Entry {
        let link: WorkerLink
        var record: WorkerRecord
        var admission: AdmittedWorker
        /// The audit sequence number of this session's admission entry.
        let admissionSeq: Int
        /// The nonce the current evidence answered (clients recompute its binding to the key).
        var nonce: Data
    }
    private let entries = Mutex<[String: Entry]>([:])

    public init() {}

    package enum Added {
        /// Registered; the previous session of the same identity under this id, to close.
        case added(previous: WorkerLink?)
        /// Not registered: another attested identity holds this id.
        case heldByAnotherIdentity
    }

    /// Registers an admitted worker. A previous session under the same worker id is replaced
    /// only when it is the same attested identity (one live session per worker); a session of
    /// another identity is never ended by an admission.
    package func add(
        _ link: WorkerLink, record: WorkerRecord, admission: AdmittedWorker, admissionSeq: Int, nonce: Data
    ) -> Added {
        entries.withLock { e in
            let previous = e[link.workerID]
            if let previous, previous.admission.identity != admission.identity { return .heldByAnotherIdentity }
            e[link.workerID] = Entry(
                link: link, record: record, admission: admission, admissionSeq: admissionSeq, nonce: nonce)
            return .added(previous: previous?.link)
        }
    }

    /// Whether a session of another attested identity holds `workerID`.
    package func isHeldByAnother(_ workerID: String, identity: String) -> Bool {
        entries.withLock { e in e[workerID].map { $0.admission.identity != identity } ?? false }
    }

    /// The row of this session, if it is registered.
    package func record(workerID: String, sessionID: String) -> WorkerRecord? {
        entries.withLock { e in e[workerID].flatMap { $0.link.sessionID == sessionID ? $0.record : nil } }
    }

    /// Notes a recorded re-attestation: its row, and what it proved (the stake proven at
    /// admission stays). Ignored when that session is no longer registered.
    package func attested(_ record: WorkerRecord, facts: AttestedFacts, nonce: Data) {
        entries.withLock { e in
            guard var entry = e[record.id], entry.link.sessionID == record.session else { return }
            entry.record = record
            entry.nonce = nonce
            entry.admission = AdmittedWorker(facts: facts, stake: entry.admission.stake, models: entry.admission.models)
            e[record.id] = entry
        }
    }

    /// What the current admission or re-attestation of this session proved.
    package func admission(workerID: String, sessionID: String) -> AdmittedWorker? {
        entries.withLock { e in e[workerID].flatMap { $0.link.sessionID == sessionID ? $0.admission : nil } }
    }

    /// Removes a worker's session (only that session: a newer one under the same id stays).
    /// Returns whether it was there.
    @discardableResult
    package func remove(workerID: String, sessionID: String) -> Bool {
        entries.withLock { e in
            guard e[workerID]?.link.sessionID == sessionID else { return false }
            e.removeValue(forKey: workerID)
            return true
        }
    }

    /// The least-loaded admitted worker serving `model`, not among `excluding`.
    /// `minimumTier`: only workers whose evidence proves at least that much.
    public func pick(model: String, excluding: Set<String> = [], minimumTier: AssuranceTier? = nil) -> WorkerLink? {
        entries.withLock { e in
            e.values.filter { minimumTier.map($0.admission.facts.tier.meets) ?? true }.map(\.link)
                .filter { $0.models.contains(model) && !excluding.contains($0.workerID) && !$0.isClosed }
                .min { ($0.inFlight, $0.workerID) < ($1.inFlight, $1.workerID) }
        }
    }

    /// The assurance tier of a registered worker's current evidence.
    public func tier(workerID: String) -> AssuranceTier? {
        entries.withLock { $0[workerID]?.admission.facts.tier }
    }

    public var models: [String] {
        entries.withLock { Array(Set($0.values.flatMap(\.link.models))).sorted() }
    }

    public var workers: [Summary] {
        entries.withLock { e in
            e.values.map {
                Summary(
                    workerID: $0.link.workerID, models: $0.link.models, inFlight: $0.link.inFlight,
                    admittedAt: $0.record.admittedAt, record: $0.record)
            }
            .sorted { $0.workerID < $1.workerID }
        }
    }

    /// Every admitted worker with what its admission proved.
    package func admitted() -> [(link: WorkerLink, record: WorkerRecord, admission: AdmittedWorker)] {
        entries.withLock { e in
            e.values.map { ($0.link, $0.record, $0.admission) }.sorted { $0.0.workerID < $1.0.workerID }
        }
    }

    /// What a client is told about the session serving it: its current row (evidence digest,
    /// claims) and the audit sequence number of its admission. Nil once the session is gone.
    public func served(workerID: String, sessionID: String) -> (record: WorkerRecord, admissionSeq: Int)? {
        entries.withLock { e in
            e[workerID].flatMap { $0.link.sessionID == sessionID ? ($0.record, $0.admissionSeq) : nil }
        }
    }

    /// Every admitted session with its row, admission entry and what it proved, for clients.
    public func published() -> [(
        link: WorkerLink, record: WorkerRecord, admissionSeq: Int, nonce: Data, facts: AttestedFacts
    )] {
        entries.withLock { e in
            e.values.map { ($0.link, $0.record, $0.admissionSeq, $0.nonce, $0.admission.facts) }
                .sorted { $0.0.workerID < $1.0.workerID }
        }
    }

    public func link(_ workerID: String) -> WorkerLink? { entries.withLock { $0[workerID]?.link } }

    public func isAdmitted(_ workerID: String) -> Bool { entries.withLock { $0[workerID] != nil } }
}
