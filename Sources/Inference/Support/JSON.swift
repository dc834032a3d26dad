import Foundation

/// A JSON value that keeps object keys in document order (chat templates render `tojson` and
/// iterate dicts in insertion order, as Python does).
public enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (a: JSONValue, b: JSONValue) -> Bool {
        switch (a, b) {
        case (.null, .null): true
        case (.bool(let x), .bool(let y)): x == y
        case (.number(let x), .number(let y)): x == y
        case (.string(let x), .string(let y)): x == y
        case (.array(let x), .array(let y)): x == y
        case (.object(let x), .object(let y)):
            x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: false
        }
    }

    public subscript(key: String) -> JSONValue? {
        guard case .object(let pairs) = self else { return nil }
        return pairs.first { $0.0 == key }?.1
    }

    public var string: String? { if case .string(let s) = self { s } else { nil } }
    public var double: Double? { if case .number(let n) = self { n } else { nil } }
    public var bool: Bool? { if case .bool(let b) = self { b } else { nil } }
    public var array: [JSONValue]? { if case .array(let a) = self { a } else { nil } }
    public var isNull: Bool { if case .null = self { true } else { false } }
    /// An integral number that fits an Int.
    public var int: Int? {
        guard case .number(let n) = self, n.rounded() == n, abs(n) < 9.0e15 else { return nil }
        return Int(n)
    }
}

// MARK: Parsing

extension JSONValue {
    /// Parser caps: request bodies are bounded before they get here; nesting is bounded so a
    /// deeply nested body cannot exhaust the stack.
    public static let maxDepth = 64

    public static func parse(_ data: Data) throws(InferenceError) -> JSONValue {
        var parser = JSONParser(bytes: [UInt8](data))
        parser.skipSpace()
        let value = try parser.value(depth: 0)
        parser.skipSpace()
        guard parser.index == parser.bytes.count else { throw parser.failure("trailing characters") }
        return value
    }

    public static func parse(_ text: String) throws(InferenceError) -> JSONValue { try parse(Data(text.utf8)) }
}

struct JSONParser {
    let bytes: [UInt8]
    var index = 0

    func failure(_ what: String) -> InferenceError {
        InferenceError(.invalidRequest, "invalid JSON at byte \(index): \(what)")
    }

