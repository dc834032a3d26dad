import AttestationCore
import Foundation

/// Checks one Intel certificate chain (leaf first, root last) the way Intel's QVL does: the root
/// must be one of the pinned roots by fingerprint (names prove nothing: anyone can make a
/// certificate called "Intel SGX Root CA"), then every signature, CA flag and validity window.
///
/// Threat: a forged PCK or collateral signer. Only a chain ending at a pinned key can make the
/// verifier trust a platform's FMSPC, its TCB SVNs or Intel's TCB levels.
package struct ChainCheck {
    let pinnedFingerprints: Set<String>
    /// What a reason's source starts with (`tdx.chain.pck`).
    var sourcePrefix = "tdx.chain"
    /// Longest chain accepted, root included.
    var maxLength = Self.maxLength

    package init(pinnedFingerprints: Set<String>, sourcePrefix: String = "tdx.chain", maxLength: Int = Self.maxLength) {
        self.pinnedFingerprints = pinnedFingerprints
        self.sourcePrefix = sourcePrefix
        self.maxLength = maxLength
    }

    /// Intel's chains have three certificates (or two for the TCB signer); more is hostile.
    static let maxLength = 5

    package func verify(_ chain: [Certificate], name: String, at time: Date) -> Reason? {
        let source = "\(sourcePrefix).\(name)"
        guard let root = chain.last, chain.count >= 2, chain.count <= maxLength else {
            return Reason(
                .chainInvalid, source, "\(name) chain has \(chain.count) certificates (2 to \(maxLength) expected)"
            )
        }
        guard pinnedFingerprints.contains(root.fingerprint) else {
            return Reason(
                .chainUntrustedRoot, source,
                "\(name) chain ends at '\(root.subject)' (SHA-256 \(root.fingerprint)), which is not a pinned root")
        }
        guard root.isIssuer(of: root), root.isSigned(by: root.publicKey) else {
            return Reason(.chainInvalid, source, "the pinned root is not self-signed")
        }
        for i in 0..<(chain.count - 1) {
            let cert = chain[i]
            let issuer = chain[i + 1]
            guard issuer.isIssuer(of: cert), issuer.isCA, cert.isSigned(by: issuer.publicKey) else {
                return Reason(
                    .chainInvalid, source, "'\(cert.subject)' is not signed by the CA '\(issuer.subject)' above it")
            }
        }
        for cert in chain where !cert.isValid(at: time) {
            return Reason(
                .chainInvalid, source,
                "'\(cert.subject)' is valid \(cert.notBefore.rfc3339) to \(cert.notAfter.rfc3339), not at \(time.rfc3339)"
            )
        }
        return nil
    }
}

/// Threat: a certificate that chains to Intel's root but is not Intel's collateral signer (any
/// platform's PCK certificate does) signing TCB info or a QE identity, and so declaring any
/// platform up to date. As in Intel's QVL, the signer chain is exactly [TCB signer, root], the
/// signer is an end-entity certificate without the SGX platform extension, named
/// "Intel SGX TCB Signing".
enum TCBSigner {
    static let commonName = "Intel SGX TCB Signing"

    /// A signed collateral document (`name`: "TCB info" or "QE identity"): its issuer chain to a
    /// pinned root, the signer's role, not revoked by `rootCRL` (when given), and the raw ECDSA
    /// signature over the exact text. Returns the chain.
    static func verify(
        _ text: String, signature: [UInt8], chainPEM: String, name: String, check: ChainCheck, at time: Date,
        rootCRL: RevocationList?
    ) -> Result<[Certificate], Reason> {
        let source = name == "TCB info" ? "tdx.collateral.tcb-info" : "tdx.collateral.qe-identity"
        let chain: [Certificate]
        do { chain = try Memo.chain(pem: chainPEM) } catch {
            return .failure(Reason(.evidenceMalformed, source, "\(name) issuer chain: \(error)"))
        }
        if let r = check.verify(chain, name: "\(name) issuer", at: time) { return .failure(r) }
        if let r = Self.check(chain, name: name) { return .failure(r) }
        if let rootCRL, rootCRL.revokes(chain[0]) {
            return .failure(
                Reason(.chainRevoked, source, "the \(name) signer '\(chain[0].subject)' is revoked by the root CA CRL"))
        }
        let signer = chain[0].publicKey
        let message = Array(text.utf8)
        guard signature.count == 64,
            Memo.signature(
                "collateral", key: signer, message: message, signature: signature,
                {
                    signer.verify(signature: signature, message: message, scheme: .ecdsa(.sha256))
                })
        else {
            return .failure(
                Reason(
                    .collateralSignatureInvalid, source,
                    "the \(name) signature does not verify under '\(chain[0].subject)'"))
        }
        return .success(chain)
    }

    static func check(_ chain: [Certificate], name: String) -> Reason? {
        let source = "tdx.chain.\(name == "TCB info" ? "tcb-info" : "qe-identity") issuer"
        guard chain.count == 2 else {
            return Reason(
                .chainInvalid, source,
                "the \(name) signer chain has \(chain.count) certificates; Intel's is [TCB signer, root]")
        }
        let signer = chain[0]
        guard !signer.isCA, signer.sgxExtension == nil, signer.commonName == commonName else {
            return Reason(.chainInvalid, source, "'\(signer.subject)' is not Intel's TCB signing certificate")
        }
        return nil
    }
}
