import AttestationCore
import Foundation

/// A detached Ed25519 signature over a policy document's exact bytes (`FILE.sig`, JSON):
///
///     {"schema":"ccgate.policy-signature/v2","policy_sha256":"…","serial":…,"not_after":"…"|null,
///      "gateway":"<gateway id>"|"*","key":"<base64>","signature":"<base64>"}
///
/// The key signs `ccgate.policy-signature/v2\n<policy_sha256>\n<serial>\n<not_after or ->\n<gateway>\n`:
/// the domain keeps a policy signature from ever being mistaken for a checkpoint or any other
/// signed statement. Version 1 signatures (digest only) still verify, as serial 0 for any
/// gateway, so that a policy applied under them can be checked at start; none can be applied.
///
/// Threats: a policy that no administrator approved — written into the gateway's data
/// directory, replayed under another name, or sent to the admin API with a stolen token (the
/// gateway applies only documents signed by a pinned admin key); and an older signed policy
/// replayed with the token alone to weaken the one in force (a gateway applies a signature only
/// when its serial is above the serial in force, before its `not_after`, and when it names this
/// gateway or any).
public struct PolicySignature: Sendable, Equatable, Codable {
    public static let schema = "ccgate.policy-signature/v2"
    static let schemaV1 = "ccgate.policy-signature/v1"
    public let schema: String
    public let policySHA256: String
    /// Increases with every signature an administrator makes; a gateway applies only serials
    /// above the one in force.
    public let serial: Int64
    /// The last instant the signature may be applied (RFC 3339); nil: no limit.
    public let notAfter: String?
    /// The gateway id (SHA-256 of its public key) the signature is for, or `*` for any.
    public let gateway: String
    /// The signer's public key (raw 32 bytes, base64).
    public let key: String
    public let signature: String

    enum CodingKeys: String, CodingKey {
        case schema, key, signature, serial, gateway
        case policySHA256 = "policy_sha256"
        case notAfter = "not_after"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        schema = try c.decode(String.self, forKey: .schema)
        policySHA256 = try c.decode(String.self, forKey: .policySHA256)
        key = try c.decode(String.self, forKey: .key)
        signature = try c.decode(String.self, forKey: .signature)
        // A v1 signature covers the digest only: whatever else its document says is ignored.
        let v1 = schema == Self.schemaV1
        serial = v1 ? 0 : try c.decode(Int64.self, forKey: .serial)
        notAfter = v1 ? nil : try c.decodeIfPresent(String.self, forKey: .notAfter)
        gateway = v1 ? "*" : try c.decode(String.self, forKey: .gateway)
    }

    init(
        schema: String, policySHA256: String, serial: Int64, notAfter: String?, gateway: String, key: String,
        signature: String
    ) {
        self.schema = schema
        self.policySHA256 = policySHA256
        self.serial = serial
        self.notAfter = notAfter
        self.gateway = gateway
        self.key = key
        self.signature = signature
    }

    var message: Data {
        if schema == Self.schemaV1 { return Data("\(schema)\n\(policySHA256)\n".utf8) }
        return Data("\(schema)\n\(policySHA256)\n\(serial)\n\(notAfter ?? "-")\n\(gateway)\n".utf8)
    }

    /// A serial that grows with time (microseconds since 1970), the default for new signatures.
    public static var timeSerial: Int64 { Int64(Date().timeIntervalSince1970 * 1_000_000) }

    public static func sign(
        _ text: Data, with key: Ed25519PrivateKey, serial: Int64 = timeSerial, notAfter: Date? = nil,
        gateway: String = "*"
    ) -> PolicySignature {
        let unsigned = PolicySignature(
            schema: schema, policySHA256: HashAlgorithm.sha256.hash(text).hex, serial: serial,
            notAfter: notAfter?.rfc3339, gateway: gateway, key: key.publicKey.base64, signature: "")
        return PolicySignature(
            schema: schema, policySHA256: unsigned.policySHA256, serial: serial, notAfter: unsigned.notAfter,
            gateway: gateway, key: unsigned.key, signature: key.signature(for: unsigned.message).base64EncodedString())
    }

    /// The signature document as written to `FILE.sig`.
    public var json: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try! encoder.encode(self), as: UTF8.self) + "\n"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(schema, forKey: .schema)
        try c.encode(policySHA256, forKey: .policySHA256)
        try c.encode(key, forKey: .key)
        try c.encode(signature, forKey: .signature)
        if schema != Self.schemaV1 {
            try c.encode(serial, forKey: .serial)
            try c.encode(gateway, forKey: .gateway)
            if let notAfter { try c.encode(notAfter, forKey: .notAfter) }
        }
    }

    public static func parse(_ text: String) throws(PolicySignatureError) -> PolicySignature {
        guard text.utf8.count < 4096, let s = try? JSONDecoder().decode(PolicySignature.self, from: Data(text.utf8))
        else {
            throw .malformed("the signature is not a ccgate policy signature document")
        }
        guard s.schema == schema || s.schema == schemaV1 else {
            throw .malformed("signature schema '\(s.schema)' is not \(schema)")
        }
        guard s.serial >= 0, s.notAfter.map({ Date.rfc3339($0) != nil }) ?? true else {
            throw .malformed("the signature's serial or not_after is malformed")
        }
        return s
    }

    /// Checks the signature over `text` and that its key is one of `pinned`; returns the signer.
    /// The serial a signature document names (0: none, or a document that does not parse), for
    /// a signature already verified.
    public static func serial(of text: String) -> Int64 { (try? parse(text).serial) ?? 0 }

    /// Whether it may be applied here and now is ``checkApplicable(gatewayID:at:after:)``.
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
        guard let sig = Data(base64Encoded: signature), signer.isValidSignature(sig, for: message) else {
            throw .invalid("the signature does not verify")
        }
        return signer
    }

    /// Whether this (verified) signature may be applied by gateway `gatewayID` at `time` over a
    /// policy in force signed with serial `current`.
    public func checkApplicable(gatewayID: String, at time: Date, after current: Int64) throws(PolicySignatureError) {
        guard schema == Self.schema else {
            throw .stale("a \(Self.schemaV1) signature carries no serial: sign the policy again")
        }
        guard gateway == "*" || gateway == gatewayID else {
            throw .invalid(
                "the signature is for gateway \(gateway.prefix(16))…, not this one (\(gatewayID.prefix(16))…)")
        }
        if let notAfter, let end = Date.rfc3339(notAfter), time > end {
            throw .stale("the signature expired at \(notAfter)")
        }
        guard serial > current else {
            throw .stale(
                "the signature's serial \(serial) is not above the serial in force (\(current)): sign the policy again to apply it"
            )
        }
    }
}

/// Why a policy's signature was refused; `code` is what the admin API and audit log report.
public enum PolicySignatureError: Error, CustomStringConvertible, Equatable {
    case unsigned(String)
    case malformed(String)
    case invalid(String)
    case untrusted(String)
    /// A valid signature that may not be applied now: its serial is not above the one in force
    /// (a rollback needs a fresh signature), it expired, or it predates serials.
    case stale(String)

    public var code: String {
        switch self {
        case .unsigned: "policy.unsigned"
        case .malformed, .invalid: "policy.signature-invalid"
        case .untrusted: "policy.signer-not-pinned"
        case .stale: "policy.signature-stale"
        }
    }

    public var description: String {
        switch self {
        case .unsigned(let m), .malformed(let m), .invalid(let m), .untrusted(let m), .stale(let m): "\(code): \(m)"
        }
    }
}
