import AdmissionCore
import AttestationCore
import Foundation
import Gateway
import GatewayState
import Policy
import TPMVerifier
import TestSupport
import Testing
import Synchronization
import WorkerAgent
import WorkerProtocol

/// An evidence source that lies: it answers challenges with what `forge` makes of the genuine
/// TPM's evidence, and asks the genuine TPM to activate credentials.
struct LyingAttestor: EvidenceSource {
    let genuine: Attestor
    let forge: @Sendable (Data) throws -> Data

    func evidence(binding: Data) async throws -> Data { try forge(try await genuine.evidence(binding: binding)) }
    func activateCredential(_ challenge: WireMessage.Activate) async throws -> Data {
        try await genuine.activateCredential(challenge)
    }
}

/// Hardware-anchored TPM identities end to end on real swtpm TPMs manufactured with EK
/// certificates: an AK is believed only when its EK certificate chains to a pinned root and
/// credential activation shows it lives in that TPM.
@Suite(.serialized) struct TPMIdentityTests {
    static let engine = Data("identity engine".utf8)
    static let model = Data("identity model".utf8)
    static var policy: String { GatewayHarness.policy(engine: engine, model: model) }

    func rejection(_ worker: TestWorker) async -> String? {
        guard case .failure(let error) = await worker.admitted() else { return nil }
        return (error as? WorkerRejected)?.code
    }

    /// The genuine worker is admitted after activation; the stored evidence carries the
    /// gateway's signed activation record, which a verifier given the gateway key believes, and
    /// no one else does.
    @Test func genuineWorkerIsAdmittedAndItsActivationIsRecorded() async throws {
        let gateway = try await GatewayHarness(policy: Self.policy)
        let worker = try await TestWorker(
            id: "genuine", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: 1, engine: Self.engine,
            model: Self.model)
        defer {
            Teardown.after {
                await worker.stop(); await gateway.stop()
            }
        }
        guard case .success = await worker.admitted() else {
            Issue.record("the genuine worker was not admitted")
            return
        }
        let admission = try #require(
            try gateway.auditEvents().first {
                $0["event"] as? String == "admission" && $0["decision"] as? String == "admit"
            })
        let digest = try #require(admission["evidence_sha256"] as? String)
        let stored = try #require(try gateway.server.store.evidence(sha256: digest))
        let object = try #require(try JSONSerialization.jsonObject(with: stored.envelope) as? [String: Any])
        let record = try #require(object["activation"] as? [String: String])
        #expect(record["gateway"] == gateway.server.gatewayID)

        var roots = EKRoots.pinnedDER
        roots.append(try #require(SwtpmLocalCA.shared).rootDER)
        let policy = try PolicyDocument.parse(Self.policy)
        func verify(_ keys: [Ed25519PublicKey]) -> Verdict {
            EvidenceVerification(
                policy: policy, scope: .all,
                tpmIdentity: TPMIdentityTrust(ekRoots: roots, activation: .records(trustedKeys: keys))
            ).verify(envelopeData: stored.envelope, expectedNonce: stored.binding, at: Date())
        }
        #expect(verify([gateway.server.audit.key.publicKey]).isAccepted)
        let stranger = Ed25519PrivateKey.generate().publicKey
        #expect(verify([stranger]).reason == .tpmAKUntrusted)
        #expect(verify([]).reason == .tpmAKUntrusted)
    }

    /// Threat: an attacker with no TPM. A software key re-signs genuine quotes and claims every
    /// TPM attribute, beside the genuine EK certificate; it cannot recover the credential.
    @Test func softwareAKIsRefused() async throws {
        let gateway = try await GatewayHarness(policy: Self.policy)
        let software = SoftwareAK()
        let worker = try await TestWorker(
            id: "software-ak", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: 1,
            engine: Self.engine, model: Self.model,
            attestor: { genuine in LyingAttestor(genuine: genuine) { try software.forge($0) } })
        defer {
            Teardown.after {
                await worker.stop(); await gateway.stop()
            }
        }
        #expect(await rejection(worker) == "tpm.activation-failed")
        let events = try gateway.auditEvents()
        #expect(events.contains { ($0["reasons"] as? [String])?.first == "tpm.activation-failed" })
        #expect(gateway.server.registry.workers.isEmpty)
    }

