import AttestationCore
import Foundation

/// Entry points for the benchmark, which times the bare signature check on exactly the
/// structures the verifier parses.
public enum TPMVerifierBenchSupport {
    public struct Failure: Error { public let reason: Reason }

    public static func key(fromTPM2BPublic bytes: Data) throws -> PublicKey {
        switch TPMParse.publicArea([UInt8](bytes)) {
        case .success(let area): return area.key
        case .failure(let reason): throw Failure(reason: reason)
        }
    }

    public static func signature(_ bytes: [UInt8]) throws -> (SignatureScheme, [UInt8]) {
        switch TPMParse.signature(bytes) {
        case .success(let sig):
            let hash = HashAlgorithm(tpmAlgorithmID: sig.hashAlgorithmID) ?? .sha256
            let scheme: SignatureScheme =
                switch sig.algorithmID {
                case TPMConstant.algRSASSA: .rsassaPKCS1v15(hash)
                case TPMConstant.algRSAPSS: .rsaPSS(hash)
                default: .ecdsa(hash)
                }
            return (scheme, sig.bytes)
        case .failure(let reason): throw Failure(reason: reason)
        }
    }
}
