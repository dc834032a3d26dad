import Foundation

/// Host-side views of GGML tensor blocks: dequantization (for embedding rows and tests) and
/// the repacking into the word-aligned layout the kernels read.
///
/// Repacked layout, per block of 32 weights, row-major:
/// - Q4_1: one scale word `d | m << 16` (halves), four quant words (the 16 nibble bytes);
/// - Q4_0: one scale word `d`, four quant words;
/// - Q8_0: one scale word `d`, eight quant words (32 signed bytes);
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
        }
    }

    /// Words of quants per block in the repacked layout (0 for float types: raw rows).
    static func quantWords(_ type: GGMLType) -> Int {
        switch type {
        case .q4_0, .q4_1: 4
        case .q8_0: 8
        case .f16, .f32: 0
        }
    }

    /// Splits `blocks` GGML blocks of `type` into scale words and quant words.
    static func repack(
        _ type: GGMLType, _ bytes: UnsafeRawBufferPointer, blocks: Int,
        scales: UnsafeMutablePointer<UInt32>, quants: UnsafeMutablePointer<UInt32>
    ) {
        let blockBytes = type.block.bytes
        let words = quantWords(type)
        for b in 0..<blocks {
            let base = b * blockBytes
            let headerBytes: Int
            switch type {
            case .q4_1:
                scales[b] = bytes.loadUnaligned(fromByteOffset: base, as: UInt32.self)
                headerBytes = 4
            default:
                scales[b] = UInt32(bytes.loadUnaligned(fromByteOffset: base, as: UInt16.self))
                headerBytes = 2
            }
            for w in 0..<words {
                quants[b * words + w] = bytes.loadUnaligned(fromByteOffset: base + headerBytes + w * 4, as: UInt32.self)
            }
        }
    }
}
