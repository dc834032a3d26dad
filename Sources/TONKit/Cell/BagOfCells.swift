import AttestationCore
import Foundation

/// Bags of cells (`crypto/tl/boc.tlb`): the generic form `b5ee9c72` with every flag (index, CRC32C,
/// cache bits) and the legacy forms `68ff65f3` / `acc3a728`.
///
/// Decoding is strict: what the C++ implementation rejects is rejected, and so is what boc.tlb
/// forbids though C++ tolerates it (absent cells, reserved flag bits, more roots than cells,
/// trailing bytes). Threat: a hostile BoC from a chain API — oversized counts that would make a
/// decoder allocate, references that form cycles, an index that disagrees with the cells, or a
/// checksum that does not cover what was read. Every count is checked against the bytes present
/// before anything is allocated.
public enum BagOfCells {
    static let genericMagic: [UInt8] = [0xB5, 0xEE, 0x9C, 0x72]
    static let legacyMagic: [UInt8] = [0x68, 0xFF, 0x65, 0xF3]
    static let legacyCRCMagic: [UInt8] = [0xAC, 0xC3, 0xA7, 0x28]

    /// Account states are tens of KiB, blocks a few MiB; larger input is refused before parsing.
    public static let maxSize = 16 << 20

    public struct Header: Sendable, Equatable {
        public var hasIndex = false
        public var hasCRC32C = false
        public var hasCacheBits = false
        public var sizeBytes = 1
        public var offsetBytes = 1
        public var cells = 0
        public var roots = 0
    }

    /// Decodes and returns the roots, in root-list order.
    public static func parse(_ input: some Collection<UInt8>) throws(TONCellError) -> [Cell] {
        try decode(input).roots
    }

    /// A cell as read, before it is built and checked.
    struct RawCell {
        var kind: Cell.Kind
        var data: [UInt8]
        var bits: Int
        var refs: [Int]
        var mask: UInt8
        var storedHashes: [[UInt8]]
        var storedDepths: [Int]
    }

    public static func decode(_ input: some Collection<UInt8>) throws(TONCellError) -> (roots: [Cell], header: Header) {
        try decode(bytes: Array(input))
    }

