import AttestationCore
import Foundation

/// A detached Ed25519 signature over a policy document's exact bytes (`FILE.sig`, JSON):
///
///     {"schema":"ccgate.policy-signature/v1","policy_sha256":"…","key":"<base64>","signature":"<base64>"}
///
/// The key signs `ccgate.policy-signature/v1\n<policy_sha256>\n`: the domain keeps a policy
/// signature from ever being mistaken for a checkpoint or any other signed statement.
///
/// Threat: a policy that no administrator approved — written into the gateway's data directory,
/// replayed under another name, or sent to the admin API with a stolen token. The gateway
/// applies only documents whose signature verifies under a pinned admin key; the token alone
/// admits nobody.
public struct PolicySignature: Sendable, Equatable, Codable {
    public static let schema = "ccgate.policy-signature/v1"
    public let schema: String
    public let policySHA256: String
    /// The signer's public key (raw 32 bytes, base64).
    public let key: String
    public let signature: String

    enum CodingKeys: String, CodingKey {
        case schema, key, signature
        case policySHA256 = "policy_sha256"
    }

    static func message(digest: String) -> Data { Data("\(schema)\n\(digest)\n".utf8) }

    public static func sign(_ text: Data, with key: Ed25519PrivateKey) -> PolicySignature {
        let digest = HashAlgorithm.sha256.hash(text).hex
        return PolicySignature(
            schema: schema, policySHA256: digest, key: key.publicKey.base64,
            signature: key.signature(for: message(digest: digest)).base64EncodedString())
    }

    /// The signature document as written to `FILE.sig`.
    public var json: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try! encoder.encode(self), as: UTF8.self) + "\n"
    }

    public static func parse(_ text: String) throws(PolicySignatureError) -> PolicySignature {
        guard text.utf8.count < 4096, let s = try? JSONDecoder().decode(PolicySignature.self, from: Data(text.utf8))
        else {
            throw .malformed("the signature is not a ccgate policy signature document")
        }
        guard s.schema == schema else { throw .malformed("signature schema '\(s.schema)' is not \(schema)") }
        return s
    }

    /// Checks the signature over `text` and that its key is one of `pinned`; returns the signer.
    public func verify(_ text: Data, pinned: [Ed25519PublicKey]) throws(PolicySignatureError) -> Ed25519PublicKey {
        let digest = HashAlgorithm.sha256.hash(text).hex
        guard digest == policySHA256 else {
            throw .invalid(
                "the signature is for another document (sha256 \(policySHA256.prefix(16))…, this one is \(digest.prefix(16))…)"
            )
        }
        guard let raw = Data(base64Encoded: key), let signer = try? Ed25519PublicKey(raw: raw) else {
            throw .malformed("the signature's key is not an Ed25519 public key")
        }
        guard pinned.contains(signer) else {
            throw .untrusted("signed by key \(signer.fingerprint.prefix(16))…, which is not a pinned admin key")
        }
        guard let sig = Data(base64Encoded: signature), signer.isValidSignature(sig, for: Self.message(digest: digest))
        else {
            throw .invalid("the signature does not verify")
        }
        return signer
    }
}

/// Why a policy's signature was refused; `code` is what the admin API and audit log report.
public enum PolicySignatureError: Error, CustomStringConvertible, Equatable {
    case unsigned(String)
    case malformed(String)
    case invalid(String)
    case untrusted(String)

    public var code: String {
        switch self {
        case .unsigned: "policy.unsigned"
        case .malformed, .invalid: "policy.signature-invalid"
        case .untrusted: "policy.signer-not-pinned"
        }
    }

    public var description: String {
        switch self {
        case .unsigned(let m), .malformed(let m), .invalid(let m), .untrusted(let m): "\(code): \(m)"
        }
    }
}