    /// Threat: an AK from one TPM presented with another TPM's EK (whose certificate is genuine).
    /// The credential is wrapped to the other TPM's EK, so the AK's TPM cannot open it.
    @Test func akPresentedWithAnotherTPMsEKFailsActivation() async throws {
        let gateway = try await GatewayHarness(policy: Self.policy)
        let other = try await Swtpm.start()
        defer { other.stop() }
        let otherAttestor = try Attestor(tcti: other.tcti, files: [])
        let otherEK = otherAttestor.endorsement
        let worker = try await TestWorker(
            id: "borrowed-ek", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: 1,
            engine: Self.engine, model: Self.model,
            attestor: { genuine in
                LyingAttestor(genuine: genuine) { envelope in
                    var object = try JSONSerialization.jsonObject(with: envelope) as? [String: Any] ?? [:]
                    object["ek_public"] = otherEK.ekPublic.base64EncodedString()
                    object["ek_certificate"] = otherEK.certificate?.base64EncodedString()
                    return try JSONSerialization.data(withJSONObject: object)
                }
            })
        defer {
            Teardown.after {
                await worker.stop(); await gateway.stop()
            }
        }
        #expect(await rejection(worker) == "tpm.activation-failed")
    }

    /// A worker that reconnects is not asked to activate again: its AK was activated with its EK
    /// in its first session, and its second admission stores the record of that activation.
    /// Threat: the memory lending trust to another key. A software AK presented beside the same
    /// genuine EK is still challenged, and refused.
    @Test func reconnectingWorkerIsNotChallengedAgainButAnotherAKIs() async throws {
        let gateway = try await GatewayHarness(policy: Self.policy)
        let tpm = try await Swtpm.start()
        let (attestor, files) = try await onOwnThread {
            try measuredAttestor(on: tpm, engine: Self.engine, model: Self.model)
        }
        let counted = CountingAttestor(genuine: attestor)
        let tasks = Connections()
        defer {
            Teardown.after {
                tasks.cancelAll()
                await gateway.stop()
                await onOwnThread { tpm.stop() }
                _ = files
            }
        }
        func connect(_ source: any EvidenceSource) -> Task<Result<String, any Error>, Never> {
            let (events, continuation) = AsyncStream<GatewayClient.Event>.makeStream()
            let client = GatewayClient(
                configuration: .init(
                    host: "127.0.0.1", port: gateway.workerPort, gatewayKey: gateway.pin, workerID: "returning",
                    models: ["fake"]),
                attestor: source, engine: EngineClient(port: 1), onEvent: { continuation.yield($0) })
            let task = Task {
                defer { continuation.finish() }
                try await client.runOnce()
            }
            tasks.add(task)
            return Task { await admission(events, task) }
        }
        guard case .success = await connect(counted).value else {
            Issue.record("the worker was not admitted the first time")
            return
        }
        #expect(counted.activations.current == 1, "one activation in the first session")
        await tasks.end(0)
        guard case .success = await connect(counted).value else {
            Issue.record("the worker was not admitted again")
            return
        }
        #expect(counted.activations.current == 1, "no activation in the second session")

        // Both admissions stored a record of the one activation, dated the same.
        var times = [String]()
        for event in try gateway.auditEvents() where event["decision"] as? String == "admit" {
            let digest = try #require(event["evidence_sha256"] as? String)
            let stored = try #require(try gateway.server.store.evidence(sha256: digest))
            let object = try #require(try JSONSerialization.jsonObject(with: stored.envelope) as? [String: Any])
            times.append(try #require((object["activation"] as? [String: String])?["time"]))
        }
        #expect(times.count == 2 && Set(times).count == 1, "\(times)")

        await tasks.end(1)
        let software = SoftwareAK()
        let forged = await connect(LyingAttestor(genuine: attestor) { try software.forge($0) }).value
        guard case .failure(let error) = forged else {
            Issue.record("a software AK beside a remembered EK was admitted")
            return
        }
        #expect((error as? WorkerRejected)?.code == "tpm.activation-failed", "\(error)")

        // The remembered AK beside another TPM's (certified) EK: challenged, and its TPM cannot
        // open a credential wrapped to the other EK.
        let other = try await Swtpm.start()
        defer { other.stop() }
        let otherEK = try await onOwnThread { try Attestor(tcti: other.tcti, files: []).endorsement }
        let borrowed = await connect(
            LyingAttestor(genuine: attestor) { envelope in
                var object = try JSONSerialization.jsonObject(with: envelope) as? [String: Any] ?? [:]
                object["ek_public"] = otherEK.ekPublic.base64EncodedString()
                object["ek_certificate"] = otherEK.certificate?.base64EncodedString()
                return try JSONSerialization.data(withJSONObject: object)
            }
        ).value
        guard case .failure(let borrowedError) = borrowed else {
            Issue.record("a remembered AK beside another EK was admitted")
            return
        }
        #expect((borrowedError as? WorkerRejected)?.code == "tpm.activation-failed", "\(borrowedError)")
    }

    /// Threat: a "TPM" certified by a CA the operator never pinned (anyone can run one).
    @Test func tpmFromAnUnpinnedManufacturerIsRefused() async throws {
        let gateway = try await GatewayHarness(policy: Self.policy)
        let worker = try await TestWorker(
            id: "unpinned", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: 1,
            engine: Self.engine, model: Self.model,
            ca: try SwtpmLocalCA())
        defer {
            Teardown.after {
                await worker.stop(); await gateway.stop()
            }
        }
        #expect(await rejection(worker) == "tpm.ek-chain-invalid")
    }

    /// A TPM with no EK certificate at all has no anchor under the default rule.
    @Test func tpmWithoutAnEKCertificateIsRefused() async throws {
        let gateway = try await GatewayHarness(policy: Self.policy)
        let worker = try await TestWorker(
            id: "no-ek-cert", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: 1,
            engine: Self.engine, model: Self.model,
            ca: nil)
        defer {
            Teardown.after {
                await worker.stop(); await gateway.stop()
            }
        }
        #expect(await rejection(worker) == "tpm.ak-untrusted")
    }

    /// `enrolled`: an EK whose digest is not listed is refused (its certificate does not matter).
    @Test func unenrolledEKIsRefused() async throws {
        let probe = try await Swtpm.start()
        let probeAttestor = try Attestor(tcti: probe.tcti, files: [])
        let digest = try #require(try? PublicKeyDigest.of(probeAttestor.endorsement.ekPublic))
        probe.stop()
        let enrolled = Self.policy.replacingOccurrences(
            of: "tpm: {require_restricted_ak: true}",
            with: "tpm: {ak_trust: enrolled, enrolled_eks: [\(digest)]}")
        let gateway = try await GatewayHarness(policy: enrolled)
        let worker = try await TestWorker(
            id: "not-enrolled", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: 1,
            engine: Self.engine, model: Self.model)
        defer {
            Teardown.after {
                await worker.stop(); await gateway.stop()
            }
        }
        #expect(await rejection(worker) == "tpm.ak-untrusted")
    }
}

/// The SHA-256 of an EK's SubjectPublicKeyInfo, from its TPM2B_PUBLIC.
enum PublicKeyDigest {
    static func of(_ tpm2b: Data) throws -> String {
        switch TPMKeyIdentity.parse([UInt8](tpm2b)) {
        case .success(let identity): return identity.area.key.fingerprint
        case .failure(let reason): throw reason
        }
    }
}

/// Peers that send numbers no arithmetic or HTTP response may take.
@Suite(.serialized) struct HostilePeerNumberTests {
    static let engine = Data("hostile engine".utf8)
    static let model = Data("hostile model".utf8)

