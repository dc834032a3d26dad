import Foundation

/// How the kernels round.
public enum Arithmetic: String, Sendable, CaseIterable {
    /// llama.cpp's CPU arithmetic bit for bit: correctly rounded fused multiply-adds, divisions
    /// and square roots and double-precision row sums, built from doubles where the device does
    /// not provide them (needs `shaderFloat64`).
    case exact
    /// The same kernels with the device's own fma, division and square root and single-precision
    /// row sums: deterministic on a given device and driver, within a stated tolerance of
    /// llama.cpp, and faster where the device lacks a fused multiply-add.
    case fast
}

/// How the quantized matmuls share out their rows. On a CPU device (lavapipe) one invocation
/// sums a whole row in the reference's order, the layout a vector unit runs best. A GPU has
/// thousands of lanes and a matrix of a few hundred rows would leave most of them idle: there
/// `split` invocations share each row, each summing every `split`-th block, and the slices are
/// added in a fixed order (deterministic for a given split; the fast arithmetic only, since the
/// order is not the reference's). Workgroups are `rowsPerGroup` rows times `split` slices.
public struct MatmulShape: Sendable, Equatable, CustomStringConvertible {
    public let rowsPerGroup: Int
    public let split: Int

    public init(rowsPerGroup: Int, split: Int) {
        self.rowsPerGroup = rowsPerGroup
        self.split = split
    }

    /// One invocation per row, 64 rows per workgroup: the reference's order.
    public static let serial = MatmulShape(rowsPerGroup: 64, split: 1)
    /// 32 neighbouring rows (one NVIDIA warp reads 32 neighbouring blocks) times 8 slices. Any
    /// split shape also widens attention's workgroups (`attentionWidth`), which then split the
    /// product with v among runs of positions.
    public static let split8 = MatmulShape(rowsPerGroup: 32, split: 8)

    /// What `device` runs best in `arithmetic`: serial on CPU devices and always for the exact
    /// arithmetic; on GPUs 8 slices, 4 where the device's workgroups hold fewer than 256
    /// invocations (a power of two, so that `--matmul-split` can name every shape chosen).
    public static func preferred(for device: VulkanDeviceInfo, arithmetic: Arithmetic) -> MatmulShape {
        if arithmetic == .exact || device.type == "CPU" { return .serial }
        let room = min(Int(device.maxWorkgroupInvocations) / 32, Int(device.maxWorkgroupSizeY))
        let split = [8, 4, 2].first { $0 <= room } ?? 1
        return split == 1 ? .serial : MatmulShape(rowsPerGroup: 32, split: split)
    }

    /// Attention's workgroup width with a split shape: 256, or 128 where the device allows no
    /// more in one dimension or one workgroup (Vulkan guarantees 128).
    func attentionWidth(on device: VulkanDeviceInfo) -> Int {
        min(device.maxWorkgroupInvocations, device.maxWorkgroupSizeX) >= 256 ? 256 : 128
    }

    public var description: String { split == 1 ? "serial" : "split \(split)" }
}

/// A GGUF model loaded onto a Vulkan device: weights in device memory (device-local where the
/// device has it), a half-precision KV cache, and the kernels of one forward pass.
///
/// Not thread-safe: one `Generator` (or one caller) drives it from one thread at a time.
public final class Transformer: @unchecked Sendable {
    public let gguf: GGUFFile
    public let config: ModelConfig
    public let tokenizer: Tokenizer
    public let chatTemplate: ChatTemplate?
    public let device: VulkanDevice
    /// Tokens the KV cache can hold, per slot.
    public let contextLength: Int
    /// Tokens evaluated per command buffer while reading a prompt.
    public let batchSize: Int
    /// Sequences the KV cache holds at once, each with `contextLength` positions of its own.
    public let slots: Int
    public let arithmetic: Arithmetic
    /// How the quantized matmuls share out their rows on this device.
    public let matmulShape: MatmulShape
    /// Per slot: the tokens whose keys and values are in its cache, in order, and the
    /// summation order each was computed in (a cached position is reused only when a new
    /// prompt would compute it the same way, so reuse never changes a result).
    private(set) var slotTokens: [[Int]]
    private(set) var slotOrders: [[UInt32]]

    struct Weight {
        let name: String
        let type: GGMLType
        let rows: Int
        let k: Int
        /// Row ranges, each in its own buffers (a tensor may exceed one storage buffer).
        let chunks: [(quants: VulkanBuffer, scales: VulkanBuffer, rowStart: Int, rowCount: Int)]
        var quantized: Bool { type != .f16 && type != .f32 }
        /// Quantized against 32-element activation blocks (quantize.comp).
        var blockQuantized: Bool { quantized && !type.isKQuant }
    }

    struct Layer {
        let attnNorm: VulkanBuffer
        let ffnNorm: VulkanBuffer
        let wq: Weight, wk: Weight, wv: Weight, wo: Weight
        let gate: Weight, up: Weight, down: Weight
        let bq: VulkanBuffer?, bk: VulkanBuffer?, bv: VulkanBuffer?
        let qNorm: VulkanBuffer?, kNorm: VulkanBuffer?
        let kCache: VulkanBuffer, vCache: VulkanBuffer
    }

    let layers: [Layer]
    let outputNorm: VulkanBuffer
    let output: Weight
    let embedding: GGUFTensorInfo
    let ropeFactors: [Float]?

