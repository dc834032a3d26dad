import AttestationCore
import AuditLog
import Foundation
import Synchronization

/// The gateway's audit log: appends decisions to the chain in a store, durably and in order,
/// and signs checkpoints.
///
/// Appends are group-committed: callers queue their drafts, one writer thread (off the Swift
/// concurrency pool, since a commit waits for fsync) writes everything queued in one
/// transaction, and each caller resumes once its entry is on disk. A decision is acknowledged to
/// anyone only after `record` returns.
public final class AuditTrail: Sendable {
    public let store: any GatewayStore
    public let key: Ed25519PrivateKey
    let clock: any AttestationClock
    private let writer: Writer

    /// Entries per transaction at most: a burst is written in a few large commits, and no caller
    /// waits behind an unbounded batch.
    static let batchLimit = 1024

    public init(store: any GatewayStore, key: Ed25519PrivateKey, clock: any AttestationClock = SystemClock()) {
        self.store = store
        self.key = key
        self.clock = clock
        writer = Writer(store: store, key: key, clock: clock)
        writer.start()
    }

    /// Stops the writer thread once what is queued is written.
    public func close() { writer.stop() }

    /// Calls `body` with each group of entries once committed, and how long the commit took
    /// (metrics); on the writer thread, so it must be quick.
    public func observe(_ body: @escaping @Sendable ([AuditEntry], Duration) -> Void) {
        writer.observer.withLock { $0 = body }
    }

    @discardableResult
    public func record(_ event: AuditEvent, evidence: StoredEvidence? = nil, worker: WorkerChange? = nil) async throws
        -> AuditEntry
    {
        try await writer.submit([.event(event, evidence: evidence, worker: worker)])[0]
    }

    /// Appends several drafts together: consecutive entries, committed in the same transaction.
    @discardableResult
    public func record(_ drafts: [AuditDraft]) async throws -> [AuditEntry] {
        guard !drafts.isEmpty else { return [] }
        return try await writer.submit(drafts)
    }

    /// Records a new policy version and the entry that applies it; the entry carries the version.
    public func recordPolicy(_ event: AuditEvent, _ policy: NewPolicy) async throws -> AuditEntry {
        try await writer.submit([.policy(event, policy)])[0]
    }

    /// The newest signed checkpoint this gateway wrote since it started (what clients are shown).
    public var latestCheckpoint: AuditEntry? { writer.latestCheckpoint }

    /// Appends a signed checkpoint of the chain so far, unless the last entry already is one.
    @discardableResult
    public func checkpoint() async throws -> AuditEntry? {
        guard writer.dirty else { return nil }
        return try await writer.submit([.checkpoint])[0]
    }

    /// Signs a checkpoint every `interval` while entries arrive, and a last one when cancelled.
    public func runCheckpoints(every interval: Duration) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            _ = try? await checkpoint()
        }
    }

    final class Writer: @unchecked Sendable {
        // Everything below is guarded by `condition`.
        private let condition = NSCondition()
        private var pending: [([AuditDraft], CheckedContinuation<[AuditEntry], any Error>)] = []
        private var stopped = false
        private var finished = false
        private var uncheckpointed = true
        let store: any GatewayStore
        let key: Ed25519PrivateKey
        let clock: any AttestationClock
        private let newestCheckpoint = Mutex<AuditEntry?>(nil)
        let observer = Mutex<(@Sendable ([AuditEntry], Duration) -> Void)?>(nil)
        var latestCheckpoint: AuditEntry? { newestCheckpoint.withLock { $0 } }

        init(store: any GatewayStore, key: Ed25519PrivateKey, clock: any AttestationClock) {
            self.store = store
            self.key = key
            self.clock = clock
        }

        var dirty: Bool { condition.withLock { uncheckpointed } }

        func start() {
            let thread = Thread { [self] in loop() }
            thread.name = "ccgate-audit-writer"
            thread.start()
        }

        func stop() {
            condition.withLock {
                stopped = true
                condition.broadcast()
                while !finished { condition.wait() }
            }
        }

        func submit(_ drafts: [AuditDraft]) async throws -> [AuditEntry] {
            try await withCheckedThrowingContinuation { continuation in
                condition.withLock {
                    if stopped {
                        continuation.resume(throwing: StoreError("the audit log is closed"))
                        return
                    }
                    pending.append((drafts, continuation))
                    condition.signal()
                }
            }
        }

        private func loop() {
            while true {
                condition.lock()
                while pending.isEmpty && !stopped { condition.wait() }
                if pending.isEmpty && stopped {
                    finished = true
                    condition.broadcast()
                    condition.unlock()
                    return
                }
                var batch = [([AuditDraft], CheckedContinuation<[AuditEntry], any Error>)]()
                var size = 0
                while let next = pending.first, batch.isEmpty || size + next.0.count <= AuditTrail.batchLimit {
                    batch.append(pending.removeFirst())
                    size += next.0.count
                }
                condition.unlock()
                commit(batch)
            }
        }

        private func commit(_ batch: [([AuditDraft], CheckedContinuation<[AuditEntry], any Error>)]) {
            do {
                let started = ContinuousClock.now
                let entries = try store.append(batch.flatMap(\.0), at: clock.now(), checkpointKey: key)
                if let observe = observer.withLock({ $0 }) { observe(entries, ContinuousClock.now - started) }
                let last = entries.last?.event.event
                condition.withLock { uncheckpointed = last != "checkpoint" }
                if let checkpoint = entries.last(where: { $0.event.event == "checkpoint" }) {
                    newestCheckpoint.withLock { $0 = checkpoint }
                }
                var offset = 0
                for item in batch {
                    item.1.resume(returning: Array(entries[offset..<offset + item.0.count]))
                    offset += item.0.count
                }
            } catch let conflict as any AppendConflict {
                // Only a policy checked against a version that is no longer the newest (or a key
                // change made from an older revision) fails; the decisions batched with it are
                // written again without it, and each conditional draft is tried again alone (two
                // changes of one key batched together: the first lands, the second conflicts).
                guard batch.count > 1 else {
                    batch[0].1.resume(throwing: conflict)
                    return
                }
                let conditional = batch.filter { $0.0.contains(where: \.isConditional) }
                let rest = batch.filter { !$0.0.contains(where: \.isConditional) }
                guard !conditional.isEmpty else {
                    for item in batch { item.1.resume(throwing: conflict) }
                    return
                }
                if !rest.isEmpty { commit(rest) }
                for item in conditional { commit([item]) }
            } catch {
                for item in batch { item.1.resume(throwing: error) }
            }
        }
    }
}