    /// Threat: an admitted worker answering with status 1000 (or a content type with a line
    /// break), to crash the gateway for every client. The client gets 502, and the gateway keeps
    /// serving the next request through an honest worker.
    @Test func workerStatusOutsideHTTPGivesBadGatewayAndServiceContinues() async throws {
        let gateway = try await GatewayHarness(policy: GatewayHarness.policy(engine: Self.engine, model: Self.model))
        let tpm = try await Swtpm.start()
        defer { tpm.stop() }
        let (attestor, _) = try measuredAttestor(on: tpm, engine: Self.engine, model: Self.model)
        let hostile = Task {
            try await HostileWorker.run(
                gatewayPort: gateway.workerPort, attestor: attestor, id: "liar", model: "fake",
                answer: { id in
                    [
                        .head(id: id, status: 1000, contentType: "application/json"),
                        .data(id: id, bytes: Data("{}".utf8)), .end(id: id),
                    ]
                })
        }
        defer { hostile.cancel() }
        let deadline = Date() + 60
        while !gateway.server.registry.isAdmitted("liar"), Date() < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(gateway.server.registry.isAdmitted("liar"))
        let chat = #"{"model":"fake","messages":[{"role":"user","content":"hi"}]}"#
        let bad = try await gateway.request("/v1/chat/completions", method: "POST", body: chat)
        #expect(bad.status == 502, "\(bad.body)")
        #expect(bad.body.contains("bad_worker_response"))

        let engine = try await FakeEngine(name: "honest")
        let honest = try await TestWorker(
            id: "honest", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: engine.port,
            engine: Self.engine,
            model: Self.model)
        defer {
            Teardown.after {
                await honest.stop(); await engine.stop(); await gateway.stop()
            }
        }
        guard case .success = await honest.admitted() else {
            Issue.record("the honest worker was not admitted")
            return
        }
        hostile.cancel()
        var served = false
        for _ in 0..<10 where !served {
            served = try await gateway.request("/v1/chat/completions", method: "POST", body: chat).status == 200
        }
        #expect(served)
    }
}

/// Re-attestation is bound to the AK that admission activated.
@Suite(.serialized) struct ReattestationIdentityTests {
    /// Threat: a worker admitted with one TPM's AK that re-attests with a quote from another
    /// (genuine, certified) TPM, e.g. to move its session onto a machine running something else.
    /// The later quote's AK was never activated in this session: the worker is evicted.
    @Test func reattestingWithAnotherAKEvicts() async throws {
        let gateway = try await GatewayHarness(policy: TPMIdentityTests.policy, reattest: .seconds(1))
        let other = try await Swtpm.start()
        defer { other.stop() }
        let (second, _) = try measuredAttestor(
            on: other, engine: TPMIdentityTests.engine, model: TPMIdentityTests.model)
        let calls = Counter()
        let worker = try await TestWorker(
            id: "switcher", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: 1,
            engine: TPMIdentityTests.engine,
            model: TPMIdentityTests.model,
            attestor: { genuine in SwitchingAttestor(first: genuine, later: second, calls: calls) })
        defer {
            Teardown.after {
                await worker.stop(); await gateway.stop()
            }
        }
        guard case .success = await worker.admitted() else {
            Issue.record("the worker was not admitted with its first TPM")
            return
        }
        let outcome = await worker.outcome()
        #expect((outcome as? WorkerRejected)?.code == "tpm.ak-untrusted", "\(String(describing: outcome))")
        #expect(!gateway.server.registry.isAdmitted("switcher"))
    }
}

/// Passes everything to a genuine attestor, counting credential activations.
struct CountingAttestor: EvidenceSource {
    let genuine: Attestor
    let activations = Counter()

