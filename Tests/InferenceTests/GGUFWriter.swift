import Foundation
@testable import Inference

/// Writes GGUF v3 files for tests: synthetic models (any architecture, any tensor type the
/// engine reads) and deliberately broken ones.
struct GGUFWriter {
    enum Value {
        case u32(UInt32)
        case i32(Int32)
        case f32(Float)
        case bool(Bool)
        case string(String)
        case strings([String])
        case i32s([Int32])
        /// A raw type id and payload, for writing what a real writer never would.
        case raw(UInt32, [UInt8])
    }

    struct Tensor {
        var name: String
        var dims: [Int]
        var type: UInt32
        var data: [UInt8]
    }

    var metadata: [(String, Value)] = []
    var tensors: [Tensor] = []
    var alignment = 32

    mutating func set(_ key: String, _ value: Value) { metadata.append((key, value)) }

    mutating func add(_ name: String, dims: [Int], values: [Float], as type: GGMLType) {
        tensors.append(Tensor(name: name, dims: dims, type: type.rawValue, data: Self.encode(values, as: type)))
    }

    func bytes() -> [UInt8] {
        var out = [UInt8]()
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func string(_ s: String) {
            u64(UInt64(s.utf8.count))
            out.append(contentsOf: Array(s.utf8))
        }
        u32(0x4655_4747)
        u32(3)
        u64(UInt64(tensors.count))
        u64(UInt64(metadata.count))
        for (key, value) in metadata {
            string(key)
            switch value {
            case .u32(let v): u32(4); u32(v)
            case .i32(let v): u32(5); u32(UInt32(bitPattern: v))
            case .f32(let v): u32(6); u32(v.bitPattern)
            case .bool(let v): u32(7); out.append(v ? 1 : 0)
            case .string(let s): u32(8); string(s)
            case .strings(let items):
                u32(9); u32(8); u64(UInt64(items.count))
                for s in items { string(s) }
            case .i32s(let items):
                u32(9); u32(5); u64(UInt64(items.count))
                for v in items { u32(UInt32(bitPattern: v)) }
            case .raw(let type, let payload): u32(type); out.append(contentsOf: payload)
            }
        }
        var offset = 0
        var offsets = [Int]()
        for t in tensors {
            offsets.append(offset)
            offset += (t.data.count + alignment - 1) / alignment * alignment
        }
        for (t, o) in zip(tensors, offsets) {
            string(t.name)
            u32(UInt32(t.dims.count))
            for d in t.dims { u64(UInt64(d)) }
            u32(t.type)
            u64(UInt64(o))
        }
        while out.count % alignment != 0 { out.append(0) }
        for t in tensors {
            out.append(contentsOf: t.data)
            while out.count % alignment != 0 { out.append(0) }
        }
        return out
    }

    func write(to url: URL) throws { try Data(bytes()).write(to: url) }

    // MARK: Quantization (simple, not ggml's search; both engines read the same bytes)

    static func half(_ f: Float) -> [UInt8] { withUnsafeBytes(of: Float16(f).bitPattern.littleEndian) { Array($0) } }

    static func encode(_ values: [Float], as type: GGMLType) -> [UInt8] {
        var out = [UInt8]()
        switch type {
        case .f32: for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { out.append(contentsOf: $0) } }
        case .f16: for v in values { out.append(contentsOf: half(v)) }
        case .q8_0:
            for b in stride(from: 0, to: values.count, by: 32) {
                let block = values[b..<(b + 32)]
                let d = (block.map { abs($0) }.max() ?? 0) / 127
                out.append(contentsOf: half(d))
                for v in block {
                    out.append(UInt8(bitPattern: Int8(d == 0 ? 0 : max(-127, min(127, (v / d).rounded())))))
                }
            }
        case .q4_0:
            for b in stride(from: 0, to: values.count, by: 32) {
                let block = Array(values[b..<(b + 32)])
                let d = (block.map { abs($0) }.max() ?? 0) / 7
                out.append(contentsOf: half(d))
                let q = block.map { UInt8(max(0, min(15, d == 0 ? 8 : ($0 / d).rounded() + 8))) }
                for j in 0..<16 { out.append(q[j] | (q[j + 16] << 4)) }
            }
        case .q4_1:
            for b in stride(from: 0, to: values.count, by: 32) {
                let block = Array(values[b..<(b + 32)])
                let lo = block.min() ?? 0
                let d = ((block.max() ?? 0) - lo) / 15
                out.append(contentsOf: half(d))
                out.append(contentsOf: half(lo))
                let q = block.map { UInt8(max(0, min(15, d == 0 ? 0 : (($0 - lo) / d).rounded()))) }
                for j in 0..<16 { out.append(q[j] | (q[j + 16] << 4)) }
            }
        case .q5_0, .q5_1:
            for b in stride(from: 0, to: values.count, by: 32) {
                let block = Array(values[b..<(b + 32)])
                let q: [UInt8]
                if type == .q5_0 {
                    let d = (block.map { abs($0) }.max() ?? 0) / 15
                    out.append(contentsOf: half(d))
                    q = block.map { UInt8(max(0, min(31, d == 0 ? 16 : ($0 / d).rounded() + 16))) }
                } else {
                    let lo = block.min() ?? 0
                    let d = ((block.max() ?? 0) - lo) / 31
                    out.append(contentsOf: half(d))
                    out.append(contentsOf: half(lo))
                    q = block.map { UInt8(max(0, min(31, d == 0 ? 0 : (($0 - lo) / d).rounded()))) }
                }
                var qh: UInt32 = 0
                for j in 0..<32 where q[j] & 16 != 0 { qh |= 1 << UInt32(j) }
                withUnsafeBytes(of: qh.littleEndian) { out.append(contentsOf: $0) }
                for j in 0..<16 { out.append((q[j] & 15) | ((q[j + 16] & 15) << 4)) }
            }
        case .q4_K, .q5_K, .q6_K:
            preconditionFailure("K-quant test files are written by llama.cpp's quantizer (reference_llama.py quantize)")
        }
        return out
    }
}

