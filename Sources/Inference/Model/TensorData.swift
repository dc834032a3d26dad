import Foundation

/// Host-side views of GGML tensor blocks: dequantization (for embedding rows and tests) and
/// the repacking into the word-aligned layout the kernels read.
///
/// Repacked layout, per block of 32 weights, row-major:
/// - Q4_1: one scale word `d | m << 16` (halves), four quant words (the 16 nibble bytes);
/// - Q4_0: one scale word `d`, four quant words;
/// - Q8_0: one scale word `d`, eight quant words (32 signed bytes);
/// - Q5_0, Q5_1: two scale words (`d` or `d | m << 16`, then the 32 high bits), four quant words;
/// - Q4_K, Q5_K, Q6_K: the GGML super-block as it is, zero-padded to whole words (Q6_K's 210
///   bytes to 212), no scale words: the kernels read scales and quants from the block itself;
/// - F16, F32: the raw row, no scale words.
enum TensorData {
    static func half(_ bits: UInt16) -> Float { Float(Float16(bitPattern: bits)) }

    /// Dequantizes `count` elements starting at element `start` (a multiple of the block size).
    static func dequantize(
        _ type: GGMLType, _ bytes: UnsafeRawBufferPointer, start: Int, count: Int, into out: UnsafeMutablePointer<Float>
    ) {
        switch type {
        case .f32:
            for i in 0..<count { out[i] = bytes.loadUnaligned(fromByteOffset: (start + i) * 4, as: Float.self) }
        case .f16:
            for i in 0..<count { out[i] = half(bytes.loadUnaligned(fromByteOffset: (start + i) * 2, as: UInt16.self)) }
        case .q8_0:
            for b in 0..<(count / 32) {
                let base = (start / 32 + b) * 34
                let d = half(bytes.loadUnaligned(fromByteOffset: base, as: UInt16.self))
                for j in 0..<32 { out[b * 32 + j] = Float(Int8(bitPattern: bytes[base + 2 + j])) * d }
            }
        case .q4_0:
            for b in 0..<(count / 32) {
                let base = (start / 32 + b) * 18
                let d = half(bytes.loadUnaligned(fromByteOffset: base, as: UInt16.self))
                for j in 0..<16 {
                    let q = bytes[base + 2 + j]
                    out[b * 32 + j] = Float(Int(q & 0x0F) - 8) * d
                    out[b * 32 + j + 16] = Float(Int(q >> 4) - 8) * d
                }
            }
        case .q4_1:
            for b in 0..<(count / 32) {
                let base = (start / 32 + b) * 20
                let d = half(bytes.loadUnaligned(fromByteOffset: base, as: UInt16.self))
                let m = half(bytes.loadUnaligned(fromByteOffset: base + 2, as: UInt16.self))
                for j in 0..<16 {
                    let q = bytes[base + 4 + j]
                    out[b * 32 + j] = Float(q & 0x0F) * d + m
                    out[b * 32 + j + 16] = Float(q >> 4) * d + m
                }
            }
        case .q5_0, .q5_1:
            let hasMin = type == .q5_1
            let blockBytes = type.block.bytes
            for b in 0..<(count / 32) {
                let base = (start / 32 + b) * blockBytes
                let d = half(bytes.loadUnaligned(fromByteOffset: base, as: UInt16.self))
                let m = hasMin ? half(bytes.loadUnaligned(fromByteOffset: base + 2, as: UInt16.self)) : 0
                let header = hasMin ? 4 : 2
                let qh = bytes.loadUnaligned(fromByteOffset: base + header, as: UInt32.self)
                for j in 0..<16 {
                    let q = bytes[base + header + 4 + j]
                    let lo = Int(q & 0x0F) | Int((qh >> UInt32(j)) & 1) << 4
                    let hi = Int(q >> 4) | Int((qh >> UInt32(j + 16)) & 1) << 4
                    out[b * 32 + j] = hasMin ? Float(lo) * d + m : Float(lo - 16) * d
                    out[b * 32 + j + 16] = hasMin ? Float(hi) * d + m : Float(hi - 16) * d
                }
            }
        case .q4_K, .q5_K:
            let blockBytes = type.block.bytes
            let fifth = type == .q5_K
            for b in 0..<(count / 256) {
                let base = (start / 256 + b) * blockBytes
                let d = half(bytes.loadUnaligned(fromByteOffset: base, as: UInt16.self))
                let dmin = half(bytes.loadUnaligned(fromByteOffset: base + 2, as: UInt16.self))
                let scales = base + 4
                let qh = base + 16
                let qs = base + (fifth ? 48 : 16)
                for chunk in 0..<4 {
                    for part in 0..<2 {
                        let (sc, m) = scaleMin(bytes, scales, chunk * 2 + part)
                        let d1 = d * Float(sc)
                        let m1 = dmin * Float(m)
                        for l in 0..<32 {
                            let byte = bytes[qs + chunk * 32 + l]
                            var q = Int(part == 0 ? byte & 0x0F : byte >> 4)
                            if fifth, bytes[qh + l] & (1 << UInt8(chunk * 2 + part)) != 0 { q += 16 }
                            out[b * 256 + chunk * 64 + part * 32 + l] = d1 * Float(q) - m1
                        }
                    }
                }
            }
        case .q6_K:
            for b in 0..<(count / 256) {
                let base = (start / 256 + b) * 210
                let d = half(bytes.loadUnaligned(fromByteOffset: base + 208, as: UInt16.self))
                for n in 0..<2 {
                    let ql = base + n * 64
                    let qh = base + 128 + n * 32
                    let sc = base + 192 + n * 8
                    for l in 0..<32 {
                        let h = Int(bytes[qh + l])
                        let q1 = (Int(bytes[ql + l] & 0x0F) | (h & 3) << 4) - 32
                        let q2 = (Int(bytes[ql + l + 32] & 0x0F) | ((h >> 2) & 3) << 4) - 32
                        let q3 = (Int(bytes[ql + l] >> 4) | ((h >> 4) & 3) << 4) - 32
                        let q4 = (Int(bytes[ql + l + 32] >> 4) | ((h >> 6) & 3) << 4) - 32
                        let s = { (i: Int) in Float(Int8(bitPattern: bytes[sc + l / 16 + i])) }
                        let o = out + b * 256 + n * 128
                        o[l] = d * s(0) * Float(q1)
                        o[l + 32] = d * s(2) * Float(q2)
                        o[l + 64] = d * s(4) * Float(q3)
                        o[l + 96] = d * s(6) * Float(q4)
                    }
                }
            }
        }
    }