    func evidence(binding: Data) async throws -> Data { try await genuine.evidence(binding: binding) }
    func activateCredential(_ challenge: WireMessage.Activate) async throws -> Data {
        _ = activations.next()
        return try await genuine.activateCredential(challenge)
    }
}

/// Worker connections a test opened, to end one or all.
final class Connections: Sendable {
    private let tasks = Mutex<[Task<Void, any Error>]>([])
    func add(_ task: Task<Void, any Error>) { tasks.withLock { $0.append(task) } }
    func end(_ index: Int) async {
        let task = tasks.withLock { $0[index] }
        task.cancel()
        _ = try? await task.value
    }
    func cancelAll() { tasks.withLock { $0.forEach { $0.cancel() } } }
}

final class Counter: Sendable {
    private let value = Mutex(0)
    var current: Int { value.withLock { $0 } }
    func next() -> Int {
        value.withLock {
            $0 += 1; return $0
        }
    }
}

/// Answers the admission challenge with one TPM, and every later one with another.
struct SwitchingAttestor: EvidenceSource {
    let first: Attestor
    let later: Attestor
    let calls: Counter

    func evidence(binding: Data) async throws -> Data {
        calls.next() == 1 ? try await first.evidence(binding: binding) : try await later.evidence(binding: binding)
    }
    func activateCredential(_ challenge: WireMessage.Activate) async throws -> Data {
        try await first.activateCredential(challenge)
    }
}

/// Names clients use are bound to measured models, and worker ids to attested identities.
@Suite(.serialized) struct BoundNamesTests {
    /// Threat: a worker attested with one model advertising another model's name, so that
    /// clients asking for that name get its answers.
    @Test func aModelNameNotBoundToTheMeasuredModelIsRefused() async throws {
        let gateway = try await GatewayHarness(policy: TPMIdentityTests.policy)
        let worker = try await TestWorker(
            id: "liar", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: 1,
            engine: TPMIdentityTests.engine,
            model: TPMIdentityTests.model, modelName: "llama-3.1-405b-instruct")
        defer {
            Teardown.after {
                await worker.stop(); await gateway.stop()
            }
        }
        guard case .failure(let error) = await worker.admitted() else {
            Issue.record("a worker advertising an unbound model name was admitted")
            return
        }
        #expect((error as? WorkerRejected)?.code == "policy.model-name-not-bound")
        #expect((error as? WorkerRejected)?.message.contains("llama-3.1-405b-instruct") == true)
    }

