import Foundation

/// The members of one JSON object, read in a single pass that checks the whole text is JSON
/// (RFC 8259: UTF-8, no trailing bytes, nesting at most ``maxDepth``) without building it. The
/// gateway needs a handful of fields of every request and answer (`model`, `stream`, `usage`);
/// building whole documents for them cost more than relaying the bytes.
///
/// Threat: a client (or a worker) sending text that two parsers read differently, so that the
/// gateway routes, bills or signs one value while the engine acts on another: duplicate members
/// are reported (``duplicates``) for the caller to refuse, and a string value is decoded with
/// its escapes exactly as JSON defines them. And text built to exhaust the parser (deep
/// nesting, truncated escapes, invalid UTF-8) is a ``Malformed`` error, never a crash.
public struct JSONMembers: Sendable {
    /// One member's value: its kind and where its bytes are.
    public struct Value: Equatable, Sendable {
        public enum Kind: Equatable, Sendable { case string, number, object, array, bool, null }
        public let kind: Kind
        public let range: Range<Int>
    }

    public struct Malformed: Error, Equatable, CustomStringConvertible {
        public let description: String
        public let offset: Int
    }

    public static let maxDepth = 512

    /// The first value of each member, by name.
    public private(set) var members: [String: Value] = [:]
    /// Names that occur more than once.
    public private(set) var duplicates: Set<String> = []
    let bytes: [UInt8]

    /// Reads `text`, which must be one JSON object nested at most `maxDepth` levels (never more
    /// than ``maxDepth``, which bounds the reader's stack).
    public init(_ text: Data, maxDepth: Int = JSONMembers.maxDepth) throws(Malformed) {
        try self.init(bytes: Array(text), maxDepth: min(maxDepth, JSONMembers.maxDepth))
    }

    init(bytes: [UInt8], maxDepth: Int = JSONMembers.maxDepth) throws(Malformed) {
        self.bytes = bytes
        var reader = Reader(bytes: bytes, maxDepth: maxDepth)
        reader.skipSpace()
        guard reader.peek == UInt8(ascii: "{") else { throw reader.failure("not a JSON object") }
        var members: [String: Value] = [:]
        var duplicates: Set<String> = []
        try reader.object(depth: 1) { name, value in
            if members[name] == nil { members[name] = value } else { duplicates.insert(name) }
        }
        reader.skipSpace()
        guard reader.at == bytes.count else { throw reader.failure("bytes after the JSON value") }
        self.members = members
        self.duplicates = duplicates
    }

    /// The members of the object that is member `name`'s value; nil when it is not an object.
    public func object(_ name: String) -> JSONMembers? {
        guard let value = members[name], value.kind == .object else { return nil }
        return try? JSONMembers(bytes: Array(bytes[value.range]))
    }

    /// Every member's value as a string (escapes decoded); nil when any is not a
    /// string or a name occurs twice.
    public func strings() -> [String: String]? {
        guard duplicates.isEmpty else { return nil }
        var out = [String: String](minimumCapacity: members.count)
        for name in members.keys {
            guard let text = string(name) else { return nil }
            out[name] = text
        }
        return out
    }

    /// Member `name`'s value as it is written in the text (valid JSON, whitespace around it
    /// trimmed); nil when there is no such member.
    public func text(of name: String) -> ArraySlice<UInt8>? {
        members[name].map { bytes[$0.range] }
    }

    /// Member `name`'s value as a string (escapes decoded); nil when it is not a string.
    public func string(_ name: String) -> String? {
        guard let value = members[name], value.kind == .string else { return nil }
        var reader = Reader(bytes: bytes, maxDepth: JSONMembers.maxDepth)
        reader.at = value.range.lowerBound
        return try? reader.string(decode: true)
    }

    /// Member `name`'s value as an integer (no fraction or exponent, within `Int`); nil otherwise.
    public func integer(_ name: String) -> Int? {
        guard let value = members[name], value.kind == .number else { return nil }
        return Int(String(decoding: bytes[value.range], as: UTF8.self))
    }

    /// Member `name`'s value as a number; nil when it is not one.
    public func number(_ name: String) -> Double? {
        guard let value = members[name], value.kind == .number else { return nil }
        return Double(String(decoding: bytes[value.range], as: UTF8.self))
    }

