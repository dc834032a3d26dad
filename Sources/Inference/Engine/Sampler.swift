import Foundation

/// How the next token is chosen. Temperature 0 is greedy (argmax, lowest id on ties); otherwise
/// top-k, then temperature, then top-p (nucleus) narrow the distribution and a seeded generator
/// draws from it, so the same seed and request give the same text.
public struct SamplingParameters: Sendable, Equatable {
    public var temperature: Float = 1
    public var topP: Float = 1
    /// 0: no limit.
    public var topK: Int = 0
    public var seed: UInt64?
    public var maxTokens: Int?
    public var stop: [String] = []

    public init(
        temperature: Float = 1, topP: Float = 1, topK: Int = 0, seed: UInt64? = nil, maxTokens: Int? = nil,
        stop: [String] = []
    ) {
        self.temperature = temperature
        self.topP = topP
        self.topK = topK
        self.seed = seed
        self.maxTokens = maxTokens
        self.stop = stop
    }

    public var isGreedy: Bool { temperature <= 0 || topK == 1 }
}

/// SplitMix64-seeded xoshiro256**: small, fast, and the same sequence on every platform.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    var s: (UInt64, UInt64, UInt64, UInt64)

    public init(seed: UInt64) {
        var z = seed
        func next() -> UInt64 {
            z &+= 0x9E37_79B9_7F4A_7C15
            var r = z
            r = (r ^ (r >> 30)) &* 0xBF58_476D_1CE4_E5B9
            r = (r ^ (r >> 27)) &* 0x94D0_49BB_1331_11EB
            return r ^ (r >> 31)
        }
        s = (next(), next(), next(), next())
    }

    public mutating func next() -> UInt64 {
        let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0
        s.3 ^= s.1
        s.1 ^= s.2
        s.0 ^= s.3
        s.2 ^= t
        s.3 = s.3 << 45 | s.3 >> 19
        return result
    }

    /// Uniform in [0, 1).
    mutating func unit() -> Double { Double(next() >> 11) / Double(1 << 53) }
}

public struct Sampler: Sendable {
    public let parameters: SamplingParameters
    var generator: SeededGenerator

    public init(_ parameters: SamplingParameters) {
        self.parameters = parameters
        generator = SeededGenerator(seed: parameters.seed ?? UInt64.random(in: 0...UInt64.max))
    }

    public static func argmax(_ logits: [Float]) -> Int {
        var best = 0
        for i in 1..<logits.count where logits[i] > logits[best] { best = i }
        return best
    }

    public mutating func sample(_ logits: [Float]) -> Int {
        if parameters.isGreedy { return Sampler.argmax(logits) }
        var candidates = logits.indices.filter { logits[$0].isFinite }
        guard !candidates.isEmpty else { return Sampler.argmax(logits) }
        candidates.sort { logits[$0] != logits[$1] ? logits[$0] > logits[$1] : $0 < $1 }
        if parameters.topK > 0, candidates.count > parameters.topK {
            candidates.removeLast(candidates.count - parameters.topK)
        }
        let top = Double(logits[candidates[0]])
        var weights = candidates.map { exp((Double(logits[$0]) - top) / Double(parameters.temperature)) }
        let total = weights.reduce(0, +)
        for i in weights.indices { weights[i] /= total }
        if parameters.topP < 1 {
            var sum = 0.0
            var keep = weights.count
            for (i, w) in weights.enumerated() {
                sum += w
                if sum >= Double(parameters.topP) {
                    keep = i + 1
                    break
                }
            }
            candidates.removeLast(candidates.count - keep)
            weights.removeLast(weights.count - keep)
            let kept = weights.reduce(0, +)
            for i in weights.indices { weights[i] /= kept }
        }
        var r = generator.unit()
        for (i, w) in weights.enumerated() {
            r -= w
            if r < 0 { return candidates[i] }
        }
        return candidates[candidates.count - 1]
    }
}
