import WorkerFraming
import AttestationCore
import Foundation
import Gateway
import NIOCore
import NIOPosix
import Sealing
import TestSupport
import Testing
import WorkerAgent
import WorkerProtocol

/// Hostile input on both doors: each gets a clean, coded error, and the gateway keeps serving
/// the admitted worker throughout.
@Suite(.serialized) struct HostileInputTests {
    static let engine = AdmissionFlowTests.engine
    static let model = AdmissionFlowTests.model

    /// Sends raw bytes to the worker port; returns what the gateway answered before closing.
    static func raw(_ bytes: Data, port: Int, halfClose: Bool = true, timeout seconds: Int = 15) throws -> Data {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        precondition(fd >= 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard rc == 0 else { throw CancellationError() }
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if halfClose { shutdown(fd, Int32(SHUT_WR)) }
        var out = Data()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            out.append(contentsOf: buffer[0..<n])
        }
        return out
    }

    /// ``raw(_:port:halfClose:timeout:)`` for async tests: the blocking socket calls on a thread of
    /// their own, so that the in-process gateway they talk to keeps the cooperative pool.
    /// (The answer may wait for minutes on a loaded machine: what is checked is the answer.)
    static func exchange(_ bytes: Data, port: Int) async throws -> Data {
        try await onOwnThread { try raw(bytes, port: port, timeout: 120) }
    }

    /// Decodes the frames in a byte string.
    static func frames(_ data: Data) -> [WireMessage] {
        var messages = [WireMessage]()
        var offset = 0
        let bytes = [UInt8](data)
        while offset + 4 <= bytes.count {
            let length =
                Int(bytes[offset]) << 24 | Int(bytes[offset + 1]) << 16 | Int(bytes[offset + 2]) << 8
                | Int(bytes[offset + 3])
            guard offset + 4 + length <= bytes.count,
                let message = try? WireMessage(frameBody: bytes[(offset + 4)..<(offset + 4 + length)])
            else { break }
            messages.append(message)
            offset += 4 + length
        }
        return messages
    }

    static func errorCode(_ data: Data) -> String? {
        for message in frames(data) {
            if case .error(let e) = message { return e.code }
            if case .rejected(let e) = message { return e.code }
        }
        return nil
    }

