import Foundation

/// The engine's OpenAI-compatible API: `GET /v1/models`, `POST /v1/chat/completions`,
/// `POST /v1/completions` (JSON or server-sent events, with `usage`), `GET /health`.
/// One model per process; up to the generator's slot count run at once and the rest wait
/// (at most `maxQueue` waiting, then 503); a client that disconnects stops its generation, bad requests get OpenAI-shaped errors, nothing a client sends ends the
/// process.
public final class OpenAIServer: @unchecked Sendable {
    public let generator: Generator
    public let modelName: String
    public let maxQueue: Int
    private let lock = NSLock()
    private var waiting = 0
    let created = Int(Date().timeIntervalSince1970)

    public init(generator: Generator, modelName: String, maxQueue: Int = 32) {
        self.generator = generator
        self.modelName = modelName
        self.maxQueue = maxQueue
    }

    var model: Transformer { generator.model }

    /// A request the API refuses: status, message, and the OpenAI error type, param and code.
    struct Refusal: Error {
        let status: Int
        let message: String
        var type = "invalid_request_error"
        var param: String?
        var code: String?
    }

    public func handle(_ request: HTTPRequest, _ writer: HTTPResponseWriter) {
        let path = request.path.split(separator: "?", maxSplits: 1).first.map(String.init) ?? request.path
        do {
            switch (request.method, path) {
            case ("GET", "/health"):
                let stats = generator.stats
                let health: JSONValue = .object([
                    ("status", .string("ok")), ("slots", .number(Double(generator.slots))),
                    ("running", .number(Double(stats.running))), ("waiting", .number(Double(stats.waiting))),
                    ("prefix_reuse", .bool(generator.prefixReuse)),
                    ("arithmetic", .string(model.arithmetic.rawValue)),
                    ("matmul_split", .number(Double(model.matmulShape.split))),
                ])
                writer.send(status: 200, body: Data(health.serialized.utf8))
            case ("GET", "/v1/models"):
                let entry: JSONValue = .object([
                    ("id", .string(modelName)), ("object", .string("model")), ("created", .number(Double(created))),
                    ("owned_by", .string("ccinfer")),
                ])
                writer.send(
                    status: 200,
                    body: Data(
                        JSONValue.object([("object", .string("list")), ("data", .array([entry]))]).serialized.utf8))
            case ("POST", "/v1/chat/completions"):
                try complete(request, writer, chat: true)
            case ("POST", "/v1/completions"):
                try complete(request, writer, chat: false)
            case (_, "/v1/models"), (_, "/v1/chat/completions"), (_, "/v1/completions"), (_, "/health"):
                throw Refusal(status: 405, message: "\(request.method) is not allowed on \(path)")
            default:
                throw Refusal(status: 404, message: "no route \(request.method) \(path)", code: "not_found")
            }
        } catch let refusal as Refusal {
            if writer.started {
                // Mid-stream: say so in the stream, then end it.
                let body = OpenAIErrorBody.data(
                    refusal.message, type: refusal.type, code: refusal.code, param: refusal.param)
                writer.write(Data("data: ".utf8) + body + Data("\n\n".utf8))
                writer.finish()
            } else {
                writer.send(
                    status: refusal.status,
                    body: OpenAIErrorBody.data(
                        refusal.message, type: refusal.type, code: refusal.code, param: refusal.param))
            }
        } catch {
            writer.send(status: 500, body: OpenAIErrorBody.data("internal error", type: "server_error", code: nil))
        }
    }

    // MARK: Requests

    struct Parsed {
        var prompt: [Int]
        var parameters: SamplingParameters
        var stream: Bool
        var includeUsage: Bool
    }

    func refusal(_ error: InferenceError) -> Refusal {
        switch error.code {
        case .contextExceeded: Refusal(status: 400, message: error.message, code: "context_length_exceeded")
        case .invalidRequest: Refusal(status: 400, message: error.message)
        case .templateFailed: Refusal(status: 400, message: error.message, param: "messages", code: "template_failed")
        default: Refusal(status: 500, message: error.message, type: "server_error", code: error.code.rawValue)
        }
    }

