// ccinfer's prompt-processing and generation speed, next to llama.cpp (llama-cpp-python, CPU
// build) on the same model, prompt and machine, in the same run.
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
        let out = Pipe()
        let err = Pipe()
        p.standardOutput = out
        p.standardError = err
        guard (try? p.run()) != nil else { return (-1, "", "cannot run \(path)") }
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
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
    let text =
        "Benchmarks compare like with like: the same model, the same prompt, the same machine, measured in the same "
        + "run, so that the ratio means something even on a noisy shared computer. This prompt is long enough to measure "
        + "prompt processing and short enough to leave room for generation in a small context window."
    do {
        let device = try VulkanDevice(instance: try VulkanInstance())
        let model = try Transformer(url: URL(fileURLWithPath: modelPath), device: device, contextLength: 2048)
        let prompt = model.tokenizer.encode(text, addSpecial: true)
        let clock = ContinuousClock()
        func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }
        _ = try model.evaluate(prompt)  // warm-up: pipelines compiled, caches filled
        var pp = [Double]()
        var tg = [Double]()
        for _ in 0..<rounds {
            model.truncate(to: 0)
            var t = clock.now
            var logits = try model.evaluate(prompt)
            pp.append(Double(prompt.count) / seconds(clock.now - t))
            var token = Sampler.argmax(logits)
            t = clock.now
            for _ in 0..<generate {
                logits = try model.evaluate([token])
                token = Sampler.argmax(logits)
            }
            tg.append(Double(generate) / seconds(clock.now - t))
        }
        let mine = (pp.sorted()[pp.count / 2], tg.sorted()[tg.count / 2])

        let tokensFile = FileManager.default.temporaryDirectory.appendingPathComponent("ccinfer-bench-\(getpid()).json")
        try Data("[\(prompt.map(String.init).joined(separator: ","))]".utf8).write(to: tokensFile)
        defer { try? FileManager.default.removeItem(at: tokensFile) }
        let script = root.appendingPathComponent("Benchmarks/ccgate-bench/llama_bench.py").path
        let (rs, ro, re) = run(
            venv + "/bin/python", [script, modelPath, tokensFile.path, String(generate), String(rounds)])
        guard rs == 0, let json = try? JSONSerialization.jsonObject(with: Data(ro.utf8)) as? [String: Any],
            let rpp = json["prompt_tokens_per_s"] as? Double, let rtg = json["generate_tokens_per_s"] as? Double
        else {
            print("\nccgate bench: inference: llama-cpp-python baseline failed: \(re)")
            return
        }
        print("")
        print(
            "ccgate bench: inference (SmolLM2-135M-Instruct Q4_1, \(prompt.count)-token prompt, \(generate) generated tokens, median of \(rounds))"
        )
        print("ccinfer device: \(device.info.summary)")
        print("baseline: llama.cpp CPU build via llama-cpp-python, \(json["threads"] ?? "?") threads, same run")
        print("                       prompt tok/s   generate tok/s")
        print(String(format: "  ccinfer            %12.1f   %14.1f", mine.0, mine.1))
        print(String(format: "  llama.cpp (CPU)    %12.1f   %14.1f", rpp, rtg))
        print(String(format: "  ccinfer/llama.cpp  %12.3f   %14.3f", mine.0 / rpp, mine.1 / rtg))
    } catch {
        print("\nccgate bench: inference failed: \(error)")
    }
}
