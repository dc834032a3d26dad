import Foundation
@testable import Inference
import TestSupport
import Testing

/// The default (fast) arithmetic, the device's own fma, division and square root, on
/// SmolLM2-135M-Instruct Q4_1 against llama.cpp's CPU build: first-step logits within
/// `tolerance` on every parity prompt, and the same greedy tokens in three runs (the property
/// that lets a seeded canary prompt be re-checked on the same binary, device and driver).
@Suite struct FastArithmeticTests {
    /// The largest first-step logit difference from llama.cpp allowed (of a spread near 30);
    /// llama.cpp's own Vulkan backend differs from its CPU backend by 0.85 on a K-quant file.
    static let tolerance: Float = 2.5

    @Test func withinToleranceAndDeterministic() async throws {
        let dir = try TemporaryDirectory("fast")
        let env = try References.environment.get()
        try JSONSerialization.data(withJSONObject: ReferenceParityTests.cases).write(to: dir.file("cases.json"))
        try await References.run([
            "generate", env.model.path, dir.file("cases.json").path, dir.file("out.json").path,
            dir.file("logits.bin").path, "--tokens", "32",
        ])
        let reference = try jsonObject(dir.file("out.json")) as! [String: Any]
        let cases = reference["cases"] as! [[String: Any]]
        let vocabulary = reference["n_vocab"] as! Int
        let referenceLogits = try readFloats(dir.file("logits.bin"))
        let prompts = cases.map { $0["prompt_tokens"] as! [Int] }

        let mine: (logits: [[Float]], runs: [[[Int]]]) = try await SharedModel.queue.run {
            let model = try Transformer(
                url: env.model, device: try Lavapipe.device(), contextLength: 512, arithmetic: .fast)
            let logits = try prompts.map { tokens in
                model.truncate(to: 0)
                return try model.evaluate(tokens)
            }
            let runs = try (0..<3).map { _ in
                try [prompts.first!, prompts.last!].map { tokens in
                    try Generator(model: model).generate(
                        prompt: tokens, parameters: SamplingParameters(temperature: 0, maxTokens: 32)
                    ).tokens
                }
            }
            return (logits, runs)
        }
        var worst: Float = 0
        for i in prompts.indices {
            let expected = referenceLogits[(i * vocabulary)..<((i + 1) * vocabulary)]
            let diff = zip(mine.logits[i], expected).map { abs($0 - $1) }.max() ?? .infinity
            worst = max(worst, diff)
            #expect(diff <= Self.tolerance, "case \(i): first-step logits differ by \(diff)")
            #expect(mine.logits[i].allSatisfy { $0.isFinite })
        }
        // On a device without a fused multiply-add (lavapipe) the fast kernels round differently.
        #expect(worst > 0, "the fast kernels ran (exact ones would match llama.cpp bit for bit)")
        #expect(mine.runs[0] == mine.runs[1] && mine.runs[1] == mine.runs[2], "three runs, the same tokens")
        #expect(mine.runs[0].allSatisfy { $0.count > 4 })
        let agree = zip(mine.runs[0], [cases.first!, cases.last!]).map { run, c in
            zip(run, c["greedy"] as! [Int]).prefix { $0 == $1 }.count
        }
        print(
            "fast arithmetic: max |logit difference| \(worst) (tolerance \(Self.tolerance)); greedy tokens "
                + "agreeing with llama.cpp before the first difference: \(agree)")
    }
}
