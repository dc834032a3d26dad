import AttestationCore
import Foundation
import Synchronization

/// The usage ledger's writer, and the running token count quotas are checked against.
///
/// Requests are recorded as they end and written in batches by one thread (a commit waits for
/// fsync, which a request should not): every `interval`, or sooner once `batchLimit` rows wait.
/// A clean stop writes everything recorded; `kill -9` loses at most the rows of the last
/// interval (each such request's counts are also in the receipt its client holds). A batch the
/// store refuses is kept and tried again, never dropped; while rows wait beyond `backlogLimit`,
/// ``isBacklogged`` is true and the front door refuses new requests rather than serve unrecorded.
///
/// Quotas: ``used(keyID:period:)`` is the tokens in the store for the key's current period when
/// it was last read, plus every row recorded here since. Reads run on the writer thread after
/// flushing, so no row is counted twice or missed; rows of other gateways on a shared store are
/// counted from the next re-read (``refreshQuotas(_:)``).
public final class UsageLedger: Sendable {
    let store: any GatewayStore
    let clock: any AttestationClock
    let interval: Duration
    /// Signs each row (its MAC) and names the gateway on it; nil: rows go unsigned (tools, tests).
    let secret: KeyHashingSecret?
    let gateway: String?
    public static let batchLimit = 1024
    public static let backlogLimit = 100_000

    private struct State {
        var pending: [UsageRecord] = []
        var flushWaiters: [CheckedContinuation<Void, Never>] = []
        var stopped = false
        var finished = false
        var failing: String?
        /// Per key with a quota: its period and the start of the current one, the tokens read
        /// from the store for it, and the tokens recorded here since that read.
        var quota: [String: QuotaCount] = [:]
        var refresh: [(id: String, period: QuotaPeriod)]?
    }
    struct QuotaCount {
        var kind: QuotaPeriod
        var start: Date
        var stored: Int
        var since: Int
    }
    private let state = Mutex(State())
    private let condition = NSCondition()

    public init(
        store: any GatewayStore, clock: any AttestationClock = SystemClock(), interval: Duration = .milliseconds(100),
        secret: KeyHashingSecret? = nil, gateway: String? = nil
    ) {
        self.secret = secret
        self.gateway = gateway
        self.store = store
        self.clock = clock
        self.interval = interval
        let thread = Thread { [self] in loop() }
        thread.name = "ccgate-usage-writer"
        thread.start()
    }

    /// Queues a finished request's row (named and signed by this gateway).
    public func record(_ row: UsageRecord) {
        var row = row
        if let gateway { row.gateway = gateway }
        if let secret { row.mac = secret.mac(row) }
        let wake = state.withLock { s -> Bool in
            s.pending.append(row)
            if var q = s.quota[row.keyID] {
                let start = q.kind.start(of: row.time)
                if start > q.start { q = QuotaCount(kind: q.kind, start: start, stored: 0, since: 0) }
                if start == q.start { q.since += row.totalTokens }
                s.quota[row.keyID] = q
            }
            return s.pending.count >= Self.batchLimit
        }
        if wake { condition.withLock { condition.signal() } }
    }

    /// Rows recorded and not yet written.
    public var backlog: Int { state.withLock { $0.pending.count } }

    /// Whether rows are waiting because the store refuses them.
    public var isBacklogged: Bool { state.withLock { $0.pending.count > Self.backlogLimit } }
    /// The store's last refusal while rows wait, nil when writes succeed.
    public var failure: String? { state.withLock { $0.failing } }

    /// Tokens used by `keyID` in the current `period`, as far as this gateway knows.
    public func used(keyID: String, period: QuotaPeriod) -> Int {
        let start = period.start(of: clock.now())
        return state.withLock { s in
            guard let q = s.quota[keyID], q.start == start else { return 0 }
            return q.stored + q.since
        }
    }

