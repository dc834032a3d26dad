import WorkerFraming
import AttestationCore
import AuditLog
import GatewayState
import Foundation
import Gateway
import NIOCore
import NIOPosix
import Sealing
import TestSupport
import Testing
import WorkerAgent
import WorkerProtocol

/// The attested path end to end, on real swtpm instances: admission, sealed requests,
/// rejection of unmeasured engines, replayed or transplanted quotes, and worker failure.
@Suite(.serialized) struct AdmissionFlowTests {
    static let engine = Data("engine build 1.0 — the audited binary".utf8)
    static let model = Data("model weights v1".utf8)
    static let chat = #"{"model":"fake","messages":[{"role":"user","content":"hi"}]}"#
    static let streamingChat = #"{"model":"fake","stream":true,"messages":[{"role":"user","content":"hi"}]}"#

    @Test func allowedWorkerServesPlainAndStreamingCompletions() async throws {
        let gateway = try await GatewayHarness(policy: GatewayHarness.policy(engine: Self.engine, model: Self.model))
        let engine = try await FakeEngine(name: "w1")
        let worker = try await TestWorker(
            id: "w1", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: engine.port,
            engine: Self.engine, model: Self.model)
        defer {
            Teardown.after {
                await worker.stop(); await engine.stop(); await gateway.stop()
            }
        }
        guard case .success = await worker.admitted() else { Issue.record("not admitted"); return }

        let models = try await gateway.request("/v1/models")
        #expect(models.status == 200)
        #expect(models.body.contains("\"id\":\"fake\""))
        let plain = try await gateway.request("/v1/chat/completions", method: "POST", body: Self.chat)
        #expect(plain.status == 200)
        #expect(plain.body.contains("hello from w1"))
        let stream = try await gateway.request("/v1/chat/completions", method: "POST", body: Self.streamingChat)
        #expect(stream.status == 200)
        #expect(stream.body.contains("w1-0") && stream.body.contains("w1-4") && stream.body.contains("[DONE]"))
        #expect(engine.requestCount == 2)

        let events = try gateway.auditEvents()
        #expect(events.contains { $0["event"] as? String == "admission" && $0["decision"] as? String == "admit" })
        #expect(events.contains { $0["event"] as? String == "session-key" })
        let chain = try await gateway.verifiedChain()
        #expect(chain.entries >= 4 && chain.unsignedTail == 0)
    }