    static func decode(bytes b: [UInt8]) throws(TONCellError) -> (roots: [Cell], header: Header) {
        guard b.count <= maxSize else { throw TONCellError(.badHeader, "a bag of cells larger than \(maxSize) bytes") }
        guard b.count >= 4 else { throw TONCellError(.truncated, "shorter than a magic") }
        var at = 4
        func need(_ n: Int) throws(TONCellError) {
            guard n >= 0, at + n <= b.count else {
                throw TONCellError(.truncated, "the header announces more bytes than there are")
            }
        }
        func uint(_ n: Int) throws(TONCellError) -> Int {
            try need(n)
            var v = 0
            for _ in 0..<n {
                v = v << 8 | Int(b[at])
                at += 1
            }
            return v
        }
        var h = Header()
        let magic = Array(b[0..<4])
        let legacy: Bool
        switch magic {
        case genericMagic:
            legacy = false
            try need(1)
            let flags = b[at]
            at += 1
            h.hasIndex = flags & 0x80 != 0
            h.hasCRC32C = flags & 0x40 != 0
            h.hasCacheBits = flags & 0x20 != 0
            guard flags & 0x18 == 0 else { throw TONCellError(.badHeader, "reserved flag bits are set") }
            h.sizeBytes = Int(flags & 0x07)
            guard !h.hasCacheBits || h.hasIndex else { throw TONCellError(.badHeader, "cache bits without an index") }
        case legacyMagic, legacyCRCMagic:
            legacy = true
            h.hasIndex = true
            h.hasCRC32C = magic == legacyCRCMagic
            h.sizeBytes = try uint(1)
        default:
            throw TONCellError(.badMagic, "unknown magic \(Data(magic).hex)")
        }
        guard (1...4).contains(h.sizeBytes) else {
            throw TONCellError(.badHeader, "reference size \(h.sizeBytes) is not 1-4 bytes")
        }
        h.offsetBytes = try uint(1)
        guard (1...8).contains(h.offsetBytes) else {
            throw TONCellError(.badHeader, "offset size \(h.offsetBytes) is not 1-8 bytes")
        }
        h.cells = try uint(h.sizeBytes)
        h.roots = try uint(h.sizeBytes)
        let absent = try uint(h.sizeBytes)
        guard h.offsetBytes <= 7 || b[at] == 0 else { throw TONCellError(.badHeader, "total cell size out of range") }
        let totalSize = try uint(h.offsetBytes)
        guard h.cells >= 1, h.roots >= 1 else { throw TONCellError(.badHeader, "no cells or no roots") }
        guard h.roots <= h.cells else { throw TONCellError(.badHeader, "more roots than cells") }
        guard absent == 0 else { throw TONCellError(.absentCells, "absent cells are not supported") }
        if legacy, h.roots != 1 { throw TONCellError(.badHeader, "a legacy bag of cells has one root") }
        // Each cell takes at least 2 bytes: a count the input cannot hold is refused before allocating.
        guard h.cells <= (b.count - at) / 2, totalSize <= b.count - at else {
            throw TONCellError(.truncated, "the header announces \(h.cells) cells / \(totalSize) bytes")
        }
        var roots = [Int]()
        if legacy {
            roots = [0]
        } else {
            for _ in 0..<h.roots {
                let r = try uint(h.sizeBytes)
                guard r < h.cells else { throw TONCellError(.rootOutOfRange, "root \(r) of \(h.cells) cells") }
                roots.append(r)
            }
        }
        var index = [Int]()
        if h.hasIndex {
            try need(h.cells * h.offsetBytes)
            for _ in 0..<h.cells { index.append(try uint(h.offsetBytes)) }
        }
        try need(totalSize)
        let dataStart = at
        let dataEnd = at + totalSize
        if h.hasCRC32C {
            guard dataEnd + 4 <= b.count else { throw TONCellError(.truncated, "no room for the CRC32C") }
            let stored =
                UInt32(b[dataEnd]) | UInt32(b[dataEnd + 1]) << 8 | UInt32(b[dataEnd + 2]) << 16 | UInt32(b[dataEnd + 3])
                << 24
            guard TONChecksum.crc32c(b[0..<dataEnd]) == stored else {
                throw TONCellError(.crcMismatch, "the CRC32C does not match")
            }
            guard dataEnd + 4 == b.count else { throw TONCellError(.trailingData, "bytes after the CRC32C") }
        } else {
            guard dataEnd == b.count else { throw TONCellError(.trailingData, "bytes after the last cell") }
        }

        // Raw cells: descriptors, data, references (which must point forward).
        var raws = [RawCell]()
        raws.reserveCapacity(h.cells)
        at = dataStart
        for i in 0..<h.cells {
            guard at + 2 <= dataEnd else { throw TONCellError(.truncated, "cell \(i) is cut off") }
            let d1 = b[at], d2 = b[at + 1]
            at += 2
            let refCount = Int(d1 & 7)
            guard refCount <= 4 else {
                throw TONCellError(.badDescriptor, "cell \(i): \(refCount) references (absent or invalid)")
            }
            let exotic = d1 & 8 != 0
            let withHashes = d1 & 16 != 0
            let mask = d1 >> 5
            let hashCount = withHashes ? Int(mask.nonzeroBitCount) + 1 : 0
            var storedHashes = [[UInt8]](), storedDepths = [Int]()
            if withHashes {
                guard at + hashCount * 34 <= dataEnd else {
                    throw TONCellError(.truncated, "cell \(i): stored hashes cut off")
                }
                for k in 0..<hashCount { storedHashes.append(Array(b[at + 32 * k..<at + 32 * (k + 1)])) }
                at += 32 * hashCount
                for k in 0..<hashCount { storedDepths.append(Int(b[at + 2 * k]) << 8 | Int(b[at + 2 * k + 1])) }
                at += 2 * hashCount
            }
            let length = Int(d2 >> 1) + Int(d2 & 1)
            guard at + length + refCount * h.sizeBytes <= dataEnd else {
                throw TONCellError(.truncated, "cell \(i) is cut off")
            }
            var data = Array(b[at..<at + length])
            at += length
            var bits = length * 8
            if d2 & 1 == 1 {
                guard let last = data.last, last != 0 else {
                    throw TONCellError(.badData, "cell \(i): no completion tag")
                }
                let trailing = last.trailingZeroBitCount
                bits -= trailing + 1
                data[data.count - 1] = last & ~UInt8(truncatingIfNeeded: (1 << (trailing + 1)) - 1)
            }
            guard bits <= Cell.maxBits else { throw TONCellError(.badData, "cell \(i): more than 1023 bits") }
            var refs = [Int]()
            for _ in 0..<refCount {
                var r = 0
                for _ in 0..<h.sizeBytes {
                    r = r << 8 | Int(b[at])
                    at += 1
                }
                guard r < h.cells else {
                    throw TONCellError(.refOutOfRange, "cell \(i) refers to cell \(r) of \(h.cells)")
                }
                guard r > i else {
                    throw TONCellError(.refOrder, "cell \(i) refers to cell \(r), which is not after it")
                }
                refs.append(r)
            }
            if h.hasIndex {
                let entry = index[i]
                let end = h.hasCacheBits ? entry >> 1 : entry
                guard end == at - dataStart else {
                    throw TONCellError(.badIndex, "index entry \(i) is \(end), the cell ends at \(at - dataStart)")
                }
            }
            var kind = Cell.Kind.ordinary
            if exotic {
                guard bits >= 8, let k = Cell.Kind(rawValue: data[0]), k != .ordinary else {
                    throw TONCellError(.badExotic, "cell \(i): unknown exotic type")
                }
                kind = k
            }
            raws.append(
                RawCell(
                    kind: kind, data: data, bits: bits, refs: refs, mask: mask, storedHashes: storedHashes,
                    storedDepths: storedDepths))
        }
        guard at == dataEnd else {
            throw TONCellError(
                .trailingData, "cell data is \(dataEnd - dataStart) bytes, the cells take \(at - dataStart)")
        }

        // Build from the last cell back: every reference is already built.
        var built = [Cell?](repeating: nil, count: h.cells)
        for i in stride(from: h.cells - 1, through: 0, by: -1) {
            let r = raws[i]
            let cell = try Cell(kind: r.kind, data: r.data, bitCount: r.bits, refs: r.refs.map { built[$0]! })
            guard cell.levelMask == r.mask else {
                throw TONCellError(
                    r.kind == .ordinary ? .badDescriptor : .badExotic,
                    "cell \(i): level mask \(r.mask) in its descriptor, \(cell.levelMask) from its contents")
            }
            if !r.storedHashes.isEmpty {
                var level = 0
                for k in 0..<r.storedHashes.count {
                    while !Cell.significant(r.mask, level) { level += 1 }
                    guard cell.hash(level: level) == r.storedHashes[k], cell.depth(level: level) == r.storedDepths[k]
                    else {
                        throw TONCellError(.badData, "cell \(i): stored hash \(k) is not the cell's")
                    }
                    level += 1
                }
            }
            built[i] = cell
        }
        let out = roots.map { built[$0]! }
        for (n, root) in out.enumerated() where root.levelMask != 0 {
            throw TONCellError(.nonzeroLevelRoot, "root \(n) has level \(root.level)")
        }
        return (out, h)
    }

