// ccinfer's prompt-processing and generation speed, next to llama.cpp (llama-cpp-python) on the
// same model file, prompt and machine, in the same run: its CPU build, and its Vulkan backend on
// the same Vulkan device as ccinfer (scripts/llama-vulkan builds it once; bench only). Models:
// SmolLM2-135M-Instruct as fetched (Q4_1) and requantized by llama.cpp to Q4_K_M, and a synthetic
// Llama-shaped model of about a billion parameters (random weights, scripts/synthetic-model).
import Foundation
import Inference

func inferenceBench() {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    func run(_ path: String, _ args: [String], environment: [String: String] = [:]) -> (Int32, String, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        p.environment = env
        // Standard error goes to a file: a child that writes much of it (llama.cpp's logs) would
        // otherwise fill its pipe and wait while standard output is read to its end.
        let errFile = FileManager.default.temporaryDirectory.appendingPathComponent("ccgate-bench-\(UUID().uuidString)")
        _ = FileManager.default.createFile(atPath: errFile.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: errFile) }
        let out = Pipe()
        guard let err = try? FileHandle(forWritingTo: errFile) else { return (-1, "", "cannot write \(errFile.path)") }
        p.standardOutput = out
        p.standardError = err
        guard (try? p.run()) != nil else { return (-1, "", "cannot run \(path)") }
        let o = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        try? err.close()
        let e = (try? Data(contentsOf: errFile)) ?? Data()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }
    let (status, out, err) = run(root.appendingPathComponent("scripts/reference-env").path, [])
    guard status == 0 else {
        print("\nccgate bench: inference: skipped (scripts/reference-env failed: \(err))")
        return
    }
    var values = [String: String]()
    for line in out.split(separator: "\n") {
        let parts = line.split(separator: "=", maxSplits: 1)
        if parts.count == 2 { values[String(parts[0])] = String(parts[1]) }
    }
    guard let venv = values["VENV"], let modelPath = values["MODEL"] else { return }
    if ProcessInfo.processInfo.environment["XDG_RUNTIME_DIR"] == nil {
        setenv("XDG_RUNTIME_DIR", NSTemporaryDirectory(), 1)
    }

    let rounds = Int(ProcessInfo.processInfo.environment["CCGATE_BENCH_ROUNDS"] ?? "") ?? 3
    let generate = 32
    var vulkanVenv: String?
    let (vs, vo, ve) = run(root.appendingPathComponent("scripts/llama-vulkan").path, [])
    if vs == 0, let line = vo.split(separator: "\n").first(where: { $0.hasPrefix("VULKAN_VENV=") }) {
        vulkanVenv = String(line.dropFirst("VULKAN_VENV=".count))
    } else {
        print(
            "\nccgate bench: inference: llama.cpp Vulkan baseline unavailable (scripts/llama-vulkan: \(ve.suffix(400)))"
        )
    }
    let cache = ProcessInfo.processInfo.environment["CCGATE_CACHE"] ?? (NSHomeDirectory() + "/.cache/ccgate")
    let kquant = cache + "/models/bench-SmolLM2-135M-Instruct.Q4_K_M.gguf"
    if !FileManager.default.fileExists(atPath: kquant) {
        // Written aside and renamed: an interrupted run leaves no partial model behind.
        let partial = kquant + ".part"
        let quantize = run(
            venv + "/bin/python",
            [
                root.appendingPathComponent("Tests/InferenceTests/reference_llama.py").path, "quantize", modelPath,
                partial, "Q4_K_M",
            ])
        if quantize.0 == 0 {
            _ = rename(partial, kquant)
        } else {
            print("ccgate bench: inference: quantizing to Q4_K_M failed: \(quantize.2)")
        }
    }
    // name, file, tokens generated, rounds, whether the concurrent-stream comparison runs
    var models = [
        ("SmolLM2-135M-Instruct Q4_1", modelPath, generate, rounds, true),
        ("SmolLM2-135M-Instruct Q4_K_M", kquant, generate, rounds, true),
    ]
    // CCGATE_BENCH_MODELS=TEXT,...: only the models whose names contain one of them.
    let wanted = ProcessInfo.processInfo.environment["CCGATE_BENCH_MODELS"]?.split(separator: ",").map(String.init)
    func selected(_ name: String) -> Bool { wanted?.contains { name.contains($0) } ?? true }
    models.removeAll { !selected($0.0) }
    let synthetic =
        selected("synthetic Llama 1B Q4_K_M")
        ? run(root.appendingPathComponent("scripts/synthetic-model").path, []) : (1, "", "not selected")
    if synthetic.0 == 0,
        let line = synthetic.1.split(separator: "\n").first(where: { $0.hasPrefix("SYNTHETIC_MODEL=") })
    {
        // A billion parameters on a CPU device: fewer tokens, one round.
        models.append(("synthetic Llama 1B Q4_K_M", String(line.dropFirst(16)), 8, 1, false))
    } else {
        print("ccgate bench: inference: the synthetic 1B model is unavailable: \(synthetic.2.suffix(400))")
    }
    for (label, path, generate, rounds, streams) in models where FileManager.default.fileExists(atPath: path) {
        do {
            try engineComparison(
                label: label, modelPath: path, generate: generate, rounds: rounds, streams: streams,
                venv: venv, vulkanVenv: vulkanVenv, root: root, run: run)
        } catch {
            print("\nccgate bench: inference (\(label)) failed: \(error)")
        }
    }
}

