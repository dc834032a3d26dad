import AttestationCore
import Foundation

/// One separately issued piece of Intel collateral, as a cache keeps it: TCB info (per TEE type
/// and FMSPC), QE identity (per TEE type), a PCK CRL (per CA) or the root CA CRL. Each has its own
/// issue date and `nextUpdate`, so each is stored, replaced and expired on its own.
public struct CollateralItem: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        case tcbInfo = "tcb-info", qeIdentity = "qe-identity", pckCRL = "pck-crl", rootCACRL = "root-ca-crl"
    }

    public let kind: Kind
    /// `tcb-info/tdx/b0c06f000000`, `qe-identity/tdx`, `pck-crl/platform`, `root-ca-crl`.
    public let key: String
    public let issueDate: Date
    public let nextUpdate: Date
    /// Intel's field names (binary values in hex), only those of this item.
    public let fields: [String: String]

    /// The items of a complete collateral set, each parsed enough to know its key and dates.
    /// Nothing is trusted here: signatures are checked whenever collateral is used.
    public static func split(_ c: Collateral) -> Result<[CollateralItem], Reason> {
        let f = c.fields
        func pick(_ names: [Collateral.CodingKeys]) -> [String: String] {
            var out = [String: String]()
            for n in names { out[n.rawValue] = f[n.rawValue] }
            return out
        }
        let tcb: TCBInfo
        switch TCBInfo.parse(c.tcbInfo) {
        case .success(let t): tcb = t
        case .failure(let r): return .failure(r)
        }
        let qe: QEIdentity
        switch QEIdentity.parse(c.qeIdentity) {
        case .success(let q): qe = q
        case .failure(let r): return .failure(r)
        }
        let pckCRL: RevocationList
        let rootCRL: RevocationList
        do {
            pckCRL = try RevocationList(der: c.pckCRL)
            rootCRL = try RevocationList(der: c.rootCACRL)
        } catch {
            return .failure(Reason(.evidenceMalformed, "tdx.collateral.crl", "\(error)"))
        }
        let tee = tcb.kind == .tdx ? "tdx" : "sgx"
        let qeTEE = qe.id == "TD_QE" ? "tdx" : "sgx"
        return .success([
            CollateralItem(
                kind: .tcbInfo, key: "tcb-info/\(tee)/\(Data(tcb.fmspc).hex)", issueDate: tcb.issueDate,
                nextUpdate: tcb.nextUpdate,
                fields: pick([.tcbInfo, .tcbInfoSignature, .tcbInfoIssuerChain])),
            CollateralItem(
                kind: .qeIdentity, key: "qe-identity/\(qeTEE)", issueDate: qe.issueDate, nextUpdate: qe.nextUpdate,
                fields: pick([.qeIdentity, .qeIdentitySignature, .qeIdentityIssuerChain])),
            CollateralItem(
                kind: .pckCRL, key: "pck-crl/\(caName(pckCRL.issuer))", issueDate: pckCRL.thisUpdate,
                nextUpdate: pckCRL.nextUpdate,
                fields: pick([.pckCRL, .pckCRLIssuerChain])),
            CollateralItem(
                kind: .rootCACRL, key: "root-ca-crl", issueDate: rootCRL.thisUpdate, nextUpdate: rootCRL.nextUpdate,
                fields: pick([.rootCACRL])),
        ])
    }

    /// `split`, after checking what makes each item Intel's: the TCB info and QE identity signed by
    /// Intel's TCB signer chained to one of `roots`, the PCK CRL signed by its CA chained to one of
    /// them, the root CA CRL signed by the root, and no item issued in the future (a day of clock
    /// skew allowed).
    ///
    /// Threat: cache poisoning. An unverified item with a far-future issue date would shadow the
    /// genuine one for every platform; only verified items are stored.
    public static func verifiedSplit(_ c: Collateral, roots: Set<String>, at time: Date) -> Result<
        [CollateralItem], Reason
    > {
        let check = ChainCheck(pinnedFingerprints: roots)
        func signed(_ chainPEM: String, _ text: String, _ signature: [UInt8], _ name: String) -> Result<
            Certificate, Reason
        > {
            TCBSigner.verify(
                text, signature: signature, chainPEM: chainPEM, name: name, check: check, at: time, rootCRL: nil
            )
            .map { $0[1] }
        }
        let root: Certificate
        switch signed(c.tcbInfoIssuerChain, c.tcbInfo, c.tcbInfoSignature, "TCB info") {
        case .success(let r): root = r
        case .failure(let r): return .failure(r)
        }
        if case .failure(let r) = signed(c.qeIdentityIssuerChain, c.qeIdentity, c.qeIdentitySignature, "QE identity") {
            return .failure(r)
        }
        do {
            let crlChain = try Memo.chain(pem: c.pckCRLIssuerChain)
            if let r = check.verify(crlChain, name: "PCK CRL issuer", at: time) { return .failure(r) }
            let pckCRL = try Memo.crl(der: c.pckCRL)
            let rootCRL = try Memo.crl(der: c.rootCACRL)
            guard pckCRL.isIssued(by: crlChain[0]), pckCRL.isSigned(by: crlChain[0].publicKey) else {
                return .failure(
                    Reason(
                        .collateralSignatureInvalid, "tdx.collateral.pck-crl",
                        "the PCK CRL is not signed by its issuer chain"))
            }
            guard rootCRL.isIssued(by: root), rootCRL.isSigned(by: root.publicKey) else {
                return .failure(
                    Reason(
                        .collateralSignatureInvalid, "tdx.collateral.root-crl",
                        "the root CA CRL is not signed by the root"))
            }
        } catch {
            return .failure(Reason(.evidenceMalformed, "tdx.collateral.crl", "\(error)"))
        }
        return split(c).flatMap { items in
            for item in items where item.issueDate > time.addingTimeInterval(86_400) {
                return .failure(
                    Reason(
                        .collateralExpired, "tdx.collateral",
                        "\(item.key) claims to be issued \(item.issueDate.rfc3339), in the future"))
            }
            return .success(items)
        }
    }

    /// The item keys a quote with this platform needs.
    public static func keys(for key: CollateralKey) -> [String] {
        let tee = key.tee == .tdx ? "tdx" : "sgx"
        return [
            "tcb-info/\(tee)/\(Data(key.fmspc).hex)", "qe-identity/\(tee)", "pck-crl/\(caName(key.pckIssuer))",
            "root-ca-crl",
        ]
    }

    /// A collateral set from its items; nil when one is missing.
    public static func assemble(_ items: [CollateralItem]) -> Collateral? {
        var fields = [String: String]()
        for item in items { fields.merge(item.fields) { a, _ in a } }
        return try? Collateral.read(fields).get()
    }

    /// Intel has two PCK CAs; their CRLs are separate items.
    static func caName(_ subject: String) -> String { subject.contains("Processor") ? "processor" : "platform" }
}
