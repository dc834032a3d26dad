import AttestationCore
import Foundation

/// Why bytes are not a valid cell or bag of cells; `reason` is the class (`../shared/testdata/ton`).
public struct TONCellError: Error, CustomStringConvertible, Equatable {
    public enum Reason: String, Sendable {
        case badMagic = "bad_magic", crcMismatch = "crc_mismatch", truncated, refOrder = "ref_order",
            refOutOfRange = "ref_out_of_range", rootOutOfRange = "root_out_of_range", badHeader = "bad_header",
            badDescriptor = "bad_descriptor", badData = "bad_data", badExotic = "bad_exotic", badIndex = "bad_index",
            nonzeroLevelRoot = "nonzero_level_root", depthLimit = "depth_limit", absentCells = "absent_cells",
            trailingData = "trailing_data"
    }
    public let reason: Reason
    public let message: String
    public init(_ reason: Reason, _ message: String) {
        self.reason = reason
        self.message = message
    }
    public var description: String { "\(reason.rawValue): \(message)" }
}

/// A TON cell: up to 1023 data bits and up to 4 references, ordinary or exotic, with its
/// level-aware representation hashes and depths computed (and exotic cells checked) when it is made.
///
/// Threat: a cell whose hash commits to something other than what it holds — an exotic cell whose
/// stored hash or depth disagrees with its child, a pruned branch with a malformed mask, a level
/// mask that does not follow from the children. Any of these would let a proof claim a state it
/// does not contain; all are refused here, before a hash is ever handed out.
public final class Cell: Sendable, Hashable, CustomStringConvertible {
    public enum Kind: UInt8, Sendable {
        case ordinary = 255, prunedBranch = 1, library = 2, merkleProof = 3, merkleUpdate = 4
    }

    public static let maxBits = 1023
    public static let maxRefs = 4
    /// The C++ implementation's limit.
    public static let maxDepth = 1024

    public let kind: Kind
    /// Data bytes, the last one zero-padded after `bitCount` (no completion tag).
    public let data: [UInt8]
    public let bitCount: Int
    public let refs: [Cell]
    /// Bit i set: the cell has a distinct hash at level i + 1.
    public let levelMask: UInt8
    /// One hash and depth per significant level (`hashes.count == popcount(levelMask) + 1`,
    /// for a pruned branch only its own top hash: the others are read from its data).
    private let hashes: [[UInt8]]
    private let depths: [Int]

    public var isExotic: Bool { kind != .ordinary }
    /// The highest level with a distinct hash.
    public var level: Int { 8 - levelMask.leadingZeroBitCount }

    /// Makes a cell, checking it as the C++ implementation does.
    public init(kind: Kind = .ordinary, data: [UInt8], bitCount: Int, refs: [Cell] = []) throws(TONCellError) {
        guard bitCount >= 0, bitCount <= Self.maxBits, data.count == (bitCount + 7) / 8 else {
            throw TONCellError(.badData, "a cell holds at most 1023 bits in ceil(bits/8) bytes")
        }
        guard refs.count <= Self.maxRefs else { throw TONCellError(.badDescriptor, "a cell has at most 4 references") }
        var bytes = data
        if bitCount % 8 != 0 { bytes[bytes.count - 1] &= ~UInt8(0xFF >> (bitCount % 8)) }
        self.kind = kind
        self.data = bytes
        self.bitCount = bitCount
        self.refs = refs
        let mask = try Self.levelMask(kind: kind, data: bytes, bitCount: bitCount, refs: refs)
        levelMask = mask
        (hashes, depths) = try Self.computeHashes(kind: kind, data: bytes, bitCount: bitCount, refs: refs, mask: mask)
    }

    /// Ordinary cell from bytes and a bit count.
    public convenience init(bits: [UInt8], count: Int, refs: [Cell] = []) throws(TONCellError) {
        try self.init(kind: .ordinary, data: bits, bitCount: count, refs: refs)
    }

    // MARK: Levels and hashes

    static func significant(_ mask: UInt8, _ level: Int) -> Bool { level == 0 || (mask >> (level - 1)) & 1 == 1 }
    static func hashIndex(_ mask: UInt8, level: Int) -> Int { (mask & UInt8((1 << min(level, 3)) - 1)).nonzeroBitCount }

    static func levelMask(kind: Kind, data: [UInt8], bitCount: Int, refs: [Cell]) throws(TONCellError) -> UInt8 {
        if kind != .ordinary, bitCount < 8 || data[0] != kind.rawValue {
            throw TONCellError(.badExotic, "an exotic cell starts with its type byte")
        }
        switch kind {
        case .ordinary:
            return refs.reduce(0) { $0 | $1.levelMask }
        case .prunedBranch:
            guard refs.isEmpty, bitCount >= 16 else {
                throw TONCellError(.badExotic, "a pruned branch has no references and a level mask")
            }
            let mask = data[1]
            guard (1...7).contains(mask) else {
                throw TONCellError(.badExotic, "pruned branch level mask \(mask) is not 1-7")
            }
            let n = Int(mask.nonzeroBitCount)
            guard bitCount == 16 + n * (256 + 16) else {
                throw TONCellError(
                    .badExotic, "a pruned branch of mask \(mask) holds \(16 + n * 272) bits, not \(bitCount)")
            }
            return mask
        case .library:
            guard refs.isEmpty, bitCount == 8 + 256 else {
                throw TONCellError(.badExotic, "a library cell is 264 bits without references")
            }
            return 0
        case .merkleProof:
            guard refs.count == 1, bitCount == 8 + 256 + 16 else {
                throw TONCellError(.badExotic, "a Merkle proof is 280 bits with one reference")
            }
            return refs[0].levelMask >> 1
        case .merkleUpdate:
            guard refs.count == 2, bitCount == 8 + 512 + 32 else {
                throw TONCellError(.badExotic, "a Merkle update is 552 bits with two references")
            }
            return (refs[0].levelMask | refs[1].levelMask) >> 1
        }
    }