    struct Kernels {
        let rmsnorm, quantize, quantizeK, rope, kvstore, attention, swiglu: VulkanKernel
        /// Matmul per weight type: one token, and a tile of `tile` tokens.
        let matmul: [GGMLType: (single: VulkanKernel, batch: VulkanKernel)]
    }
    let kernels: Kernels
    static let tile = 8
    static let workgroup: UInt32 = 64
    /// Invocations per output row of a matmul: the reference's eight SIMD lanes.
    static let lanes = 8
    /// Tokens per reference micro-batch (llama.cpp's default n_ubatch): a micro-batch of two or
    /// more tokens is summed in the prompt kernels' order, a single token in the one-token order.
    static let microBatch = 512

    // Scratch, sized for `batchSize` tokens.
    let x, xn, aq, ad, kq, kd, q, k, v, att, g, u, scores, xLast, xFinal, logits, ropeTable: VulkanBuffer
    /// Per row of a step: (first cache position of its slot, positions it attends to).
    let rowInfo: VulkanBuffer
    let input: VulkanBuffer
    let logitsHost: VulkanBuffer
    let dummy: VulkanBuffer
    let commands: VulkanCommands
    /// Summation order of the step being recorded: 4 for a prompt micro-batch, 0 for one token.
    var order: UInt32 = 0
    /// Stops a layer early, for kernel checks (1: after the attention norm, 2: after q, k, v).
    var debugStage = 0

