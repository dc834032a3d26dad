import Crypto
import Foundation

/// An attacker without a TPM: a P-256 key made in software, presented as a TPM attestation key
/// with every attribute a TPM-resident key would have, re-signing genuine TPMS_ATTEST bytes.
public struct SoftwareAK: Sendable {
    public let key = P256.Signing.PrivateKey()

    public init() {}

    /// A TPM2B_PUBLIC for the key claiming fixedTPM | fixedParent | sensitiveDataOrigin |
    /// userWithAuth | restricted | sign (the attacker writes the attributes).
    public var tpm2bPublic: Data {
        let raw = key.publicKey.rawRepresentation
        var area = Data()
        func u16(_ v: Int) { area.append(contentsOf: [UInt8(v >> 8), UInt8(v & 0xff)]) }
        u16(0x0023)  // TPM_ALG_ECC
        u16(0x000b)  // nameAlg SHA-256
        area.append(contentsOf: [0x00, 0x05, 0x00, 0x72])
        u16(0)  // authPolicy
        u16(0x0010)  // symmetric: NULL
        u16(0x0018)  // scheme: ECDSA
        u16(0x000b)  // SHA-256
        u16(0x0003)  // NIST P-256
        u16(0x0010)  // kdf: NULL
        u16(32)
        area.append(raw.prefix(32))
        u16(32)
        area.append(raw.suffix(32))
        return Data([UInt8(area.count >> 8), UInt8(area.count & 0xff)]) + area
    }

    /// A TPMT_SIGNATURE (ECDSA, SHA-256) over `attest`.
    public func signature(over attest: Data) throws -> Data {
        let raw = try key.signature(for: attest).rawRepresentation
        var out = Data([0x00, 0x18, 0x00, 0x0b, 0x00, 0x20])
        out.append(raw.prefix(32))
        out.append(contentsOf: [0x00, 0x20])
        out.append(raw.suffix(32))
        return out
    }

    /// `envelope` (genuine `tpm2-quote` JSON) with its quote re-signed by this key, which it
    /// names as the AK; everything else (EK, certificates, PCRs, logs) is left as it was.
    public func forge(_ envelope: Data) throws -> Data {
        guard var object = try JSONSerialization.jsonObject(with: envelope) as? [String: Any],
            let quote = (object["quote"] as? String).flatMap({ Data(base64Encoded: $0) })
        else { throw CocoaError(.coderReadCorrupt) }
        object["ak_tpm2b_public"] = tpm2bPublic.base64EncodedString()
        object["signature"] = try signature(over: quote).base64EncodedString()
        return try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    }
}