    /// Reads the current period's totals of these keys from the store (on the writer thread,
    /// after it has written what waits), and returns once they are read.
    public func refreshQuotas(_ keys: [(id: String, period: QuotaPeriod)]) async {
        state.withLock { $0.refresh = ($0.refresh ?? []) + keys }
        await flush()
    }

    /// Returns once every row recorded before the call is written (or the store refused it).
    public func flush() async {
        await withCheckedContinuation { continuation in
            state.withLock { s in
                if s.finished { continuation.resume() } else { s.flushWaiters.append(continuation) }
            }
            condition.withLock { condition.signal() }
        }
    }

    /// Writes what is recorded and stops the writer thread.
    public func close() {
        state.withLock { $0.stopped = true }
        condition.withLock { condition.signal() }
        while !state.withLock({ $0.finished }) { usleep(1000) }
    }

    private func loop() {
        let seconds = Double(interval.components.seconds) + Double(interval.components.attoseconds) / 1e18
        var triesAfterStop = 0
        while true {
            condition.withLock {
                let idle = state.withLock {
                    $0.pending.count < Self.batchLimit && $0.flushWaiters.isEmpty && !$0.stopped
                }
                if idle { _ = condition.wait(until: Date().addingTimeInterval(seconds)) }
            }
            let (batch, waiters, refresh, stopped) = state.withLock { s in
                let w = s.flushWaiters
                s.flushWaiters = []
                let r = s.refresh
                s.refresh = nil
                return (s.pending, w, r, s.stopped)
            }
            let written = write(batch)
            if let refresh { readQuotas(refresh) }
            for w in waiters { w.resume() }
            if stopped { triesAfterStop += 1 }
            // A store that keeps refusing at stop is given five more tries (rows are then lost,
            // and ``failure`` says why); otherwise the stop would never end.
            if stopped && ((written && state.withLock({ $0.pending.isEmpty })) || triesAfterStop > 5) {
                let late = state.withLock { s in
                    s.finished = true
                    defer { s.flushWaiters = [] }
                    return s.flushWaiters
                }
                for w in late { w.resume() }
                return
            }
            if !written { Thread.sleep(forTimeInterval: 1) }
        }
    }

    /// Writes `batch` (the head of `pending`) and removes it from `pending`; false when the store refused it.
    private func write(_ batch: [UsageRecord]) -> Bool {
        guard !batch.isEmpty else { return true }
        var written = true
        for start in stride(from: 0, to: batch.count, by: Self.batchLimit) where written {
            let part = Array(batch[start..<min(start + Self.batchLimit, batch.count)])
            do {
                try store.recordUsage(part)
                state.withLock { s in
                    s.pending.removeFirst(part.count)
                    s.failing = nil
                }
            } catch {
                state.withLock { $0.failing = "\(error)" }
                written = false
            }
        }
        return written
    }

    private func readQuotas(_ keys: [(id: String, period: QuotaPeriod)]) {
        let now = clock.now()
        for (id, period) in keys {
            let start = period.start(of: now)
            // What the store holds: everything written (this thread writes, and is here). Rows
            // still waiting, and those recorded while the sum is read, are counted in `since`.
            // Until a read succeeds the previous count stays (a failed read never lowers it).
            let (waiting, sinceBefore) = state.withLock { s in
                (
                    s.pending.lazy.filter { $0.keyID == id && $0.time >= start }.reduce(0) { $0 + $1.totalTokens },
                    s.quota[id].map { $0.start == start ? $0.since : 0 } ?? 0
                )
            }
            let total: Int
            do { total = try store.usedTokens(keyID: id, since: start) } catch {
                state.withLock { $0.failing = "\(error)" }
                continue
            }
            state.withLock { s in
                let meanwhile = (s.quota[id].map { $0.start == start ? $0.since : 0 } ?? 0) - sinceBefore
                s.quota[id] = QuotaCount(kind: period, start: start, stored: total, since: waiting + max(0, meanwhile))
            }
        }
    }
}
