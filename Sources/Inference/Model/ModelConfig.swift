import Foundation

/// Hyperparameters of a decoder-only transformer in the Llama family, read from GGUF metadata
/// (`<arch>.block_count`, `<arch>.embedding_length`, …).
public struct ModelConfig: Sendable, Equatable {
    public enum Architecture: String, Sendable, CaseIterable {
        case llama
        case qwen2
        case qwen3
    }

    public enum RopeStyle: Sendable, Equatable {
        /// Adjacent pairs (x[2i], x[2i+1]) rotate together: Llama's GGUF layout.
        case normal
        /// Halves (x[i], x[i + d/2]) rotate together: Qwen's.
        case neox
    }

    public var architecture: Architecture
    public var layerCount: Int
    public var embeddingLength: Int
    public var feedForwardLength: Int
    public var headCount: Int
    public var kvHeadCount: Int
    public var headDim: Int
    public var contextLength: Int
    public var vocabularySize: Int
    public var rmsEpsilon: Float
    public var ropeBase: Float
    public var ropeDimensions: Int
    public var ropeStyle: RopeStyle
    /// Qwen2: q, k and v projections carry biases.
    public var hasQKVBias: Bool
    /// Qwen3: per-head RMS norms on q and k before RoPE.
    public var hasQKNorm: Bool

    /// Reads and checks the hyperparameters. Absurd values are refused here, before any
    /// allocation is sized from them.
    public init(gguf: GGUFFile) throws(InferenceError) {
        guard let archName = gguf.string("general.architecture") else {
            throw InferenceError(.modelMalformed, "general.architecture is missing")
        }
        guard let arch = Architecture(rawValue: archName) else {
            throw InferenceError(
                .modelUnsupported,
                "architecture '\(archName)' is not supported (\(Architecture.allCases.map(\.rawValue).joined(separator: ", ")) are)"
            )
        }
        architecture = arch
        func required(_ key: String) throws(InferenceError) -> Int {
            guard let v = gguf.int("\(archName).\(key)") else {
                throw InferenceError(.modelMalformed, "\(archName).\(key) is missing")
            }
            return v
        }
        layerCount = try required("block_count")
        embeddingLength = try required("embedding_length")
        feedForwardLength = try required("feed_forward_length")
        headCount = try required("attention.head_count")
        kvHeadCount = gguf.int("\(archName).attention.head_count_kv") ?? headCount
        contextLength = try required("context_length")
        guard (1...1024).contains(layerCount), (1...65536).contains(embeddingLength),
            (1...262_144).contains(feedForwardLength),
            (1...1024).contains(headCount), (1...headCount).contains(kvHeadCount), headCount % kvHeadCount == 0,
            contextLength >= 1
        else {
            throw InferenceError(
                .modelMalformed,
                "hyperparameters out of range: \(layerCount) layers, \(embeddingLength) wide, "
                    + "\(headCount) heads / \(kvHeadCount) kv heads, ffn \(feedForwardLength)")
        }
        headDim = gguf.int("\(archName).attention.key_length") ?? embeddingLength / headCount
        let valueDim = gguf.int("\(archName).attention.value_length") ?? headDim
        guard headDim == valueDim, headDim >= 2, headDim % 2 == 0, headDim <= 512 else {
            throw InferenceError(
                .modelUnsupported,
                "head size \(headDim) (values \(valueDim)) is not supported: need equal, even, at most 512")
        }
        if gguf.int("\(archName).attention.key_length") == nil, embeddingLength % headCount != 0 {
            throw InferenceError(
                .modelMalformed, "embedding length \(embeddingLength) is not a multiple of \(headCount) heads")
        }
        rmsEpsilon = Float(gguf.float("\(archName).attention.layer_norm_rms_epsilon") ?? 1e-5)
        ropeBase = Float(gguf.float("\(archName).rope.freq_base") ?? 10000)
        ropeDimensions = gguf.int("\(archName).rope.dimension_count") ?? headDim
        guard ropeDimensions >= 2, ropeDimensions <= headDim, ropeDimensions % 2 == 0 else {
            throw InferenceError(
                .modelMalformed, "rope dimension count \(ropeDimensions) does not fit head size \(headDim)")
        }
        if let scaling = gguf.string("\(archName).rope.scaling.type"), scaling != "none" {
            throw InferenceError(.modelUnsupported, "RoPE scaling '\(scaling)' is not supported")
        }
        ropeStyle = arch == .llama ? .normal : .neox
        hasQKVBias = arch == .qwen2
        hasQKNorm = arch == .qwen3
        let tokens = gguf.metadata["tokenizer.ggml.tokens"]?.array?.count
        vocabularySize = gguf.int("\(archName).vocab_size") ?? tokens ?? 0
        guard vocabularySize > 0 else { throw InferenceError(.modelMalformed, "vocabulary size is unknown") }
    }

    public var qDim: Int { headCount * headDim }
    public var kvDim: Int { kvHeadCount * headDim }
}
