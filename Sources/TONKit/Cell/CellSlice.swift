import Foundation

/// Why a slice could not be read as asked; reading past the end is the usual one.
public struct TONSliceError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { "slice: \(message)" }
}

/// A reader over a cell's bits and references (TL-B primitives): unsigned and signed integers,
/// `Coins`, `MsgAddress`, `Maybe`, references and `HashmapE`.
///
/// Every read checks what is left first: contract data from a chain API is untrusted, and a
/// short or malformed cell is an error, never a crash or a default value.
public struct CellSlice: Sendable {
    public let cell: Cell
    public private(set) var bitOffset = 0
    public private(set) var refOffset = 0

    public init(_ cell: Cell) { self.cell = cell }

    init(cell: Cell, bitOffset: Int, refOffset: Int) {
        self.cell = cell
        self.bitOffset = bitOffset
        self.refOffset = refOffset
    }

    public var remainingBits: Int { cell.bitCount - bitOffset }
    public var remainingRefs: Int { cell.refs.count - refOffset }

    public mutating func bit() throws(TONSliceError) -> Bool {
        guard remainingBits >= 1 else { throw TONSliceError("no bit left") }
        let b = cell.data[bitOffset >> 3] >> (7 - UInt8(bitOffset & 7)) & 1
        bitOffset += 1
        return b == 1
    }

    /// `bits` bits (0–64) as an unsigned integer.
    public mutating func uint(_ bits: Int) throws(TONSliceError) -> UInt64 {
        guard (0...64).contains(bits) else { throw TONSliceError("uint\(bits) is wider than 64 bits") }
        guard remainingBits >= bits else {
            throw TONSliceError("uint\(bits) needs \(bits) bits, \(remainingBits) left")
        }
        var v: UInt64 = 0
        for _ in 0..<bits { v = v << 1 | (try bit() ? 1 : 0) }
        return v
    }

    /// `bits` bits (1–64) as a two's-complement signed integer.
    public mutating func int(_ bits: Int) throws(TONSliceError) -> Int64 {
        guard (1...64).contains(bits) else { throw TONSliceError("int\(bits) is not 1-64 bits") }
        let u = try uint(bits)
        if bits == 64 { return Int64(bitPattern: u) }
        let sign = UInt64(1) << (bits - 1)
        return u & sign == 0 ? Int64(u) : Int64(u) - Int64(sign << 1)
    }

    /// `bits` bits as big-endian bytes (the last byte zero-padded).
    public mutating func bits(_ count: Int) throws(TONSliceError) -> [UInt8] {
        guard count >= 0, remainingBits >= count else {
            throw TONSliceError("needs \(count) bits, \(remainingBits) left")
        }
        var out = [UInt8](repeating: 0, count: (count + 7) / 8)
        for i in 0..<count where try bit() { out[i >> 3] |= 0x80 >> UInt8(i & 7) }
        return out
    }

    /// `Coins` (`VarUInteger 16`): a 4-bit byte length, then that many bytes.
    public mutating func coins() throws(TONSliceError) -> UInt128 {
        let length = Int(try uint(4))
        var v: UInt128 = 0
        for _ in 0..<length { v = v << 8 | UInt128(try uint(8)) }
        return v
    }

    public mutating func ref() throws(TONSliceError) -> Cell {
        guard remainingRefs >= 1 else { throw TONSliceError("no reference left") }
        refOffset += 1
        return cell.refs[refOffset - 1]
    }

    /// `Maybe ^X`: a bit, then a reference when it is set.
    public mutating func maybeRef() throws(TONSliceError) -> Cell? { try bit() ? try ref() : nil }

    /// `MsgAddressInt` / `MsgAddress`: `addr_std` gives an address, `addr_none` nil; anycast,
    /// external and variable-length addresses are refused (no stake contract uses them).
    public mutating func address() throws(TONSliceError) -> TONAddress? {
        let tag = try uint(2)
        switch tag {
        case 0b00: return nil
        case 0b10:
            guard try !bit() else { throw TONSliceError("anycast addresses are not supported") }
            let wc = Int32(try int(8))
            return TONAddress(workchain: wc, hash: try bits(256))
        default: throw TONSliceError("address tag \(tag) is not addr_std or addr_none")
        }
    }

    public func requireEnd() throws(TONSliceError) {
        guard remainingBits == 0, remainingRefs == 0 else {
            throw TONSliceError("\(remainingBits) bits and \(remainingRefs) references left over")
        }
    }

    /// `HashmapE n X`: a bit, then the root of a `Hashmap n X` when set. Returns the entries in key
    /// order, each key as `n` bits (big-endian bytes) and its value as a slice.
    public mutating func hashmapE(keyBits n: Int) throws(TONSliceError) -> [(key: [UInt8], value: CellSlice)] {
        guard let root = try maybeRef() else { return [] }
        var out = [(key: [UInt8], value: CellSlice)]()
        try Self.hashmap(root, remaining: n, prefix: [], total: n, into: &out, depth: 0)
        return out
    }

    /// Parses one `Hashmap` edge: a label (`hml_short`, `hml_long`, `hml_same`), then a leaf or a fork.
    static func hashmap(
        _ cell: Cell, remaining m: Int, prefix: [Bool], total: Int,
        into out: inout [(key: [UInt8], value: CellSlice)], depth: Int
    ) throws(TONSliceError) {
        guard depth <= total + 1 else { throw TONSliceError("hashmap deeper than its key") }
        var s = CellSlice(cell)
        var label = [Bool]()
        let lengthBits = Int.bitWidth - m.leadingZeroBitCount  // ceil(log2(m + 1))
        if try !s.bit() {
            // hml_short: unary length, then the bits.
            var length = 0
            while try s.bit() { length += 1 }
            guard length <= m else { throw TONSliceError("hashmap label longer than the key") }
            for _ in 0..<length { label.append(try s.bit()) }
        } else if try !s.bit() {
            let length = Int(try s.uint(lengthBits))
            guard length <= m else { throw TONSliceError("hashmap label longer than the key") }
            for _ in 0..<length { label.append(try s.bit()) }
        } else {
            let v = try s.bit()
            let length = Int(try s.uint(lengthBits))
            guard length <= m else { throw TONSliceError("hashmap label longer than the key") }
            label = Array(repeating: v, count: length)
        }
        let key = prefix + label
        let left = m - label.count
        if left == 0 {
            var bytes = [UInt8](repeating: 0, count: (total + 7) / 8)
            for (i, b) in key.enumerated() where b { bytes[i >> 3] |= 0x80 >> UInt8(i & 7) }
            out.append((bytes, s))
            return
        }
        let l = try s.ref(), r = try s.ref()
        try hashmap(l, remaining: left - 1, prefix: key + [false], total: total, into: &out, depth: depth + 1)
        try hashmap(r, remaining: left - 1, prefix: key + [true], total: total, into: &out, depth: depth + 1)
    }
}

/// Get-method ids: `(crc16_xmodem(name) & 0xffff) | 0x10000`.
public enum GetMethod {
    public static func id(_ name: String) -> Int { Int(TONChecksum.crc16(Array(name.utf8))) | 0x10000 }
}
