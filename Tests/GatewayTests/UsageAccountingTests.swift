import Foundation
import Gateway
import GatewayState
import TestSupport
import Testing
import WorkerProtocol

/// How the gateway counts a request when the engine's counts are missing, hostile or asked for
/// in a second spelling, and how the stream filter treats events.
@Suite(.serialized) struct UsageAccountingTests {
    static let engine = Data("accounting engine 1.0".utf8)
    static let model = Data("accounting model v1".utf8)

    static func gateway(usageText: String? = nil, chunks: Int = 5, chunkDelay: Duration = .milliseconds(5)) async throws
        -> (GatewayHarness, FakeEngine, TestWorker)
    {
        let gateway = try await GatewayHarness(policy: GatewayHarness.policy(engine: engine, model: model)) {
            $0.adminPort = 0
        }
        let fake = try await FakeEngine(
            name: "acc", chunks: chunks, chunkDelay: chunkDelay, reportsUsage: true, usageText: usageText)
        let worker = try await TestWorker(
            id: "acc-1", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: fake.port,
            engine: engine, model: model)
        guard case .success = await worker.admitted() else { throw StoreError("the worker was not admitted") }
        return (gateway, fake, worker)
    }

    static func rows(_ gateway: GatewayHarness) async throws -> [UsageRecord] {
        await gateway.server.ledger.flush()
        var out = [UsageRecord]()
        try gateway.server.store.usage(UsageQuery()) {
            out.append($0); return true
        }
        return out
    }