/// A tiny random transformer of a given architecture, with the tokenizer of a real model so that
/// both engines can tokenize and render prompts.
enum SyntheticModel {
    struct Shape {
        var embedding = 128
        var heads = 4
        var kvHeads = 2
        var feedForward = 256
        var layers = 2
    }

    static func make(
        architecture: String, weights: GGMLType, tokenizerFrom source: GGUFFile, shape: Shape = Shape(),
        tiedOutput: Bool = true, seed: UInt64 = 1
    ) -> GGUFWriter {
        var rng = SeededGenerator(seed: seed)
        func random(_ n: Int, scale: Float) -> [Float] {
            (0..<n).map { _ in Float(Double(rng.next() >> 11) / Double(1 << 53) * 2 - 1) * scale }
        }
        let vocabulary = source.metadata["tokenizer.ggml.tokens"]!.array!.count
        let e = shape.embedding
        let hd = e / shape.heads
        let kv = shape.kvHeads * hd
        var w = GGUFWriter()
        w.set("general.architecture", .string(architecture))
        w.set("general.name", .string("synthetic \(architecture)"))
        w.set("\(architecture).context_length", .u32(2048))
        w.set("\(architecture).embedding_length", .u32(UInt32(e)))
        w.set("\(architecture).block_count", .u32(UInt32(shape.layers)))
        w.set("\(architecture).feed_forward_length", .u32(UInt32(shape.feedForward)))
        w.set("\(architecture).attention.head_count", .u32(UInt32(shape.heads)))
        w.set("\(architecture).attention.head_count_kv", .u32(UInt32(shape.kvHeads)))
        w.set("\(architecture).attention.layer_norm_rms_epsilon", .f32(1e-6))
        w.set("\(architecture).rope.freq_base", .f32(10000))
        if architecture == "llama" { w.set("llama.rope.dimension_count", .u32(UInt32(hd))) }
        for key in [
            "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
            "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token",
            "tokenizer.chat_template",
        ] {
            guard let v = source.metadata[key] else { continue }
            switch v {
            case .string(let s): w.set(key, .string(s))
            case .uint(let u): w.set(key, .u32(UInt32(u)))
            case .int(let i): w.set(key, .i32(Int32(i)))
            case .bool(let b): w.set(key, .bool(b))
            case .array(let items) where items.first?.string != nil: w.set(key, .strings(items.compactMap(\.string)))
            case .array(let items): w.set(key, .i32s(items.compactMap(\.int).map { Int32($0) }))
            default: break
            }
        }
        w.set("tokenizer.ggml.pre", .string(architecture == "llama" ? "smollm" : "qwen2"))
        let norm: (Int) -> [Float] = { n in
            (0..<n).map { _ in 1 + Float(Double(rng.next() >> 11) / Double(1 << 53)) * 0.2 - 0.1 }
        }
        w.add(
            "token_embd.weight", dims: [e, vocabulary], values: random(e * vocabulary, scale: 0.5),
            as: [.q4_0, .q4_1, .q5_0, .q5_1].contains(weights) ? .q8_0 : weights)
        for l in 0..<shape.layers {
            let p = "blk.\(l)."
            w.add(p + "attn_norm.weight", dims: [e], values: norm(e), as: .f32)
            w.add(p + "attn_q.weight", dims: [e, e], values: random(e * e, scale: 0.15), as: weights)
            w.add(p + "attn_k.weight", dims: [e, kv], values: random(e * kv, scale: 0.15), as: weights)
            w.add(p + "attn_v.weight", dims: [e, kv], values: random(e * kv, scale: 0.15), as: weights)
            if architecture == "qwen2" {
                w.add(p + "attn_q.bias", dims: [e], values: random(e, scale: 0.1), as: .f32)
                w.add(p + "attn_k.bias", dims: [kv], values: random(kv, scale: 0.1), as: .f32)
                w.add(p + "attn_v.bias", dims: [kv], values: random(kv, scale: 0.1), as: .f32)
            }
            if architecture == "qwen3" {
                w.add(p + "attn_q_norm.weight", dims: [hd], values: norm(hd), as: .f32)
                w.add(p + "attn_k_norm.weight", dims: [hd], values: norm(hd), as: .f32)
            }
            w.add(p + "attn_output.weight", dims: [e, e], values: random(e * e, scale: 0.15), as: weights)
            w.add(p + "ffn_norm.weight", dims: [e], values: norm(e), as: .f32)
            w.add(
                p + "ffn_gate.weight", dims: [e, shape.feedForward], values: random(e * shape.feedForward, scale: 0.15),
                as: weights)
            w.add(
                p + "ffn_up.weight", dims: [e, shape.feedForward], values: random(e * shape.feedForward, scale: 0.15),
                as: weights)
            w.add(
                p + "ffn_down.weight", dims: [shape.feedForward, e], values: random(e * shape.feedForward, scale: 0.1),
                as: weights)
        }
        w.add("output_norm.weight", dims: [e], values: norm(e), as: .f32)
        if !tiedOutput {
            w.add("output.weight", dims: [e, vocabulary], values: random(e * vocabulary, scale: 0.5), as: .f16)
        }
        return w
    }
}
