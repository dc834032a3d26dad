import COpenSSL
import Foundation

/// Trust roots loaded from PEM files, named by the SHA-256 of their DER encoding.
public enum TrustRoots {
    public struct Root: Sendable, Equatable {
        public let der: Data
        public var fingerprint: String { HashAlgorithm.sha256.hash(der).hex }
    }

    public enum LoadError: Error, CustomStringConvertible {
        case unreadable(String)
        public var description: String {
            switch self {
            case .unreadable(let s): s
            }
        }
    }

    /// Every certificate in a PEM file. Fails for unreadable files and for PEM blocks that are not
    /// well-formed X.509 certificates.
    public static func load(pemFile path: String) throws(LoadError) -> [Root] {
        guard let data = FileManager.default.contents(atPath: path) else { throw .unreadable("\(path): cannot read") }
        guard let text = String(data: data, encoding: .utf8) else { throw .unreadable("\(path): not text") }
        return try parse(pem: text, source: path)
    }

    public static func parse(pem text: String, source: String = "PEM") throws(LoadError) -> [Root] {
        var roots = [Root]()
        var body: String?
        for line in text.split(whereSeparator: \.isNewline) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed == "-----BEGIN CERTIFICATE-----" {
                body = ""
            } else if trimmed == "-----END CERTIFICATE-----" {
                guard let b = body, let der = Data(base64Encoded: b) else {
                    throw .unreadable("\(source): bad PEM block")
                }
                guard isCertificate(der) else { throw .unreadable("\(source): PEM block is not an X.509 certificate") }
                roots.append(Root(der: der))
                body = nil
            } else if body != nil {
                body! += trimmed
            }
        }
        return roots
    }

    static func isCertificate(_ der: Data) -> Bool {
        der.withUnsafeBytes { raw -> Bool in
            guard let base = raw.bindMemory(to: UInt8.self).baseAddress else { return false }
            var cursor: UnsafePointer<UInt8>? = base
            guard let cert = d2i_X509(nil, &cursor, raw.count) else {
                ERR_clear_error()
                return false
            }
            X509_free(cert)
            return true
        }
    }
}