    /// Member `name`'s value as a boolean; nil when it is not one.
    public func bool(_ name: String) -> Bool? {
        guard let value = members[name], value.kind == .bool else { return nil }
        return bytes[value.range.lowerBound] == UInt8(ascii: "t")
    }

    struct Reader {
        let bytes: [UInt8]
        let maxDepth: Int
        var at = 0

        var peek: UInt8? { at < bytes.count ? bytes[at] : nil }

        func failure(_ what: String) -> Malformed { Malformed(description: "\(what) at byte \(at)", offset: at) }

        mutating func skipSpace() {
            while at < bytes.count, bytes[at] == 0x20 || bytes[at] == 0x0A || bytes[at] == 0x0D || bytes[at] == 0x09 {
                at += 1
            }
        }

        mutating func expect(_ byte: UInt8) throws(Malformed) {
            guard peek == byte else { throw failure("expected '\(Character(Unicode.Scalar(byte)))'") }
            at += 1
        }

        /// An object at `at`; `member` hears each name and value.
        mutating func object(depth: Int, member: ((String, Value) -> Void)? = nil) throws(Malformed) {
            try expect(UInt8(ascii: "{"))
            skipSpace()
            if peek == UInt8(ascii: "}") {
                at += 1
                return
            }
            while true {
                skipSpace()
                guard peek == UInt8(ascii: "\"") else { throw failure("expected a member name") }
                let name = try string(decode: member != nil)
                skipSpace()
                try expect(UInt8(ascii: ":"))
                skipSpace()
                let start = at
                let kind = try value(depth: depth)
                member?(name ?? "", Value(kind: kind, range: start..<at))
                skipSpace()
                if peek == UInt8(ascii: ",") {
                    at += 1
                    continue
                }
                try expect(UInt8(ascii: "}"))
                return
            }
        }

        /// A value inside a container at level `depth` (the outer object is level 1); a
        /// container opened here is at level `depth + 1`, which may not pass ``maxDepth``.
        mutating func value(depth: Int) throws(Malformed) -> Value.Kind {
            if peek == UInt8(ascii: "{") || peek == UInt8(ascii: "[") {
                guard depth < maxDepth else { throw failure("nested deeper than \(maxDepth)") }
            }
            switch peek {
            case UInt8(ascii: "{"):
                try object(depth: depth + 1)
                return .object
            case UInt8(ascii: "["):
                at += 1
                skipSpace()
                if peek == UInt8(ascii: "]") {
                    at += 1
                    return .array
                }
                while true {
                    skipSpace()
                    _ = try value(depth: depth + 1)
                    skipSpace()
                    if peek == UInt8(ascii: ",") {
                        at += 1
                        continue
                    }
                    try expect(UInt8(ascii: "]"))
                    return .array
                }
            case UInt8(ascii: "\""):
                _ = try string(decode: false)
                return .string
            case UInt8(ascii: "t"):
                try literal("true")
                return .bool
            case UInt8(ascii: "f"):
                try literal("false")
                return .bool
            case UInt8(ascii: "n"):
                try literal("null")
                return .null
            default:
                try number()
                return .number
            }
        }

        mutating func literal(_ word: StaticString) throws(Malformed) {
            let n = word.utf8CodeUnitCount
            guard at + n <= bytes.count else { throw failure("truncated literal") }
            for i in 0..<n where bytes[at + i] != word.utf8Start[i] { throw failure("invalid literal") }
            at += n
        }

        /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
        mutating func number() throws(Malformed) {
            if peek == UInt8(ascii: "-") { at += 1 }
            guard let first = peek, Self.isDigit(first) else { throw failure("invalid value") }
            at += 1
            if first != UInt8(ascii: "0") { digits() }
            if peek == UInt8(ascii: ".") {
                at += 1
                guard let d = peek, Self.isDigit(d) else { throw failure("invalid number") }
                digits()
            }
            if peek == UInt8(ascii: "e") || peek == UInt8(ascii: "E") {
                at += 1
                if peek == UInt8(ascii: "+") || peek == UInt8(ascii: "-") { at += 1 }
                guard let d = peek, Self.isDigit(d) else { throw failure("invalid number") }
                digits()
            }
        }

        mutating func digits() { while let d = peek, Self.isDigit(d) { at += 1 } }
        static func isDigit(_ byte: UInt8) -> Bool { (0x30...0x39).contains(byte) }