    /// Serializes `roots` in the generic form, deduplicated by hash, each cell before the cells it
    /// references. The order is pytoniq-core's (depth first, a cell reached again moved after its
    /// latest referrer), so that its bags of cells come back byte for byte; that order revisits
    /// shared subgraphs, so for heavily shared graphs (blocks, proofs) a reverse post-order is
    /// used instead.
    public static func serialize(_ roots: [Cell], index: Bool = false, crc32c: Bool = false) throws(TONCellError)
        -> [UInt8]
    {
        guard !roots.isEmpty else { throw TONCellError(.badHeader, "no roots") }
        let order = movingOrder(roots) ?? reversePostOrder(roots)
        var position = [[UInt8]: Int]()
        for (i, c) in order.enumerated() { position[c.representationHash] = i }
        let sizeBytes = max(1, (Int.bitWidth - order.count.leadingZeroBitCount + 7) / 8)
        var payload = [UInt8]()
        var ends = [Int]()
        for cell in order {
            payload += cell.descriptors(mask: cell.levelMask)
            payload += cell.augmentedData
            for r in cell.refs { payload += bigEndian(position[r.representationHash]!, bytes: sizeBytes) }
            ends.append(payload.count)
        }
        let offsetBytes = max(1, (Int.bitWidth - payload.count.leadingZeroBitCount + 7) / 8)
        var out = genericMagic
        out.append((index ? 0x80 : 0) | (crc32c ? 0x40 : 0) | UInt8(sizeBytes))
        out.append(UInt8(offsetBytes))
        out += bigEndian(order.count, bytes: sizeBytes)
        out += bigEndian(roots.count, bytes: sizeBytes)
        out += bigEndian(0, bytes: sizeBytes)
        out += bigEndian(payload.count, bytes: offsetBytes)
        for root in roots { out += bigEndian(position[root.representationHash]!, bytes: sizeBytes) }
        if index { for e in ends { out += bigEndian(e, bytes: offsetBytes) } }
        out += payload
        if crc32c {
            let c = TONChecksum.crc32c(out)
            out += [UInt8(c & 0xFF), UInt8(c >> 8 & 0xFF), UInt8(c >> 16 & 0xFF), UInt8(c >> 24)]
        }
        return out
    }

