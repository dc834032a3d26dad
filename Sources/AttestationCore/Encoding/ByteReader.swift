import Foundation

/// A bounds-checked cursor over bytes. Every read either succeeds or returns nil; nothing traps
/// on short or hostile input.
public struct ByteReader {
    public let bytes: [UInt8]
    public private(set) var offset: Int = 0

    public init(_ data: Data) { self.bytes = [UInt8](data) }
    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var remaining: Int { bytes.count - offset }
    public var isAtEnd: Bool { offset >= bytes.count }

    public mutating func read(_ n: Int) -> [UInt8]? {
        guard n >= 0, n <= remaining else { return nil }
        defer { offset += n }
        return Array(bytes[offset..<offset + n])
    }

    public mutating func skip(_ n: Int) -> Bool {
        guard n >= 0, n <= remaining else { return false }
        offset += n
        return true
    }

    public mutating func u8() -> UInt8? { read(1)?[0] }

    public mutating func u16le() -> UInt16? {
        guard let b = read(2) else { return nil }
        return UInt16(b[0]) | UInt16(b[1]) << 8
    }

    public mutating func u32le() -> UInt32? {
        guard let b = read(4) else { return nil }
        return UInt32(b[0]) | UInt32(b[1]) << 8 | UInt32(b[2]) << 16 | UInt32(b[3]) << 24
    }

    public mutating func u16be() -> UInt16? {
        guard let b = read(2) else { return nil }
        return UInt16(b[0]) << 8 | UInt16(b[1])
    }

    public mutating func u32be() -> UInt32? {
        guard let b = read(4) else { return nil }
        return UInt32(b[0]) << 24 | UInt32(b[1]) << 16 | UInt32(b[2]) << 8 | UInt32(b[3])
    }
}
