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
            #expect(model.matmulShape == shape)
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
                maxWorkgroupInvocations: invocations, maxWorkgroupSizeX: invocations, maxWorkgroupSizeY: 64)
        }
        #expect(MatmulShape.preferred(for: device("CPU", invocations: 1024), arithmetic: .fast) == .serial)
        #expect(MatmulShape.preferred(for: device("discrete GPU", invocations: 1024), arithmetic: .fast) == .split8)
        #expect(
            MatmulShape.preferred(for: device("integrated GPU", invocations: 128), arithmetic: .fast)
                == MatmulShape(rowsPerGroup: 32, split: 4))
        #expect(MatmulShape.preferred(for: device("discrete GPU", invocations: 1024), arithmetic: .exact) == .serial)
        // Only powers of two, which --matmul-split can name.
        #expect(
            MatmulShape.preferred(for: device("discrete GPU", invocations: 192), arithmetic: .fast)
                == MatmulShape(rowsPerGroup: 32, split: 4))
        #expect(MatmulShape.split8.attentionWidth(on: device("discrete GPU", invocations: 1024)) == 256)
        #expect(MatmulShape.split8.attentionWidth(on: device("discrete GPU", invocations: 128)) == 128)
    }

    /// The split kernels where SmolLM2 does not reach: K-quant weights (rows of three and five
    /// super-blocks, fewer than some splits' slices and not a multiple of others), 48 K/V rows (a workgroup of 32 rows left partly
    /// empty), heads of 48 (not dividing attention's width), splits of 2, 4 and 8, and a prompt of
    /// over 100 positions (several position slices). Against the exact serial kernels on the same
    /// file, which are llama.cpp's bits (`ArchitectureTests`, `KQuantKernelTests`): within the
    /// stated tolerance and not the same bits (the split ran); the same bits in a second run and
    /// when batched beside another sequence.
    @Test func splitKernelsOnUnevenShapes() async throws {
        let env = try References.environment.get()
        let dir = try TemporaryDirectory("split")
        let f16 = dir.file("model-f16.gguf")
        let url = dir.file("model.gguf")
        try await onCPULane {
            try SyntheticModel.make(
                architecture: "llama", weights: .f16, tokenizerFrom: GGUFFile(url: env.model),
                shape: .init(embedding: 768, heads: 16, kvHeads: 1, feedForward: 1280, layers: 2)
            ).write(to: f16)
        }
        try await References.run(["quantize", f16.path, url.path, "Q4_K_M"])  // llama.cpp's own quantizer
        let text = String(repeating: "The quick brown fox jumps over the lazy dog while the cat sleeps. ", count: 8)
        struct Run {
            var logits: [Float]
            var again: [Float]
            var alone: [Float]
            var together: [Float]
            /// Layer 0's q, a matmul's output alone (attention comes after it).
            var q: [Float]
        }
        let (exact, runs, kquantTypes) = try await SharedModel.queue.run {
            let device = try Lavapipe.device()
            let reference = try Transformer(url: url, device: device, contextLength: 256)
            let types = Set(reference.gguf.tensors.values.compactMap(\.type))
            let prompt = reference.tokenizer.encode(text, addSpecial: true)
            let other = reference.tokenizer.encode("Once upon a time", addSpecial: true)
            let exact = try reference.evaluate(prompt)
            var runs = [Int: Run]()
            for split in [1, 2, 4, 8] {
                let shape = split == 1 ? MatmulShape.serial : MatmulShape(rowsPerGroup: 32, split: split)
                let model = try Transformer(
                    url: url, device: device, contextLength: 256, slots: 2, arithmetic: .fast, matmulShape: shape)
                let logits = try model.evaluate(prompt)
                model.truncate(slot: 0, to: 0)
                let again = try model.evaluate(prompt)
                let next = Sampler.argmax(again)
                let alone = try model.evaluateNext([(0, next)])[0]
                model.truncate(slot: 0, to: 0)
                _ = try model.evaluate(prompt)
                let first = Sampler.argmax(try model.evaluate(other, slot: 1))
                let together = try model.evaluateNext([(0, next), (1, first)])[0]
                let q = try model.debugBuffers(Array(prompt.prefix(16)), layers: 1)["q"]!
                runs[split] = Run(logits: logits, again: again, alone: alone, together: together, q: q)
            }
            return (exact, runs, types)
        }
        func same(_ a: [Float], _ b: [Float]) -> Bool {
            a.count == b.count && zip(a, b).allSatisfy { $0.bitPattern == $1.bitPattern }
        }
        let spread = (exact.max() ?? 0) - (exact.min() ?? 0)
        #expect(spread > 1, "the random model's logits are not degenerate")
        // ffn_down's five super-blocks fall into other slices under 4 and 8.
        #expect(!same(runs[4]!.logits, runs[8]!.logits), "splits 4 and 8 sum differently")
        #expect(kquantTypes.contains(.q4_K) && kquantTypes.contains(.q6_K), "the file holds K-quants: \(kquantTypes)")
        for split in [1, 2, 4, 8] {
            let run = runs[split]!
            let diff = zip(run.logits, exact).map { abs($0 - $1) }.max() ?? .infinity
            print(
                "split \(split) on K-quant, 48 K/V rows, heads of 48: max |logit difference| \(diff) of a spread \(spread)"
            )
            #expect(diff <= Self.tolerance, "split \(split): logits differ by \(diff)")
            #expect(same(run.logits, run.again), "split \(split): a second run, the same bits")
            #expect(same(run.alone, run.together), "split \(split): alone and batched, the same bits")
            if split > 1 {
                #expect(!same(run.q, runs[1]!.q), "split \(split): the matmuls sum in their own order")
                #expect(!same(run.logits, runs[1]!.logits), "split \(split) sums in its own order")
            }
        }
    }
}
