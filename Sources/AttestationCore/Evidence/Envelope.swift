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
    /// the parser's stack, so the reader refuses it as soon as it goes deeper.
    static let maxDepth = 16

    public let format: String
    public let version: Int
    private let fields: JSONMembers

    /// Threat: evidence text that two readers see differently (a duplicated `quote`, `signature`
    /// or PCR whose first copy one parser verifies and whose last another records) is refused,
    /// at the top level here and inside the objects the accessors read.
    public static func parse(_ data: Data) -> Result<EvidenceEnvelope, Reason> {
        guard data.count <= maxSize else {
            return .failure(Reason(.evidenceMalformed, "envelope", "envelope is \(data.count) bytes; limit \(maxSize)"))
        }
        let fields: JSONMembers
        do throws(JSONMembers.Malformed) {
            fields = try JSONMembers(data, maxDepth: maxDepth)
        } catch {
            return .failure(Reason(.evidenceMalformed, "envelope", "not a JSON object: \(error.description)"))
        }
        if let name = fields.duplicates.sorted().first {
            // The name is the peer's text: shown only when it is short and printable ASCII.
            let shown = name.unicodeScalars.allSatisfy { (0x20..<0x7F).contains($0.value) } && name.count <= 64
            return .failure(
                Reason(
                    .evidenceMalformed, "envelope",
                    shown ? "member '\(name)' occurs more than once" : "a member occurs more than once"))
        }
        guard let format = fields.string("format") else {
            return .failure(Reason(.evidenceMalformed, "envelope", "missing string field 'format'"))
        }
        guard let version = fields.number("version"), version == version.rounded(), abs(version) < 1e9 else {
            return .failure(Reason(.evidenceMalformed, "envelope", "missing integer field 'version'"))
        }
        return .success(EvidenceEnvelope(format: format, version: Int(version), fields: fields))
    }

    private init(format: String, version: Int, fields: JSONMembers) {
        self.format = format
        self.version = version
        self.fields = fields
    }

    public func has(_ name: String) -> Bool { fields.members[name] != nil }

    /// A base64 field's bytes; nil when absent, a malformed reason when present but not base64.
    public func optionalBase64(_ name: String) -> Result<Data?, Reason> {
        guard fields.members[name] != nil else { return .success(nil) }
        guard let text = fields.string(name), Self.isASCII(text),
            let data = Data(base64Encoded: text, options: [.ignoreUnknownCharacters])
        else {
            return .failure(Reason(.evidenceMalformed, "envelope", "field '\(name)' is not base64"))
        }
        return .success(data)
    }

    /// Foundation's decoder, told to skip line breaks, would skip any non-ASCII byte as well.
    private static func isASCII(_ text: String) -> Bool {
        var text = text
        return text.withUTF8 { bytes in bytes.allSatisfy { $0 < 0x80 } }
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
        guard fields.members[name] != nil else { return .success(nil) }
        guard let text = fields.string(name) else {
            return .failure(Reason(.evidenceMalformed, "envelope", "field '\(name)' is not a string"))
        }
        return .success(text)
    }

    /// An object of strings (`collateral`); nil when absent.
    public func stringObject(_ name: String) -> Result<[String: String]?, Reason> {
        guard fields.members[name] != nil else { return .success(nil) }
        guard let map = fields.object(name)?.strings() else {
            return .failure(
                Reason(.evidenceMalformed, "envelope", "field '\(name)' is not an object of strings, each named once"))
        }
        return .success(map)
    }

    /// A two-level object of strings (`pcrs`: bank → index → hex); nil when absent.
    public func stringTable(_ name: String) -> Result<[String: [String: String]]?, Reason> {
        guard fields.members[name] != nil else { return .success(nil) }
        let bad = Reason(
            .evidenceMalformed, "envelope", "field '\(name)' is not an object of objects of strings, each named once")
        guard let outer = fields.object(name), outer.duplicates.isEmpty else { return .failure(bad) }
        var table = [String: [String: String]](minimumCapacity: outer.members.count)
        for key in outer.members.keys {
            guard let row = outer.object(key)?.strings() else { return .failure(bad) }
            table[key] = row
        }
        return .success(table)
    }
}
