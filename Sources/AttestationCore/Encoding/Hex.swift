import Foundation

extension Data {
    /// Lowercase hexadecimal.
    public var hex: String { hexString }

    /// Decodes hexadecimal (either case, optional `0x` prefix); nil for anything else.
    public init?(hex text: some StringProtocol) {
        var s = Substring(text)
        if s.hasPrefix("0x") || s.hasPrefix("0X") { s = s.dropFirst(2) }
        let utf8 = Array(s.utf8)
        guard utf8.count % 2 == 0 else { return nil }
        var bytes = [UInt8]()
        bytes.reserveCapacity(utf8.count / 2)
        var i = 0
        while i < utf8.count {
            guard let hi = Self.nibble(utf8[i]), let lo = Self.nibble(utf8[i + 1]) else { return nil }
            bytes.append(hi << 4 | lo)
            i += 2
        }
        self.init(bytes)
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}

extension Sequence<UInt8> {
    /// Lowercase hexadecimal of the bytes.
    public var hexString: String {
        if let text = withContiguousStorageIfAvailable({ hexEncode($0) }) { return text }
        return Array(self).withUnsafeBufferPointer { hexEncode($0) }
    }
}

private let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

private func hexEncode(_ bytes: UnsafeBufferPointer<UInt8>) -> String {
    String(unsafeUninitializedCapacity: bytes.count * 2) { out in
        hexDigits.withUnsafeBufferPointer { digits in
            for (i, byte) in bytes.enumerated() {
                out[2 * i] = digits[Int(byte >> 4)]
                out[2 * i + 1] = digits[Int(byte & 0x0f)]
            }
        }
        return bytes.count * 2
    }
}