    /// Threat: an admitted worker's id claimed by another machine, to end its session and take
    /// its traffic. The second identity is refused; the first keeps serving.
    @Test func anIdHeldByAnotherIdentityIsRefusedAndTheHolderKeepsServing() async throws {
        let gateway = try await GatewayHarness(policy: TPMIdentityTests.policy)
        let engine = try await FakeEngine(name: "holder")
        let holder = try await TestWorker(
            id: "gpu-7", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: engine.port,
            engine: TPMIdentityTests.engine,
            model: TPMIdentityTests.model)
        defer {
            Teardown.after {
                await holder.stop(); await engine.stop(); await gateway.stop()
            }
        }
        guard case .success = await holder.admitted() else {
            Issue.record("the holder was not admitted")
            return
        }
        let squatter = try await TestWorker(
            id: "gpu-7", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: engine.port,
            engine: TPMIdentityTests.engine,
            model: TPMIdentityTests.model)
        defer { Teardown.after { await squatter.stop() } }
        guard case .failure(let error) = await squatter.admitted() else {
            Issue.record("a second identity took over the worker id")
            return
        }
        #expect((error as? WorkerRejected)?.code == "worker.id-in-use")
        let chat = #"{"model":"fake","messages":[{"role":"user","content":"hi"}]}"#
        let reply = try await gateway.request("/v1/chat/completions", method: "POST", body: chat)
        #expect(reply.status == 200 && reply.body.contains("hello from holder"), "\(reply.body)")
        #expect(gateway.server.registry.isAdmitted("gpu-7"))
    }
}
