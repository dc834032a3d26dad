import AttestationCore
import Foundation
import NIOCore
import NIOPosix
import Sealing
import Synchronization
import TONKit
import TestSupport
import Testing
import WorkerAgent
import WorkerProtocol

/// Must show: the worker talks only to the gateway it pins. A gateway with another key gets no
/// quote and no proof; after admission a challenge injected in the clear by the network (here a
/// real man in the middle replaying the gateway's own signed admission challenge) is refused
/// without a quote; the gateway's own re-attestation challenges and evictions arrive sealed.
@Suite(.serialized) struct WorkerLinkAuthenticationTests {
    @Test func aWorkerPinnedToAnotherKeyNeverQuotesNorProves() async throws {
        let gateway = try await GatewayHarness(
            policy: GatewayHarness.policy(engine: AdmissionFlowTests.engine, model: AdmissionFlowTests.model))
        let engine = try await FakeEngine(name: "pinned")
        let quotes = CountingSource.Count()
        let provider = GatewayClient.ProviderIdentity(
            wallet: try TONAddress.parseRaw("0:" + String(repeating: "ab", count: 32)), key: .generate())
        let elsewhere = GatewayKeyPin(key: Ed25519PrivateKey.generate().publicKey)
        let worker = try await TestWorker(
            id: "pinned-elsewhere", gatewayPort: gateway.workerPort, gatewayKey: elsewhere, enginePort: engine.port,
            engine: AdmissionFlowTests.engine, model: AdmissionFlowTests.model, provider: provider,
            attestor: { CountingSource(inner: $0, count: quotes) })
        defer {
            Teardown.after {
                await worker.stop(); await engine.stop(); await gateway.stop()
            }
        }
        let ending = await worker.outcome() as? WorkerRejected
        #expect(ending?.code == ProtocolErrorCode.gatewayKeyMismatch.rawValue, "\(String(describing: ending))")
        #expect(ending?.authenticated == false)
        #expect(quotes.evidence == 0 && quotes.activations == 0, "the worker quoted for an unpinned gateway")
        // Nothing reached the gateway: no evidence, so no admission entry of any kind.
        try await gateway.server.audit.checkpoint()
        #expect(try gateway.auditEvents().allSatisfy { $0["event"] as? String != "admission" })
    }

    @Test func aPlaintextChallengeInjectedAfterAdmissionIsRefused() async throws {
        let gateway = try await GatewayHarness(
            policy: GatewayHarness.policy(engine: AdmissionFlowTests.engine, model: AdmissionFlowTests.model))
        let engine = try await FakeEngine(name: "mitm")
        let proxy = try await FrameProxy(upstreamPort: gateway.workerPort)
        let quotes = CountingSource.Count()
        let worker = try await TestWorker(
            id: "behind-mitm", gatewayPort: proxy.port, gatewayKey: gateway.pin, enginePort: engine.port,
            engine: AdmissionFlowTests.engine, model: AdmissionFlowTests.model,
            attestor: { CountingSource(inner: $0, count: quotes) })
        defer {
            Teardown.after {
                await worker.stop(); await engine.stop(); await proxy.stop(); await gateway.stop()
            }
        }
        // The proxy passes the real handshake through: admitted, and served.
        guard case .success = await worker.admitted() else {
            Issue.record("not admitted through a transparent proxy")
            return
        }
        let served = try await gateway.request("/v1/chat/completions", method: "POST", body: AdmissionFlowTests.chat)
        #expect(served.status == 200)
        #expect(quotes.evidence == 1)

        // The gateway's own signed challenge, replayed in the clear into the admitted session.
        let replayed = try #require(proxy.firstFrameToWorker())
        guard case .challenge = try WireMessage(frameBody: replayed.dropFirst(4)) else {
            Issue.record("the first frame to the worker was not the challenge")
            return
        }
        proxy.injectToWorker(replayed)
        let ending = await worker.outcome() as? WorkerRejected
        #expect(ending?.code == ProtocolErrorCode.gatewayUnauthenticated.rawValue, "\(String(describing: ending))")
        #expect(quotes.evidence == 1, "the worker quoted for an injected challenge")
    }

