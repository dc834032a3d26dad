/// A small deterministic generator (SplitMix64) so that mutation tests are reproducible.
public struct SeededRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    public mutating func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8.random(in: 0...255, using: &self) } }
}

/// Byte-level mutations of the kinds hostile input takes.
public enum Mutation: CaseIterable, Sendable {
    case truncate, bitFlip, multiFlip, oversize, randomBytes, empty, duplicate

    public func apply(_ input: [UInt8], _ rng: inout SeededRandom) -> [UInt8] {
        var b = input
        switch self {
        case .truncate:
            return Array(b.prefix(b.isEmpty ? 0 : Int.random(in: 0..<b.count, using: &rng)))
        case .bitFlip:
            guard !b.isEmpty else { return [1] }
            let i = Int.random(in: 0..<b.count, using: &rng)
            b[i] ^= 1 << UInt8.random(in: 0..<8, using: &rng)
            return b
        case .multiFlip:
            guard !b.isEmpty else { return [1] }
            for _ in 0..<Int.random(in: 2...8, using: &rng) {
                b[Int.random(in: 0..<b.count, using: &rng)] ^= UInt8.random(in: 1...255, using: &rng)
            }
            return b
        case .oversize:
            return b + rng.bytes(Int.random(in: 1...70_000, using: &rng))
        case .randomBytes:
            return rng.bytes(Int.random(in: 1...2048, using: &rng))
        case .empty:
            return []
        case .duplicate:
            return b + b
        }
    }
}