    /// The 6-bit scale and min of sub-block `j` (0-7) of a Q4_K or Q5_K super-block, packed in
    /// the 12 bytes at `at` as ggml packs them.
    static func scaleMin(_ bytes: UnsafeRawBufferPointer, _ at: Int, _ j: Int) -> (UInt8, UInt8) {
        if j < 4 { return (bytes[at + j] & 63, bytes[at + j + 4] & 63) }
        return (
            (bytes[at + j + 4] & 0x0F) | ((bytes[at + j - 4] >> 6) << 4),
            (bytes[at + j + 4] >> 4) | ((bytes[at + j] >> 6) << 4)
        )
    }

    /// Words of quants per block in the repacked layout (0 for float types: raw rows).
    static func quantWords(_ type: GGMLType) -> Int {
        switch type {
        case .q4_0, .q4_1, .q5_0, .q5_1: 4
        case .q8_0: 8
        case .q4_K, .q5_K, .q6_K: (type.block.bytes + 3) / 4
        case .f16, .f32: 0
        }
    }

    /// Scale words per block in the repacked layout (0 for float types and K-quants).
    static func scaleWords(_ type: GGMLType) -> Int {
        switch type {
        case .q4_0, .q4_1, .q8_0: 1
        case .q5_0, .q5_1: 2
        case .q4_K, .q5_K, .q6_K, .f16, .f32: 0
        }
    }

    /// Splits `blocks` GGML blocks of `type` into scale words and quant words (K-quant blocks
    /// are copied whole into the quant words, zero-padded).
    static func repack(
        _ type: GGMLType, _ bytes: UnsafeRawBufferPointer, blocks: Int,
        scales: UnsafeMutablePointer<UInt32>, quants: UnsafeMutablePointer<UInt32>
    ) {
        let blockBytes = type.block.bytes
        let words = quantWords(type)
        let scaleWords = scaleWords(type)
        for b in 0..<blocks {
            let base = b * blockBytes
            if type.isKQuant {
                let out = UnsafeMutableRawPointer(quants + b * words)
                out.initializeMemory(as: UInt32.self, repeating: 0, count: words)
                out.copyMemory(from: bytes.baseAddress! + base, byteCount: blockBytes)
                continue
            }
            let headerBytes: Int
            switch type {
            case .q4_1, .q5_1:
                scales[b * scaleWords] = bytes.loadUnaligned(fromByteOffset: base, as: UInt32.self)
                headerBytes = 4
            default:
                scales[b * scaleWords] = UInt32(bytes.loadUnaligned(fromByteOffset: base, as: UInt16.self))
                headerBytes = 2
            }
            var quantStart = base + headerBytes
            if scaleWords == 2 {
                scales[b * 2 + 1] = bytes.loadUnaligned(fromByteOffset: quantStart, as: UInt32.self)
                quantStart += 4
            }
            for w in 0..<words {
                quants[b * words + w] = bytes.loadUnaligned(fromByteOffset: quantStart + w * 4, as: UInt32.self)
            }
        }
    }
}