    func parse(_ body: Data, chat: Bool) throws -> Parsed {
        let json: JSONValue
        do { json = try JSONValue.parse(body) } catch { throw refusal(error) }
        guard case .object = json else { throw Refusal(status: 400, message: "the request body must be a JSON object") }
        if let m = json["model"], m.string == nil {
            throw Refusal(status: 400, message: "'model' must be a string", param: "model")
        }
        if let m = json["model"]?.string, m != modelName {
            throw Refusal(
                status: 404, message: "the model '\(m)' does not exist; this engine serves '\(modelName)'",
                param: "model", code: "model_not_found")
        }
        try refuseUnsupported(json)
        var parameters = SamplingParameters()
        func number(_ key: String, _ range: ClosedRange<Double>) throws -> Double? {
            guard let v = json[key], !v.isNull else { return nil }
            guard let d = v.double, range.contains(d) else {
                throw Refusal(
                    status: 400, message: "'\(key)' must be a number in \(range.lowerBound)…\(range.upperBound)",
                    param: key)
            }
            return d
        }
        func integer(_ key: String, _ range: ClosedRange<Int>) throws -> Int? {
            guard let v = json[key], !v.isNull else { return nil }
            guard let i = v.int, range.contains(i) else {
                throw Refusal(
                    status: 400, message: "'\(key)' must be an integer in \(range.lowerBound)…\(range.upperBound)",
                    param: key)
            }
            return i
        }
        if let t = try number("temperature", 0...2) { parameters.temperature = Float(t) }
        if let p = try number("top_p", 0...1) { parameters.topP = Float(p) }
        if let k = try integer("top_k", 0...100_000) { parameters.topK = k }
        if let s = try integer("seed", Int(Int32.min)...Int(Int32.max)) {
            parameters.seed = UInt64(bitPattern: Int64(s))
        }
        let maxKey = json["max_completion_tokens"] != nil ? "max_completion_tokens" : "max_tokens"
        parameters.maxTokens = try integer(maxKey, 0...1_000_000) ?? (chat ? nil : 16)
        if let n = try integer("n", 1...128), n != 1 {
            throw Refusal(status: 400, message: "only n = 1 is supported", param: "n")
        }
        switch json["stop"] {
        case nil, .null?: break
        case .string(let s)?: parameters.stop = [s]
        case .array(let items)? where items.count <= 4 && items.allSatisfy({ $0.string != nil }):
            parameters.stop = items.compactMap(\.string)
        default:
            throw Refusal(status: 400, message: "'stop' must be a string or an array of up to 4 strings", param: "stop")
        }
        // Stop sequences are matched against the text on the engine's thread after every token:
        // a long one would slow every stream.
        guard parameters.stop.allSatisfy({ $0.utf8.count <= Self.maxStopBytes }) else {
            throw Refusal(
                status: 400, message: "each stop sequence must be at most \(Self.maxStopBytes) bytes", param: "stop")
        }
        guard json["stream"] == nil || json["stream"]?.bool != nil || json["stream"]?.isNull == true else {
            throw Refusal(status: 400, message: "'stream' must be a boolean", param: "stream")
        }
        let stream = json["stream"]?.bool ?? false
        let includeUsage = json["stream_options"]?["include_usage"]?.bool ?? false
        let tokenizer = model.tokenizer
        let prompt: [Int]
        if chat {
            guard let messages = json["messages"]?.array, !messages.isEmpty else {
                throw Refusal(status: 400, message: "'messages' must be a non-empty array", param: "messages")
            }
            var normalized = [JSONValue]()
            for (i, m) in messages.enumerated() {
                guard case .object(let pairs) = m, let role = m["role"]?.string else {
                    throw Refusal(
                        status: 400, message: "messages[\(i)] must be an object with a string 'role'", param: "messages"
                    )
                }
                var content: String
                switch m["content"] {
                case .string(let s)?: content = s
                case .null?, nil: content = ""
                case .array(let parts)?:
                    content = ""
                    for part in parts {
                        guard part["type"]?.string == "text", let text = part["text"]?.string else {
                            throw Refusal(
                                status: 400, message: "messages[\(i)].content: only text parts are supported",
                                param: "messages")
                        }
                        content += text
                    }
                default:
                    throw Refusal(
                        status: 400, message: "messages[\(i)].content must be a string or an array of text parts",
                        param: "messages")
                }
                var rest = pairs.filter { $0.0 != "role" && $0.0 != "content" }
                rest.insert(("content", .string(content)), at: 0)
                rest.insert(("role", .string(role)), at: 0)
                normalized.append(.object(rest))
            }
            guard let template = model.chatTemplate else {
                throw Refusal(
                    status: 400, message: "the model has no chat template; use /v1/completions",
                    code: "no_chat_template")
            }
            var extra = [String: JSONValue]()
            // tool_choice "none": the model is not to call tools, so it is not shown them.
            if let tools = json["tools"], !tools.isNull, json["tool_choice"]?.string != "none" {
                extra["tools"] = tools
            }
            let text: String
            do {
                text = try template.render(
                    messages: normalized, bosToken: tokenizer.bos.map { tokenizer.tokens[$0] } ?? "",
                    eosToken: tokenizer.eos.map { tokenizer.tokens[$0] } ?? "", extra: extra)
            } catch { throw refusal(error) }
            prompt = tokenizer.encode(text, addSpecial: false, parseSpecial: true)
        } else {
            switch json["prompt"] {
            case .string(let s)?:
                prompt =
                    s.isEmpty
                    ? tokenizer.bos.map { [$0] } ?? [] : tokenizer.encode(s, addSpecial: true, parseSpecial: true)
            case .array(let items)? where items.count == 1 && items[0].string != nil:
                prompt = tokenizer.encode(items[0].string!, addSpecial: true, parseSpecial: true)
            case .array(let items)? where !items.isEmpty && items.allSatisfy({ $0.int != nil }):
                prompt = items.compactMap(\.int)
                guard prompt.allSatisfy({ (0..<tokenizer.count).contains($0) }) else {
                    throw Refusal(
                        status: 400, message: "'prompt' holds token ids outside the vocabulary", param: "prompt")
                }
            default:
                throw Refusal(
                    status: 400, message: "'prompt' must be a string, a one-string array or an array of token ids",
                    param: "prompt")
            }
        }
        guard !prompt.isEmpty else {
            throw Refusal(status: 400, message: "the prompt is empty", param: chat ? "messages" : "prompt")
        }
        return Parsed(prompt: prompt, parameters: parameters, stream: stream, includeUsage: includeUsage)
    }

