import AdmissionCore
import AttestationCore
import AuditLog
import GatewayState
import NVGPUVerifier
import Crypto
import Foundation
import Policy
import Sealing
import Synchronization
import TestSupport
import WorkerProtocol

/// A gateway core with no sockets and no files: the DCAP world generated in code as the only
/// hardware root, a fixed clock at its reference time, and an in-memory store. Shared with the
/// session tasks; nothing in it changes after `init` but through its own locks.
final class Core: @unchecked Sendable {
    var world = DCAPWorld()
    let store = MemoryStore()
    let trail: AuditTrail
    let policies: PolicyState
    let registry = WorkerRegistry()
    let runner: WorkerSessionRunner

    static let tdxPolicy = "schema: ccgate.policy/v1\nname: core-test\nevidence:\n  formats: [tdx-quote]\n"

    init(
        policy: String = Core.tdxPolicy, preparer: (any EvidencePreparing)? = nil, stake: (any StakeChecking)? = nil,
        timings: WorkerTimings = .init(handshakeTimeout: .seconds(30), reattestInterval: .seconds(3600)),
        time: Date = DCAPWorld.referenceTime, gpuOptions: NVGPUReportVerifier.Options = .init()
    ) throws {
        let clock = FixedClock(time)
        // The collateral's window moves with the clock (the test PKI's certificates cover years).
        world.collateralIssued = time - 10 * DCAPWorld.day
        world.collateralNext = time + 20 * DCAPWorld.day
        trail = AuditTrail(store: store, key: .generate(), clock: clock)
        policies = PolicyState(ActivePolicy(version: 1, document: try PolicyDocument.parse(policy), text: policy))
        let coordinator = AdmissionCoordinator(
            policies: policies, clock: clock, dcapRoots: [world.root.fingerprint], preparer: preparer, stake: stake,
            gpuOptions: gpuOptions)
        runner = WorkerSessionRunner(coordinator: coordinator, registry: registry, trail: trail, timings: timings)
    }

    var coordinator: AdmissionCoordinator { runner.coordinator }

    /// TDX evidence bound to `nonce` and `key`, with collateral in the envelope.
    func evidence(nonce: Data, key: Data, adjust: (inout DCAPWorld) -> Void = { _ in }) -> WireMessage.EvidenceMessage {
        var w = world
        w.reportData =
            [UInt8](attestationBinding(nonce: nonce, workerPublicKeys: key)) + [UInt8](repeating: 0, count: 32)
        adjust(&w)
        return .init(envelope: w.envelope(collateral: w.collateral()))
    }

    /// Replaces the policy in force, as an apply does.
    func apply(_ text: String) throws {
        let next = policies.current.version + 1
        policies.replace(with: ActivePolicy(version: next, document: try PolicyDocument.parse(text), text: text))
    }

    /// The audit entries so far.
    func events() throws -> [AuditEvent] {
        var out = [AuditEvent]()
        try store.entries(AuditQuery()) {
            out.append($0.event); return true
        }
        return out
    }

    func evictions(session: String) throws -> [AuditEvent] {
        try events().filter { $0.kind == .eviction && $0.detail["session"] == session }
    }
}

/// One end of a worker connection held by the test: what the gateway sends is kept in order for
/// ``next()``, what the test delivers goes to the runner's inbound sequence.
final class TestConnection: WorkerConnection {
    let peer = "test"
    let inbound: AsyncThrowingStream<WireMessage, any Error>
    private let input: AsyncThrowingStream<WireMessage, any Error>.Continuation
    private let sent = Mutex<[WireMessage]>([])
    let closes = Mutex(0)
    /// Sends of messages this accepts fail, as a reset connection's would.
    let failing: @Sendable (WireMessage) -> Bool

    init(failing: @escaping @Sendable (WireMessage) -> Bool = { _ in false }) {
        (inbound, input) = AsyncThrowingStream<WireMessage, any Error>.makeStream()
        self.failing = failing
    }

    struct Closed: Error {}

    /// Like a socket: nothing can be sent once it is closed.
    func send(_ message: WireMessage) async throws {
        guard closes.withLock({ $0 }) == 0, !failing(message) else { throw Closed() }
        sent.withLock { $0.append(message) }
    }
    func close() {
        closes.withLock { $0 += 1 }
        input.finish()
    }

