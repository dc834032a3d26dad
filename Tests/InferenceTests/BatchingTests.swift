import Foundation
@testable import Inference
import TestSupport
import Testing

/// Continuous batching on the real model: requests running together through `ccinfer serve`'s
/// API return exactly what each returns alone, on a server whose slots may hold earlier
/// prompts, and a client that goes away frees its slot. Serialized: the tests share one server
/// and read its counters.
@Suite(.serialized) struct BatchingTests {
    static let slots = 8

    /// A server with eight slots (context 512 each) on a model of its own, for the life of the
    /// test process.
    static let server: Result<(port: Int, generator: Generator), any Error> = Result {
        let model = try Transformer(
            url: try References.environment.get().model, device: try Lavapipe.device(), contextLength: 512,
            slots: slots)
        // Prefix reuse on (one trust domain: the test), so the second round starts from slots
        // holding the first round's prompts.
        let generator = Generator(model: model, prefixReuse: true)
        let api = OpenAIServer(generator: generator, modelName: "smollm2", maxQueue: 8)
        let http = HTTPServer { request, writer in api.handle(request, writer) }
        let port = try http.bind(host: "127.0.0.1", port: 0)
        Thread.detachNewThread { http.serve() }
        return (port, generator)
    }

    /// The server, started off the cooperative pool (see ServerTests.started).
    static func started() async throws -> (port: Int, generator: Generator) {
        try await offPool { try server.get() }
    }

    static let questions = [
        "What is the capital of France?", "Name three colours.", "Why is the sky blue?",
        "Write a haiku about rain.", "What is 12 times 12?", "Give me a word that rhymes with cat.",
        "Describe a cat in one sentence.", "What do bees make?",
    ]

    static func body(_ question: String, stream: Bool) -> String {
        let escaped = question.replacingOccurrences(of: "\"", with: "\\\"")
        return #"{"model":"smollm2","messages":[{"role":"user","content":"\#(escaped)"}],"#
            + #""max_tokens":16,"temperature":0,"stream":\#(stream)}"#
    }

    func completion(_ body: String) async throws -> String {
        let port = try await Self.started().port
        let result = try await ProcessRunner.run(
            "curl",
            [
                "-s", "--max-time", "600", "-H", "Content-Type: application/json", "--data-binary", body,
                "http://127.0.0.1:\(port)/v1/chat/completions",
            ])
        return result.stdout
    }

    /// The generated text of a JSON answer or of a stream of events.
    static func text(_ answer: String) throws -> String {
        if !answer.hasPrefix("data: ") {
            let object = try JSONSerialization.jsonObject(with: Data(answer.utf8)) as? [String: Any]
            let choice = (object?["choices"] as? [[String: Any]])?.first
            return try #require((choice?["message"] as? [String: Any])?["content"] as? String, "\(answer)")
        }
        var text = ""
        for event in answer.components(separatedBy: "\n\n") where event.hasPrefix("data: {") {
            let object = try JSONSerialization.jsonObject(with: Data(event.dropFirst(6).utf8)) as? [String: Any]
            for choice in (object?["choices"] as? [[String: Any]]) ?? [] {
                text += ((choice["delta"] as? [String: Any])?["content"] as? String) ?? ""
            }
        }
        return text
    }

    /// Each question alone on a one-slot engine (the shared model), then all eight at once
    /// through the eight-slot server, twice (the second time every slot holds a prompt from the
    /// first): the same text every time, streamed or not.
    @Test func concurrentRequestsReturnWhatTheyReturnAlone() async throws {
        let generator = try await Self.started().generator
        let before = generator.stats
        var alone = [String]()
        for question in Self.questions {
            alone.append(try await Self.aloneOnSharedModel(question))
        }
        #expect(Set(alone).count > 1, "the questions should not all get the same answer")
        for round in 0..<2 {
            let answers = try await withThrowingTaskGroup(of: (Int, String).self) { group in
                for (i, question) in Self.questions.enumerated() {
                    group.addTask { (i, try await completion(Self.body(question, stream: (i + round) % 2 == 0))) }
                }
                var answers = [String](repeating: "", count: Self.questions.count)
                for try await (i, answer) in group { answers[i] = try Self.text(answer) }
                return answers
            }
            for i in Self.questions.indices {
                #expect(answers[i] == alone[i], "round \(round), question \(i): \(answers[i]) vs alone \(alone[i])")
            }
        }
        let stats = generator.stats
        #expect(stats.peakBatch >= 2, "requests should have shared steps: \(stats)")
        #expect(stats.running == 0 && stats.waiting == 0)
        #expect(stats.reusedPromptTokens > before.reusedPromptTokens, "the second round reused cached prompts")
    }