    /// Threat: a worker reporting counts built to overflow (Int.max) or inflated past what the
    /// bytes allow. The gateway keeps serving; the first is no count (estimated), the second capped.
    @Test func hostileCountsAreEstimatedOrCappedNeverACrash() async throws {
        let (gateway, fake, worker) = try await Self.gateway(
            usageText: #"{"prompt_tokens":1,"total_tokens":-9223372036854775807}"#)
        defer {
            Task {
                await worker.stop(); await fake.stop(); await gateway.stop()
            }
        }
        let answer = try await ClientKeyTests.chat(gateway, key: gateway.apiKey, tag: "[overflow]")
        #expect(answer.status == 200)
        let stream = try await ClientKeyTests.chat(gateway, key: gateway.apiKey, tag: "[overflow-s]", stream: true)
        #expect(stream.status == 200)
        let rows = try await Self.rows(gateway)
        #expect(rows.count == 2)
        #expect(rows.allSatisfy { $0.source == "estimated" }, "\(rows.map(\.source))")

        let (g2, f2, w2) = try await Self.gateway(
            usageText: #"{"prompt_tokens":900000000,"completion_tokens":900000000}"#)
        defer {
            Task {
                await w2.stop(); await f2.stop(); await g2.stop()
            }
        }
        let inflated = try await ClientKeyTests.chat(g2, key: g2.apiKey, tag: "[inflated]")
        #expect(inflated.status == 200)
        let capped = try await Self.rows(g2)
        #expect(capped.count == 1)
        #expect(capped.first?.source == "capped")
        #expect((capped.first?.promptTokens ?? .max) < 10_000 && (capped.first?.completionTokens ?? .max) < 10_000)
    }

    /// Threat: a client leaving a stream before its counts arrive, to use tokens unrecorded: the
    /// request is recorded, estimated from what was sent (at least one token per event).
    @Test func aClientLeavingMidStreamIsStillCounted() async throws {
        let (gateway, fake, worker) = try await Self.gateway(chunks: 200, chunkDelay: .milliseconds(50))
        defer {
            Task {
                await worker.stop(); await fake.stop(); await gateway.stop()
            }
        }
        let body = #"{"model":"fake","messages":[{"role":"user","content":"long [cut]"}],"stream":true}"#
        _ = try await ProcessRunner.run(
            "curl",
            [
                "-s", "-N", "--max-time", "3", "-X", "POST", gateway.baseURL + "/v1/chat/completions", "-H",
                "Authorization: Bearer \(gateway.apiKey)", "-H", "Content-Type: application/json", "--data-binary",
                body,
            ])
        var rows = [UsageRecord]()
        for _ in 0..<100 {
            rows = try await Self.rows(gateway)
            if !rows.isEmpty { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(rows.count == 1, "the cut stream left no ledger row")
        #expect(rows.first?.source == "estimated")
        #expect((rows.first?.completionTokens ?? 0) >= 1)
        #expect(rows.first?.promptTokens == body.utf8.count, "the estimate is a token per request byte")
    }

    /// A stream flag engines would coerce, and stream options named twice, are refused.
    @Test func ambiguousStreamFlagsAreRefused() async throws {
        let (gateway, fake, worker) = try await Self.gateway()
        defer {
            Task {
                await worker.stop(); await fake.stop(); await gateway.stop()
            }
        }
        let numeric = try await gateway.request(
            "/v1/chat/completions", method: "POST",
            body: #"{"model":"fake","messages":[{"role":"user","content":"x"}],"stream":1}"#)
        #expect(numeric.status == 400 && numeric.body.contains("invalid_stream"), "\(numeric.body)")
        let twice = try await gateway.request(
            "/v1/chat/completions", method: "POST",
            body:
                #"{"model":"fake","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":false},"stream_options":{}}"#
        )
        #expect(twice.status == 400 && twice.body.contains("invalid_stream_options"), "\(twice.body)")
        let inner = try await gateway.request(
            "/v1/chat/completions", method: "POST",
            body:
                #"{"model":"fake","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":false,"include_usage":false}}"#
        )
        #expect(inner.status == 400 && inner.body.contains("invalid_stream_options"), "\(inner.body)")
        #expect(fake.requestCount == 0, "an ambiguous request reached the engine")
        // Error answers carry the request's ids too.
        let refused = try await ClientKeyTests.chat(gateway, key: "not-a-key", tag: "[refused]")
        #expect(refused.status == 401)
        #expect(refused.headers["x-request-id"]?.count == 36, "\(refused.headers)")
        #expect(refused.headers["ccgate-request-id"] == refused.headers["x-request-id"])
    }

    /// The filter passes every event but the usage one, byte for byte, whatever the chunking and
    /// line ends; the engine's body asks for usage exactly once.
    @Test func theUsageEventIsTakenOutAndNothingElse() throws {
        let events = [
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"usage\\\":{\"}}]}\r\n\r\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n",
        ]
        let whole = Data(events.joined().utf8)
        let expected = Data((events[0] + events[1] + events[3]).utf8)
        for size in [1, 2, 3, 7, 64, whole.count] {
            var filter = UsageEventFilter()
            var out = Data()
            for start in stride(from: 0, to: whole.count, by: size) {
                out += filter.pass(whole.subdata(in: start..<min(start + size, whole.count)))
            }
            out += filter.finish()
            #expect(out == expected, "chunks of \(size)")
            #expect(filter.scan.usage?.promptTokens == 3 && filter.scan.usage?.completionTokens == 2)
        }
        let asked = try StreamUsage.requestingUsage(Data(#"{"model":"m","stream":true,"stream_options":{}}"#.utf8))
        #expect(
            asked.map { String(decoding: $0, as: UTF8.self) }
                == #"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#)
        let turned = try StreamUsage.requestingUsage(
            Data(#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#.utf8))
        #expect(
            turned.map { String(decoding: $0, as: UTF8.self) }
                == #"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#)
        #expect(try StreamUsage.requestingUsage(Data(#"{"model":"m","stream":false}"#.utf8)) == nil)
        // Python's json writes a space after the colon: still counted.
        #expect(
            UsageScan.usage(inJSON: Data(#"{"usage": {"prompt_tokens": 2, "completion_tokens": 1}}"#.utf8))?
                .promptTokens == 2)
    }
}

/// A worker's 429 or 503 before the first byte goes to another worker; with no other, the client
/// gets it as it is.
@Suite(.serialized) struct BusyWorkerTests {
    @Test func aBusyWorkersAnswerIsRetriedOnAnother() async throws {
        let engine = UsageAccountingTests.engine, model = UsageAccountingTests.model
        let gateway = try await GatewayHarness(policy: GatewayHarness.policy(engine: engine, model: model))
        let busy = try await FakeEngine(name: "busy", status: 429)
        let fine = try await FakeEngine(name: "fine")
        let first = try await TestWorker(
            id: "a-busy", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: busy.port,
            engine: engine, model: model)
        defer {
            Task {
                await first.stop(); await busy.stop(); await fine.stop(); await gateway.stop()
            }
        }
        guard case .success = await first.admitted() else { Issue.record("not admitted"); return }
        // Alone, the busy worker's answer is the client's.
        let alone = try await ClientKeyTests.chat(gateway, key: gateway.apiKey, tag: "[alone]")
        #expect(alone.status == 429, "\(alone.body)")
        let second = try await TestWorker(
            id: "b-fine", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: fine.port,
            engine: engine, model: model)
        defer { Task { await second.stop() } }
        guard case .success = await second.admitted() else { Issue.record("not admitted"); return }
        let before = busy.requestCount
        for i in 0..<6 {
            let answer = try await ClientKeyTests.chat(gateway, key: gateway.apiKey, tag: "[retry-\(i)]")
            #expect(answer.status == 200, "\(answer.body)")
            #expect(answer.headers["ccgate-worker"] == "b-fine")
        }
        #expect(busy.requestCount > before, "the busy worker was never tried first")
    }
}
