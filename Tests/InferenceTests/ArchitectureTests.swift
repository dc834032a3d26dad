import Foundation
@testable import Inference
import TestSupport
import Testing

/// The Llama, Qwen2 (q/k/v biases) and Qwen3 (per-head q/k norms) layouts and the F32, F16,
/// Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 tensor types, each on a tiny random model written for the test, against
/// llama.cpp on the same file: logits after the prompt within `tolerance` (zero), and the same greedy
/// tokens. (The kernels reproduce the reference arithmetic: the logits must be bit-identical.)
@Suite struct ArchitectureTests {
    struct Variant: Sendable, CustomTestStringConvertible {
        let architecture: String
        let weights: GGMLType
        let tiedOutput: Bool
        var testDescription: String { "\(architecture) \(weights.name)\(tiedOutput ? "" : ", separate output")" }
    }

    static let variants = [
        Variant(architecture: "llama", weights: .f32, tiedOutput: true),
        Variant(architecture: "llama", weights: .f16, tiedOutput: false),
        Variant(architecture: "llama", weights: .q8_0, tiedOutput: true),
        Variant(architecture: "qwen2", weights: .f16, tiedOutput: true),
        Variant(architecture: "qwen2", weights: .q4_1, tiedOutput: false),
        Variant(architecture: "qwen3", weights: .q8_0, tiedOutput: false),
        Variant(architecture: "qwen3", weights: .q4_0, tiedOutput: true),
        Variant(architecture: "llama", weights: .q5_0, tiedOutput: false),
        Variant(architecture: "qwen2", weights: .q5_1, tiedOutput: true),
    ]
    /// The kernels reproduce the reference's arithmetic: no difference at all is allowed.
    static let tolerance: Float = 0

    @Test(arguments: variants)
    func matchesLlamaCpp(_ variant: Variant) async throws {
        let env = try References.environment.get()
        let dir = try TemporaryDirectory("arch")
        let modelURL = dir.file("model.gguf")
        try await onCPULane {
            try SyntheticModel.make(
                architecture: variant.architecture, weights: variant.weights, tokenizerFrom: GGUFFile(url: env.model),
                tiedOutput: variant.tiedOutput
            ).write(to: modelURL)
        }
        let cases: [[String: String]] = [
            ["chat": "Say something."],
            // Over 32 positions with heads of 32: attention's product with v in the reference's order
            // past its first run of positions.
            [
                "text":
                    "Once upon a time, in a land far away, there lived a king who had three daughters, and each of them was wiser than the last, and the youngest was the wisest of all"
            ],
        ]
        try JSONSerialization.data(withJSONObject: cases).write(to: dir.file("cases.json"))
        try await References.run([
            "generate", modelURL.path, dir.file("cases.json").path, dir.file("out.json").path,
            dir.file("logits.bin").path,
            "--tokens", "16",
        ])
        let reference = try jsonObject(dir.file("out.json")) as! [String: Any]
        let refCases = reference["cases"] as! [[String: Any]]
        let vocabulary = reference["n_vocab"] as! Int
        let refLogits = try readFloats(dir.file("logits.bin"))

        let prompts = refCases.map { $0["prompt_tokens"] as! [Int] }
        let results: [(tokens: [Int], logits: [Float], greedy: [Int])] = try await SharedModel.queue.run {
            let model = try Transformer(url: modelURL, device: try Lavapipe.device(), contextLength: 256)
            return try prompts.map { tokens in
                model.truncate(to: 0)
                let logits = try model.evaluate(tokens)
                let greedy = try Generator(model: model).generate(
                    prompt: tokens, parameters: SamplingParameters(temperature: 0, maxTokens: 16)
                ).tokens
                return (tokens, logits, greedy)
            }
        }
        for (i, c) in refCases.enumerated() {
            let expected = Array(refLogits[(i * vocabulary)..<((i + 1) * vocabulary)])
            let diff = zip(results[i].logits, expected).map { abs($0 - $1) }.max() ?? .infinity
            let spread = (expected.max() ?? 0) - (expected.min() ?? 0)
            #expect(spread > 0.1, "the random model's logits are not degenerate")
            print(
                "\(variant.testDescription) case \(i): max |logit difference| \(diff), logit spread \(spread), greedy \(results[i].greedy.prefix(6))…"
            )
            #expect(diff <= Self.tolerance, "\(variant.testDescription) case \(i): logits differ by \(diff)")
            #expect(results[i].greedy == c["greedy"] as? [Int], "\(variant.testDescription) case \(i): greedy tokens")
        }
    }
}

extension DispatchQueue {
    /// Runs `body` on this queue and returns its result to async code.
    func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            async { continuation.resume(with: Result { try body() }) }
        }
    }
}