    /// Request fields the engine does not implement, each with the value that means "not used".
    /// Threat: a field silently ignored gives the client an answer other than the one it asked
    /// for (unconstrained text for a JSON schema, no log-probabilities, no penalties) with no sign
    /// of it; naming the field in a 400 is the honest answer.
    static let unsupported: [(field: String, neutral: @Sendable (JSONValue) -> Bool)] = [
        ("response_format", { $0["type"]?.string == "text" }),
        ("logprobs", { $0.bool == false }),
        ("top_logprobs", { $0.int == 0 }),
        ("logit_bias", { if case .object(let pairs) = $0 { pairs.isEmpty } else { false } }),
        ("presence_penalty", { $0.double == 0 }),
        ("frequency_penalty", { $0.double == 0 }),
        ("repetition_penalty", { $0.double == 1 }),
        ("best_of", { $0.int == 1 }),
        ("echo", { $0.bool == false }),
        ("suffix", { $0.string == "" }),
        ("functions", { _ in false }),
        ("function_call", { $0.string == "none" }),
        ("tool_choice", { $0.string == "none" || $0.string == "auto" }),
        ("parallel_tool_calls", { $0.bool == true }),
        ("audio", { _ in false }),
        ("modalities", { $0.array?.allSatisfy { $0.string == "text" } == true }),
        ("prediction", { _ in false }),
    ]

    static let maxStopBytes = 256

    func refuseUnsupported(_ json: JSONValue) throws {
        for (field, neutral) in Self.unsupported {
            guard let value = json[field], !value.isNull, !neutral(value) else { continue }
            throw Refusal(
                status: 400, message: "'\(field)' is not supported by this engine; leave it out",
                param: field, code: "unsupported_parameter")
        }
    }

