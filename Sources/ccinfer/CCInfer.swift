import ArgumentParser
import CommandLineSupport
import Foundation
import Inference

@main
struct CCInfer: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ccinfer",
        abstract: "The ccgate inference engine: GGUF Llama-family models on any Vulkan device.",
        discussion: """
            Runs Llama, Qwen2 and Qwen3 models (F32, F16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K tensors) with compute shaders on a
            Vulkan 1.1 device, and serves them over an OpenAI-compatible API on loopback. The binary embeds its
            kernels, so its SHA-256 is the measurement a policy pins.

            Exit status: 0 success, 1 engine failure (no device, bad model), 2 bad usage.
            """,
        version: projectVersion,
        subcommands: [Serve.self, Generate.self, Bench.self, Devices.self, Version.self])

    static func main() { runWithProjectExitCodes() }
}

/// Vulkan needs a runtime directory for its caches; without one the loader complains loudly.
func prepareVulkanEnvironment() {
    if ProcessInfo.processInfo.environment["XDG_RUNTIME_DIR"] == nil {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ccinfer-runtime-\(getuid())")
        try? FileManager.default.createDirectory(
            at: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        setenv("XDG_RUNTIME_DIR", dir.path, 0)
    }
}

func fail(_ error: InferenceError) -> ReportedFailure { ReportedFailure("ccinfer", error.description, status: 1) }

struct Devices: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the Vulkan devices: index, name, type, driver, memory.",
        discussion: "The index is what --device takes. Example: ccinfer devices")

    func run() throws {
        prepareVulkanEnvironment()
        do {
            let devices = try VulkanInstance().devices()
            if devices.isEmpty { throw InferenceError(.vulkanNoDevice, "the Vulkan loader reports no devices") }
            for d in devices { print(d.summary) }
        } catch let error as InferenceError {
            throw fail(error)
        }
    }
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the shader compiler and kernels this binary embeds.")

    func run() {
        print("ccinfer \(projectVersion)")
        print("kernels: \(EmbeddedShadersInfo.kernels.joined(separator: " "))")
        print("shader flags: \(EmbeddedShadersInfo.flags)")
        print("shader compiler:")
        for line in EmbeddedShadersInfo.compiler.split(separator: "\n") where !line.isEmpty { print("  \(line)") }
    }
}

