/// A minimal bounds-checked DER reader for the structures the verifier reads itself (Intel's SGX
/// certificate extension). Everything else about X.509 is left to OpenSSL.
struct DERReader {
    let bytes: [UInt8]
    var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var isAtEnd: Bool { offset >= bytes.count }

    /// The next tag and its contents; nil on any malformation (indefinite or overlong lengths,
    /// truncation). Only single-byte tags occur in these structures.
    mutating func next() -> (tag: UInt8, contents: [UInt8])? {
        guard offset + 2 <= bytes.count else { return nil }
        let tag = bytes[offset]
        var length = Int(bytes[offset + 1])
        var cursor = offset + 2
        if length & 0x80 != 0 {
            let n = length & 0x7F
            guard (1...4).contains(n), cursor + n <= bytes.count else { return nil }
            length = 0
            for i in 0..<n { length = length << 8 | Int(bytes[cursor + i]) }
            cursor += n
        }
        guard length <= bytes.count - cursor else { return nil }
        offset = cursor + length
        return (tag, Array(bytes[cursor..<(cursor + length)]))
    }

    /// Dotted text of an OBJECT IDENTIFIER's contents.
    static func oid(_ contents: [UInt8]) -> String? {
        guard let first = contents.first else { return nil }
        var parts = [Int(first) / 40, Int(first) % 40]
        var value = 0
        for b in contents.dropFirst() {
            guard value < (1 << 50) else { return nil }
            value = value << 7 | Int(b & 0x7F)
            if b & 0x80 == 0 {
                parts.append(value)
                value = 0
            }
        }
        return parts.map(String.init).joined(separator: ".")
    }

    /// A non-negative INTEGER's value (up to 62 bits).
    static func integer(_ contents: [UInt8]) -> Int? {
        guard !contents.isEmpty, contents.count <= 8, contents[0] & 0x80 == 0 else { return nil }
        return contents.reduce(0) { $0 << 8 | Int($1) }
    }
}