    /// Threat: a worker running a modified engine. One changed byte and it is rejected, audited,
    /// and never sees a prompt.
    @Test func engineDifferingByOneByteIsRejected() async throws {
        let gateway = try await GatewayHarness(policy: GatewayHarness.policy(engine: Self.engine, model: Self.model))
        let engine = try await FakeEngine(name: "evil")
        var tampered = Self.engine
        tampered[tampered.count - 1] ^= 0x01
        let worker = try await TestWorker(
            id: "evil", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: engine.port,
            engine: tampered, model: Self.model)
        defer {
            Teardown.after {
                await worker.stop(); await engine.stop(); await gateway.stop()
            }
        }
        let outcome = await worker.admitted()
        guard case .failure(let error) = outcome, let rejected = error as? WorkerRejected else {
            Issue.record("expected a rejection, got \(outcome)")
            return
        }
        #expect(rejected.code == "policy.measurement-not-allowed")
        let response = try await gateway.request("/v1/chat/completions", method: "POST", body: Self.chat)
        #expect(response.status == 404)
        #expect(engine.requestCount == 0)
        let events = try gateway.auditEvents()
        #expect(
            events.contains {
                $0["decision"] as? String == "reject"
                    && ($0["reasons"] as? [String])?.first == "policy.measurement-not-allowed"
            })
    }

    /// Threats: a replayed quote (bound to an old nonce) and a quote bound to another worker's key.
    @Test func replayedAndTransplantedQuotesAreRejected() async throws {
        let gateway = try await GatewayHarness(policy: GatewayHarness.policy(engine: Self.engine, model: Self.model))
        let tpm = try await Swtpm.start()
        defer { tpm.stop() }
        let (attestor, _) = try measuredAttestor(on: tpm, engine: Self.engine, model: Self.model)
        defer { Teardown.after { await gateway.stop() } }

        let ourKey = WorkerKEMKey()
        // 1. Old nonce: a quote made for an earlier challenge.
        let oldNonce = Data(repeating: 0x11, count: 32)
        let replayed = try await attestor.evidence(
            binding: attestationBinding(nonce: oldNonce, workerPublicKeys: ourKey.publicKeyBytes))
        let first = try await RawWorker.handshake(port: gateway.workerPort, key: ourKey) { _ in replayed }
        guard case .rejected(let refusal) = first else {
            Issue.record("not rejected: \(first)")
            return
        }
        #expect(refusal.code == "nonce.mismatch" && refusal.signature?.count == 64)

        // 2. Fresh nonce, but bound to another worker's key.
        let otherKey = WorkerKEMKey()
        let second = try await RawWorker.handshake(port: gateway.workerPort, key: ourKey) { nonce in
            try await attestor.evidence(
                binding: attestationBinding(nonce: nonce, workerPublicKeys: otherKey.publicKeyBytes))
        }
        #expect(second.rejectionCode == "nonce.mismatch")

        // 3. The honest answer is admitted.
        let third = try await RawWorker.handshake(
            port: gateway.workerPort, key: ourKey,
            answer: { nonce in
                try await attestor.evidence(
                    binding: attestationBinding(nonce: nonce, workerPublicKeys: ourKey.publicKeyBytes))
            }, activate: { try await attestor.activateCredential($0) })
        guard case .admitted = third else { Issue.record("honest evidence was not admitted: \(third)"); return }
    }

    /// A worker dying mid-stream: the client gets a clean error event; the next request goes to
    /// the healthy worker.
    @Test func workerKilledMidStreamFailsCleanlyAndTrafficMovesOn() async throws {
        let gateway = try await GatewayHarness(policy: GatewayHarness.policy(engine: Self.engine, model: Self.model))
        let slow = try await FakeEngine(name: "slow", chunks: 50, chunkDelay: .milliseconds(100))
        let healthy = try await FakeEngine(name: "healthy")
        let a = try await TestWorker(
            id: "a-slow", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: slow.port,
            engine: Self.engine, model: Self.model
        )
        guard case .success = await a.admitted() else { Issue.record("a not admitted"); return }
        defer {
            Teardown.after {
                await a.stop(); await slow.stop(); await healthy.stop(); await gateway.stop()
            }
        }

        // Only worker a is admitted: the stream goes to it; kill a while it streams.
        async let streamed = Task.detached {
            try await gateway.request("/v1/chat/completions", method: "POST", body: Self.streamingChat)
        }.value
        // Kill a once it streams (the engine has written chunks, and a moment has passed for the
        // first to reach the client): a fixed delay is not enough on a loaded machine.
        let deadline = Date() + 60
        while slow.chunksSent < 3, Date() < deadline { try await Task.sleep(for: .milliseconds(50)) }
        try await Task.sleep(for: .seconds(1))
        a.kill()
        let result = try await streamed
        #expect(result.status == 200)
        #expect(result.body.contains("slow-0"))
        #expect(result.body.contains("\"code\":\"worker_failed\""))
        #expect(!result.body.contains("[DONE]"))

        let b = try await TestWorker(
            id: "b-healthy", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: healthy.port,
            engine: Self.engine,
            model: Self.model)
        defer { Teardown.after { await b.stop() } }
        guard case .success = await b.admitted() else { Issue.record("b not admitted"); return }
        let next = try await gateway.request("/v1/chat/completions", method: "POST", body: Self.chat)
        #expect(next.status == 200)
        #expect(next.body.contains("hello from healthy"))
        let events = try gateway.auditEvents()
        #expect(events.contains { $0["event"] as? String == "eviction" && $0["worker"] as? String == "a-slow" })
    }

    /// A worker that fails before the first byte is replaced by another for the same request.
    @Test func failureBeforeFirstByteIsRetriedOnAnotherWorker() async throws {
        let gateway = try await GatewayHarness(policy: GatewayHarness.policy(engine: Self.engine, model: Self.model))
        let healthy = try await FakeEngine(name: "healthy")
        let deadPort = try await {
            let e = try await FakeEngine(name: "gone"); let p = e.port; await e.stop(); return p
        }()
        // Worker "a-dead" has no engine behind it (its engine port is closed): it fails before any byte.
        let dead = try await TestWorker(
            id: "a-dead", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: deadPort,
            engine: Self.engine, model: Self.model)
        let good = try await TestWorker(
            id: "b-good", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: healthy.port,
            engine: Self.engine,
            model: Self.model)
        defer {
            Teardown.after {
                await dead.stop(); await good.stop(); await healthy.stop(); await gateway.stop()
            }
        }
        guard case .success = await dead.admitted(), case .success = await good.admitted() else {
            Issue.record("not admitted"); return
        }
        // Least-loaded ties break by id, so "a-dead" is tried first every time.
        for _ in 0..<3 {
            let response = try await gateway.request("/v1/chat/completions", method: "POST", body: Self.chat)
            #expect(response.status == 200)
            #expect(response.body.contains("hello from healthy"))
        }
    }
}

/// A hand-driven worker connection, to send what an honest worker would not.
enum RawWorker {
    enum Outcome: Equatable {
        case admitted(WireMessage.Admitted)
        case rejected(WireMessage.Rejection)
        case error(WireMessage.Rejection)
        case closed

        var rejectionCode: String? {
            switch self {
            case .rejected(let r), .error(let r): r.code
            default: nil
            }
        }
        var rejectionMessage: String {
            switch self {
            case .rejected(let r), .error(let r): r.message
            default: ""
            }
        }
    }

    static func connect(port: Int) async throws -> NIOAsyncChannel<WireMessage, WireMessage> {
        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: port) {
            channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(WireFrameDecoder()))
                try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(WireFrameEncoder()))
                return try NIOAsyncChannel<WireMessage, WireMessage>(wrappingChannelSynchronously: channel)
            }
        }
    }

    /// hello → challenge → `answer(nonce)` as evidence → the gateway's verdict.
    static func handshake(
        port: Int, key: WorkerKEMKey, id: String = "raw",
        answer: @Sendable (Data) async throws -> Data,
        activate: @Sendable (WireMessage.Activate) async throws -> Data = { _ in Data() }
    ) async throws -> Outcome {
        let channel = try await connect(port: port)
        return try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(.hello(.init(workerID: id, kemPublicKey: key.publicKeyBytes, models: ["fake"])))
            var iterator = inbound.makeAsyncIterator()
            guard case .challenge(let challenge)? = try await iterator.next() else { return .closed }
            try await outbound.write(.evidence(.init(envelope: try await answer(challenge.nonce))))
            var reply = try await iterator.next()
            if case .activate(let credential)? = reply {
                try await outbound.write(.activation(.init(secret: try await activate(credential))))
                reply = try await iterator.next()
            }
            switch reply {
            case .admitted(let a)?: return .admitted(a)
            case .rejected(let r)?: return .rejected(r)
            case .error(let r)?: return .error(r)
            default: return .closed
            }
        }
    }
}