func engineComparison(
    label: String, modelPath: String, generate: Int, rounds: Int, streams: Bool, venv: String,
    vulkanVenv: String?, root: URL, run: (String, [String], [String: String]) -> (Int32, String, String)
) throws {
    let device = try VulkanDevice(instance: try VulkanInstance())
    var prompt = [Int]()
    /// Prompt and generation tokens per second, medians of `rounds`, in one arithmetic.
    func measure(_ arithmetic: Arithmetic) throws -> (Double, Double) {
        let model = try Transformer(
            url: URL(fileURLWithPath: modelPath), device: device, contextLength: 2048, arithmetic: arithmetic)
        prompt = EngineBench.prompt(for: model)
        let rates = try EngineBench.single(model: model, prompt: prompt, generate: generate, rounds: rounds)
        return (rates.prompt, rates.generate)
    }
    let mine = try measure(.fast)
    let exact = device.hasFloat64 ? try measure(.exact) : nil

    let tokensFile = FileManager.default.temporaryDirectory.appendingPathComponent("ccinfer-bench-\(getpid()).json")
    try EngineBench.writeTokenIDs(prompt, to: tokensFile)
    defer { try? FileManager.default.removeItem(at: tokensFile) }
    let script = root.appendingPathComponent("Benchmarks/ccgate-bench/llama_bench.py").path
    func baseline(_ python: String, vulkan: Bool) -> (pp: Double, tg: Double, device: String)? {
        let (rs, ro, re) = run(
            python,
            [script, modelPath, tokensFile.path, String(generate), String(rounds)] + (vulkan ? ["vulkan"] : []),
            vulkan ? ["GGML_VK_VISIBLE_DEVICES": "0"] : [:])
        guard rs == 0, let json = try? JSONSerialization.jsonObject(with: Data(ro.utf8)) as? [String: Any],
            let rpp = json["prompt_tokens_per_s"] as? Double, let rtg = json["generate_tokens_per_s"] as? Double
        else {
            print("ccgate bench: inference: llama.cpp \(vulkan ? "Vulkan" : "CPU") baseline failed: \(re.suffix(600))")
            return nil
        }
        // llama.cpp names the device it runs on; a Vulkan run that fell back to the CPU is not one.
        let named = re.split(separator: "\n").first { $0.hasPrefix("ggml_vulkan: 0 = ") }.map {
            String($0.dropFirst(17))
        }
        if vulkan, named == nil || !re.contains("assigned to device Vulkan0") {
            print("ccgate bench: inference: llama.cpp did not run on the Vulkan device; its figures are left out")
            return nil
        }
        return (rpp, rtg, named ?? "CPU, \(json["threads"] ?? "?") threads")
    }
    let cpu = baseline(venv + "/bin/python", vulkan: false)
    let vulkan = vulkanVenv.flatMap { baseline($0 + "/bin/python", vulkan: true) }
    print("")
    print(
        "ccgate bench: inference (\(label), \(prompt.count)-token prompt, \(generate) generated tokens, median of \(rounds))"
    )
    print("ccinfer device: \(device.info.summary)")
    if let vulkan { print("llama.cpp Vulkan device: \(vulkan.device)") }
    print("                              prompt tok/s   generate tok/s")
    print(String(format: "  ccinfer                   %12.1f   %14.1f", mine.0, mine.1))
    if let exact {
        print(String(format: "  ccinfer --exact           %12.1f   %14.1f", exact.0, exact.1))
    }
    if let vulkan {
        print(String(format: "  llama.cpp (Vulkan)        %12.1f   %14.1f", vulkan.pp, vulkan.tg))
        print(String(format: "  ccinfer/llama.cpp Vulkan  %12.3f   %14.3f", mine.0 / vulkan.pp, mine.1 / vulkan.tg))
        if let exact {
            print(
                String(format: "  --exact/llama.cpp Vulkan  %12.3f   %14.3f", exact.0 / vulkan.pp, exact.1 / vulkan.tg))
        }
    }
    if let cpu {
        print(String(format: "  llama.cpp (CPU)           %12.1f   %14.1f", cpu.pp, cpu.tg))
        print(String(format: "  ccinfer/llama.cpp CPU     %12.3f   %14.3f", mine.0 / cpu.pp, mine.1 / cpu.tg))
    }
    guard streams else { return }
    // Sixteen tokens per stream: llama.cpp's Vulkan backend on a CPU device takes minutes for more.
    try concurrentStreams(
        model: modelPath, device: device, prompt: prompt, generate: 16, rounds: rounds, script: script,
        vulkanVenv: vulkanVenv, run: run)
}

