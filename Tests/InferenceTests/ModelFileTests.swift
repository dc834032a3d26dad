import Foundation
@testable import Inference
import TestSupport
import Testing

/// Corrupt, truncated, hostile and unsupported model files: each is a clear `InferenceError`,
/// never a crash, a hang or an out-of-bounds read.
@Suite struct ModelFileTests {
    /// A small valid file: a few metadata kinds and two tensors.
    static func smallFile() -> [UInt8] {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("llama.block_count", .u32(1))
        w.set("tokenizer.ggml.tokens", .strings(["a", "b", "c"]))
        w.set("some.flag", .bool(true))
        w.set("some.float", .f32(0.5))
        w.add("t.f32", dims: [32, 2], values: (0..<64).map { Float($0) }, as: .f32)
        w.add("t.q8", dims: [32, 1], values: (0..<32).map { Float($0) - 16 }, as: .q8_0)
        return w.bytes()
    }

    static func parse(_ bytes: [UInt8]) -> Result<GGUFFile, InferenceError> {
        let dir = try! TemporaryDirectory("gguf")
        // The directory (and the file in it) must outlive the parse: its deinit removes it.
        defer { withExtendedLifetime(dir) {} }
        let url = dir.file("m.gguf")
        try! Data(bytes).write(to: url)
        do { return .success(try GGUFFile(url: url)) } catch { return .failure(error) }
    }

    @Test func theSmallFileParses() throws {
        let file = try Self.parse(Self.smallFile()).get()
        #expect(file.string("general.architecture") == "llama")
        #expect(file.metadata["some.flag"]?.bool == true)
        #expect(file.metadata["tokenizer.ggml.tokens"]?.array?.count == 3)
        let t = try #require(file.tensors["t.q8"])
        #expect(t.type == .q8_0 && t.byteCount == 34)
        var values = [Float](repeating: 0, count: 32)
        TensorData.dequantize(.q8_0, file.bytes(of: t), start: 0, count: 32, into: &values)
        #expect(values.enumerated().allSatisfy { abs($0.element - (Float($0.offset) - 16)) < 0.07 })
    }

    @Test func everyTruncationIsMalformed() throws {
        let bytes = Self.smallFile()
        // Cuts inside the zero padding after the last tensor leave a complete file.
        let file = try Self.parse(bytes).get()
        let end = file.tensors.values.map { file.dataOffset + $0.offset + ($0.byteCount ?? 0) }.max()!
        for cut in stride(from: 0, to: end, by: 3) {
            switch Self.parse(Array(bytes.prefix(cut))) {
            case .success: Issue.record("a file cut at \(cut) of \(bytes.count) bytes parsed")
            case .failure(let e): #expect(e.code == .modelMalformed, "cut at \(cut): \(e)")
            }
        }
    }

    @Test func mutatedHeadersNeverCrash() {
        var rng = SeededGenerator(seed: 42)
        let bytes = Self.smallFile()
        let headerEnd = 400
        var outcomes = (parsed: 0, refused: 0)
        for round in 0..<1500 {
            var m = bytes
            switch round % 4 {
            case 0: m[Int(rng.next() % UInt64(headerEnd))] ^= UInt8(1 << (rng.next() % 8))
            case 1: m[Int(rng.next() % UInt64(headerEnd))] = 0xFF
            case 2:  // overwrite eight bytes with a huge length
                let at = Int(rng.next() % UInt64(headerEnd - 8))
                for i in 0..<8 { m[at + i] = i == 7 ? 0x7F : 0xFF }
            default: m[Int(rng.next() % UInt64(headerEnd))] = UInt8(truncatingIfNeeded: rng.next())
            }
            switch Self.parse(m) {
            case .success(let f):
                outcomes.parsed += 1
                // Whatever parsed must be readable within bounds.
                for t in f.tensors.values where t.type != nil { _ = f.bytes(of: t).reduce(0, &+) }
            case .failure(let e):
                outcomes.refused += 1
                #expect([.modelMalformed, .modelUnsupported].contains(e.code))
            }
        }
        #expect(outcomes.refused > 500, "most mutations are caught (\(outcomes))")
    }

