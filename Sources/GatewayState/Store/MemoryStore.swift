import AttestationCore
import AuditLog
import Foundation
import Synchronization

/// A ``GatewayStore`` held in memory: the same chain, policy-version and worker-row semantics as
/// the SQLite store, with nothing on disk. For tests of the gateway's decisions and for tools that
/// build a chain to inspect it; a gateway that must survive a restart uses ``SQLiteStore``.
///
/// `failAppends` makes every append fail (a full disk, a lost database), so that callers' "a
/// decision that cannot be recorded is not made" paths can be exercised.
public final class MemoryStore: GatewayStore {
    private struct State {
        var entries: [AuditEntry] = []
        var evidence: [String: StoredEvidence] = [:]
        var policies: [PolicyRecord] = []
        var workers: [String: WorkerRecord] = [:]
        var apiKeys: [String: Set<String>] = [:]
        var clientKeys: [String: ClientKeyRecord] = [:]
        var usage: [UsageRecord] = []
        var failAppends = false
        var failNext = 0
        var gateway: String?
        var gateways: [GatewayRecord] = []
    }
    private let state = Mutex(State())

    public init() {}

    /// While true, every append throws a ``StoreError`` and writes nothing.
    public var failAppends: Bool {
        get { state.withLock { $0.failAppends } }
        set { state.withLock { $0.failAppends = newValue } }
    }

    /// The next `count` appends fail, then appends work again.
    public func failNextAppends(_ count: Int) { state.withLock { $0.failNext = count } }

    public func append(_ drafts: [AuditDraft], at time: Date, checkpointKey: Ed25519PrivateKey?) throws -> [AuditEntry]
    {
        try state.withLock { s in
            guard !s.failAppends else { throw StoreError("the store refuses appends") }
            if s.failNext > 0 {
                s.failNext -= 1
                throw StoreError("the store refuses this append")
            }
            let head = s.entries.last.map { ChainHead(count: $0.seq, hash: $0.hash) } ?? .empty
            let staging = Staging(s)
            let out = try staging.appendDrafts(drafts, after: head, at: time, key: checkpointKey, gateway: s.gateway)
            s = staging.state
            return out
        }
    }

    /// An append's writes, staged on a copy of the state that replaces it only when all succeed.
    private final class Staging: ChainTables {
        var state: State
        init(_ state: State) { self.state = state }

        func insertEvidence(_ evidence: StoredEvidence) throws {
            state.evidence[evidence.sha256] = state.evidence[evidence.sha256] ?? evidence
        }

        func insertPolicy(_ policy: NewPolicy, actor: String, at time: Date) throws -> Int {
            let version = (state.policies.last?.version ?? 0) + 1
            state.policies.append(PolicyRecord(version: version, policy: policy, appliedAt: time, actor: actor))
            return version
        }

        func apply(_ change: WorkerChange) throws {
            switch change {
            case .upsert(let record): state.workers[record.id] = record
            case .update(let record) where state.workers[record.id]?.session == record.session:
                state.workers[record.id] = record
            case .remove(let id, let session) where state.workers[id]?.session == session: state.workers[id] = nil
            default: break
            }
        }

        func insertEntry(_ entry: AuditEntry) throws { state.entries.append(entry) }

        func upsertClientKey(_ key: ClientKeyRecord) throws { state.clientKeys[key.id] = key }

        func clientKeyRevision(id: String) throws -> Int? { state.clientKeys[id]?.revision }
    }

    public func head() throws -> ChainHead {
        state.withLock { s in s.entries.last.map { ChainHead(count: $0.seq, hash: $0.hash) } ?? .empty }
    }

    func matching(_ query: AuditQuery) -> [AuditEntry] {
        state.withLock { $0.entries }.filter { e in
            // Compared as the stored RFC 3339 text (whole seconds), as the SQLite store does.
            (query.since.map { e.time.rfc3339 >= $0.rfc3339 } ?? true)
                && (query.until.map { e.time.rfc3339 <= $0.rfc3339 } ?? true)
                && (query.worker.map { e.event.worker == $0 } ?? true) && (query.fromSeq.map { e.seq >= $0 } ?? true)
        }
    }

    public func entries(_ query: AuditQuery, _ body: (AuditEntry) throws -> Bool) throws {
        for entry in matching(query) where try !body(entry) { return }
    }

    public func lines(_ query: AuditQuery, _ body: (Int, [UInt8]) throws -> Bool) throws {
        for entry in matching(query) where try !body(entry.seq, entry.line) { return }
    }

    public func count(_ query: AuditQuery) throws -> Int { matching(query).count }

    public func entry(seq: Int) throws -> AuditEntry? {
        state.withLock { s in seq >= 1 && seq <= s.entries.count ? s.entries[seq - 1] : nil }
    }

    public func evidence(sha256: String) throws -> StoredEvidence? { state.withLock { $0.evidence[sha256] } }

    public func policies() throws -> [PolicyRecord] { state.withLock { $0.policies } }

    public func policy(version: Int) throws -> PolicyRecord? {
        state.withLock { $0.policies.first { $0.version == version } }
    }

    public func workers() throws -> [WorkerRecord] { state.withLock { $0.workers.values.sorted { $0.id < $1.id } } }

    public func clearWorkers() throws { state.withLock { $0.workers = [:] } }

    public func registerGateway(_ key: Ed25519PublicKey, at time: Date) throws {
        state.withLock { s in
            s.gateway = key.fingerprint
            if let i = s.gateways.firstIndex(where: { $0.id == key.fingerprint }) {
                let first = s.gateways[i].firstSeen
                s.gateways[i] = GatewayRecord(
                    id: key.fingerprint, publicKey: key.base64, firstSeen: first, lastSeen: time)
            } else {
                s.gateways.append(
                    GatewayRecord(id: key.fingerprint, publicKey: key.base64, firstSeen: time, lastSeen: time))
            }
        }
    }

    public func gateways() throws -> [GatewayRecord] { state.withLock { $0.gateways } }

    public func apiKeyDigests() throws -> Set<String> {
        state.withLock { $0.apiKeys.values.reduce(into: Set()) { $0.formUnion($1) } }
    }

    public func replaceAPIKeys(source: String, digests: Set<String>, at time: Date) throws {
        state.withLock { $0.apiKeys[source] = digests }
    }

    public func clientKeys() throws -> [ClientKeyRecord] {
        state.withLock { $0.clientKeys.values.sorted { $0.id < $1.id } }
    }

    public func probeWrite(at time: Date) throws {
        guard !failAppends else { throw StoreError("the store refuses writes") }
    }

    public func recordUsage(_ records: [UsageRecord]) throws {
        try state.withLock { s in
            guard !s.failAppends else { throw StoreError("the store refuses writes") }
            var known = Set(s.usage.map(\.requestID))
            for var r in records where known.insert(r.requestID).inserted {
                r.gateway = r.gateway ?? s.gateway ?? ""
                r.time = Date(timeIntervalSince1970: Double(UsageColumns.milliseconds(r.time)) / 1000)
                s.usage.append(r)
            }
            s.usage.sort { ($0.time, $0.requestID) < ($1.time, $1.requestID) }
        }
    }

    public func usedTokens(keyID: String, since: Date) throws -> Int {
        state.withLock { $0.usage }.filter { $0.keyID == keyID && $0.time >= since }.reduce(0) { $0 + $1.totalTokens }
    }

    public func usage(_ query: UsageQuery, _ body: (UsageRecord) throws -> Bool) throws {
        for r in state.withLock({ $0.usage }) where query.matches(r) { guard try body(r) else { return } }
    }
}