        /// A string at `at` (its opening quote); its decoded text when `decode`.
        mutating func string(decode: Bool) throws(Malformed) -> String? {
            try expect(UInt8(ascii: "\""))
            // Printable ASCII without escapes (names, base64, hex, most prose) is taken as a run.
            let start = at
            while at < bytes.count, bytes[at] >= 0x20, bytes[at] < 0x80, bytes[at] != UInt8(ascii: "\""),
                bytes[at] != UInt8(ascii: "\\")
            {
                at += 1
            }
            if peek == UInt8(ascii: "\"") {
                at += 1
                return decode ? String(decoding: bytes[start..<(at - 1)], as: UTF8.self) : nil
            }
            var scalars = decode ? String(decoding: bytes[start..<at], as: UTF8.self).unicodeScalars : .init()
            while true {
                guard let byte = peek else { throw failure("unterminated string") }
                switch byte {
                case UInt8(ascii: "\""):
                    at += 1
                    return decode ? String(scalars) : nil
                case UInt8(ascii: "\\"):
                    at += 1
                    let scalar = try escape()
                    if decode { scalars.append(scalar) }
                case 0..<0x20:
                    throw failure("control character in a string")
                case 0..<0x80:
                    at += 1
                    if decode { scalars.append(Unicode.Scalar(byte)) }
                default:
                    let scalar = try utf8Scalar()
                    if decode { scalars.append(scalar) }
                }
            }
        }

        /// The escape after a backslash; a `\u` high surrogate must be followed by its low half.
        mutating func escape() throws(Malformed) -> Unicode.Scalar {
            guard let byte = peek else { throw failure("unterminated escape") }
            at += 1
            switch byte {
            case UInt8(ascii: "\""): return "\""
            case UInt8(ascii: "\\"): return "\\"
            case UInt8(ascii: "/"): return "/"
            case UInt8(ascii: "b"): return "\u{08}"
            case UInt8(ascii: "f"): return "\u{0C}"
            case UInt8(ascii: "n"): return "\n"
            case UInt8(ascii: "r"): return "\r"
            case UInt8(ascii: "t"): return "\t"
            case UInt8(ascii: "u"):
                let unit = try hex4()
                switch unit {
                case 0xD800..<0xDC00:
                    guard peek == UInt8(ascii: "\\"), at + 1 < bytes.count, bytes[at + 1] == UInt8(ascii: "u") else {
                        throw failure("unpaired surrogate")
                    }
                    at += 2
                    let low = try hex4()
                    guard (0xDC00..<0xE000).contains(low) else { throw failure("unpaired surrogate") }
                    return Unicode.Scalar(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))!
                case 0xDC00..<0xE000: throw failure("unpaired surrogate")
                default: return Unicode.Scalar(unit)!
                }
            default: throw failure("invalid escape")
            }
        }

        mutating func hex4() throws(Malformed) -> UInt32 {
            guard at + 4 <= bytes.count else { throw failure("truncated \\u escape") }
            var value: UInt32 = 0
            for byte in bytes[at..<(at + 4)] {
                let digit: UInt8
                switch byte {
                case 0x30...0x39: digit = byte - 0x30
                case 0x41...0x46: digit = byte - 0x41 + 10
                case 0x61...0x66: digit = byte - 0x61 + 10
                default: throw failure("invalid \\u escape")
                }
                value = value << 4 | UInt32(digit)
            }
            at += 4
            return value
        }

        /// One UTF-8 sequence of 2–4 bytes, shortest form, no surrogates, at most U+10FFFF.
        mutating func utf8Scalar() throws(Malformed) -> Unicode.Scalar {
            let lead = bytes[at]
            let (count, minimum): (Int, UInt32) =
                switch lead {
                case 0xC2...0xDF: (2, 0x80)
                case 0xE0...0xEF: (3, 0x800)
                case 0xF0...0xF4: (4, 0x10000)
                default: (0, 0)
                }
            guard count > 0, at + count <= bytes.count else { throw failure("invalid UTF-8") }
            var value = UInt32(lead) & (0xFF >> (count + 1))
            for byte in bytes[(at + 1)..<(at + count)] {
                guard byte & 0xC0 == 0x80 else { throw failure("invalid UTF-8") }
                value = value << 6 | UInt32(byte & 0x3F)
            }
            guard value >= minimum, let scalar = Unicode.Scalar(value) else { throw failure("invalid UTF-8") }
            at += count
            return scalar
        }
    }
}