/// Options shared by commands that load a model.
struct ModelOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The GGUF model file.", valueName: "PATH")) var model: String
    @Option(help: ArgumentHelp("Vulkan device index (see `ccinfer devices`); default: the first GPU.", valueName: "N"))
    var device: Int?
    @Option(help: ArgumentHelp("Context length in tokens (default: the model's, at most 4096).", valueName: "N"))
    var context: Int?
    @Option(help: ArgumentHelp("Prompt tokens evaluated per step.", valueName: "N")) var batch = 32
    @Flag(
        help: ArgumentHelp(
            "Exact arithmetic: llama.cpp's CPU results bit for bit (needs shaderFloat64). Default: the device's own fma, division and square root, deterministic on one device and driver and within the tolerance docs/INFERENCE.md states."
        ))
    var exact = false
    @Option(
        help: ArgumentHelp(
            "Invocations sharing each row of a quantized matmul: 1 sums a row in the reference's order (CPU devices, and always with --exact); 2, 4 or 8 split it and also split attention's product with v, added in a fixed order (default: 8 on GPUs, 4 where workgroups are small; 1 on CPU devices). Outputs repeat exactly for the same binary, device, driver, arithmetic and split.",
            valueName: "N"))
    var matmulSplit: Int?
    @Option(
        help: ArgumentHelp(
            "Refuse to serve unless the model's bytes hash to this SHA-256 (default: $CCINFER_MODEL_SHA256, which ccworker sets to the digest it measured).",
            valueName: "HEX"))
    var modelSHA256: String?

    /// The digest the model must have. The worker's environment variable wins: the engine's
    /// arguments come from the host owner, who must not be able to name another digest.
    var expectedModelSHA256: String? {
        (ProcessInfo.processInfo.environment["CCINFER_MODEL_SHA256"] ?? modelSHA256)?.lowercased()
    }

    func validate() throws {
        guard FileManager.default.isReadableFile(atPath: model) else {
            throw ValidationError("--model \(model): not a readable file")
        }
        if let context, context < 16 { throw ValidationError("--context must be at least 16") }
        if let worker = ProcessInfo.processInfo.environment["CCINFER_MODEL_SHA256"], let modelSHA256,
            worker.lowercased() != modelSHA256.lowercased()
        {
            throw ValidationError(
                "--model-sha256 contradicts the measured digest the worker gave (CCINFER_MODEL_SHA256)")
        }
        if let expected = expectedModelSHA256,
            expected.count != 64 || !expected.allSatisfy({ $0.isHexDigit && $0.isASCII })
        {
            throw ValidationError("--model-sha256 (or CCINFER_MODEL_SHA256) must be 64 hex digits")
        }
        guard (1...512).contains(batch) else { throw ValidationError("--batch must be 1-512") }
        if let matmulSplit {
            guard [1, 2, 4, 8].contains(matmulSplit) else {
                throw ValidationError("--matmul-split must be 1, 2, 4 or 8")
            }
            guard matmulSplit == 1 || !exact else {
                throw ValidationError("--exact sums each row in the reference's order: --matmul-split must be 1")
            }
        }
    }

    var matmulShape: MatmulShape? {
        matmulSplit.map { $0 == 1 ? .serial : MatmulShape(rowsPerGroup: 32, split: $0) }
    }

    func load(progress: Bool, slots: Int = 1) throws(InferenceError) -> Transformer {
        prepareVulkanEnvironment()
        let instance = try VulkanInstance()
        let vulkan = try VulkanDevice(instance: instance, index: device)
        let say: (String) -> Void = { message in
            if progress { FileHandle.standardError.write(Data("\rccinfer: loading \(message)…\u{1B}[K".utf8)) }
        }
        if progress { FileHandle.standardError.write(Data("ccinfer: device \(vulkan.info.summary)\n".utf8)) }
        let model = try Transformer(
            url: URL(fileURLWithPath: self.model), device: vulkan, contextLength: context, batchSize: batch,
            slots: slots, arithmetic: exact ? .exact : .fast, matmulShape: matmulShape, progress: say)
        // Threat: a model swapped on disk after the worker measured it. The bytes the weights were
        // uploaded from are hashed after the upload and must be the measured ones.
        if let expected = expectedModelSHA256 {
            say("checking the model's SHA-256")
            let actual = model.gguf.sha256Hex()
            guard actual == expected else {
                throw InferenceError(
                    .modelDigestMismatch,
                    "\(self.model) has SHA-256 \(actual), not the measured \(expected): refusing to serve a model other than the measured one"
                )
            }
        }
        if progress {
            let slots =
                (model.slots > 1 ? " in each of \(model.slots) slots" : "")
                + ", \(model.arithmetic.rawValue) arithmetic, \(model.matmulShape) matmuls"
            FileHandle.standardError.write(
                Data(
                    "\rccinfer: loaded \(model.config.architecture.rawValue), \(model.config.layerCount) layers, context \(model.contextLength)\(slots)\u{1B}[K\n"
                        .utf8))
        }
        return model
    }
}

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate text for one prompt and print it.",
        discussion: """
            With --chat the text is one user message rendered by the model's chat template; otherwise it is
            the raw prompt. Greedy unless --temperature is above 0.

            Examples:
              ccinfer generate --model SmolLM2-135M-Instruct.Q4_1.gguf --chat "What is the capital of France?"
              ccinfer generate --model model.gguf --prompt "Once upon a time" --max-tokens 64 --temperature 0.8 --seed 7
            """)

    @OptionGroup var options: ModelOptions
    @Option(help: ArgumentHelp("Raw prompt text.", valueName: "TEXT")) var prompt: String?
    @Option(help: ArgumentHelp("A user message, rendered with the chat template.", valueName: "TEXT")) var chat: String?
    @Option(help: ArgumentHelp("Tokens to generate at most.", valueName: "N")) var maxTokens = 128
    @Option(help: ArgumentHelp("Sampling temperature; 0 is greedy.", valueName: "T")) var temperature: Float = 0
    @Option(help: ArgumentHelp("Nucleus sampling mass.", valueName: "P")) var topP: Float = 1
    @Option(help: ArgumentHelp("Sample among the K most likely tokens (0: all).", valueName: "K")) var topK = 0
    @Option(help: ArgumentHelp("Random seed.", valueName: "N")) var seed: UInt64?
    @Flag(help: "Print timings to standard error.") var timings = false

    func validate() throws {
        guard (prompt == nil) != (chat == nil) else { throw ValidationError("give exactly one of --prompt and --chat") }
        guard maxTokens >= 1 else { throw ValidationError("--max-tokens must be at least 1") }
    }

    func run() throws {
        do {
            let model = try options.load(progress: true)
            let text: String
            if let chat {
                guard let template = model.chatTemplate else {
                    throw InferenceError(.modelUnsupported, "the model has no chat template")
                }
                text = try template.render(
                    messages: [.object([("role", .string("user")), ("content", .string(chat))])],
                    bosToken: model.tokenizer.bos.map { model.tokenizer.tokens[$0] } ?? "",
                    eosToken: model.tokenizer.eos.map { model.tokenizer.tokens[$0] } ?? "")
            } else {
                text = prompt!
            }
            let tokens = model.tokenizer.encode(text, addSpecial: chat == nil, parseSpecial: true)
            let generator = Generator(model: model)
            let started = ContinuousClock.now
            let result = try generator.generate(
                prompt: tokens,
                parameters: SamplingParameters(
                    temperature: temperature, topP: topP, topK: topK, seed: seed, maxTokens: maxTokens)
            ) { piece in
                FileHandle.standardOutput.write(Data(piece.utf8))
                return true
            }
            print("")
            if timings {
                let elapsed = ContinuousClock.now - started
                let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
                FileHandle.standardError.write(
                    Data(
                        "ccinfer: \(tokens.count) prompt tokens, \(result.tokens.count) generated in \(String(format: "%.2f", seconds)) s (\(result.finishReason.rawValue))\n"
                            .utf8))
            }
        } catch let error as InferenceError {
            throw fail(error)
        }
    }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure prompt-processing and generation speed on this device.",
        discussion: """
            One stream: prompt tokens per second reading the prompt, then generation tokens per second for
            --generate greedy tokens (medians of --rounds, after a warm-up). Then the aggregate generation rate
            with several streams stepping together (--streams), each after the prompt's first 8 tokens. The
            prompt is a fixed English text, or that text repeated to --prompt-tokens tokens. --tokens-out and
            --stream-tokens-out write the prompts' token ids (JSON arrays) so that another engine can be run on
            the very same tokens.

            Examples:
              ccinfer bench --model SmolLM2-135M-Instruct.Q4_K_M.gguf
              ccinfer bench --model model.gguf --prompt-tokens 512 --generate 128 --streams 1,8,32 --json
            """)

    @OptionGroup var options: ModelOptions
    @Option(help: ArgumentHelp("Prompt length in tokens (default: the text once).", valueName: "N")) var promptTokens:
        Int?
    @Option(help: ArgumentHelp("Tokens generated per round.", valueName: "N")) var generate = 32
    @Option(help: ArgumentHelp("Timed rounds; the median is reported.", valueName: "N")) var rounds = 3
    @Option(help: ArgumentHelp("Concurrent stream counts, comma-separated (at most 64).", valueName: "LIST"))
    var streams = "1,4,8"
    @Option(help: ArgumentHelp("Write the prompt's token ids here (a JSON array).", valueName: "FILE"))
    var tokensOut: String?
    @Option(help: ArgumentHelp("Write the streams' prompt token ids here (a JSON array).", valueName: "FILE"))
    var streamTokensOut: String?
    @Flag(help: "Print one JSON object instead of a table.") var json = false

    var streamCounts: [Int] {
        streams.split(separator: ",", omittingEmptySubsequences: false).compactMap { Int($0) }
    }

    func validate() throws {
        if let promptTokens, !(1...8192).contains(promptTokens) {
            throw ValidationError("--prompt-tokens must be 1-8192")
        }
        guard (1...4096).contains(generate) else { throw ValidationError("--generate must be 1-4096") }
        guard (1...100).contains(rounds) else { throw ValidationError("--rounds must be 1-100") }
        let counts = streamCounts
        guard counts.count == streams.split(separator: ",", omittingEmptySubsequences: false).count,
            !counts.isEmpty, Set(counts).count == counts.count,
            counts.allSatisfy({ (1...64).contains($0) && $0 <= options.batch })
        else { throw ValidationError("--streams must list different counts of 1-64, each at most --batch") }
    }

    func run() throws {
        do {
            let model = try options.load(progress: !json, slots: streamCounts.max()!)
            let prompt = EngineBench.prompt(for: model, length: promptTokens)
            guard prompt.count + generate <= model.contextLength else {
                throw InferenceError(
                    .invalidRequest,
                    "\(prompt.count) prompt and \(generate) generated tokens exceed the context of \(model.contextLength)"
                )
            }
            let streamPrompt = Array(prompt.prefix(8))
            for (path, tokens) in [(tokensOut, prompt), (streamTokensOut, streamPrompt)] {
                guard let path else { continue }
                do {
                    try EngineBench.writeTokenIDs(tokens, to: URL(fileURLWithPath: path))
                } catch {
                    throw InferenceError(.invalidRequest, "cannot write \(path): \(error.localizedDescription)")
                }
            }
            let one = try EngineBench.single(model: model, prompt: prompt, generate: generate, rounds: rounds)
            let many = try EngineBench.streams(
                model: model, prompt: streamPrompt, streams: streamCounts, generate: generate, rounds: rounds)
            if json {
                let object: [String: Any] = [
                    "device": model.device.info.summary, "arithmetic": model.arithmetic.rawValue,
                    "matmul": model.matmulShape.description, "prompt_tokens": prompt.count, "generated": generate,
                    "prompt_tokens_per_s": one.prompt, "generate_tokens_per_s": one.generate,
                    "aggregate_generate_tokens_per_s": Dictionary(
                        uniqueKeysWithValues: many.map { (String($0.key), $0.value) }),
                ]
                let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
                return
            }
            print(
                "\(prompt.count)-token prompt, \(generate) generated tokens, median of \(rounds) (\(model.arithmetic.rawValue) arithmetic, \(model.matmulShape) matmuls)"
            )
            print(String(format: "  prompt processing  %10.1f tok/s", one.prompt))
            print(String(format: "  generation         %10.1f tok/s", one.generate))
            for n in streamCounts {
                print(
                    String(format: "  %2d stream%@         %10.1f tok/s aggregate", n, n == 1 ? " " : "s", many[n] ?? 0)
                )
            }
        } catch let error as InferenceError {
            throw fail(error)
        }
    }
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the model over an OpenAI-compatible API.",
        discussion: """
            Routes: GET /v1/models, POST /v1/chat/completions, POST /v1/completions (JSON, or server-sent events
            with "stream": true), GET /health. One model per process. Up to --parallel requests are generated at
            once, sharing each step (each slot has its own cache of --context positions); a long prompt is read in
            chunks of --batch tokens between the running streams' steps; a client that goes away frees its slot at
            the next step. Further requests queue (at most --queue, then 503). Each request's tokens are the same
            whatever else runs beside it. Listens on loopback by default, or with --socket on
            a Unix socket only its owner can open (what a worker should use): the worker agent in front of it is
            what the network sees.

            Example:
              ccinfer serve --model SmolLM2-135M-Instruct.Q4_1.gguf --port 8081
              curl -s http://127.0.0.1:8081/v1/chat/completions -H 'Content-Type: application/json' \\
                -d '{"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}'
            """)

    @OptionGroup var options: ModelOptions
    @Option(help: ArgumentHelp("Address to listen on.", valueName: "HOST")) var host = "127.0.0.1"
    @Option(help: ArgumentHelp("Port (0: any free port).", valueName: "N")) var port = 8081
    @Option(help: ArgumentHelp("The model name clients use (default: the file name without .gguf).", valueName: "NAME"))
    var modelName: String?
    @Option(help: ArgumentHelp("Requests generated at once, each in its own cache slot.", valueName: "N"))
    var parallel = 4
    @Option(help: ArgumentHelp("Requests allowed to wait for a free slot.", valueName: "N")) var queue = 32
    @Flag(
        help: ArgumentHelp(
            "Let a request start from what its slot holds of an earlier request's prompt (faster multi-turn chat). Only for one trust domain: a faster first token reveals that a prompt began like an earlier one."
        ))
    var prefixReuse = false
    @Option(help: ArgumentHelp("Write the bound port here once listening.", valueName: "FILE")) var portFile: String?
    @Option(
        help: ArgumentHelp(
            "Listen on a Unix socket at this absolute path (mode 0600, owner only) instead of TCP; ccworker reaches it with --engine-url unix:PATH.",
            valueName: "PATH"))
    var socket: String?

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0-65535") }
        guard (1...4096).contains(queue) else { throw ValidationError("--queue must be 1-4096") }
        guard (1...64).contains(parallel), parallel <= options.batch else {
            throw ValidationError("--parallel must be 1-64 and at most --batch (\(options.batch))")
        }
        if let socket, !socket.hasPrefix("/") || socket.utf8.count > 107 {
            throw ValidationError("--socket must be an absolute path of at most 107 bytes")
        }
        if socket != nil, portFile != nil { throw ValidationError("--port-file has no meaning with --socket") }
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        do {
            let model = try options.load(progress: true, slots: parallel)
            let name = modelName ?? URL(fileURLWithPath: options.model).deletingPathExtension().lastPathComponent
            let api = OpenAIServer(
                generator: Generator(model: model, prefixReuse: prefixReuse), modelName: name, maxQueue: queue)
            let server = HTTPServer { request, writer in api.handle(request, writer) }
            if let socket {
                try server.bind(unixSocket: socket)
                FileHandle.standardError.write(Data("ccinfer: serving '\(name)' on unix:\(socket)\n".utf8))
            } else {
                let bound = try server.bind(host: host, port: port)
                if let portFile {
                    try? Data("\(bound)\n".utf8).write(to: URL(fileURLWithPath: portFile), options: .atomic)
                }
                FileHandle.standardError.write(Data("ccinfer: serving '\(name)' on http://\(host):\(bound)\n".utf8))
            }
            for sig in [SIGTERM, SIGINT] {
                signal(sig, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
                source.setEventHandler { Foundation.exit(0) }
                source.resume()
                Serve.signalSources.append(source)
            }
            server.serve()
        } catch {
            throw fail(error)
        }
    }

    nonisolated(unsafe) static var signalSources: [any DispatchSourceSignal] = []
}
