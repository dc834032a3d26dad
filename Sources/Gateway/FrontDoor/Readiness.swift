import AdmissionCore
import AttestationCore
import Foundation
import GatewayState
import HTTPTypes
import Logging
import Hummingbird
import NIOCore
import Synchronization

/// `/readyz`: whether this gateway can take requests now. The store must take a durable write
/// within `deadline` (every decision and every request is recorded before it counts), the usage
/// ledger must not be backlogged, and a policy must be in force; with `requireWorkers`, every
/// model the policy names must have an admitted worker. `/healthz` stays liveness only.
///
/// Threat: anyone who reaches the API port calling `/readyz` in a loop, to load the database with
/// probe writes or to keep a probe always running so that the load balancer sees the gateway not
/// ready. A verdict is reused for a second; callers during a probe wait for it, and no second
/// probe starts while one runs. The answer names each check and whether it passed, never why
/// (store errors go to the log only).
public final class Readiness: Sendable {
    let store: any GatewayStore
    let ledger: UsageLedger?
    let policies: PolicyState
    let registry: WorkerRegistry
    let clock: any AttestationClock
    let requireWorkers: Bool
    let deadline: Duration
    let logger: Logger
    static let reuse: Duration = .seconds(1)

    private struct State {
        var probing = false
        var store: (verdict: String, at: ContinuousClock.Instant)?
    }
    private let state = Mutex(State())

    init(
        store: any GatewayStore, ledger: UsageLedger?, policies: PolicyState, registry: WorkerRegistry,
        clock: any AttestationClock, requireWorkers: Bool, logger: Logger, deadline: Duration = .seconds(3)
    ) {
        self.store = store
        self.ledger = ledger
        self.policies = policies
        self.registry = registry
        self.clock = clock
        self.requireWorkers = requireWorkers
        self.logger = logger
        self.deadline = deadline
    }

    /// Each check's verdict (`ok`, or why not) and whether all passed.
    func check() async -> (ready: Bool, checks: [String: String]) {
        var checks = ["store": await storeVerdict()]
        checks["ledger"] =
            ledger.map { l in
                l.isBacklogged ? "backlogged: \(l.backlog) rows wait (\(l.failure ?? "writing"))" : "ok"
            } ?? "ok"
        if requireWorkers {
            let served = Set(registry.models)
            let named = Set(policies.current.document.models.flatMap(\.names))
            let missing = named.sorted().filter { !served.contains($0) }
            checks["workers"] = missing.isEmpty ? "ok" : "no admitted worker serves \(missing.joined(separator: ", "))"
        }
        return (checks.values.allSatisfy { $0 == "ok" }, checks)
    }

    /// The store's verdict: a recent one, the running probe's, or a new probe's.
    func storeVerdict() async -> String {
        let now = ContinuousClock.now
        enum Step { case reuse(String), wait, probe }
        let step: Step = state.withLock { s in
            if let last = s.store, now - last.at < Self.reuse { return .reuse(last.verdict) }
            if s.probing { return .wait }
            s.probing = true
            return .probe
        }
        switch step {
        case .reuse(let verdict): return verdict
        case .probe: startProbe()
        case .wait: break
        }
        let until = now + deadline
        while ContinuousClock.now < until {
            if let done = state.withLock({ s in s.store.flatMap { $0.at >= now ? $0.verdict : nil } }) { return done }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return "no write committed within \(deadline)"
    }

    /// One probe write on a thread of its own (a hung database holds that thread, not the pool).
    private func startProbe() {
        let (store, time) = (store, clock.now())
        let thread = Thread {
            let verdict: String
            do {
                try store.probeWrite(at: time)
                verdict = "ok"
            } catch { verdict = "not writable: \(error)" }
            self.state.withLock { s in
                s.store = (verdict, ContinuousClock.now)
                s.probing = false
            }
        }
        thread.name = "ccgate-ready-probe"
        thread.start()
    }

    /// The answer: 200 when ready, 503 when not, naming each check and whether it passed.
    func response() async -> Response {
        let (ready, checks) = await check()
        if !ready {
            logger.warning(
                "not ready",
                metadata: Logger.Metadata(
                    uniqueKeysWithValues: checks.map { ("ccgate.ready.\($0.key)", "\($0.value)") }))
        }
        let body: [String: JSONValue] = [
            "status": .string(ready ? "ready" : "not ready"),
            "checks": .object(checks.mapValues { .string($0 == "ok" ? "ok" : "failing") }),
        ]
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        headers[.cacheControl] = "no-store"
        return Response(
            status: ready ? .ok : .serviceUnavailable, headers: headers,
            body: .init(byteBuffer: ByteBuffer(bytes: CanonicalJSON.encode(.object(body)) + [0x0A])))
    }
}
