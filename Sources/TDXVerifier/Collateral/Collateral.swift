import AttestationCore
import Foundation

/// Intel's verification collateral for one quote, with the field names of
/// `sgx_ql_qve_collateral_t` (see `../shared/testdata/FORMAT.md`). Everything is kept as it was
/// received: signatures cover the exact bytes of `tcbInfo` and `qeIdentity`.
public struct Collateral: Sendable, Equatable {
    public var pckCRLIssuerChain: String
    /// DER.
    public var rootCACRL: [UInt8]
    /// DER.
    public var pckCRL: [UInt8]
    public var tcbInfoIssuerChain: String
    /// The exact JSON text of the signed `tcbInfo` object.
    public var tcbInfo: String
    /// Raw r ‖ s.
    public var tcbInfoSignature: [UInt8]
    public var qeIdentityIssuerChain: String
    /// The exact JSON text of the signed `enclaveIdentity` object.
    public var qeIdentity: String
    public var qeIdentitySignature: [UInt8]

    public init(
        pckCRLIssuerChain: String, rootCACRL: [UInt8], pckCRL: [UInt8], tcbInfoIssuerChain: String, tcbInfo: String,
        tcbInfoSignature: [UInt8], qeIdentityIssuerChain: String, qeIdentity: String, qeIdentitySignature: [UInt8]
    ) {
        self.pckCRLIssuerChain = pckCRLIssuerChain
        self.rootCACRL = rootCACRL
        self.pckCRL = pckCRL
        self.tcbInfoIssuerChain = tcbInfoIssuerChain
        self.tcbInfo = tcbInfo
        self.tcbInfoSignature = tcbInfoSignature
        self.qeIdentityIssuerChain = qeIdentityIssuerChain
        self.qeIdentity = qeIdentity
        self.qeIdentitySignature = qeIdentitySignature
    }

    /// Intel's field names, as in the envelope and in offline bundles.
    enum CodingKeys: String {
        case pckCRLIssuerChain = "pck_crl_issuer_chain"
        case rootCACRL = "root_ca_crl"
        case pckCRL = "pck_crl"
        case tcbInfoIssuerChain = "tcb_info_issuer_chain"
        case tcbInfo = "tcb_info"
        case tcbInfoSignature = "tcb_info_signature"
        case qeIdentityIssuerChain = "qe_identity_issuer_chain"
        case qeIdentity = "qe_identity"
        case qeIdentitySignature = "qe_identity_signature"
    }

    /// Reads Intel's string fields (binary ones in hex); names the first bad field.
    public static func read(_ fields: [String: String]) -> Result<Collateral, Reason> {
        func text(_ key: CodingKeys) -> Result<String, Reason> {
            guard let value = fields[key.rawValue] else {
                return .failure(Reason(.evidenceMalformed, "tdx.collateral", "collateral lacks '\(key.rawValue)'"))
            }
            return .success(value)
        }
        func hex(_ key: CodingKeys) -> Result<[UInt8], Reason> {
            text(key).flatMap { value in
                guard let data = Data(hex: value.trimmingCharacters(in: .whitespacesAndNewlines)) else {
                    return .failure(
                        Reason(.evidenceMalformed, "tdx.collateral", "collateral '\(key.rawValue)' is not hex"))
                }
                return .success([UInt8](data))
            }
        }
        do {
            return .success(
                Collateral(
                    pckCRLIssuerChain: try text(.pckCRLIssuerChain).get(), rootCACRL: try hex(.rootCACRL).get(),
                    pckCRL: try hex(.pckCRL).get(), tcbInfoIssuerChain: try text(.tcbInfoIssuerChain).get(),
                    tcbInfo: try text(.tcbInfo).get(), tcbInfoSignature: try hex(.tcbInfoSignature).get(),
                    qeIdentityIssuerChain: try text(.qeIdentityIssuerChain).get(),
                    qeIdentity: try text(.qeIdentity).get(),
                    qeIdentitySignature: try hex(.qeIdentitySignature).get()))
        } catch {
            return .failure(error)
        }
    }

    /// Intel's field names with binary values in hex: the envelope's and the bundle's form.
    public var fields: [String: String] {
        [
            CodingKeys.pckCRLIssuerChain.rawValue: pckCRLIssuerChain,
            CodingKeys.rootCACRL.rawValue: Data(rootCACRL).hex,
            CodingKeys.pckCRL.rawValue: Data(pckCRL).hex, CodingKeys.tcbInfoIssuerChain.rawValue: tcbInfoIssuerChain,
            CodingKeys.tcbInfo.rawValue: tcbInfo, CodingKeys.tcbInfoSignature.rawValue: Data(tcbInfoSignature).hex,
            CodingKeys.qeIdentityIssuerChain.rawValue: qeIdentityIssuerChain,
            CodingKeys.qeIdentity.rawValue: qeIdentity,
            CodingKeys.qeIdentitySignature.rawValue: Data(qeIdentitySignature).hex,
        ]
    }
}

extension Collateral {
    /// SHA-256 over the signed documents and the CRLs, each prefixed with its 32-bit big-endian
    /// length: what an audit entry names when a decision rested on cached collateral.
    public var sha256: String {
        var bytes = [UInt8]()
        for part in [
            Array(tcbInfo.utf8), tcbInfoSignature, Array(qeIdentity.utf8), qeIdentitySignature, pckCRL, rootCACRL,
        ] {
            bytes += withUnsafeBytes(of: UInt32(part.count).bigEndian, Array.init) + part
        }
        return HashAlgorithm.sha256.hash(bytes).hex
    }
}
