import Foundation
@testable import Inference
import TestSupport
import Testing

/// The default (fast) arithmetic, the device's own fma, division and square root, on
/// SmolLM2-135M-Instruct Q4_1 against llama.cpp's CPU build: first-step logits within
/// `tolerance` on every parity prompt, and the same greedy tokens in three runs (the property
/// that lets a seeded canary prompt be re-checked on the same binary, device and driver). Both
/// matmul shapes run here: the serial one lavapipe uses and the split one GPUs use.
@Suite struct FastArithmeticTests {
    /// The largest first-step logit difference from llama.cpp allowed (of a spread near 30);
    /// llama.cpp's own Vulkan backend differs from its CPU backend by 0.85 on a K-quant file.
    static let tolerance: Float = 2.5

    @Test(arguments: [MatmulShape.serial, .split8])
    func withinToleranceAndDeterministic(shape: MatmulShape) async throws {
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
                url: env.model, device: try Lavapipe.device(), contextLength: 512, arithmetic: .fast,
                matmulShape: shape)
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
            "fast arithmetic, \(shape) matmuls: max |logit difference| \(worst) (tolerance \(Self.tolerance)); greedy tokens "
                + "agreeing with llama.cpp before the first difference: \(agree)")
    }

    /// With split matmuls a sequence's logits are still the same bits whether it steps alone or
    /// beside another (the slices are added in a fixed order, whatever the batch holds).
    @Test func splitMatmulsIndependentOfTheBatch() async throws {
        let env = try References.environment.get()
        let prompts = ReferenceParityTests.cases.prefix(2).map { $0["chat"] ?? $0["text"]! }
        let (alone, together, exactShapeRefused) = try await SharedModel.queue.run {
            let device = try Lavapipe.device()
            let model = try Transformer(
                url: env.model, device: device, contextLength: 256, slots: 2, arithmetic: .fast, matmulShape: .split8)
            let tokens = prompts.map { model.tokenizer.encode($0, addSpecial: true) }
            let first = try tokens.enumerated().map { slot, t in Sampler.argmax(try model.evaluate(t, slot: slot)) }
            let together = try model.evaluateNext([(0, first[0]), (1, first[1])])[0]
            model.truncate(slot: 0, to: 0)
            _ = try model.evaluate(tokens[0], slot: 0)
            let alone = try model.evaluateNext([(0, first[0])])[0]
            var refused = false
            do {
                _ = try Transformer(url: env.model, device: device, arithmetic: .exact, matmulShape: .split8)
            } catch let error as InferenceError { refused = error.code == .invalidRequest }
            return (alone, together, refused)
        }
        #expect(alone.count == together.count && alone.count > 1000)
        #expect(zip(alone, together).allSatisfy { $0.bitPattern == $1.bitPattern }, "alone and batched, the same bits")
        #expect(exactShapeRefused, "the exact arithmetic keeps the reference's order")
    }

    /// The shape follows what the device reports: serial on CPU devices and for the exact
    /// arithmetic, 8 slices on GPUs, fewer where workgroups are small.
    @Test func shapeChosenPerDevice() {
        func device(_ type: String, invocations: UInt32) -> VulkanDeviceInfo {
            VulkanDeviceInfo(
                index: 0, name: "test", type: type, apiVersion: "1.3", driverName: "test", driverInfo: "", vendorID: 0,
                deviceLocalBytes: 0, totalBytes: 0, hasComputeQueue: true, maxStorageBufferRange: 1 << 30,
                maxWorkgroupInvocations: invocations)
        }
        #expect(MatmulShape.preferred(for: device("CPU", invocations: 1024), arithmetic: .fast) == .serial)
        #expect(MatmulShape.preferred(for: device("discrete GPU", invocations: 1024), arithmetic: .fast) == .split8)
        #expect(
            MatmulShape.preferred(for: device("integrated GPU", invocations: 128), arithmetic: .fast)
                == MatmulShape(rowsPerGroup: 32, split: 4))
        #expect(MatmulShape.preferred(for: device("discrete GPU", invocations: 1024), arithmetic: .exact) == .serial)
    }
}
