import Foundation

/// A parsed evidence envelope (`../shared/testdata/FORMAT.md`): a JSON object with a `format`,
/// a `version` and format-specific fields.
///
/// Parsing checks only the JSON shape; verifiers read the fields they need through the typed
/// accessors, each of which reports `evidence.malformed` for a missing or badly encoded field.
public struct EvidenceEnvelope: Sendable {
    /// Largest envelope accepted. Real envelopes are under 100 KiB; IMA logs of busy hosts reach
    /// a few MiB. Anything larger is refused before JSON parsing to bound memory.
    public static let maxSize = 16 << 20

    /// Envelopes are two levels deep (`pcrs` → bank → index); deep nesting only serves to exhaust
    /// the parser's stack, so it is refused before parsing.
    static let maxDepth = 16

    public let format: String
    public let version: Int
    private let fields: [String: FieldValue]

    enum FieldValue: Sendable {
        case string(String)
        case number(Double)
        case object([String: FieldValue])
        case other
    }

    public static func parse(_ data: Data) -> Result<EvidenceEnvelope, Reason> {
        guard data.count <= maxSize else {
            return .failure(Reason(.evidenceMalformed, "envelope", "envelope is \(data.count) bytes; limit \(maxSize)"))
        }
        guard Self.nestingDepth(data) <= maxDepth else {
            return .failure(Reason(.evidenceMalformed, "envelope", "JSON nested deeper than \(maxDepth) levels"))
        }
        let json: JSONValue
        do {
            json = try JSONDecoder().decode(JSONValue.self, from: data)
        } catch {
            return .failure(Reason(.evidenceMalformed, "envelope", "not JSON"))
        }
        guard case .object(let object) = json else {
            return .failure(Reason(.evidenceMalformed, "envelope", "top level is not a JSON object"))
        }
        guard case .string(let format)? = object["format"] else {
            return .failure(Reason(.evidenceMalformed, "envelope", "missing string field 'format'"))
        }
        guard case .number(let version)? = object["version"], version == version.rounded(), abs(version) < 1e9 else {
            return .failure(Reason(.evidenceMalformed, "envelope", "missing integer field 'version'"))
        }
        return .success(EvidenceEnvelope(format: format, version: Int(version), fields: object.mapValues(Self.convert)))
    }

    /// The deepest array/object nesting in JSON text, ignoring brackets inside strings.
    static func nestingDepth(_ data: Data) -> Int {
        var depth = 0
        var deepest = 0
        var inString = false
        var escaped = false
        for byte in data {
            if inString {
                if escaped {
                    escaped = false
                } else if byte == UInt8(ascii: "\\") {
                    escaped = true
                } else if byte == UInt8(ascii: "\"") {
                    inString = false
                }
                continue
            }
            switch byte {
            case UInt8(ascii: "\""): inString = true
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                depth += 1
                deepest = max(deepest, depth)
            case UInt8(ascii: "]"), UInt8(ascii: "}"): depth -= 1
            default: break
            }
        }
        return deepest
    }

    private static func convert(_ value: JSONValue) -> FieldValue {
        switch value {
        case .string(let s): .string(s)
        case .object(let o): .object(o.mapValues(convert))
        case .number(let n): .number(n)
        default: .other
        }
    }

    private init(format: String, version: Int, fields: [String: FieldValue]) {
        self.format = format
        self.version = version
        self.fields = fields
    }

    public func has(_ name: String) -> Bool { fields[name] != nil }

    /// A base64 field's bytes; nil when absent, a malformed reason when present but not base64.
    public func optionalBase64(_ name: String) -> Result<Data?, Reason> {
        guard let value = fields[name] else { return .success(nil) }
        guard case .string(let text) = value,
            let data = Data(base64Encoded: text, options: [.ignoreUnknownCharacters]),
            text.allSatisfy({ $0.isASCII })
        else {
            return .failure(Reason(.evidenceMalformed, "envelope", "field '\(name)' is not base64"))
        }
        return .success(data)
    }

    public func base64(_ name: String) -> Result<Data, Reason> {
        optionalBase64(name).flatMap { data in
            guard let data else {
                return .failure(Reason(.evidenceMalformed, "envelope", "missing field '\(name)'"))
            }
            return .success(data)
        }
    }

    public func optionalString(_ name: String) -> Result<String?, Reason> {
        guard let value = fields[name] else { return .success(nil) }
        guard case .string(let text) = value else {
            return .failure(Reason(.evidenceMalformed, "envelope", "field '\(name)' is not a string"))
        }
        return .success(text)
    }

    /// An object of strings (`collateral`); nil when absent.
    public func stringObject(_ name: String) -> Result<[String: String]?, Reason> {
        guard let value = fields[name] else { return .success(nil) }
        let bad = Reason(.evidenceMalformed, "envelope", "field '\(name)' is not an object of strings")
        guard case .object(let map) = value else { return .failure(bad) }
        var out = [String: String]()
        for (k, v) in map {
            guard case .string(let s) = v else { return .failure(bad) }
            out[k] = s
        }
        return .success(out)
    }

    /// A two-level object of strings (`pcrs`: bank → index → hex); nil when absent.
    public func stringTable(_ name: String) -> Result<[String: [String: String]]?, Reason> {
        guard let value = fields[name] else { return .success(nil) }
        let bad = Reason(.evidenceMalformed, "envelope", "field '\(name)' is not an object of objects of strings")
        guard case .object(let outer) = value else { return .failure(bad) }
        var table = [String: [String: String]]()
        for (key, inner) in outer {
            guard case .object(let innerMap) = inner else { return .failure(bad) }
            var row = [String: String]()
            for (k, v) in innerMap {
                guard case .string(let s) = v else { return .failure(bad) }
                row[k] = s
            }
            table[key] = row
        }
        return .success(table)
    }
}

/// Any JSON value; decoding distinguishes booleans from numbers.
enum JSONValue: Decodable, Sendable {
    case string(String), number(Double), bool(Bool), object([String: JSONValue]), array([JSONValue]), null

    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            self = .null
        } else if let b = try? c.decode(Bool.self) {
            self = .bool(b)
        } else if let n = try? c.decode(Double.self) {
            self = .number(n)
        } else if let s = try? c.decode(String.self) {
            self = .string(s)
        } else if let o = try? c.decode([String: JSONValue].self) {
            self = .object(o)
        } else {
            self = .array(try c.decode([JSONValue].self))
        }
    }
}