    static func bigEndian(_ v: Int, bytes: Int) -> [UInt8] {
        (0..<bytes).reversed().map { UInt8(v >> (8 * $0) & 0xFF) }
    }

    /// The moving order gives up after this many visits: it can be exponential in the depth of
    /// a shared graph.
    static let maxMovingVisits = 100_000

    /// pytoniq-core's order, or nil when it would take more than `maxMovingVisits` visits.
    static func movingOrder(_ roots: [Cell]) -> [Cell]? {
        // An insertion-ordered set where re-inserting moves a cell to the end.
        var sequence = [Cell?]()
        var slot = [[UInt8]: Int]()
        var visits = 0
        func visit(_ cell: Cell) -> Bool {
            visits += 1
            guard visits <= maxMovingVisits else { return false }
            let key = cell.representationHash
            if let old = slot[key] { sequence[old] = nil }
            slot[key] = sequence.count
            sequence.append(cell)
            for r in cell.refs where !visit(r) { return false }
            return true
        }
        for root in roots where !visit(root) { return nil }
        return sequence.compactMap { $0 }
    }

    /// A topological order in linear time: depth-first post-order, reversed.
    static func reversePostOrder(_ roots: [Cell]) -> [Cell] {
        var seen = Set<[UInt8]>()
        var post = [Cell]()
        // Iterative: graphs are up to 1024 deep.
        for root in roots {
            guard seen.insert(root.representationHash).inserted else { continue }
            var stack: [(Cell, Int)] = [(root, 0)]
            while let (cell, next) = stack.last {
                if next < cell.refs.count {
                    stack[stack.count - 1].1 += 1
                    let child = cell.refs[next]
                    if seen.insert(child.representationHash).inserted { stack.append((child, 0)) }
                } else {
                    post.append(cell)
                    stack.removeLast()
                }
            }
        }
        return post.reversed()
    }
}