    mutating func skipSpace() {
        while index < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[index]) { index += 1 }
    }

    mutating func expect(_ literal: String, _ value: JSONValue) throws(InferenceError) -> JSONValue {
        let l = Array(literal.utf8)
        guard index + l.count <= bytes.count, Array(bytes[index..<(index + l.count)]) == l else {
            throw failure("expected \(literal)")
        }
        index += l.count
        return value
    }

    mutating func value(depth: Int) throws(InferenceError) -> JSONValue {
        guard depth < JSONValue.maxDepth else { throw failure("nested deeper than \(JSONValue.maxDepth)") }
        guard index < bytes.count else { throw failure("unexpected end") }
        switch bytes[index] {
        case UInt8(ascii: "{"):
            index += 1
            var pairs = [(String, JSONValue)]()
            // Where each key is, so a repeated key replaces its value without a scan: a body of
            // many keys must not cost time quadratic in its size.
            var positions = [String: Int]()
            skipSpace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "}") { index += 1; return .object(pairs) }
            while true {
                skipSpace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw failure("expected a key") }
                let key = try string()
                skipSpace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw failure("expected ':'") }
                index += 1
                skipSpace()
                let v = try value(depth: depth + 1)
                if let existing = positions[key] {
                    pairs[existing].1 = v
                } else {
                    positions[key] = pairs.count
                    pairs.append((key, v))
                }
                skipSpace()
                guard index < bytes.count else { throw failure("unterminated object") }
                if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                if bytes[index] == UInt8(ascii: "}") { index += 1; return .object(pairs) }
                throw failure("expected ',' or '}'")
            }
        case UInt8(ascii: "["):
            index += 1
            var items = [JSONValue]()
            skipSpace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "]") { index += 1; return .array(items) }
            while true {
                skipSpace()
                items.append(try value(depth: depth + 1))
                skipSpace()
                guard index < bytes.count else { throw failure("unterminated array") }
                if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                if bytes[index] == UInt8(ascii: "]") { index += 1; return .array(items) }
                throw failure("expected ',' or ']'")
            }
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): return try expect("true", .bool(true))
        case UInt8(ascii: "f"): return try expect("false", .bool(false))
        case UInt8(ascii: "n"): return try expect("null", .null)
        default: return try number()
        }
    }

    mutating func number() throws(InferenceError) -> JSONValue {
        let start = index
        if index < bytes.count, bytes[index] == UInt8(ascii: "-") { index += 1 }
        while index < bytes.count,
            (0x30...0x39).contains(bytes[index]) || [0x2E, 0x65, 0x45, 0x2B, 0x2D].contains(bytes[index])
        {
            index += 1
        }
        guard index > start, index - start <= 64,
            let text = String(bytes: bytes[start..<index], encoding: .ascii), let n = Double(text), n.isFinite
        else { index = start; throw failure("expected a value") }
        return .number(n)
    }

    mutating func hex4() throws(InferenceError) -> UInt32 {
        guard index + 4 <= bytes.count, let s = String(bytes: bytes[index..<(index + 4)], encoding: .ascii),
            let v = UInt32(s, radix: 16)
        else { throw failure("bad \\u escape") }
        index += 4
        return v
    }

    mutating func string() throws(InferenceError) -> String {
        index += 1  // opening quote
        var out = [UInt8]()
        while true {
            guard index < bytes.count else { throw failure("unterminated string") }
            let b = bytes[index]
            index += 1
            switch b {
            case UInt8(ascii: "\""):
                guard let s = String(validating: out, as: UTF8.self) else { throw failure("string is not UTF-8") }
                return s
            case UInt8(ascii: "\\"):
                guard index < bytes.count else { throw failure("unterminated escape") }
                let e = bytes[index]
                index += 1
                switch e {
                case UInt8(ascii: "\""): out.append(0x22)
                case UInt8(ascii: "\\"): out.append(0x5C)
                case UInt8(ascii: "/"): out.append(0x2F)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var v = try hex4()
                    if (0xD800..<0xDC00).contains(v) {
                        guard index + 2 <= bytes.count, bytes[index] == 0x5C, bytes[index + 1] == UInt8(ascii: "u")
                        else {
                            throw failure("unpaired surrogate")
                        }
                        index += 2
                        let low = try hex4()
                        guard (0xDC00..<0xE000).contains(low) else { throw failure("unpaired surrogate") }
                        v = 0x10000 + ((v - 0xD800) << 10) + (low - 0xDC00)
                    } else if (0xDC00..<0xE000).contains(v) {
                        throw failure("unpaired surrogate")
                    }
                    out.append(contentsOf: Array(String(Unicode.Scalar(v)!).utf8))
                default: throw failure("bad escape")
                }
            default:
                guard b >= 0x20 else { throw failure("control character in string") }
                out.append(b)
            }
        }
    }
}

// MARK: Serializing

extension JSONValue {
    /// Compact JSON, keys in order, non-ASCII kept as UTF-8.
    public var serialized: String {
        var out = ""
        write(to: &out, separators: (",", ":"), asciiOnly: false)
        return out
    }

    /// Python `json.dumps` layout: `", "` and `": "` separators by default.
    func write(to out: inout String, separators: (item: String, key: String), asciiOnly: Bool) {
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .number(let n): out += JSONValue.format(n)
        case .string(let s): JSONValue.quote(s, into: &out, asciiOnly: asciiOnly)
        case .array(let items):
            out += "["
            for (i, v) in items.enumerated() {
                if i > 0 { out += separators.item }
                v.write(to: &out, separators: separators, asciiOnly: asciiOnly)
            }
            out += "]"
        case .object(let pairs):
            out += "{"
            for (i, (k, v)) in pairs.enumerated() {
                if i > 0 { out += separators.item }
                JSONValue.quote(k, into: &out, asciiOnly: asciiOnly)
                out += separators.key
                v.write(to: &out, separators: separators, asciiOnly: asciiOnly)
            }
            out += "}"
        }
    }

    static func format(_ n: Double) -> String {
        if n.rounded() == n, abs(n) < 1e15 { return String(Int64(n)) }
        return "\(n)"
    }

    static func quote(_ s: String, into out: inout String, asciiOnly: Bool) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if scalar.value < 0x20 || (asciiOnly && scalar.value > 0x7E) {
                    if scalar.value > 0xFFFF {
                        let v = scalar.value - 0x10000
                        out += String(format: "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF))
                    } else {
                        out += String(format: "\\u%04x", scalar.value)
                    }
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        out += "\""
    }
}