    /// Loads `url` onto `device`. `contextLength` (per slot) defaults to the model's, capped at
    /// 4096; `slots` sequences can be evaluated together; `arithmetic` defaults to exact here
    /// (what the parity tests need; `ccinfer` defaults to fast); `matmulShape` defaults to the
    /// device's preferred one; `progress` hears about each stage.
    public init(
        url: URL, device: VulkanDevice, contextLength: Int? = nil, batchSize: Int = 32, slots: Int = 1,
        arithmetic: Arithmetic = .exact, matmulShape: MatmulShape? = nil, progress: (String) -> Void = { _ in }
    ) throws(InferenceError) {
        guard arithmetic == .fast || device.hasFloat64 else {
            throw InferenceError(
                .invalidRequest,
                "\(device.info.name) lacks shaderFloat64, which exact arithmetic needs; use the fast arithmetic")
        }
        let shape = matmulShape ?? .preferred(for: device.info, arithmetic: arithmetic)
        let most = min(256, Int(device.info.maxWorkgroupInvocations))
        guard (1...16).contains(shape.split), (1...256).contains(shape.rowsPerGroup),
            shape.split * shape.rowsPerGroup <= most, shape.split <= device.info.maxWorkgroupSizeY,
            shape.rowsPerGroup <= device.info.maxWorkgroupSizeX, arithmetic == .fast || shape.split == 1
        else {
            throw InferenceError(
                .invalidRequest,
                "matmul shape \(shape.rowsPerGroup) rows × \(shape.split) slices: at most \(most) invocations on this device and within its workgroup sizes (\(device.info.maxWorkgroupSizeX) × \(device.info.maxWorkgroupSizeY)), at most 16 slices, and one slice for the exact arithmetic"
            )
        }
        self.arithmetic = arithmetic
        self.matmulShape = shape
        let gguf = try GGUFFile(url: url)
        self.gguf = gguf
        let c = try ModelConfig(gguf: gguf)
        config = c
        let tokenizer = try Tokenizer(gguf: gguf)
        self.tokenizer = tokenizer
        guard tokenizer.count <= c.vocabularySize else {
            throw InferenceError(
                .modelMalformed, "the tokenizer has \(tokenizer.count) tokens, the model \(c.vocabularySize)")
        }
        chatTemplate = try gguf.string("tokenizer.chat_template").map { source throws(InferenceError) in
            try ChatTemplate(source)
        }
        self.device = device
        let context = min(contextLength ?? min(c.contextLength, 4096), c.contextLength)
        guard context >= 1 else { throw InferenceError(.invalidRequest, "context length must be at least 1") }
        self.contextLength = context
        // The scores scratch (batch × heads × context floats) must fit one storage buffer.
        let scoreRow = c.headCount * context * 4
        self.batchSize = max(1, min(batchSize, 512, device.maxBufferBytes / scoreRow))
        // A decode step holds one row per slot, and each layer's cache for all slots is one buffer.
        guard slots >= 1, slots <= self.batchSize else {
            throw InferenceError(.invalidRequest, "slots must be 1…\(self.batchSize) (the batch size)")
        }
        let cacheBytes = slots * context * c.kvDim * 2
        guard cacheBytes <= device.maxBufferBytes else {
            throw InferenceError(
                .invalidRequest,
                "\(slots) slots of \(context) positions need \(cacheBytes) bytes of cache per layer; the device "
                    + "allows \(device.maxBufferBytes) in one buffer (lower the slots or the context)")
        }
        self.slots = slots
        slotTokens = Array(repeating: [], count: slots)
        slotOrders = Array(repeating: [], count: slots)

        func tensor(_ name: String) throws(InferenceError) -> GGUFTensorInfo {
            guard let t = gguf.tensors[name] else {
                throw InferenceError(.modelMalformed, "tensor '\(name)' is missing")
            }
            guard t.type != nil else {
                throw InferenceError(
                    .modelUnsupported,
                    "tensor '\(name)' has type \(t.typeName), which the engine does not support "
                        + "(F32, F16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K are)")
            }
            return t
        }
        func matrix(_ name: String, rows: Int, k: Int) throws(InferenceError) -> Weight {
            let t = try tensor(name)
            guard t.dims.count == 2, t.dims[0] == k, t.dims[1] == rows else {
                throw InferenceError(.modelMalformed, "tensor '\(name)' has shape \(t.dims), expected [\(k), \(rows)]")
            }
            guard k % 32 == 0 else {
                throw InferenceError(.modelUnsupported, "tensor '\(name)' rows of \(k) are not a multiple of 32")
            }
            return try Transformer.upload(matrix: t, from: gguf, to: device)
        }
        func vector(_ name: String, count: Int) throws(InferenceError) -> VulkanBuffer {
            let t = try tensor(name)
            guard t.elementCount == count else {
                throw InferenceError(
                    .modelMalformed, "tensor '\(name)' has \(t.elementCount) values, expected \(count)")
            }
            return try Transformer.upload(vector: t, from: gguf, to: device)
        }
        func optionalVector(_ name: String, count: Int) throws(InferenceError) -> VulkanBuffer? {
            gguf.tensors[name] == nil ? nil : try vector(name, count: count)
        }

        let embedding = try tensor("token_embd.weight")
        self.embedding = embedding
        guard embedding.dims.count == 2, embedding.dims[0] == c.embeddingLength, embedding.dims[1] >= tokenizer.count
        else {
            throw InferenceError(
                .modelMalformed,
                "token_embd.weight has shape \(embedding.dims) for \(tokenizer.count) tokens of \(c.embeddingLength)")
        }
        var layers = [Layer]()
        for l in 0..<c.layerCount {
            progress("layer \(l + 1)/\(c.layerCount)")
            let p = "blk.\(l)."
            layers.append(
                Layer(
                    attnNorm: try vector(p + "attn_norm.weight", count: c.embeddingLength),
                    ffnNorm: try vector(p + "ffn_norm.weight", count: c.embeddingLength),
                    wq: try matrix(p + "attn_q.weight", rows: c.qDim, k: c.embeddingLength),
                    wk: try matrix(p + "attn_k.weight", rows: c.kvDim, k: c.embeddingLength),
                    wv: try matrix(p + "attn_v.weight", rows: c.kvDim, k: c.embeddingLength),
                    wo: try matrix(p + "attn_output.weight", rows: c.embeddingLength, k: c.qDim),
                    gate: try matrix(p + "ffn_gate.weight", rows: c.feedForwardLength, k: c.embeddingLength),
                    up: try matrix(p + "ffn_up.weight", rows: c.feedForwardLength, k: c.embeddingLength),
                    down: try matrix(p + "ffn_down.weight", rows: c.embeddingLength, k: c.feedForwardLength),
                    bq: c.hasQKVBias
                        ? try vector(p + "attn_q.bias", count: c.qDim)
                        : try optionalVector(p + "attn_q.bias", count: c.qDim),
                    bk: c.hasQKVBias
                        ? try vector(p + "attn_k.bias", count: c.kvDim)
                        : try optionalVector(p + "attn_k.bias", count: c.kvDim),
                    bv: c.hasQKVBias
                        ? try vector(p + "attn_v.bias", count: c.kvDim)
                        : try optionalVector(p + "attn_v.bias", count: c.kvDim),
                    qNorm: c.hasQKNorm ? try vector(p + "attn_q_norm.weight", count: c.headDim) : nil,
                    kNorm: c.hasQKNorm ? try vector(p + "attn_k_norm.weight", count: c.headDim) : nil,
                    kCache: try device.makeBuffer(bytes: cacheBytes, placement: .device),
                    vCache: try device.makeBuffer(bytes: cacheBytes, placement: .device)))
        }
        self.layers = layers
        outputNorm = try vector("output_norm.weight", count: c.embeddingLength)
        let output =
            gguf.tensors["output.weight"] != nil
            ? try matrix("output.weight", rows: c.vocabularySize, k: c.embeddingLength)
            : try matrix("token_embd.weight", rows: embedding.dims[1], k: c.embeddingLength)
        self.output = output
        if let factors = gguf.tensors["rope_freqs.weight"] {
            guard factors.type == .f32, factors.elementCount == c.ropeDimensions / 2 else {
                throw InferenceError(.modelMalformed, "rope_freqs.weight must hold \(c.ropeDimensions / 2) F32 values")
            }
            let raw = gguf.bytes(of: factors)
            ropeFactors = (0..<factors.elementCount).map { raw.loadUnaligned(fromByteOffset: $0 * 4, as: Float.self) }
        } else {
            ropeFactors = nil
        }

        progress("kernels")
        let f64 = arithmetic == .exact ? "_f64" : ""
        var matmul = [GGMLType: (single: VulkanKernel, batch: VulkanKernel)]()
        let used = Set(
            layers.flatMap { [$0.wq.type, $0.wk.type, $0.wv.type, $0.wo.type, $0.gate.type, $0.up.type, $0.down.type] }
                + [output.type])
        for type in used {
            let name = "matmul_" + type.name.lowercased() + f64
            // Specialization: workgroup rows, lanes per row (float kernels), tokens per tile, slices.
            let rows = type == .f16 || type == .f32 ? Self.workgroup : UInt32(shape.rowsPerGroup)
            let split = type == .f16 || type == .f32 ? 1 : UInt32(shape.split)
            matmul[type] = (
                try device.makeKernel(name, bindings: 6, specialization: [rows, UInt32(Self.lanes), 1, split]),
                try device.makeKernel(
                    name, bindings: 6, specialization: [rows, UInt32(Self.lanes), UInt32(Self.tile), split])
            )
        }
        kernels = Kernels(
            rmsnorm: try device.makeKernel("rmsnorm" + f64, bindings: 3, specialization: [Self.workgroup]),
            quantize: try device.makeKernel("quantize_q8" + f64, bindings: 3),
            quantizeK: try device.makeKernel("quantize_q8k" + f64, bindings: 3),
            rope: try device.makeKernel("rope" + f64, bindings: 3),
            kvstore: try device.makeKernel("kvstore", bindings: 5),
            // A GPU's attention workgroups are 256 wide (128 where the device allows no more): the
            // product with v split among runs of positions.
            attention: try device.makeKernel(
                "attention" + f64, bindings: 6,
                specialization: shape.split == 1
                    ? [Self.workgroup, 0] : [UInt32(shape.attentionWidth(on: device.info)), 1]
            ),
            swiglu: try device.makeKernel("swiglu" + f64, bindings: 3),
            matmul: matmul)

        let b = self.batchSize
        let maxK = max(c.embeddingLength, c.qDim, c.feedForwardLength)
        func scratch(_ floats: Int) throws(InferenceError) -> VulkanBuffer {
            try device.makeBuffer(bytes: floats * 4, placement: .device)
        }
        x = try scratch(b * c.embeddingLength)
        xn = try scratch(b * c.embeddingLength)
        aq = try scratch(b * maxK / 4)
        ad = try scratch(b * maxK / 32 * 2)
        kq = try scratch(b * maxK / 4)
        kd = try scratch(max(1, b * maxK / 256))
        q = try scratch(b * c.qDim)
        k = try scratch(b * c.kvDim)
        v = try scratch(b * c.kvDim)
        att = try scratch(b * c.qDim)
        g = try scratch(b * c.feedForwardLength)
        u = try scratch(b * c.feedForwardLength)
        scores = try scratch(b * c.headCount * context)
        xLast = try scratch(slots * c.embeddingLength)
        xFinal = try scratch(slots * c.embeddingLength)
        logits = try scratch(slots * output.rows)
        ropeTable = try scratch(b * c.ropeDimensions)
        rowInfo = try device.makeBuffer(bytes: b * 8, placement: .device)
        input = try device.makeBuffer(bytes: b * (c.embeddingLength + c.ropeDimensions + 2) * 4, placement: .host)
        logitsHost = try device.makeBuffer(bytes: slots * output.rows * 4, placement: .host)
        dummy = try device.makeBuffer(bytes: 16, placement: .device)
        commands = try device.makeCommands()
    }