    /// The augmented data: whole bytes, with the completion tag when the bit count is not a multiple of 8.
    var augmentedData: [UInt8] {
        guard bitCount % 8 != 0 else { return data }
        var d = data
        d[d.count - 1] |= UInt8(0x80 >> (bitCount % 8))
        return d
    }

    func descriptors(mask: UInt8) -> [UInt8] {
        let d1 = UInt8(refs.count) + (isExotic ? 8 : 0) + mask << 5
        let d2 = UInt8(bitCount / 8 + (bitCount + 7) / 8)
        return [d1, d2]
    }

    static func computeHashes(kind: Kind, data: [UInt8], bitCount: Int, refs: [Cell], mask: UInt8) throws(TONCellError)
        -> ([[UInt8]], [Int])
    {
        let level = 8 - mask.leadingZeroBitCount
        let shift = kind == .merkleProof || kind == .merkleUpdate ? 1 : 0
        let offset = kind == .prunedBranch ? Int(mask.nonzeroBitCount) : 0
        var hashes = [[UInt8]]()
        var depths = [Int]()
        var index = 0
        let d2 = UInt8(bitCount / 8 + (bitCount + 7) / 8)
        var augmented = data
        if bitCount % 8 != 0 { augmented[augmented.count - 1] |= UInt8(0x80 >> (bitCount % 8)) }
        for i in 0...level where significant(mask, i) {
            defer { index += 1 }
            if index < offset { continue }
            var repr = [UInt8(refs.count) + (kind == .ordinary ? 0 : 8) + (mask & UInt8((1 << i) - 1)) << 5, d2]
            if index == offset {
                repr += augmented
            } else {
                repr += hashes[index - offset - 1]
            }
            var depth = 0
            for r in refs {
                let d = r.depth(level: i + shift)
                repr += [UInt8(d >> 8), UInt8(d & 0xFF)]
                depth = max(depth, d + 1)
            }
            guard depth <= maxDepth else { throw TONCellError(.depthLimit, "cell depth \(depth) is above \(maxDepth)") }
            for r in refs { repr += r.hash(level: i + shift) }
            hashes.append([UInt8](HashAlgorithm.sha256.hash(repr)))
            depths.append(depth)
        }
        // Merkle cells commit to their children's level-0 hash and depth: the stored copies must agree.
        if kind == .merkleProof || kind == .merkleUpdate {
            for (n, child) in refs.enumerated() {
                let storedHash = Array(data[1 + 32 * n..<1 + 32 * (n + 1)])
                let depthAt = 1 + 32 * refs.count + 2 * n
                let storedDepth = Int(data[depthAt]) << 8 | Int(data[depthAt + 1])
                guard storedHash == child.hash(level: 0), storedDepth == child.depth(level: 0) else {
                    throw TONCellError(
                        .badExotic, "the Merkle cell's stored hash or depth of child \(n) is not the child's")
                }
            }
        }
        if kind == .prunedBranch {
            for j in 0..<offset {
                let at = 2 + 32 * offset + 2 * j
                guard Int(data[at]) << 8 | Int(data[at + 1]) <= maxDepth else {
                    throw TONCellError(.depthLimit, "a pruned branch claims a depth above \(maxDepth)")
                }
            }
        }
        return (hashes, depths)
    }

    /// The representation hash at `level` (levels above the cell's own give its top hash).
    public func hash(level: Int = 3) -> [UInt8] {
        let i = Self.hashIndex(levelMask, level: level)
        if kind == .prunedBranch {
            let n = Int(levelMask.nonzeroBitCount)
            if i < n { return Array(data[2 + 32 * i..<2 + 32 * (i + 1)]) }
            return hashes[i - n]
        }
        return hashes[i]
    }

    public func depth(level: Int = 3) -> Int {
        let i = Self.hashIndex(levelMask, level: level)
        if kind == .prunedBranch {
            let n = Int(levelMask.nonzeroBitCount)
            if i < n {
                let at = 2 + 32 * n + 2 * i
                return Int(data[at]) << 8 | Int(data[at + 1])
            }
            return depths[i - n]
        }
        return depths[i]
    }

    /// The hash that names the cell (its top-level representation hash).
    public var representationHash: [UInt8] { hash() }

    public static func == (a: Cell, b: Cell) -> Bool { a === b || a.representationHash == b.representationHash }
    public func hash(into hasher: inout Hasher) { hasher.combine(representationHash) }

    public var description: String {
        "Cell(\(kind), \(bitCount) bits, \(refs.count) refs, \(Data(representationHash).hex.prefix(16))…)"
    }
}
