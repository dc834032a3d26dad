import AttestationCore
import CTSS2
import Foundation

/// A key's public area as the TPM marshals it (TPM2B_PUBLIC), with what identity checks need:
/// its Name, its attributes, and for an endorsement key the parameters credential activation uses.
///
/// Threat: an attestation key made in software and presented with attributes it never had. The
/// attributes are only believable once credential activation has shown that the TPM holding the
/// certified EK also holds a key with exactly this Name; the Name covers every attribute, so a
/// key with other attributes would have another Name and the TPM would refuse to activate.
public struct TPMKeyIdentity: Sendable {
    public let area: TPMPublicArea
    /// The marshaled TPMT_PUBLIC (the TPM2B_PUBLIC without its size).
    public let publicBytes: [UInt8]
    /// nameAlg ‖ H_nameAlg(TPMT_PUBLIC): the TPM's name for the key.
    public let name: Data
    /// The key's authorization policy digest.
    public let authPolicy: [UInt8]
    /// The key's symmetric parameters (storage keys such as an EK; TPM_ALG_NULL otherwise).
    public let symmetricAlgorithm: UInt16
    public let symmetricKeyBits: UInt16
    public let symmetricMode: UInt16

    public static func parse(_ bytes: [UInt8]) -> Result<TPMKeyIdentity, Reason> {
        guard bytes.count >= 2, Int(bytes[0]) << 8 | Int(bytes[1]) == bytes.count - 2 else {
            return .failure(TPMParse.malformed("TPM2B_PUBLIC size field does not match its length"))
        }
        let area: TPMPublicArea
        switch TPMParse.publicArea(bytes) {
        case .success(let a): area = a
        case .failure(let reason): return .failure(reason)
        }
        guard let nameHash = HashAlgorithm(tpmAlgorithmID: area.nameAlgorithmID) else {
            return .failure(TPMParse.unsupported("name algorithm 0x\(String(area.nameAlgorithmID, radix: 16))"))
        }
        let publicBytes = Array(bytes[2...])
        var pub = TPM2B_PUBLIC()
        if let reason = TPMParse.unmarshal(bytes, into: &pub, what: "TPM2B_PUBLIC", Tss2_MU_TPM2B_PUBLIC_Unmarshal) {
            return .failure(reason)
        }
        let p = pub.publicArea
        let symmetric =
            p.type == TPMConstant.algRSA ? p.parameters.rsaDetail.symmetric : p.parameters.eccDetail.symmetric
        let algID = nameHash.tpmAlgorithmID
        var name = Data([UInt8(algID >> 8), UInt8(algID & 0xff)])
        name.append(nameHash.hash(Data(publicBytes)))
        return .success(
            TPMKeyIdentity(
                area: area, publicBytes: publicBytes, name: name,
                authPolicy: tupleBytes(p.authPolicy.buffer, count: Int(p.authPolicy.size)),
                symmetricAlgorithm: symmetric.algorithm, symmetricKeyBits: symmetric.keyBits.aes,
                symmetricMode: symmetric.mode.aes))
    }

    /// Attributes every TPM-resident attestation key has: made inside this TPM and never able
    /// to leave it (fixedTPM, fixedParent, sensitiveDataOrigin), restricted to signing what the
    /// TPM itself produced (restricted, sign), and not a decryption key.
    static let requiredAKAttributes: [(UInt32, String)] = [
        (0x0000_0002, "fixedTPM"), (0x0000_0010, "fixedParent"), (0x0000_0020, "sensitiveDataOrigin"),
        (0x0001_0000, "restricted"), (0x0004_0000, "sign"),
    ]

    /// Why this key is not a TPM-resident restricted signing key (nil: it is one).
    public var attestationKeyProblem: String? {
        let attributes = area.objectAttributes
        let missing = Self.requiredAKAttributes.filter { attributes & $0.0 == 0 }.map(\.1)
        if !missing.isEmpty { return "the attestation key lacks " + missing.joined(separator: ", ") }
        if attributes & 0x0002_0000 != 0 { return "the attestation key is also a decryption key" }
        return nil
    }

    /// Why this key cannot be an endorsement key that credential activation can target (nil: it
    /// can): an RSA storage-type key (restricted, decrypt, not sign) with AES-128-CFB, fixed to
    /// its TPM, named with SHA-256.
    public var endorsementKeyProblem: String? {
        let attributes = area.objectAttributes
        guard case .rsa = area.key.kind else { return "only RSA endorsement keys are supported" }
        guard attributes & 0x0001_0000 != 0, attributes & 0x0002_0000 != 0, attributes & 0x0004_0000 == 0,
            attributes & 0x0000_0002 != 0, attributes & 0x0000_0010 != 0
        else { return "the endorsement key is not a fixed, restricted decryption key" }
        guard area.nameAlgorithmID == HashAlgorithm.sha256.tpmAlgorithmID else {
            return "the endorsement key's name algorithm is not SHA-256"
        }
        guard symmetricAlgorithm == 0x0006, symmetricKeyBits == 128, symmetricMode == 0x0043 else {
            return "the endorsement key's symmetric parameters are not AES-128-CFB"
        }
        return nil
    }
}
