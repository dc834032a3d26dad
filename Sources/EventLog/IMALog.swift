import AttestationCore
import Foundation

/// A Linux IMA runtime measurement list in the ASCII form of
/// `/sys/kernel/security/ima/ascii_runtime_measurements`, `ima-ng` template:
///
///     10 <sha1 template hash> ima-ng <alg>:<file digest> <path>
///
/// The worker agent writes its own measurements in the same form. Each entry's template data is
/// rebuilt from the line and hashed, so the stated template hash is checked, not trusted.
public struct IMALog: Sendable {
    public struct Entry: Sendable, Equatable {
        public let line: Int
        public let pcr: Int
        /// The SHA-1 template hash as written; all zero for a measurement violation.
        public private(set) var templateHash: Data
        public let fileAlgorithm: String
        public let fileDigest: Data
        public let path: String

        public var isViolation: Bool { templateHash.allSatisfy { $0 == 0 } }

        /// `ima-ng` template data: length-prefixed `d-ng` (`alg:\0digest`) and `n-ng` (`path\0`).
        public var templateData: Data {
            var d = Data()
            let dng = Data(fileAlgorithm.utf8) + Data([UInt8(ascii: ":"), 0]) + fileDigest
            let nng = Data(path.utf8) + Data([0])
            for field in [dng, nng] {
                withUnsafeBytes(of: UInt32(field.count).littleEndian) { d.append(contentsOf: $0) }
                d.append(field)
            }
            return d
        }

        /// The value this entry extends into the PCR of `bank`. Violations extend all-ones, as the
        /// kernel does.
        public func extendValue(for bank: HashAlgorithm) -> Data {
            isViolation ? Data(repeating: 0xff, count: bank.digestSize) : bank.hash(templateData)
        }

        /// The text line for this entry.
        public var text: String {
            "\(pcr) \(templateHash.hex) ima-ng \(fileAlgorithm):\(fileDigest.hex) \(path)"
        }

        /// A new measurement; its template hash is computed from the other fields.
        public init(pcr: Int, fileAlgorithm: HashAlgorithm, fileDigest: Data, path: String) {
            self.init(
                line: 0, pcr: pcr, templateHash: Data(count: 20), fileAlgorithm: fileAlgorithm.rawValue,
                fileDigest: fileDigest, path: path)
            self.templateHash = HashAlgorithm.sha1.hash(templateData)
        }

        init(line: Int, pcr: Int, templateHash: Data, fileAlgorithm: String, fileDigest: Data, path: String) {
            self.line = line
            self.pcr = pcr
            self.templateHash = templateHash
            self.fileAlgorithm = fileAlgorithm
            self.fileDigest = fileDigest
            self.path = path
        }
    }

    public let entries: [Entry]

    /// Bounds: a busy host's list has tens of thousands of entries; paths are at most PATH_MAX.
    public static let maxEntries = 1_000_000
    public static let maxPathLength = 4096

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case invalid(line: Int, String)
        case unsupportedTemplate(line: Int, String)
        case templateHashMismatch(line: Int)

        public var description: String {
            switch self {
            case .invalid(let l, let s): "IMA log line \(l): \(s)"
            case .unsupportedTemplate(let l, let t): "IMA log line \(l): template '\(t)' is not supported (ima-ng only)"
            case .templateHashMismatch(let l): "IMA log line \(l): template hash does not match the entry"
            }
        }
    }

    public init(entries: [Entry]) { self.entries = entries }

    public static func parse(_ data: Data) throws(ParseError) -> IMALog {
        guard let text = String(data: data, encoding: .utf8) else { throw .invalid(line: 0, "not UTF-8 text") }
        var entries = [Entry]()
        var lineNumber = 0
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            if rawLine.isEmpty { continue }
            guard entries.count < maxEntries else {
                throw .invalid(line: lineNumber, "more than \(maxEntries) entries")
            }
            // The path may contain spaces: split into at most five fields.
            let parts = rawLine.split(separator: " ", maxSplits: 4, omittingEmptySubsequences: false)
            guard parts.count == 5 else { throw .invalid(line: lineNumber, "expected 5 fields") }
            guard let pcr = Int(parts[0]), (0...23).contains(pcr) else { throw .invalid(line: lineNumber, "bad PCR") }
            guard let templateHash = Data(hex: parts[1]), templateHash.count == 20 else {
                throw .invalid(line: lineNumber, "bad template hash")
            }
            guard parts[2] == "ima-ng" else { throw .unsupportedTemplate(line: lineNumber, String(parts[2])) }
            let digestField = parts[3].split(separator: ":", maxSplits: 1)
            guard digestField.count == 2, let alg = HashAlgorithm(rawValue: String(digestField[0])),
                let fileDigest = Data(hex: digestField[1]), fileDigest.count == alg.digestSize
            else { throw .invalid(line: lineNumber, "bad file digest '\(parts[3])'") }
            let path = String(parts[4])
            guard !path.isEmpty, path.utf8.count <= maxPathLength else { throw .invalid(line: lineNumber, "bad path") }
            let entry = Entry(
                line: lineNumber, pcr: pcr, templateHash: templateHash, fileAlgorithm: alg.rawValue,
                fileDigest: fileDigest, path: path)
            if !entry.isViolation, HashAlgorithm.sha1.hash(entry.templateData) != templateHash {
                throw .templateHashMismatch(line: lineNumber)
            }
            entries.append(entry)
        }
        return IMALog(entries: entries)
    }

    /// The ASCII form, one entry a line.
    public var text: String { entries.map { $0.text + "\n" }.joined() }

    /// Replays every entry into its PCR for `bank`, from zero.
    public func replay(bank: HashAlgorithm) -> [Int: Data] {
        var pcrs = [Int: Data]()
        for entry in entries {
            pcrs[entry.pcr] = bank.extend(
                pcrs[entry.pcr] ?? Data(count: bank.digestSize),
                with: entry.extendValue(for: bank))
        }
        return pcrs
    }
}