    /// The greedy answer on the shared one-slot model, through the same template and API
    /// parsing as the server.
    static func aloneOnSharedModel(_ question: String) async throws -> String {
        try await SharedModel.run { model in
            let generator = Generator(model: model)
            let api = OpenAIServer(generator: generator, modelName: "smollm2")
            let parsed = try api.parse(Data(body(question, stream: false).utf8), chat: true)
            return try generator.generate(prompt: parsed.prompt, parameters: parsed.parameters).text
        }
    }

    /// A streaming client that disconnects after its first event, and a non-streaming one that
    /// disconnects while waiting: each generation stops and its slot is free again, long before
    /// its 400 tokens.
    @Test func disconnectedClientsFreeTheirSlots() async throws {
        let (port, generator) = try await Self.started()
        let before = generator.stats.cancelled
        for stream in [true, false] {
            // A prompt the model continues for all its 400 tokens (it counts on).
            let body =
                #"{"model":"smollm2","prompt":"1, 2, 3, 4, 5, 6, 7, 8, 9, 10,","#
                + #""max_tokens":400,"temperature":0,"stream":\#(stream)}"#
            let request =
                "POST /v1/completions HTTP/1.1\r\nContent-Type: application/json\r\n"
                + "Content-Length: \(body.utf8.count)\r\n\r\n" + body
            _ = try await RawSocket.exchange(
                port: port, send: Data(request.utf8), halfClose: false, readUntil: stream ? "data: " : nil,
                giveUpAfter: stream ? 60 : 2)
        }
        let freed = await eventually(120) {
            let stats = generator.stats
            return stats.cancelled == before + 2 && stats.running == 0 && stats.waiting == 0
        }
        #expect(freed, "\(generator.stats)")
    }

    /// Threat to determinism: positions reused that were computed in another summation order.
    /// A slot holds a 513-token prompt, whose last position is alone in its micro-batch (the
    /// one-token order); a 600-token prompt starting with the same 513 tokens computes position
    /// 512 in the prompt order, so only 512 positions may be reused — and its greedy tokens are
    /// those of a fresh evaluation. (F16 weights: their products depend on the order.)
    @Test func reuseStopsWhereTheOrderDiffers() async throws {
        let env = try References.environment.get()
        let dir = try TemporaryDirectory("reuse")
        let url = dir.file("tiny.gguf")
        try await offPool {
            try SyntheticModel.make(architecture: "llama", weights: .f16, tokenizerFrom: GGUFFile(url: env.model))
                .write(to: url)
        }
        let first = (0..<513).map { 100 + ($0 * 37) % 5000 }
        let second = first + (0..<87).map { 7000 + $0 }
        let (kept, fresh, reused, counted) = try await SharedModel.queue.run {
            let model = try Transformer(url: url, device: try Lavapipe.device(), contextLength: 1024)
            let parameters = SamplingParameters(temperature: 0, maxTokens: 8)
            let fresh = try Generator(model: model).generate(prompt: second, parameters: parameters).tokens
            model.truncate(to: 0)
            _ = try model.evaluate(first)
            let kept = model.reusablePrefix(slot: 0, prompt: second)
            let generator = Generator(model: model, prefixReuse: true)
            let reused = try generator.generate(prompt: second, parameters: parameters).tokens
            return (kept, fresh, reused, generator.stats.reusedPromptTokens)
        }
        #expect(kept == 512, "position 512 was computed in the one-token order")
        #expect(counted == 512)
        #expect(reused == fresh && fresh.count == 8)
    }

    /// Without prefix reuse (the default) a slot's earlier prompt is never a head start.
    @Test func noReuseByDefault() async throws {
        let prompt = [1, 2, 3, 4, 5, 6, 7, 8]
        let counted = try await SharedModel.run { model in
            let generator = Generator(model: model)
            for _ in 0..<2 {
                _ = try generator.generate(prompt: prompt, parameters: SamplingParameters(temperature: 0, maxTokens: 2))
            }
            return generator.stats.reusedPromptTokens
        }
        #expect(counted == 0)
    }

    @Test func promptOrdersFollowMicroBatches() {
        #expect(Transformer.promptOrders(count: 1) == [0])
        #expect(Transformer.promptOrders(count: 3) == [4, 4, 4])
        let long = Transformer.promptOrders(count: Transformer.microBatch + 1)
        #expect(long.prefix(Transformer.microBatch).allSatisfy { $0 == 4 } && long.last == 0)
        let chunks = Transformer.chunks(Array(0..<10), orders: [4, 4, 4, 4, 4, 0, 4, 4, 4, 4], limit: 3)
        #expect(chunks.map(\.tokens) == [[0, 1, 2], [3, 4], [5], [6, 7, 8], [9]])
        #expect(chunks.map(\.order) == [4, 4, 0, 4, 4])
    }
}