    @Test func hostileCountsAndLengthsAreRefusedCheaply() {
        func header(_ tensors: UInt64, _ keys: UInt64, _ rest: [UInt8] = []) -> [UInt8] {
            var b: [UInt8] = [0x47, 0x47, 0x55, 0x46, 3, 0, 0, 0]
            withUnsafeBytes(of: tensors.littleEndian) { b.append(contentsOf: $0) }
            withUnsafeBytes(of: keys.littleEndian) { b.append(contentsOf: $0) }
            return b + rest
        }
        let clock = ContinuousClock()
        let start = clock.now
        let cases: [([UInt8], InferenceError.Code)] = [
            ([0x47, 0x47, 0x55, 0x46], .modelMalformed),
            (Array("GGML but not GGUF at all, some bytes".utf8), .modelMalformed),
            ([0x47, 0x47, 0x55, 0x46, 1, 0, 0, 0] + [UInt8](repeating: 0, count: 16), .modelUnsupported),
            (header(1 << 40, 0), .modelMalformed),
            (header(0, 1 << 40), .modelMalformed),
            // A key whose length claims 2^62 bytes.
            (header(0, 1, [0, 0, 0, 0, 0, 0, 0, 0x40]), .modelMalformed),
            // A string-array value claiming 2^40 items.
            (
                header(0, 1, [1, 0, 0, 0, 0, 0, 0, 0, 0x6B, 9, 0, 0, 0, 8, 0, 0, 0] + [0, 0, 0, 0, 0, 1, 0, 0]),
                .modelMalformed
            ),
            // An unknown value type.
            (header(0, 1, [1, 0, 0, 0, 0, 0, 0, 0, 0x6B, 99, 0, 0, 0]), .modelMalformed),
        ]
        for (bytes, code) in cases {
            switch Self.parse(bytes) {
            case .success: Issue.record("hostile header parsed: \(bytes.prefix(32))")
            case .failure(let e): #expect(e.code == code, "\(e)")
            }
        }
        #expect(clock.now - start < .seconds(5))
    }

    @Test func aTensorPastTheEndIsTruncation() throws {
        var bytes = Self.smallFile()
        bytes.removeLast(40)
        let error = try #require(Self.parse(bytes).failure)
        #expect(error.code == .modelMalformed)
        #expect(error.message.contains("truncated"))
    }

    @Test func theRealModelCutShortIsRefused() throws {
        let env = try References.environment.get()
        let handle = try FileHandle(forReadingFrom: env.model)
        let prefix = try handle.read(upToCount: 30 << 20) ?? Data()
        let error = try #require(Self.parse([UInt8](prefix)).failure)
        #expect(error.code == .modelMalformed)
    }

    @Test func unsupportedTensorTypesAndArchitecturesAreNamed() async throws {
        let env = try References.environment.get()
        let dir = try TemporaryDirectory("unsupported")
        // Writing the models is seconds of work in a debug build: off the cooperative pool.
        try await onCPULane {
            var w = SyntheticModel.make(
                architecture: "llama", weights: .f16, tokenizerFrom: try GGUFFile(url: env.model))
            let i = w.tensors.firstIndex { $0.name == "blk.0.attn_q.weight" }!
            w.tensors[i].type = 20  // IQ4_NL: 18 bytes per 32 weights
            w.tensors[i].data = [UInt8](repeating: 0, count: w.tensors[i].data.count / 64 * 18)
            try w.write(to: dir.file("iq4.gguf"))
            var arch = SyntheticModel.make(
                architecture: "llama", weights: .f16, tokenizerFrom: try GGUFFile(url: env.model))
            arch.metadata[0] = ("general.architecture", .string("mamba"))
            try arch.write(to: dir.file("mamba.gguf"))
        }
        let urls = (dir.file("iq4.gguf"), dir.file("mamba.gguf"))
        let errors: [InferenceError?] = try await SharedModel.queue.run {
            let device = try Lavapipe.device()
            return [urls.0, urls.1].map { url -> InferenceError? in
                do {
                    _ = try Transformer(url: url, device: device)
                    return nil
                } catch { return error as? InferenceError }
            }
        }
        #expect(errors[0]?.code == .modelUnsupported)
        #expect(
            errors[0]?.message.contains("blk.0.attn_q.weight") == true && errors[0]?.message.contains("IQ4_NL") == true,
            "\(String(describing: errors[0]))")
        #expect(errors[1]?.code == .modelUnsupported)
        #expect(errors[1]?.message.contains("mamba") == true)
    }
}

extension Result {
    var failure: Failure? { if case .failure(let f) = self { f } else { nil } }
}