    @Test func garbageOnTheWorkerPortGetsCodedErrorsAndServiceContinues() async throws {
        let gateway = try await GatewayHarness(policy: GatewayHarness.policy(engine: Self.engine, model: Self.model))
        let engine = try await FakeEngine(name: "w")
        let worker = try await TestWorker(
            id: "w", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: engine.port,
            engine: Self.engine, model: Self.model)
        defer {
            Teardown.after {
                await worker.stop(); await engine.stop(); await gateway.stop()
            }
        }
        guard case .success = await worker.admitted() else { Issue.record("not admitted"); return }

        let hello = try WireMessage.hello(.init(workerID: "x", kemPublicKey: Data(count: 32), models: ["fake"])).frame()
        var rng = SeededRandom(seed: 42)
        let cases: [(String, Data, String?)] = [
            ("random bytes", Data(rng.bytes(300)), nil),
            ("JSON garbage frame", Data([0, 0, 0, 5]) + Data("{{{{{".utf8), ProtocolErrorCode.malformedFrame.rawValue),
            (
                "unknown type", Data([0, 0, 0, 13]) + Data(#"{"type":"zz"}"#.utf8),
                ProtocolErrorCode.malformedFrame.rawValue
            ),
            ("zero-length frame", Data([0, 0, 0, 0]), ProtocolErrorCode.malformedFrame.rawValue),
            (
                "oversized length", Data([0x7f, 0xff, 0xff, 0xff]) + Data(rng.bytes(64)),
                ProtocolErrorCode.frameTooLarge.rawValue
            ),
            (
                "just over the limit",
                withUnsafeBytes(of: UInt32(WireFrameDecoder.maxFrameSize + 1).bigEndian) { Data($0) },
                ProtocolErrorCode.frameTooLarge.rawValue
            ),
            ("truncated frame", Data(hello.prefix(hello.count - 3)), ProtocolErrorCode.malformedFrame.rawValue),
            (
                "evidence before hello", try WireMessage.evidence(.init(envelope: Data("{}".utf8))).frame(),
                ProtocolErrorCode.unexpectedMessage.rawValue
            ),
            (
                "bad hello key",
                try WireMessage.hello(.init(workerID: "x", kemPublicKey: Data(count: 3), models: ["m"])).frame(),
                ProtocolErrorCode.badHello.rawValue
            ),
            (
                "bad hello id",
                try WireMessage.hello(.init(workerID: "../../etc", kemPublicKey: Data(count: 32), models: ["m"]))
                    .frame(), ProtocolErrorCode.badHello.rawValue
            ),
            (
                "garbage evidence", hello + (try WireMessage.evidence(.init(envelope: Data(rng.bytes(500)))).frame()),
                "evidence.malformed"
            ),
            (
                "sealed before admission", hello + (try WireMessage.sealed(Data(rng.bytes(40))).frame()),
                ProtocolErrorCode.unexpectedMessage.rawValue
            ),
            (
                // A sealed message has one form, the binary frame: its JSON form is malformed.
                "JSON sealed frame", Data([0, 0, 0, 43]) + Data(#"{"type":"sealed","body":{"box":"AAECAw=="}}"#.utf8),
                ProtocolErrorCode.malformedFrame.rawValue
            ),
        ]
        for (name, bytes, expected) in cases {
            let answer = try await Self.exchange(bytes, port: gateway.workerPort)
            if let expected {
                #expect(Self.errorCode(answer) == expected, "\(name): \(Self.frames(answer))")
            } else {
                #expect(Self.frames(answer).allSatisfy { if case .error = $0 { true } else { false } }, "\(name)")
            }
            // The admitted worker keeps serving.
            let response = try await gateway.request(
                "/v1/chat/completions", method: "POST", body: AdmissionFlowTests.chat)
            #expect(response.status == 200, "after \(name)")
        }
        // A thousand random frames in a row do not take it down either.
        for _ in 0..<200 {
            let length = Int.random(in: 1...64, using: &rng)
            _ = try await Self.exchange(
                withUnsafeBytes(of: UInt32(length).bigEndian) { Data($0) } + Data(rng.bytes(length)),
                port: gateway.workerPort)
        }
        #expect(try await gateway.request("/v1/models").status == 200)
        #expect(gateway.server.registry.isAdmitted("w"))
    }

    @Test func malformedFrontDoorRequestsGetOpenAIErrors() async throws {
        let gateway = try await GatewayHarness(policy: GatewayHarness.policy(engine: Self.engine, model: Self.model))
        let engine = try await FakeEngine(name: "w")
        let worker = try await TestWorker(
            id: "w", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: engine.port,
            engine: Self.engine, model: Self.model)
        defer {
            Teardown.after {
                await worker.stop(); await engine.stop(); await gateway.stop()
            }
        }
        guard case .success = await worker.admitted() else { Issue.record("not admitted"); return }

        let dir = try TemporaryDirectory()
        try Data(repeating: UInt8(ascii: "a"), count: (1 << 20) + 10).write(to: dir.file("big"))
        let cases: [(String, String, String?, String, [String], Int)] = [
            ("no key", "/v1/models", nil, "", [], 401),
            ("wrong key", "/v1/models", nil, "wrong", [], 401),
            ("not JSON", "/v1/chat/completions", "garbage{", gateway.apiKey, [], 400),
            ("JSON array", "/v1/chat/completions", "[1,2]", gateway.apiKey, [], 400),
            ("no model", "/v1/chat/completions", #"{"messages":[]}"#, gateway.apiKey, [], 400),
            ("model not a string", "/v1/chat/completions", #"{"model":5,"messages":[]}"#, gateway.apiKey, [], 400),
            ("no messages", "/v1/chat/completions", #"{"model":"fake"}"#, gateway.apiKey, [], 400),
            ("no prompt", "/v1/completions", #"{"model":"fake"}"#, gateway.apiKey, [], 400),
            // Threat: routed under one model while the engine reads the other.
            (
                "model named twice", "/v1/chat/completions", #"{"model":"\#(Self.model)","messages":[],"model":"x"}"#,
                gateway.apiKey, [], 400
            ),
            (
                "trailing comma", "/v1/chat/completions", #"{"model":"\#(Self.model)","messages":[],}"#, gateway.apiKey,
                [], 400
            ),
            ("unknown model", "/v1/chat/completions", #"{"model":"gpt-9","messages":[]}"#, gateway.apiKey, [], 404),
            ("unknown path", "/v1/embeddings", #"{}"#, gateway.apiKey, [], 404),
            (
                "oversized body", "/v1/chat/completions", nil, gateway.apiKey,
                ["-H", "Content-Type: application/json", "--data-binary", "@" + dir.file("big").path], 413
            ),
        ]
        for (name, path, body, key, extra, status) in cases {
            let method = (body != nil || !extra.isEmpty) ? "POST" : "GET"
            let response = try await gateway.request(path, method: method, body: body, key: key, extra: extra)
            #expect(response.status == status, "\(name): \(response.body)")
            let object = try? JSONSerialization.jsonObject(with: Data(response.body.utf8)) as? [String: Any]
            let error = object?["error"] as? [String: Any]
            #expect(error?["message"] is String, "\(name): \(response.body)")
            #expect(error?["type"] is String, "\(name)")
        }
        #expect(
            try await gateway.request("/v1/chat/completions", method: "POST", body: AdmissionFlowTests.chat).status
                == 200)
        #expect(engine.requestCount == 1)
    }

    /// Threat: a worker that changes what it runs after admission. Re-attestation reports the
    /// new measurement, the policy refuses it, and the worker is evicted and gets no more prompts.
    @Test func failedReattestationEvicts() async throws {
        let gateway = try await GatewayHarness(
            policy: GatewayHarness.policy(engine: Self.engine, model: Self.model), reattest: .seconds(1))
        let engine = try await FakeEngine(name: "w")
        let tpm = try await Swtpm.start()
        let dir = try TemporaryDirectory()
        try Self.engine.write(to: dir.file("engine"))
        try Self.model.write(to: dir.file("model"))
        try Data("another model".utf8).write(to: dir.file("other-model"))
        let attestor = try Attestor(
            tcti: tpm.tcti, files: [dir.file("engine"), dir.file("model")], ekChain: try SwtpmLocalCA.shared?.chainDER)
        let (events, continuation) = AsyncStream<GatewayClient.Event>.makeStream()
        let client = GatewayClient(
            configuration: .init(
                host: "127.0.0.1", port: gateway.workerPort, gatewayKey: gateway.pin, workerID: "drifter",
                models: ["fake"]),
            attestor: attestor, engine: EngineClient(port: engine.port), onEvent: { continuation.yield($0) })
        let task = Task { try await client.runOnce() }
        defer {
            Teardown.after {
                task.cancel(); tpm.stop(); await engine.stop(); await gateway.stop()
            }
        }
        var iterator = events.makeAsyncIterator()
        while let event = await iterator.next() {
            if case .reattested = event { break }
        }
        #expect(
            try await gateway.request("/v1/chat/completions", method: "POST", body: AdmissionFlowTests.chat).status
                == 200)
        try await attestor.measure(dir.file("other-model"))
        let outcome: (any Error)? = await { do { try await task.value; return nil } catch { return error } }()
        #expect((outcome as? WorkerRejected)?.code == "policy.measurement-not-allowed")
        #expect(!gateway.server.registry.isAdmitted("drifter"))
        let after = try await gateway.request("/v1/chat/completions", method: "POST", body: AdmissionFlowTests.chat)
        #expect(after.status == 404)
        #expect(engine.requestCount == 1)
        let events2 = try gateway.auditEvents()
        #expect(events2.contains { $0["event"] as? String == "reattestation" && $0["decision"] as? String == "fail" })
        #expect(events2.contains { $0["event"] as? String == "eviction" && $0["worker"] as? String == "drifter" })
    }
}
