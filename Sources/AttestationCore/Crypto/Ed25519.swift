import Crypto
import Foundation

/// Why an Ed25519 key could not be read or made.
public struct Ed25519KeyError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// An Ed25519 public key: signs policies (admin keys) and audit checkpoints (the gateway key).
/// Read and written as standard PEM (`-----BEGIN PUBLIC KEY-----`, SubjectPublicKeyInfo), so
/// `openssl genpkey -algorithm ed25519` makes keys ccgate accepts, and openssl verifies what
/// ccgate signs.
public struct Ed25519PublicKey: Sendable, Hashable {
    /// The 32-byte key.
    public let raw: Data

    /// DER SubjectPublicKeyInfo prefix for id-Ed25519 (RFC 8410): the key follows it.
    static let spkiPrefix: [UInt8] = [0x30, 0x2A, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x03, 0x21, 0x00]

    public init(raw: Data) throws(Ed25519KeyError) {
        guard raw.count == 32 else { throw Ed25519KeyError("an Ed25519 public key is 32 bytes, not \(raw.count)") }
        self.raw = raw
    }

    /// From PEM, or from the bare base64 of the 32 bytes (as `ccgate` prints keys).
    public init(text: String) throws(Ed25519KeyError) {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if !trimmed.hasPrefix("-----"), let bytes = Data(base64Encoded: trimmed), bytes.count == 32 {
            self.raw = bytes
            return
        }
        guard let der = PEMBlock.first(in: text, label: "PUBLIC KEY") else {
            throw Ed25519KeyError("not an Ed25519 public key (expected PEM 'PUBLIC KEY' or 32 bytes of base64)")
        }
        guard der.count == 44, Array(der.prefix(12)) == Self.spkiPrefix else {
            throw Ed25519KeyError("the PEM public key is not an Ed25519 key")
        }
        self.raw = der.suffix(32)
    }

    public var pem: String { PEMBlock.encode(Data(Self.spkiPrefix) + raw, label: "PUBLIC KEY") }
    public var base64: String { raw.base64EncodedString() }
    /// SHA-256 of the raw key, lowercase hex: how logs and signatures name a key.
    public var fingerprint: String { HashAlgorithm.sha256.hash(raw).hex }

    /// Threat: a forged policy or checkpoint. Only a signature by the matching private key over
    /// exactly `message` passes; any other length or bytes fail.
    public func isValidSignature(_ signature: Data, for message: Data) -> Bool {
        guard signature.count == 64, let key = try? Curve25519.Signing.PublicKey(rawRepresentation: raw) else {
            return false
        }
        return key.isValidSignature(signature, for: message)
    }
}

/// An Ed25519 private key (PKCS #8 PEM, `-----BEGIN PRIVATE KEY-----`).
public struct Ed25519PrivateKey: Sendable {
    /// The 32-byte seed.
    let seed: Data
    public let publicKey: Ed25519PublicKey
    /// The key as swift-crypto holds it (made once, used for every signature).
    let key: Curve25519.Signing.PrivateKey

    /// DER PKCS #8 prefix for id-Ed25519 (RFC 8410): the seed follows it.
    static let pkcs8Prefix: [UInt8] = [
        0x30, 0x2E, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    ]

    public init(seed: Data) throws(Ed25519KeyError) {
        guard seed.count == 32 else { throw Ed25519KeyError("an Ed25519 private key is 32 bytes") }
        guard let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: seed) else {
            throw Ed25519KeyError("the Ed25519 key is refused")
        }
        self.seed = seed
        self.key = key
        self.publicKey = try Ed25519PublicKey(raw: key.publicKey.rawRepresentation)
    }

    public init(pem text: String) throws(Ed25519KeyError) {
        guard let der = PEMBlock.first(in: text, label: "PRIVATE KEY") else {
            throw Ed25519KeyError("not an Ed25519 private key (expected PEM 'PRIVATE KEY', PKCS #8)")
        }
        guard der.count == 48, Array(der.prefix(16)) == Self.pkcs8Prefix else {
            throw Ed25519KeyError("the PEM private key is not an Ed25519 key")
        }
        try self.init(seed: der.suffix(32))
    }

    public static func generate() -> Ed25519PrivateKey {
        // swift-crypto draws the seed from the system's secure generator.
        try! Ed25519PrivateKey(seed: Curve25519.Signing.PrivateKey().rawRepresentation)
    }

    public var pem: String { PEMBlock.encode(Data(Self.pkcs8Prefix) + seed, label: "PRIVATE KEY") }

    /// An Ed25519 signature (RFC 8032). On Linux (BoringSSL inside swift-crypto) it is the
    /// deterministic RFC 8032 signature, byte for byte what openssl makes.
    public func signature(for message: Data) -> Data {
        // Signing with a valid key over bytes in memory cannot fail.
        try! key.signature(for: message)
    }
}

/// PEM text blocks.
public enum PEMBlock {
    /// The DER of the first block with `label`.
    public static func first(in text: String, label: String) -> Data? {
        let begin = "-----BEGIN \(label)-----"
        let end = "-----END \(label)-----"
        guard let b = text.range(of: begin), let e = text.range(of: end, range: b.upperBound..<text.endIndex) else {
            return nil
        }
        let body = text[b.upperBound..<e.lowerBound].filter { !$0.isWhitespace }
        return Data(base64Encoded: String(body))
    }

    /// The DER of every block with `label`, in order, read from the bytes as they are; nil when
    /// a block has no end or its body (whitespace aside) is not base64. Text between blocks is
    /// ignored.
    public static func all(in text: [UInt8], label: String) -> [Data]? {
        let begin = Array("-----BEGIN \(label)-----".utf8)
        let end = Array("-----END \(label)-----".utf8)
        var blocks = [Data]()
        var at = 0
        while let opened = find(begin, in: text, from: at) {
            let start = opened + begin.count
            guard let closed = find(end, in: text, from: start) else { return nil }
            var body = [UInt8]()
            body.reserveCapacity(closed - start)
            for byte in text[start..<closed] where byte != 0x20 && byte != 0x09 && byte != 0x0A && byte != 0x0D {
                body.append(byte)
            }
            guard let der = Data(base64Encoded: Data(body)) else { return nil }
            blocks.append(der)
            at = closed + end.count
        }
        return blocks
    }

    /// The first index at or after `from` where `needle` occurs in `text`.
    static func find(_ needle: [UInt8], in text: [UInt8], from: Int) -> Int? {
        guard let first = needle.first, text.count >= needle.count else { return nil }
        var i = from
        while i <= text.count - needle.count {
            if text[i] == first, text[i..<(i + needle.count)].elementsEqual(needle) { return i }
            i += 1
        }
        return nil
    }

    public static func encode(_ der: Data, label: String) -> String {
        let b64 = der.base64EncodedString()
        var lines = [String]()
        var i = b64.startIndex
        while i < b64.endIndex {
            let j = b64.index(i, offsetBy: 64, limitedBy: b64.endIndex) ?? b64.endIndex
            lines.append(String(b64[i..<j]))
            i = j
        }
        return "-----BEGIN \(label)-----\n" + lines.joined(separator: "\n") + "\n-----END \(label)-----\n"
    }
}