    @Test func reattestationAndEvictionTravelSealed() async throws {
        let gateway = try await GatewayHarness(
            policy: GatewayHarness.policy(engine: AdmissionFlowTests.engine, model: AdmissionFlowTests.model),
            reattest: .seconds(1), adjust: { $0.adminPort = 0 })
        let engine = try await FakeEngine(name: "sealed")
        let proxy = try await FrameProxy(upstreamPort: gateway.workerPort)
        let worker = try await TestWorker(
            id: "sealed", gatewayPort: proxy.port, gatewayKey: gateway.pin, enginePort: engine.port,
            engine: AdmissionFlowTests.engine, model: AdmissionFlowTests.model)
        defer {
            Teardown.after {
                await worker.stop(); await engine.stop(); await proxy.stop(); await gateway.stop()
            }
        }
        var events = worker.events.makeAsyncIterator()
        while let event = await events.next() {
            if case .reattested = event { break }
        }
        let evicted = try await gateway.admin("/v1/admin/workers/sealed/evict", method: "POST")
        #expect(evicted.status == 200)
        let ending = await worker.outcome() as? WorkerRejected
        // The worker heard why, from the gateway: an authenticated, final end.
        #expect(ending?.code == ProtocolErrorCode.adminEvicted.rawValue && ending?.authenticated == true)
        // After the handshake, every frame the gateway sent was sealed.
        let types = proxy.framesToWorker().compactMap {
            try? WireMessage(frameBody: $0.dropFirst(4))
        }
        .map(\.typeName)
        #expect(Array(types.prefix(3)) == ["challenge", "activate", "admitted"], "\(types)")
        #expect(types.count > 4 && types.dropFirst(3).allSatisfy { $0 == "sealed" }, "\(types)")
    }
}

/// Counts what the worker's TPM was asked to do.
struct CountingSource: EvidenceSource {
    final class Count: Sendable {
        let counts = Mutex((evidence: 0, activations: 0))
        var evidence: Int { counts.withLock { $0.evidence } }
        var activations: Int { counts.withLock { $0.activations } }
    }
    let inner: any EvidenceSource
    let count: Count

    func evidence(binding: Data) async throws -> Data {
        count.counts.withLock { $0.evidence += 1 }
        return try await inner.evidence(binding: binding)
    }

    func activateCredential(_ challenge: WireMessage.Activate) async throws -> Data {
        count.counts.withLock { $0.activations += 1 }
        return try await inner.activateCredential(challenge)
    }
}

/// A man in the middle on loopback: relays bytes between one worker and the gateway, records
/// what the gateway sends, and can write bytes of its own toward the worker.
final class FrameProxy: Sendable {
    typealias Bytes = NIOAsyncChannel<ByteBuffer, ByteBuffer>
    final class Recorder: Sendable {
        let toWorker = Mutex(Data())
        let workerChannel = Mutex<(any Channel)?>(nil)
    }
    let port: Int
    private let server: NIOAsyncChannel<Bytes, Never>
    private let task: Task<Void, any Error>
    private let recorder = Recorder()

    init(upstreamPort: Int) async throws {
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: "127.0.0.1", port: 0) { channel in
                channel.eventLoop.makeCompletedFuture { try Bytes(wrappingChannelSynchronously: channel) }
            }
        self.server = server
        port = server.channel.localAddress?.port ?? 0
        let recorder = recorder
        task = Task {
            try await server.executeThenClose { inbound in
                try await withThrowingDiscardingTaskGroup { group in
                    for try await client in inbound {
                        group.addTask { try? await Self.relay(client, upstreamPort: upstreamPort, recorder) }
                    }
                }
            }
        }
    }

    static func relay(_ client: Bytes, upstreamPort: Int, _ recorder: Recorder) async throws {
        recorder.workerChannel.withLock { $0 = client.channel }
        let upstream = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: upstreamPort) { channel in
                channel.eventLoop.makeCompletedFuture { try Bytes(wrappingChannelSynchronously: channel) }
            }
        try await client.executeThenClose { clientIn, clientOut in
            try await upstream.executeThenClose { upIn, upOut in
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { for try await bytes in clientIn { try await upOut.write(bytes) } }
                    group.addTask {
                        for try await bytes in upIn {
                            recorder.toWorker.withLock { $0.append(contentsOf: bytes.readableBytesView) }
                            try await clientOut.write(bytes)
                        }
                    }
                    try await group.next()
                    group.cancelAll()
                }
            }
        }
    }

    /// The frames the gateway sent so far (length prefix included).
    func framesToWorker() -> [Data] {
        var bytes = recorder.toWorker.withLock { $0 }
        var frames = [Data]()
        while bytes.count >= 4 {
            let length = bytes.prefix(4).reduce(0) { $0 << 8 | Int($1) }
            guard bytes.count >= 4 + length else { break }
            frames.append(Data(bytes.prefix(4 + length)))
            bytes = Data(bytes.dropFirst(4 + length))
        }
        return frames
    }

    func firstFrameToWorker() -> Data? { framesToWorker().first }

    /// Writes `bytes` to the worker as if the gateway had sent them.
    func injectToWorker(_ bytes: Data) {
        guard let channel = recorder.workerChannel.withLock({ $0 }) else { return }
        channel.writeAndFlush(ByteBuffer(bytes: bytes), promise: nil)
    }

    func stop() async {
        task.cancel()
        try? await server.channel.close()
    }
}
