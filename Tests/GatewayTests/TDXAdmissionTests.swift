import AttestationCore
import Foundation
import Gateway
import Policy
import TDXVerifier
import TestSupport
import Testing
import WorkerAgent

/// TDX workers are admitted exactly as TPM workers are: a worker in a (stand-in) TDX guest
/// measures its engine and model into RTMR3, answers the gateway's challenge with a DCAP quote
/// from configfs-tsm, and the gateway verifies it against cached collateral and its policy.
@Suite(.serialized) struct TDXAdmissionTests {
    static let engine = Data("engine build 1.0 — the audited binary".utf8)
    static let model = Data("model weights v1".utf8)

    static func policy() -> String {
        let zero = String(repeating: "00", count: 48)
        return """
            schema: ccgate.policy/v1
            name: tdx-test
            evidence:
              formats: [tdx-quote]
              tdx:
                accepted_tcb_statuses: [UpToDate]
                # The stand-in module's guest: MRTD 0x11…, firmware registers RTMR0-2 zero.
                mrtd: [\(String(repeating: "11", count: 48))]
                rtmrs: [{rtmr0: \(zero), rtmr1: \(zero), rtmr2: \(zero)}]
            measurements:
              binaries: [{name: engine, sha256: \(HashAlgorithm.sha256.hash(engine).hex)}]
              models: [{name: model, names: [fake], sha256: \(HashAlgorithm.sha256.hash(model).hex)}]
              # The engine is a stand-in the worker does not start: it is hashed, not executed from its measured copy.
              allow_unmeasured_engine: true
            """
    }

    /// A gateway trusting the world's root, with the world's collateral imported into its cache,
    /// deciding at the world's reference time.
    static func gateway(_ world: DCAPWorld) async throws -> (GatewayHarness, TemporaryDirectory) {
        let cacheDir = try TemporaryDirectory("collateral")
        let cache = try CollateralCache(directory: cacheDir.url)
        _ = try cache.store([world.collateral()], roots: [world.root.fingerprint], at: DCAPWorld.referenceTime)
        let gateway = try await GatewayHarness(policy: policy()) { c in
            c.dcapRoots = [world.root.fingerprint]
            c.collateralSource = cache
            c.clock = FixedClock(DCAPWorld.referenceTime)
        }
        return (gateway, cacheDir)
    }

    func worker(_ module: FakeTDXModule, gateway: GatewayHarness, enginePort: Int, engine: Data) throws
        -> (Task<Void, any Error>, AsyncStream<GatewayClient.Event>, TemporaryDirectory)
    {
        let files = try TemporaryDirectory("worker")
        try engine.write(to: files.file("engine"))
        try Self.model.write(to: files.file("model.gguf"))
        let attestor = try TDXAttestor(
            tsm: ConfigfsTSM(root: module.tsm, timeout: .seconds(10)),
            rtmr: RTMRExtender(directory: module.measurements),
            ccel: module.ccel, files: [files.file("engine"), files.file("model.gguf")])
        let (events, continuation) = AsyncStream<GatewayClient.Event>.makeStream()
        let client = GatewayClient(
            configuration: .init(
                host: "127.0.0.1", port: gateway.workerPort, gatewayKey: gateway.pin, workerID: "tdx-1",
                models: ["fake"]),
            attestor: attestor, engine: EngineClient(port: enginePort), onEvent: { continuation.yield($0) })
        let task = Task {
            defer { continuation.finish() }
            try await client.runOnce()
        }
        return (task, events, files)
    }

    @Test func tdxWorkerIsAdmittedAndServes() async throws {
        let world = DCAPWorld()
        let module = try FakeTDXModule(world: world)
        let (gateway, cache) = try await Self.gateway(world)
        let engine = try await FakeEngine(name: "tdx")
        let (task, events, files) = try worker(module, gateway: gateway, enginePort: engine.port, engine: Self.engine)
        defer {
            Teardown.after {
                task.cancel(); _ = try? await task.value; await engine.stop(); await gateway.stop(); module.stop();
                _ = (cache, files)
            }
        }
        let outcome = await admission(events, task)
        guard case .success = outcome else {
            Issue.record("TDX worker not admitted: \(outcome)")
            return
        }
        #expect(module.quotes >= 1)
        let reply = try await gateway.request(
            "/v1/chat/completions", method: "POST",
            body: #"{"model":"fake","messages":[{"role":"user","content":"hi"}]}"#)
        #expect(reply.status == 200)
        #expect(reply.body.contains("hello from tdx"))
        let admissions = try gateway.auditEvents().filter { $0["event"] as? String == "admission" }
        #expect(admissions.contains { $0["decision"] as? String == "admit" })
    }

    /// Threat: a TDX worker running a modified engine. RTMR3 records it, the log replays to it,
    /// and the policy refuses it.
    @Test func tdxWorkerWithAnotherEngineIsRejected() async throws {
        let world = DCAPWorld()
        let module = try FakeTDXModule(world: world)
        let (gateway, cache) = try await Self.gateway(world)
        let engine = try await FakeEngine(name: "evil")
        var tampered = Self.engine
        tampered[0] ^= 1
        let (task, events, files) = try worker(module, gateway: gateway, enginePort: engine.port, engine: tampered)
        defer {
            Teardown.after {
                task.cancel(); _ = try? await task.value; await engine.stop(); await gateway.stop(); module.stop();
                _ = (cache, files)
            }
        }
        let outcome = await admission(events, task)
        guard case .failure(let error) = outcome, let rejected = error as? WorkerRejected else {
            Issue.record("expected a rejection, got \(outcome)")
            return
        }
        #expect(rejected.code == "policy.measurement-not-allowed")
        #expect(engine.requestCount == 0)
    }

    @Test func debugTDIsRejected() async throws {
        var world = DCAPWorld()
        world.tdAttributes[0] |= 0x01
        let module = try FakeTDXModule(world: world)
        let (gateway, cache) = try await Self.gateway(world)
        let engine = try await FakeEngine(name: "debug")
        let (task, events, files) = try worker(module, gateway: gateway, enginePort: engine.port, engine: Self.engine)
        defer {
            Teardown.after {
                task.cancel(); _ = try? await task.value; await engine.stop(); await gateway.stop(); module.stop();
                _ = (cache, files)
            }
        }
        let outcome = await admission(events, task)
        guard case .failure(let error) = outcome, let rejected = error as? WorkerRejected else {
            Issue.record("expected a rejection, got \(outcome)")
            return
        }
        #expect(rejected.code == "policy.debug-not-allowed")
    }
}