    func complete(_ request: HTTPRequest, _ writer: HTTPResponseWriter, chat: Bool) throws {
        let parsed = try parse(request.body, chat: chat)
        guard
            lock.withLock({ () -> Bool in
                guard waiting < maxQueue + generator.slots else { return false }
                waiting += 1
                return true
            })
        else {
            throw Refusal(
                status: 503, message: "the engine has \(maxQueue) requests waiting; retry later", type: "server_error",
                code: "server_busy")
        }
        defer { lock.withLock { waiting -= 1 } }

        let id = (chat ? "chatcmpl-" : "cmpl-") + UUID().uuidString.lowercased()
        let created = JSONValue.number(Double(Int(Date().timeIntervalSince1970)))
        let object = chat ? "chat.completion" : "text_completion"
        func usage(_ g: Generation) -> JSONValue {
            .object([
                ("prompt_tokens", .number(Double(g.promptTokens))),
                ("completion_tokens", .number(Double(g.tokens.count))),
                ("total_tokens", .number(Double(g.promptTokens + g.tokens.count))),
            ])
        }
        func finish(_ g: Generation) -> JSONValue { .string(g.finishReason == .length ? "length" : "stop") }

        if !parsed.stream {
            let result: Generation
            do {
                result = try generator.generate(
                    prompt: parsed.prompt, parameters: parsed.parameters, isCancelled: { writer.peerGone })
            } catch {
                throw refusal(error)
            }
            if result.finishReason == .cancelled { return }
            let choice: JSONValue =
                chat
                ? .object([
                    ("index", .number(0)),
                    ("message", .object([("role", .string("assistant")), ("content", .string(result.text))])),
                    ("logprobs", .null), ("finish_reason", finish(result)),
                ])
                : .object([
                    ("index", .number(0)), ("text", .string(result.text)), ("logprobs", .null),
                    ("finish_reason", finish(result)),
                ])
            let body: JSONValue = .object([
                ("id", .string(id)), ("object", .string(object)), ("created", created), ("model", .string(modelName)),
                ("choices", .array([choice])), ("usage", usage(result)),
            ])
            writer.send(status: 200, body: Data(body.serialized.utf8))
            return
        }

        // Streaming: the first event goes out only once generation is under way, so an error
        // before any token (context exceeded) is still a plain HTTP error.
        let chunkObject = chat ? "chat.completion.chunk" : "text_completion"
        func event(_ choice: JSONValue, usage: JSONValue? = nil) -> Data {
            var pairs: [(String, JSONValue)] = [
                ("id", .string(id)), ("object", .string(chunkObject)), ("created", created),
                ("model", .string(modelName)),
                ("choices", .array([choice].filter { !$0.isNull })),
            ]
            if let usage { pairs.append(("usage", usage)) }
            return Data("data: \(JSONValue.object(pairs).serialized)\n\n".utf8)
        }
        func delta(_ text: String, first: Bool) -> JSONValue {
            if chat {
                var d: [(String, JSONValue)] = first ? [("role", .string("assistant"))] : []
                d.append(("content", .string(text)))
                return .object([
                    ("index", .number(0)), ("delta", .object(d)), ("logprobs", .null), ("finish_reason", .null),
                ])
            }
            return .object([
                ("index", .number(0)), ("text", .string(text)), ("logprobs", .null), ("finish_reason", .null),
            ])
        }
        var first = true
        let result: Generation
        do {
            let g = try generator.generate(
                prompt: parsed.prompt, parameters: parsed.parameters,
                onText: { piece in
                    if first {
                        guard writer.start() else { return false }
                    }
                    defer { first = false }
                    return writer.write(event(delta(piece, first: first)))
                }, isCancelled: { writer.peerGone })
            result = g
        } catch {
            throw refusal(error)
        }
        if result.finishReason == .cancelled { return }
        if first {
            guard writer.start() else { return }
            writer.write(event(delta("", first: true)))
        }
        let last: JSONValue =
            chat
            ? .object([
                ("index", .number(0)), ("delta", .object([])), ("logprobs", .null), ("finish_reason", finish(result)),
            ])
            : .object([
                ("index", .number(0)), ("text", .string("")), ("logprobs", .null), ("finish_reason", finish(result)),
            ])
        writer.write(event(last))
        if parsed.includeUsage { writer.write(event(.null, usage: usage(result))) }
        writer.write(Data("data: [DONE]\n\n".utf8))
        writer.finish()
    }
}