    // MARK: Loading

    /// Writes into `buffer` through `fill`: directly into mapped memory, else via host memory
    /// and a staging copy.
    static func write(
        _ buffer: VulkanBuffer, bytes: Int, device: VulkanDevice, _ fill: (UnsafeMutableRawPointer) -> Void
    ) throws(InferenceError) {
        if let mapped = buffer.mapped {
            fill(mapped)
            return
        }
        let host = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 16), alignment: 16)
        defer { host.deallocate() }
        fill(host)
        try device.upload(UnsafeRawBufferPointer(start: host, count: bytes), to: buffer)
    }

    static func upload(vector t: GGUFTensorInfo, from gguf: GGUFFile, to device: VulkanDevice) throws(InferenceError)
        -> VulkanBuffer
    {
        let buffer = try device.makeBuffer(bytes: t.elementCount * 4, placement: .device)
        let raw = gguf.bytes(of: t)
        try write(buffer, bytes: t.elementCount * 4, device: device) { p in
            TensorData.dequantize(
                t.type!, raw, start: 0, count: t.elementCount,
                into: p.bindMemory(to: Float.self, capacity: t.elementCount))
        }
        return buffer
    }

    static func upload(matrix t: GGUFTensorInfo, from gguf: GGUFFile, to device: VulkanDevice) throws(InferenceError)
        -> Weight
    {
        let type = t.type!
        let k = t.dims[0]
        let rows = t.dims[1]
        let blocksPerRow = k / type.block.elements
        let words = TensorData.quantWords(type)
        let scaleWords = TensorData.scaleWords(type)
        let quantBytesPerRow = words == 0 ? k * (type == .f16 ? 2 : 4) : blocksPerRow * words * 4
        let rowsPerChunk = max(1, device.maxBufferBytes / quantBytesPerRow)
        let raw = gguf.bytes(of: t)
        let rowBytes = words == 0 ? quantBytesPerRow : blocksPerRow * type.block.bytes
        var chunks = [(quants: VulkanBuffer, scales: VulkanBuffer, rowStart: Int, rowCount: Int)]()
        var start = 0
        while start < rows {
            let n = min(rowsPerChunk, rows - start)
            let slice = UnsafeRawBufferPointer(rebasing: raw[(start * rowBytes)..<((start + n) * rowBytes)])
            let quants = try device.makeBuffer(bytes: n * quantBytesPerRow, placement: .device)
            let scales = try device.makeBuffer(
                bytes: scaleWords == 0 ? 16 : n * blocksPerRow * scaleWords * 4, placement: .device)
            if words == 0 {
                try write(quants, bytes: n * quantBytesPerRow, device: device) { p in
                    p.copyMemory(from: slice.baseAddress!, byteCount: slice.count)
                }
            } else {
                let blocks = n * blocksPerRow
                let scaleHost = UnsafeMutablePointer<UInt32>.allocate(capacity: max(1, blocks * scaleWords))
                let quantHost = UnsafeMutablePointer<UInt32>.allocate(capacity: blocks * words)
                defer {
                    scaleHost.deallocate()
                    quantHost.deallocate()
                }
                TensorData.repack(type, slice, blocks: blocks, scales: scaleHost, quants: quantHost)
                try writeBlockMajor(quants, from: quantHost, words: words, rows: n, blocksPerRow: blocksPerRow, device)
                if scaleWords > 0 {
                    try writeBlockMajor(
                        scales, from: scaleHost, words: scaleWords, rows: n, blocksPerRow: blocksPerRow, device)
                }
            }
            chunks.append((quants, scales, start, n))
            start += n
        }
        return Weight(name: t.name, type: type, rows: rows, k: k, chunks: chunks)
    }

    /// Writes `rows` rows of `blocksPerRow` blocks of `words` words from row-major `host` into
    /// `buffer` block-major (block b of every row, then block b+1): neighbouring invocations,
    /// which compute neighbouring rows, read neighbouring words.
    static func writeBlockMajor(
        _ buffer: VulkanBuffer, from host: UnsafeMutablePointer<UInt32>, words: Int, rows n: Int, blocksPerRow: Int,
        _ device: VulkanDevice
    ) throws(InferenceError) {
        try write(buffer, bytes: n * blocksPerRow * words * 4, device: device) { p in
            let out = p.bindMemory(to: UInt32.self, capacity: n * blocksPerRow * words)
            for r in 0..<n {
                for b in 0..<blocksPerRow {
                    (out + (b * n + r) * words).update(from: host + (r * blocksPerRow + b) * words, count: words)
                }
            }
        }
    }

    // MARK: Evaluation

    /// Tokens appended to one slot in one step.
    struct Segment {
        var slot: Int
        var tokens: [Int]
    }

    /// The summation order of each position of a prompt of `count` tokens evaluated from
    /// position 0: micro-batches of `microBatch` positions, each summed in the prompt kernels'
    /// order (4) when it holds two or more tokens, else in the one-token order (0), as the
    /// reference evaluates a prompt. Fixed by position, so a result never depends on how much of
    /// the prompt a cache already held.
    static func promptOrders(count: Int) -> [UInt32] {
        (0..<count).map { p in
            let start = p / microBatch * microBatch
            return min(count, start + microBatch) - start > 1 ? 4 : 0
        }
    }

    /// The residual stream of the last token after `layers` layers (for checking kernels).
    func hiddenState(_ tokens: [Int], layers: Int) throws(InferenceError) -> [Float] {
        truncate(to: 0)
        defer { truncate(to: 0) }
        var result = [Float]()
        for start in stride(from: 0, to: tokens.count, by: batchSize) {
            result = try step(
                [Segment(slot: 0, tokens: Array(tokens[start..<min(tokens.count, start + batchSize)]))],
                order: tokens.count > 1 ? 4 : 0, layerLimit: layers)[0]
        }
        return result
    }

    /// Scratch buffers after running `tokens` (one step) through `layers` layers, for checking
    /// kernels against a reference: residual, normed input, q, k, v, attention, gate, up.
    func debugBuffers(_ tokens: [Int], layers: Int) throws(InferenceError) -> [String: [Float]] {
        truncate(to: 0)
        defer { truncate(to: 0) }
        _ = try step([Segment(slot: 0, tokens: tokens)], order: tokens.count > 1 ? 4 : 0, layerLimit: layers)
        let n = tokens.count
        let c = config
        var out = [String: [Float]]()
        for (name, buffer, count) in [
            ("x", x, n * c.embeddingLength), ("xn", xn, n * c.embeddingLength), ("q", q, n * c.qDim),
            ("k", k, n * c.kvDim), ("v", v, n * c.kvDim), ("att", att, n * c.qDim),
            ("g", g, n * c.feedForwardLength), ("u", u, n * c.feedForwardLength),
        ] {
            let host = try device.makeBuffer(bytes: count * 4, placement: .host)
            try commands.begin()
            commands.copy(buffer, host, bytes: count * 4)
            try commands.submitAndWait()
            out[name] = Array(
                UnsafeBufferPointer(start: host.mapped!.bindMemory(to: Float.self, capacity: count), count: count))
        }
        return out
    }

    /// `tokens` rows of `input` (each `k` floats) times the weight `name` (for checking the
    /// matmul kernels against a dequantized product on the host).
    func debugMultiply(weight name: String, input values: [Float], tokens: Int) throws(InferenceError) -> [Float] {
        let all = layers.flatMap { [$0.wq, $0.wk, $0.wv, $0.wo, $0.gate, $0.up, $0.down] } + [output]
        guard let w = all.first(where: { $0.name == name }) else {
            throw InferenceError(.invalidRequest, "no weight \(name)")
        }
        // The scratch buffers used must hold the product: xn or g for the input, u for the output.
        precondition(values.count == tokens * w.k && tokens <= batchSize)
        precondition(w.k == config.feedForwardLength || w.k == config.embeddingLength, "input wider than the scratch")
        precondition(w.rows <= config.feedForwardLength, "output wider than the scratch")
        let source = w.k == config.feedForwardLength ? g : xn
        let out = u
        defer { order = 0 }
        let host = try device.makeBuffer(bytes: max(values.count, tokens * w.rows) * 4, placement: .host)
        values.withUnsafeBytes { host.mapped!.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        try commands.begin()
        commands.copy(host, source, bytes: values.count * 4)
        order = tokens > 1 ? 4 : 0
        try quantize(source, rows: tokens, width: w.k, for: [w])
        try matmul(w, input: source, into: out, tokens: tokens)
        commands.barrier()
        commands.copy(out, host, bytes: tokens * w.rows * 4)
        commands.barrier()
        try commands.submitAndWait()
        let result = host.mapped!.bindMemory(to: Float.self, capacity: tokens * w.rows)
        return Array(UnsafeBufferPointer(start: result, count: tokens * w.rows))
    }

    /// Drops slot 0's cache from `position` on (0 empties it).
    public func truncate(to position: Int) {
        truncate(slot: 0, to: position)
    }

    /// Drops `slot`'s cache from `position` on (0 empties it).
    public func truncate(slot: Int, to position: Int) {
        let drop = max(0, slotTokens[slot].count - position)
        slotTokens[slot].removeLast(drop)
        slotOrders[slot].removeLast(drop)
    }

    /// How many leading positions of `prompt` `slot` can keep: same token, computed in the order
    /// the prompt would compute it; at most `prompt.count - 1`, so the last token is evaluated
    /// and yields logits.
    func reusablePrefix(slot: Int, prompt: [Int]) -> Int {
        let orders = Self.promptOrders(count: prompt.count)
        let tokens = slotTokens[slot]
        let held = slotOrders[slot]
        var common = 0
        while common < min(tokens.count, prompt.count - 1), tokens[common] == prompt[common],
            held[common] == orders[common]
        {
            common += 1
        }
        return common
    }

    /// Checks that `count` more tokens fit `slot` and that `tokens` are in the vocabulary.
    func checkAppend(_ tokens: [Int], slot: Int) throws(InferenceError) {
        guard !tokens.isEmpty else { throw InferenceError(.invalidRequest, "nothing to evaluate") }
        let have = slotTokens[slot].count
        guard have + tokens.count <= contextLength else {
            throw InferenceError(
                .contextExceeded, "\(have + tokens.count) tokens exceed the context of \(contextLength)")
        }
        for t in tokens where t < 0 || t >= tokenizer.count {
            throw InferenceError(.invalidRequest, "token \(t) is outside the vocabulary of \(tokenizer.count)")
        }
    }

    /// Appends `tokens` to `slot`'s cache, summed as a prompt of those tokens, and returns the
    /// logits after the last of them.
    public func evaluate(_ tokens: [Int], slot: Int = 0) throws(InferenceError) -> [Float] {
        guard (0..<slots).contains(slot) else { throw InferenceError(.invalidRequest, "no slot \(slot)") }
        try checkAppend(tokens, slot: slot)
        let chunks = Self.chunks(tokens, orders: Self.promptOrders(count: tokens.count), limit: batchSize)
        var result = [Float]()
        for (i, chunk) in chunks.enumerated() {
            result = try step(
                [Segment(slot: slot, tokens: chunk.tokens)], order: chunk.order, wantLogits: i == chunks.count - 1)[0]
        }
        return result
    }

    /// Appends one token to each of several slots in one step (the one-token order, so each
    /// result is the one that slot's token gives alone) and returns each slot's logits.
    public func evaluateNext(_ next: [(slot: Int, token: Int)]) throws(InferenceError) -> [[Float]] {
        guard !next.isEmpty, next.count <= slots, Set(next.map(\.slot)).count == next.count,
            next.allSatisfy({ (0..<slots).contains($0.slot) })
        else {
            throw InferenceError(.invalidRequest, "one token for each of up to \(slots) distinct slots")
        }
        for item in next { try checkAppend([item.token], slot: item.slot) }
        return try step(next.map { Segment(slot: $0.slot, tokens: [$0.token]) }, order: 0)
    }

    /// `tokens` cut into steps of at most `limit` tokens, each in one summation order.
    static func chunks(_ tokens: [Int], orders: [UInt32], limit: Int) -> [(tokens: [Int], order: UInt32)] {
        precondition(tokens.count == orders.count)
        var chunks = [(tokens: [Int], order: UInt32)]()
        var i = 0
        while i < tokens.count {
            var end = i + 1
            while end < tokens.count, end - i < limit, orders[end] == orders[i] { end += 1 }
            chunks.append((Array(tokens[i..<end]), orders[i]))
            i = end
        }
        return chunks
    }

    /// One command buffer: each segment's tokens appended to its slot at the slot's next
    /// positions, all summed in `order`. Returns, per segment, the logits after its last token
    /// (empty arrays when `wantLogits` is false: the last layer's feed-forward and the output
    /// are then skipped, as the reference skips them for rows whose logits are not wanted).
    func step(_ segments: [Segment], order stepOrder: UInt32, wantLogits: Bool = true, layerLimit: Int? = nil)
        throws(InferenceError) -> [[Float]]
    {
        let n = segments.reduce(0) { $0 + $1.tokens.count }
        precondition(n > 0 && n <= batchSize, "a step holds 1-\(batchSize) tokens")
        precondition(Set(segments.map(\.slot)).count == segments.count, "one segment per slot")
        let c = config
        let e = c.embeddingLength
        // Inputs: embedding rows, the RoPE table, then per row (slot start, positions attended).
        let inputFloats = input.mapped!.bindMemory(to: Float.self, capacity: batchSize * (e + c.ropeDimensions + 2))
        let raw = gguf.bytes(of: embedding)
        let info = UnsafeMutableRawPointer(inputFloats + n * (e + c.ropeDimensions)).bindMemory(
            to: UInt32.self, capacity: n * 2)
        var row = 0
        for segment in segments {
            let start = slotTokens[segment.slot].count
            fillRopeTable(
                inputFloats + n * e + row * c.ropeDimensions, positions: start..<(start + segment.tokens.count))
            for (i, token) in segment.tokens.enumerated() {
                TensorData.dequantize(embedding.type!, raw, start: token * e, count: e, into: inputFloats + row * e)
                info[row * 2] = UInt32(segment.slot * contextLength)
                info[row * 2 + 1] = UInt32(start + i + 1)
                row += 1
            }
        }
        let cmd = commands
        try cmd.begin()
        cmd.copy(input, x, bytes: n * e * 4)
        cmd.copy(input, ropeTable, bytes: n * c.ropeDimensions * 4, fromOffset: n * e * 4)
        cmd.copy(input, rowInfo, bytes: n * 8, fromOffset: n * (e + c.ropeDimensions) * 4)
        order = stepOrder
        let last = layerLimit == nil && wantLogits ? layers.count - 1 : layers.count
        for (index, layer) in layers.prefix(layerLimit ?? layers.count).enumerated() {
            try attentionBlock(layer, rows: n)
            if debugStage != 0 { break }
            if index == last {
                // Only each segment's last row is wanted: its feed-forward is a one-token-order
                // product on those rows, gathered into xFinal.
                cmd.barrier()
                var end = 0
                for (s, segment) in segments.enumerated() {
                    end += segment.tokens.count
                    cmd.copy(x, xFinal, bytes: e * 4, fromOffset: (end - 1) * e * 4, toOffset: s * e * 4)
                }
                order = 0
                try feedForward(layer, residual: xFinal, rows: segments.count)
            } else if index < layers.count - 1 || layerLimit != nil {
                try feedForward(layer, residual: x, rows: n)
            }
        }
        if layerLimit != nil {
            cmd.barrier()
            cmd.copy(x, logitsHost, bytes: e * 4, fromOffset: (n - 1) * e * 4)
            cmd.barrier()
            try submit(segments, order: stepOrder)
            let values = logitsHost.mapped!.bindMemory(to: Float.self, capacity: e)
            return [Array(UnsafeBufferPointer(start: values, count: e))]
        }
        guard wantLogits else {
            try submit(segments, order: stepOrder)
            return segments.map { _ in [] }
        }
        let s = segments.count
        try cmd.dispatch(
            kernels.rmsnorm, [xFinal, outputNorm, xLast], push: [UInt32(e), 0, c.rmsEpsilon.bitPattern],
            groups: (s, 1, 1))
        try quantize(xLast, rows: s, width: e, for: [output])
        try matmul(output, input: xLast, into: logits, tokens: s)
        cmd.barrier()
        cmd.copy(logits, logitsHost, bytes: s * output.rows * 4)
        cmd.barrier()
        try submit(segments, order: stepOrder)
        let values = logitsHost.mapped!.bindMemory(to: Float.self, capacity: s * output.rows)
        return (0..<s).map { Array(UnsafeBufferPointer(start: values + $0 * output.rows, count: tokenizer.count)) }
    }

    /// Submits the recorded step and records the segments' tokens as cached; on failure the
    /// segments' slots are emptied (their caches may hold part of the step). A step that fails
    /// while being recorded changes nothing: its positions are recorded only here.
    private func submit(_ segments: [Segment], order: UInt32) throws(InferenceError) {
        do { try commands.submitAndWait() } catch {
            for segment in segments { truncate(slot: segment.slot, to: 0) }
            throw error
        }
        for segment in segments {
            slotTokens[segment.slot].append(contentsOf: segment.tokens)
            slotOrders[segment.slot].append(contentsOf: repeatElement(order, count: segment.tokens.count))
        }
    }

    /// Norm, q/k/v, RoPE, the cache store, attention and the output projection for `n` rows.
    private func attentionBlock(_ layer: Layer, rows n: Int) throws(InferenceError) {
        let c = config
        let e = c.embeddingLength
        let cmd = commands
        try norm(x, layer.attnNorm, into: xn, rows: n, width: e)
        if debugStage == 1 { return }
        try quantize(xn, rows: n, width: e, for: [layer.wq, layer.wk, layer.wv])
        try matmul(layer.wq, input: xn, into: q, tokens: n, bias: layer.bq)
        try matmul(layer.wk, input: xn, into: k, tokens: n, bias: layer.bk, barrier: false)
        try matmul(layer.wv, input: xn, into: v, tokens: n, bias: layer.bv, barrier: false)
        if debugStage == 2 { return }
        if let qNorm = layer.qNorm, let kNorm = layer.kNorm {
            try norm(q, qNorm, into: q, rows: n * c.headCount, width: c.headDim)
            try norm(k, kNorm, into: k, rows: n * c.kvHeadCount, width: c.headDim, barrier: false)
        }
        let heads = UInt32(c.headCount)
        let kvHeads = UInt32(c.kvHeadCount)
        let hd = UInt32(c.headDim)
        let ropeWork = n * (c.headCount + c.kvHeadCount) * (c.ropeDimensions / 2)
        try cmd.dispatch(
            kernels.rope, [q, k, ropeTable],
            push: [UInt32(n), heads, kvHeads, hd, UInt32(c.ropeDimensions), c.ropeStyle == .neox ? 1 : 0],
            groups: ((ropeWork + 63) / 64, 1, 1))
        try cmd.dispatch(
            kernels.kvstore, [k, v, layer.kCache, layer.vCache, rowInfo], push: [UInt32(c.kvDim), UInt32(n)],
            groups: ((n * c.kvDim / 2 + 63) / 64, 1, 1))
        let scale = 1 / Float(c.headDim).squareRoot()
        try cmd.dispatch(
            kernels.attention, [q, layer.kCache, layer.vCache, scores, att, rowInfo],
            push: [hd, heads, kvHeads, UInt32(contextLength), scale.bitPattern, order],
            groups: (c.headCount, n, 1))
        try quantize(att, rows: n, width: c.qDim, for: [layer.wo])
        try matmul(layer.wo, input: att, into: x, tokens: n, accumulate: true)
    }

    /// x += down(silu(gate(norm(x))) * up(norm(x))) for `rows` rows of `residual`.
    func feedForward(_ layer: Layer, residual: VulkanBuffer, rows n: Int) throws(InferenceError) {
        let e = config.embeddingLength
        try norm(residual, layer.ffnNorm, into: xn, rows: n, width: e)
        try quantize(xn, rows: n, width: e, for: [layer.gate, layer.up])
        try matmul(layer.gate, input: xn, into: g, tokens: n)
        try matmul(layer.up, input: xn, into: u, tokens: n, barrier: false)
        let f = n * config.feedForwardLength
        try commands.dispatch(kernels.swiglu, [g, u, g], push: [UInt32(f)], groups: ((f + 63) / 64, 1, 1))
        try quantize(g, rows: n, width: config.feedForwardLength, for: [layer.down])
        try matmul(layer.down, input: g, into: residual, tokens: n, accumulate: true)
    }

    func norm(
        _ input: VulkanBuffer, _ weight: VulkanBuffer, into out: VulkanBuffer, rows: Int, width: Int,
        barrier: Bool = true
    )
        throws(InferenceError)
    {
        try commands.dispatch(
            kernels.rmsnorm, [input, weight, out], push: [UInt32(width), 0, config.rmsEpsilon.bitPattern],
            groups: (rows, 1, 1), barrier: barrier)
    }

    /// Quantizes `rows` rows of `input` into the activation blocks `weights` are multiplied
    /// against: 32-element blocks (aq, ad) for the legacy types, 256-element Q8_K (kq, kd) for
    /// the K-quants; nothing for float weights.
    func quantize(_ input: VulkanBuffer, rows: Int, width: Int, for weights: [Weight]) throws(InferenceError) {
        var first = true
        if weights.contains(where: \.blockQuantized) {
            let blocks = rows * width / 32
            try commands.dispatch(
                kernels.quantize, [input, aq, ad], push: [UInt32(width / 32), UInt32(blocks), 0],
                groups: ((blocks + 63) / 64, 1, 1))
            first = false
        }
        if weights.contains(where: \.type.isKQuant) {
            let blocks = rows * width / 256
            try commands.dispatch(
                kernels.quantizeK, [input, kq, kd], push: [UInt32(width / 256), UInt32(blocks), 0],
                groups: ((blocks + 63) / 64, 1, 1), barrier: first)
        }
    }

    func matmul(
        _ w: Weight, input: VulkanBuffer, into out: VulkanBuffer, tokens: Int, bias: VulkanBuffer? = nil,
        accumulate: Bool = false, barrier: Bool = true
    ) throws(InferenceError) {
        let pair = kernels.matmul[w.type]!
        let kernel = tokens == 1 ? pair.single : pair.batch
        let tile = tokens == 1 ? 1 : Self.tile
        let rowsPerGroup = w.quantized ? matmulShape.rowsPerGroup : Int(Self.workgroup) / Self.lanes
        let flags: UInt32 = (accumulate ? 1 : 0) | (bias != nil ? 2 : 0) | order
        for (index, chunk) in w.chunks.enumerated() {
            let activations: [VulkanBuffer] = w.type.isKQuant ? [kq, kd] : w.quantized ? [aq, ad] : [input, dummy]
            try commands.dispatch(
                kernel, [chunk.quants, chunk.scales] + activations + [out, bias ?? dummy],
                push: [
                    UInt32(w.k / (w.type.isKQuant ? 256 : 32)), UInt32(chunk.rowCount), UInt32(tokens),
                    UInt32(chunk.rowStart), UInt32(w.rows),
                    flags,
                ],
                groups: ((chunk.rowCount + rowsPerGroup - 1) / rowsPerGroup, (tokens + tile - 1) / tile, 1),
                barrier: barrier && index == 0)
        }
    }

    /// (cos, sin) for each position and dimension pair, computed as the reference does: the
    /// angle for pair i is p * base^(-2i/d), advanced by repeated multiplication in float.
    func fillRopeTable(_ out: UnsafeMutablePointer<Float>, positions: Range<Int>) {
        let pairs = config.ropeDimensions / 2
        let thetaScale = powf(config.ropeBase, -2.0 / Float(config.ropeDimensions))
        for (row, p) in positions.enumerated() {
            var theta = Float(p)
            for i in 0..<pairs {
                let angle = ropeFactors.map { theta / $0[i] } ?? theta
                out[(row * pairs + i) * 2] = cosf(angle)
                out[(row * pairs + i) * 2 + 1] = sinf(angle)
                theta *= thetaScale
            }
        }
    }
}