    /// The worker sends.
    func deliver(_ message: WireMessage) { input.yield(message) }
    func hangUp() { input.finish() }
    func fail(_ error: any Error) { input.finish(throwing: error) }

    /// The next message the gateway sent, waiting up to 10 s (nil: none came).
    func next() async -> WireMessage? {
        for _ in 0..<1000 {
            if let m = sent.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) { return m }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return nil
    }

    /// The next message already sent, without waiting (nil: none left).
    func nextSent() async -> WireMessage? { sent.withLock { $0.isEmpty ? nil : $0.removeFirst() } }
}

/// A refusal as the test worker heard it.
struct Refused: Error {
    let code: String
    let message: String
}

/// A worker driven by the test: hello, evidence for each challenge, its side of the channel.
struct TestWorker {
    let id: String
    let kem = WorkerKEMKey()
    let helloNonce = WireMessage.Hello.freshNonce()
    var hello: WireMessage {
        .hello(.init(workerID: id, kemPublicKey: kem.publicKeyBytes, models: ["m"], workerNonce: helloNonce))
    }

    init(_ id: String = "w1") { self.id = id }

    /// Runs the handshake; returns the session id and key once admitted, or the refusal.
    func admit(_ core: Core, _ connection: TestConnection, adjust: (inout DCAPWorld) -> Void = { _ in }) async
        -> Result<(String, SymmetricKey), Refused>
    {
        connection.deliver(hello)
        guard case .challenge(let challenge)? = await connection.next() else {
            return .failure(Refused(code: "test", message: "no challenge"))
        }
        connection.deliver(.evidence(core.evidence(nonce: challenge.nonce, key: kem.publicKeyBytes, adjust: adjust)))
        switch await connection.next() {
        case .admitted(let a)?:
            let key = try! SessionKeySealing.open(
                .init(encapsulatedKey: a.encapsulatedKey, ciphertext: a.sealedSessionKey), with: kem,
                context: Data(a.sessionID.utf8) + challenge.nonce)
            return .success((a.sessionID, key))
        case .rejected(let r)?, .error(let r)?: return .failure(Refused(code: r.code, message: r.message))
        default: return .failure(Refused(code: "test", message: "no answer"))
        }
    }
}

/// Holds a step until the test releases it; counts how often it was reached.
final class Gate: Sendable {
    private let state = Mutex<(reached: Int, open: Bool, waiters: [CheckedContinuation<Void, Never>])>((0, false, []))
    private let arrivals: AsyncStream<Int>
    private let arrival: AsyncStream<Int>.Continuation

    init() { (arrivals, arrival) = AsyncStream<Int>.makeStream() }

    func pass() async {
        await withCheckedContinuation { c in
            let go = state.withLock { s -> Bool in
                s.reached += 1
                arrival.yield(s.reached)
                if s.open { return true }
                s.waiters.append(c)
                return false
            }
            if go { c.resume() }
        }
    }

    /// Waits until the step was reached `count` times.
    func reached(_ count: Int) async {
        for await n in arrivals where n >= count { return }
    }

    func open() {
        let waiters = state.withLock { s in
            s.open = true
            defer { s.waiters = [] }
            return s.waiters
        }
        for w in waiters { w.resume() }
    }
}

/// A preparer that holds the `hold`-th evidence (1-based) at the gate.
final class HoldingPreparer: EvidencePreparing {
    let gate: Gate
    let hold: Int
    let calls = Mutex(0)
    init(gate: Gate, hold: Int) {
        self.gate = gate
        self.hold = hold
    }
    func prepare(envelope: Data, at time: Date) async -> String? {
        if calls.withLock({
            $0 += 1; return $0
        }) == hold {
            await gate.pass()
        }
        return nil
    }
}

/// A stake reader that admits every proof with a fixed provider, optionally after a gate.
struct FixedStake: StakeChecking {
    let gatewayID = "test-gateway"
    var gate: Gate?
    func admit(proofData: Data?, workerKey: Data, rules: PolicyDocument.StakeRules) async -> StakeOutcome {
        await gate?.pass()
        guard proofData != nil else { return .refused("stake.proof-missing", "no proof") }
        return StakeOutcome(
            stake: ProviderStake(provider: "0:" + String(repeating: "ab", count: 32), stakeAccount: nil), refusal: nil,
            detail: ["source": "test", "observed_nanotons": "1"], fresh: true)
    }
}