/// Aggregate generation speed with 1, 4 and 8 sequences generating together (one step per
/// token for all of them), ccinfer's slots beside llama.cpp's multi-sequence batches on its
/// Vulkan backend; both read the prompt's first eight tokens into every sequence first, untimed
/// (what is measured is generation; a short prompt keeps the untimed part short).
func concurrentStreams(
    model path: String, device: VulkanDevice, prompt whole: [Int], generate: Int, rounds: Int,
    script: String, vulkanVenv: String?, run: (String, [String], [String: String]) -> (Int32, String, String)
) throws {
    let streams = [1, 4, 8]
    let prompt = Array(whole.prefix(8))
    let tokensFile = FileManager.default.temporaryDirectory.appendingPathComponent(
        "ccinfer-bench-streams-\(getpid()).json"
    ).path
    try Data("[\(prompt.map(String.init).joined(separator: ","))]".utf8).write(to: URL(fileURLWithPath: tokensFile))
    defer { try? FileManager.default.removeItem(atPath: tokensFile) }
    let model = try Transformer(
        url: URL(fileURLWithPath: path), device: device, contextLength: 512, slots: streams.max()!, arithmetic: .fast)
    let mine = try EngineBench.streams(
        model: model, prompt: prompt, streams: streams, generate: generate, rounds: rounds)
    var theirs: [Int: Double]?
    if let vulkanVenv {
        let (rs, ro, re) = run(
            vulkanVenv + "/bin/python",
            [
                script, "batched", streams.map(String.init).joined(separator: ","), path, tokensFile, String(generate),
                String(rounds), "vulkan",
            ],
            ["GGML_VK_VISIBLE_DEVICES": "0"])
        if rs == 0, re.contains("assigned to device Vulkan0") || re.contains("ggml_vulkan: 0 = "),
            let json = try? JSONSerialization.jsonObject(with: Data(ro.utf8)) as? [String: Any],
            let rates = json["aggregate_generate_tokens_per_s"] as? [String: Double]
        {
            theirs = Dictionary(uniqueKeysWithValues: rates.compactMap { k, v in Int(k).map { ($0, v) } })
        } else {
            print("ccgate bench: inference: llama.cpp Vulkan batched baseline failed: \(re.suffix(600))")
        }
    }
    print(
        "  aggregate generate tok/s (\(generate) tokens per stream after \(prompt.count) prompt tokens, median of \(rounds))"
    )
    print("                             ccinfer   llama.cpp Vulkan   ratio")
    for n in streams {
        let other = theirs?[n]
        print(
            String(format: "  %2d stream%@               %8.1f", n, n == 1 ? " " : "s", mine[n]!)
                + (other.map { String(format: "   %16.1f   %5.2f×", $0, mine[n]! / $0) } ?? "   (no baseline)"))
    }
}
