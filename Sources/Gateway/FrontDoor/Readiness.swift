import AdmissionCore
import AttestationCore
import Foundation
import GatewayState
import HTTPTypes
import Hummingbird
import NIOCore
import Synchronization

/// `/readyz`: whether this gateway can take requests now. The store must take a durable write
/// within `deadline` (every decision and every request is recorded before it counts), the usage
/// ledger must not be backlogged, and a policy must be in force; with `requireWorkers`, every
/// model the policy names must have an admitted worker. `/healthz` stays liveness only.
///
/// Probes do not pile up: while one write is still waiting (a database that hangs), the next
/// check answers not ready at once instead of starting another.
public final class Readiness: Sendable {
    let store: any GatewayStore
    let ledger: UsageLedger?
    let policies: PolicyState
    let registry: WorkerRegistry
    let clock: any AttestationClock
    let requireWorkers: Bool
    let deadline: Duration
    private let probing = Mutex(false)

    init(
        store: any GatewayStore, ledger: UsageLedger?, policies: PolicyState, registry: WorkerRegistry,
        clock: any AttestationClock, requireWorkers: Bool, deadline: Duration = .seconds(3)
    ) {
        self.store = store
        self.ledger = ledger
        self.policies = policies
        self.registry = registry
        self.clock = clock
        self.requireWorkers = requireWorkers
        self.deadline = deadline
    }

    /// Each check's verdict (`ok`, or why not) and whether all passed.
    func check() async -> (ready: Bool, checks: [String: String]) {
        var checks = ["store": await probeStore()]
        checks["ledger"] =
            ledger.map { l in
                l.isBacklogged ? "backlogged: \(l.backlog) rows wait (\(l.failure ?? "writing"))" : "ok"
            } ?? "ok"
        checks["policy"] = "ok"
        if requireWorkers {
            let served = Set(registry.models)
            let named = Set(policies.current.document.models.flatMap(\.names))
            let missing = named.sorted().filter { !served.contains($0) }
            checks["workers"] = missing.isEmpty ? "ok" : "no admitted worker serves \(missing.joined(separator: ", "))"
        }
        return (checks.values.allSatisfy { $0 == "ok" }, checks)
    }

    func probeStore() async -> String {
        let started = probing.withLock { busy in
            defer { busy = true }
            return !busy
        }
        guard started else { return "a write probe is still waiting on the store" }
        let (store, now) = (store, clock.now())
        let result = Mutex<String?>(nil)
        let thread = Thread {
            let outcome: String
            do {
                try store.probeWrite(at: now)
                outcome = "ok"
            } catch { outcome = "not writable: \(error)" }
            result.withLock { $0 = outcome }
            self.probing.withLock { $0 = false }
        }
        thread.name = "ccgate-ready-probe"
        thread.start()
        let until = ContinuousClock.now + deadline
        while ContinuousClock.now < until {
            if let done = result.withLock({ $0 }) { return done }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return "no write committed within \(deadline)"
    }

    /// The answer: 200 when ready, 503 when not, with each check's verdict.
    func response() async -> Response {
        let (ready, checks) = await check()
        let body: [String: JSONValue] = [
            "status": .string(ready ? "ready" : "not ready"), "checks": .object(checks.mapValues(JSONValue.string)),
        ]
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        headers[.cacheControl] = "no-store"
        return Response(
            status: ready ? .ok : .serviceUnavailable, headers: headers,
            body: .init(byteBuffer: ByteBuffer(bytes: CanonicalJSON.encode(.object(body)) + [0x0A])))
    }
}
