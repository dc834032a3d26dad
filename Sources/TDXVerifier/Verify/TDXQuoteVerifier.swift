import AttestationCore
import Foundation

/// Verifies `tdx-quote` and `sgx-quote` evidence: an Intel DCAP ECDSA quote, checked entirely in
/// this process against Intel's collateral (from the envelope or a `CollateralSource`), with
/// Intel's TCB semantics and an explicit acceptance policy.
///
/// The algorithm is fixed and runs in Intel's order, so the first reason is stable:
/// parse → PCK chain → CRLs → collateral (TCB info, QE identity) → QE report signature and
/// binding → QE identity → TCB level → quote signature → freshness → event log → policy.
/// It never throws for bad evidence and never reads the clock.
///
/// Threats covered: quotes not made by a genuine Intel platform (PCK chain to the pinned root,
/// QE report signed by the PCK key, attestation key bound into the QE report), platforms Intel
/// revoked (CRLs) or that fell behind on security fixes (TCB level and status), forged or stale
/// collateral (signatures to the pinned root, validity windows), collateral for another platform
/// (FMSPC, PCE id, TEE type), a fake quoting enclave (QE identity), altered TD measurements
/// (quote signature), replays (REPORTDATA nonce) and debug guests whose memory the host can read.
public struct TDXQuoteVerifier: Sendable {
    public static let formats = ["tdx-quote", "sgx-quote"]

    public struct Options: Sendable, Equatable {
        /// Intel statuses accepted without conditions. Intel's advice and the default: `UpToDate` only.
        public var acceptedStatuses: Set<String> = [TCBStatus.upToDate.rawValue]
        /// A platform whose status is `OutOfDate` or `OutOfDateConfigurationNeeded` is still
        /// accepted until this long after the tcbDate of its matched TCB level (Intel's appraisal
        /// `platform_grace_period`). Zero: no grace.
        public var platformGracePeriod: TimeInterval = 0
        /// Collateral past its `nextUpdate` is still accepted for this long (Intel's
        /// `collateral_grace_period`). Zero: none.
        public var collateralGracePeriod: TimeInterval = 0
        /// Advisories (`INTEL-SA-…`) that make any status unacceptable.
        public var rejectedAdvisoryIDs: Set<String> = []
        /// Debug guests (TD attribute DEBUG, enclave ATTRIBUTES.DEBUG) let the host read and change
        /// guest memory: never accepted unless a policy says so.
        public var allowDebug = false
        /// SHA-256 fingerprints of the roots a chain must end at.
        public var pinnedRootFingerprints: Set<String>
        /// Collateral older than this TCB evaluation data number is refused (Intel's `min_eval_num`):
        /// after a TCB recovery, raise it so that collateral from before the recovery no longer counts.
        public var minimumTCBEvaluationDataNumber = 0

        public init(pinnedRootFingerprints: Set<String>) {
            self.pinnedRootFingerprints = pinnedRootFingerprints
        }
    }

    public let options: Options
    public let collateralSource: (any CollateralSource)?

    public init(options: Options, collateralSource: (any CollateralSource)? = nil) {
        self.options = options
        self.collateralSource = collateralSource
    }

    /// Verifies an envelope. `expectedNonce` nil skips the freshness check (hand verification of a
    /// file); a nonce shorter than 64 bytes must equal REPORTDATA's prefix, the rest zero.
    public func verify(_ envelope: EvidenceEnvelope, expectedNonce: Data?, at time: Date) -> Verdict {
        var run = Run(verifier: self, format: envelope.format, time: time)
        return run.verify(envelope, expectedNonce: expectedNonce).citing(collateral: run.cachedCollateralSHA256)
    }

    /// Verifies a raw quote with explicit collateral (benchmarks, tools).
    public func verify(
        quote: [UInt8], collateral: Collateral?, expectedNonce: Data?, at time: Date, format: String = "tdx-quote"
    )
        -> Verdict
    {
        var run = Run(verifier: self, format: format, time: time)
        return run.verify(
            quoteBytes: quote, envelopeCollateral: collateral, eventLog: nil, expectedNonce: expectedNonce)
    }
}

/// One verification: the trace so far and the steps in order.
private struct Run {
    let verifier: TDXQuoteVerifier
    let format: String
    let time: Date
    var passed = [String]()
    /// The digest of collateral taken from the verifier's source (not the envelope).
    var cachedCollateralSHA256: String?
    /// The TCB level, once evaluated: rejects from then on carry its status.
    var tcbResult: TCBResult?

    init(verifier: TDXQuoteVerifier, format: String, time: Date) {
        self.verifier = verifier
        self.format = format
        self.time = time
    }

    var options: TDXQuoteVerifier.Options { verifier.options }

    func reject(_ reason: Reason, status: String? = nil, advisories: [String] = []) -> Verdict {
        .reject(format: format, reasons: [reason], passed: passed, tcbStatus: status, advisoryIDs: advisories)
    }

    mutating func verify(_ envelope: EvidenceEnvelope, expectedNonce: Data?) -> Verdict {
        guard TDXQuoteVerifier.formats.contains(envelope.format) else {
            return reject(
                Reason(
                    .evidenceUnsupported, "tdx.envelope", "format '\(envelope.format)' is not tdx-quote or sgx-quote"))
        }
        guard envelope.version == 1 else {
            return reject(
                Reason(.evidenceMalformed, "tdx.envelope", "unknown \(envelope.format) version \(envelope.version)"))
        }
        let quote: Data
        switch envelope.base64("quote") {
        case .success(let q): quote = q
        case .failure(let r): return reject(r)
        }
        var collateral: Collateral?
        switch envelope.stringObject("collateral") {
        case .failure(let r): return reject(r)
        case .success(nil): break
        case .success(let fields?):
            switch Collateral.read(fields) {
            case .success(let c): collateral = c
            case .failure(let r): return reject(r)
            }
        }
        let eventLog: Data?
        switch envelope.optionalBase64("event_log") {
        case .success(let e): eventLog = e
        case .failure(let r): return reject(r)
        }
        return verify(
            quoteBytes: [UInt8](quote), envelopeCollateral: collateral, eventLog: eventLog, expectedNonce: expectedNonce
        )
    }

    /// The steps in Intel's order. Every step either passes (adding to the trace) or throws the
    /// reason that rejects the quote; rejects from the quote signature on carry the TCB status.
    mutating func verify(quoteBytes: [UInt8], envelopeCollateral: Collateral?, eventLog: Data?, expectedNonce: Data?)
        -> Verdict
    {
        do throws(Reason) {
            let quote = try parse(quoteBytes)
            let pck = try pckChain(quote)
            let (collateral, mode) = try pickCollateral(envelopeCollateral, quote, pck)
            let rootCRL = try checkCRLs(collateral, pck)
            let (tcbInfo, qeIdentity) = try signedCollateral(collateral, quote, pck, rootCRL, mode: mode)
            try checkQEReport(quote, pck)
            let qeLevel = try matchQEIdentity(quote, qeIdentity)
            let tcb = try evaluateTCB(quote, pck, tcbInfo, qeLevel)
            try checkQuoteSignature(quote)
            try checkFreshness(quote, expectedNonce)
            let measured = try replayEventLog(eventLog, quote)
            var fields = QuoteClaims.fields(of: quote, platform: pck.sgx)
            fields["tcb_status"] = tcb.status
            fields["qe_tcb_status"] = tcb.qeStatus
            fields["tcb_date"] = tcb.tcbDate.rfc3339
            fields["collateral.source"] = mode
            fields["tcb_evaluation_data_number"] = String(
                min(tcbInfo.tcbEvaluationDataNumber, qeIdentity.tcbEvaluationDataNumber))
            return acceptance(quote, tcb, VerifiedClaims(measuredFiles: measured, fields: fields))
        } catch {
            return reject(error, status: tcbResult?.status, advisories: tcbResult?.advisoryIDs ?? [])
        }
    }

    /// The PCK chain and what its leaf says about the platform.
    struct PCK {
        let chain: [Certificate]
        let sgx: SGXExtension
        let check: ChainCheck
        var leaf: Certificate { chain[0] }
        var issuer: Certificate { chain[1] }
        var root: Certificate { chain[chain.count - 1] }
        func collateralKey(_ quote: DCAPQuote) -> CollateralKey {
            CollateralKey(tee: quote.tee, fmspc: sgx.fmspc, pceID: sgx.pceID, pckIssuer: issuer.subject)
        }
    }

    mutating func parse(_ quoteBytes: [UInt8]) throws(Reason) -> DCAPQuote {
        let quote: DCAPQuote
        do { quote = try DCAPQuote.parse(quoteBytes) } catch {
            switch error {
            case .malformed(let m): throw Reason(.evidenceMalformed, "tdx.quote", m)
            case .unsupported(let m): throw Reason(.evidenceUnsupported, "tdx.quote", m)
            }
        }
        let expectedTEE: DCAPQuote.TEE = format == "sgx-quote" ? .sgx : .tdx
        guard quote.tee == expectedTEE else {
            throw Reason(.evidenceMalformed, "tdx.quote", "a \(quote.tee) quote in a \(format) envelope")
        }
        passed.append(
            "parsed: DCAP quote v\(quote.version), \(quote.tee == .tdx ? "TD report" : "enclave report"), ECDSA P-256")
        return quote
    }

    mutating func pckChain(_ quote: DCAPQuote) throws(Reason) -> PCK {
        let check = ChainCheck(pinnedFingerprints: options.pinnedRootFingerprints)
        let chain: [Certificate]
        do { chain = try Memo.chain(pemBytes: quote.pckChainBytes) } catch {
            throw Reason(.evidenceMalformed, "tdx.chain.pck", "PCK certificate chain: \(error)")
        }
        if let r = check.verify(chain, name: "PCK", at: time) { throw r }
        guard let sgx = chain[0].sgxExtension else {
            throw Reason(
                .chainInvalid, "tdx.chain.pck", "the leaf is not a PCK certificate (no readable SGX extension)")
        }
        passed.append("PCK chain: \(chain.count) certificates to the pinned root; FMSPC \(Data(sgx.fmspc).hex)")
        return PCK(chain: chain, sgx: sgx, check: check)
    }

    /// Collateral from the envelope, else the verifier's source (whose digest the verdict cites).
    mutating func pickCollateral(_ envelopeCollateral: Collateral?, _ quote: DCAPQuote, _ pck: PCK) throws(Reason) -> (
        Collateral, String
    ) {
        if let c = envelopeCollateral { return (c, "envelope") }
        guard let source = verifier.collateralSource, let c = source.collateral(for: pck.collateralKey(quote), at: time)
        else {
            throw Reason(
                .collateralMissing, "tdx.collateral",
                "no collateral in the envelope and none cached for FMSPC \(Data(pck.sgx.fmspc).hex)")
        }
        cachedCollateralSHA256 = c.sha256
        return (c, source.mode)
    }

    /// The root CA and PCK CRLs: signed by the right keys, current, and revoking nothing in the chain.
    mutating func checkCRLs(_ collateral: Collateral, _ pck: PCK) throws(Reason) -> RevocationList {
        let rootCRL: RevocationList
        let pckCRL: RevocationList
        let pckCRLChain: [Certificate]
        do {
            rootCRL = try Memo.crl(der: collateral.rootCACRL)
            pckCRL = try Memo.crl(der: collateral.pckCRL)
            pckCRLChain = try Memo.chain(pem: collateral.pckCRLIssuerChain)
        } catch {
            throw Reason(.evidenceMalformed, "tdx.collateral.crl", "\(error)")
        }
        guard rootCRL.isIssued(by: pck.root), rootCRL.isSigned(by: pck.root.publicKey) else {
            throw Reason(
                .collateralSignatureInvalid, "tdx.collateral.root-crl",
                "the root CA CRL is not signed by the pinned root")
        }
        if let r = pck.check.verify(pckCRLChain, name: "PCK CRL issuer", at: time) { throw r }
        guard pckCRL.isIssued(by: pck.issuer) else {
            throw Reason(
                .collateralMismatch, "tdx.collateral.pck-crl",
                "the PCK CRL is issued by '\(pckCRL.issuer)', not by the PCK's CA '\(pck.issuer.subject)'")
        }
        guard pckCRL.isSigned(by: pck.issuer.publicKey), pckCRL.isSigned(by: pckCRLChain[0].publicKey) else {
            throw Reason(.collateralSignatureInvalid, "tdx.collateral.pck-crl", "the PCK CRL signature does not verify")
        }
        for (name, crl) in [("root CA CRL", rootCRL), ("PCK CRL", pckCRL)] {
            if let r = window(name, issued: crl.thisUpdate, next: crl.nextUpdate, source: "tdx.collateral.crl") {
                throw r
            }
        }
        for cert in pck.chain.dropFirst().dropLast() + pckCRLChain.dropLast() where rootCRL.revokes(cert) {
            throw Reason(.chainRevoked, "tdx.chain.pck", "'\(cert.subject)' is revoked by the root CA CRL")
        }
        if pckCRL.revokes(pck.leaf) {
            throw Reason(.chainRevoked, "tdx.chain.pck", "the PCK certificate is revoked by the PCK CRL")
        }
        passed.append("CRLs: root CA and PCK CRLs signed and current; nothing in the chain revoked")
        return rootCRL
    }

    /// TCB info and QE identity: signed by Intel, current, for this platform and TEE, and not
    /// older than what this verifier holds or the minimum evaluation number.
    mutating func signedCollateral(
        _ collateral: Collateral, _ quote: DCAPQuote, _ pck: PCK, _ rootCRL: RevocationList, mode: String
    )
        throws(Reason) -> (TCBInfo, QEIdentity)
    {
        let tcbInfo = try verifySigned(
            collateral.tcbInfo, signature: collateral.tcbInfoSignature, chainPEM: collateral.tcbInfoIssuerChain,
            name: "TCB info",
            rootCRL: rootCRL, chainCheck: pck.check, parse: { Memo.parsed($0, Memo.tcbInfos, TCBInfo.parse) }
        ).get()
        if let r = window(
            "TCB info", issued: tcbInfo.issueDate, next: tcbInfo.nextUpdate, source: "tdx.collateral.tcb-info")
        {
            throw r
        }
        try Self.checkTCBInfoIsFor(quote, pck, tcbInfo)
        let qeIdentity = try verifySigned(
            collateral.qeIdentity, signature: collateral.qeIdentitySignature,
            chainPEM: collateral.qeIdentityIssuerChain,
            name: "QE identity", rootCRL: rootCRL, chainCheck: pck.check,
            parse: { Memo.parsed($0, Memo.qeIdentities, QEIdentity.parse) }
        ).get()
        if let r = window(
            "QE identity", issued: qeIdentity.issueDate, next: qeIdentity.nextUpdate,
            source: "tdx.collateral.qe-identity")
        {
            throw r
        }
        let expectedQE = quote.tee == .tdx ? "TD_QE" : "QE"
        guard qeIdentity.id == expectedQE else {
            throw Reason(
                .collateralMismatch, "tdx.collateral.qe-identity", "QE identity '\(qeIdentity.id)' is not \(expectedQE)"
            )
        }
        try checkRollback(tcbInfo, qeIdentity, quote, pck, mode: mode)
        passed.append(
            "collateral (\(mode)): TCB info \(tcbInfo.kind.rawValue) v\(tcbInfo.version) eval \(tcbInfo.tcbEvaluationDataNumber) and QE identity \(qeIdentity.id) signed by Intel, current, for this platform"
        )
        return (tcbInfo, qeIdentity)
    }

    static func checkTCBInfoIsFor(_ quote: DCAPQuote, _ pck: PCK, _ tcbInfo: TCBInfo) throws(Reason) {
        let expectedKind: TCBInfo.Kind = quote.tee == .tdx ? .tdx : .sgx
        guard tcbInfo.kind == expectedKind, quote.tee == .sgx || tcbInfo.version >= 3 else {
            throw Reason(
                .collateralMismatch, "tdx.collateral.tcb-info",
                "TCB info v\(tcbInfo.version) \(tcbInfo.kind.rawValue) is not for \(quote.tee) quotes")
        }
        if quote.tee == .tdx, tcbInfo.tdxModule == nil {
            throw Reason(.collateralMismatch, "tdx.collateral.tcb-info", "TDX TCB info without a tdxModule identity")
        }
        guard tcbInfo.fmspc == pck.sgx.fmspc else {
            throw Reason(
                .collateralMismatch, "tdx.collateral.tcb-info",
                "TCB info is for FMSPC \(Data(tcbInfo.fmspc).hex), the platform is \(Data(pck.sgx.fmspc).hex)")
        }
        guard tcbInfo.pceID == pck.sgx.pceID else {
            throw Reason(
                .collateralMismatch, "tdx.collateral.tcb-info",
                "TCB info is for PCE id \(Data(tcbInfo.pceID).hex), the platform's is \(Data(pck.sgx.pceID).hex)")
        }
    }

    /// Threat: collateral rollback. A worker may carry old collateral (from before a TCB recovery
    /// or a revocation) that is still inside its window; it never beats newer collateral this
    /// verifier holds, nor the policy's minimum evaluation number.
    func checkRollback(_ tcbInfo: TCBInfo, _ qeIdentity: QEIdentity, _ quote: DCAPQuote, _ pck: PCK, mode: String)
        throws(Reason)
    {
        let evaluation = min(tcbInfo.tcbEvaluationDataNumber, qeIdentity.tcbEvaluationDataNumber)
        if evaluation < options.minimumTCBEvaluationDataNumber {
            throw Reason(
                .collateralExpired, "tdx.collateral",
                "collateral of TCB evaluation \(evaluation) is older than the minimum \(options.minimumTCBEvaluationDataNumber)"
            )
        }
        if mode == "envelope", let source = verifier.collateralSource,
            let held = source.collateral(for: pck.collateralKey(quote), at: time),
            case .success(let heldTCB) = Memo.parsed(held.tcbInfo, Memo.tcbInfos, TCBInfo.parse),
            heldTCB.tcbEvaluationDataNumber > tcbInfo.tcbEvaluationDataNumber
                || (heldTCB.tcbEvaluationDataNumber == tcbInfo.tcbEvaluationDataNumber
                    && heldTCB.issueDate > tcbInfo.issueDate)
        {
            throw Reason(
                .collateralExpired, "tdx.collateral",
                "the evidence carries TCB info of evaluation \(tcbInfo.tcbEvaluationDataNumber) issued \(tcbInfo.issueDate.rfc3339); this verifier holds a newer one (evaluation \(heldTCB.tcbEvaluationDataNumber), issued \(heldTCB.issueDate.rfc3339))"
            )
        }
    }

    /// The QE report: signed by the PCK key, binding the attestation key.
    mutating func checkQEReport(_ quote: DCAPQuote, _ pck: PCK) throws(Reason) {
        // The QE report is the same in every quote of one platform's QE: remembered once verified.
        let key = pck.leaf.publicKey
        guard
            Memo.signature(
                "qe-report", key: key, message: quote.qeReportBytes, signature: quote.qeReportSignature,
                {
                    key.verify(
                        signature: quote.qeReportSignature, message: quote.qeReportBytes, scheme: .ecdsa(.sha256))
                })
        else {
            throw Reason(
                .qeReportSignatureInvalid, "tdx.qe-report", "the QE report signature does not verify under the PCK key")
        }
        let binding = [UInt8](HashAlgorithm.sha256.hash(quote.attestationKey + quote.qeAuthData))
        let reportData = quote.qeReport.reportData
        guard Array(reportData[0..<32]) == binding, reportData[32...].allSatisfy({ $0 == 0 }) else {
            throw Reason(
                .qeReportBindingMismatch, "tdx.qe-report",
                "QE report data is not SHA-256(attestation key ‖ QE authentication data)")
        }
        passed.append("QE report: signed by the PCK key, binds the attestation key")
    }

    /// The quoting enclave is Intel's (QE identity), and its TCB level.
    mutating func matchQEIdentity(_ quote: DCAPQuote, _ qeIdentity: QEIdentity) throws(Reason) -> TCBInfo.IdentityLevel?
    {
        let qe = quote.qeReport
        let maskedAttributes = zip(qe.attributes, qeIdentity.attributesMask).map { $0 & $1 }
        var mismatches = [String]()
        if qe.miscSelect & qeIdentity.miscSelectMask != qeIdentity.miscSelect { mismatches.append("MISCSELECT") }
        if maskedAttributes != qeIdentity.attributes { mismatches.append("ATTRIBUTES") }
        if qe.mrSigner != qeIdentity.mrSigner { mismatches.append("MRSIGNER") }
        if Int(qe.isvProdID) != qeIdentity.isvProdID { mismatches.append("ISVPRODID") }
        guard mismatches.isEmpty else {
            throw Reason(
                .qeIdentityMismatch, "tdx.qe-identity",
                "the quoting enclave's \(mismatches.joined(separator: ", ")) do not match Intel's QE identity")
        }
        let qeLevel = TCBEvaluation.qeLevel(qeIdentity, isvSVN: Int(qe.isvSVN))
        passed.append(
            "QE identity: Intel's \(qeIdentity.id), ISV SVN \(qe.isvSVN) → \(qeLevel?.status ?? "not supported")")
        return qeLevel
    }

    /// The platform's TCB level (and the TDX module's identity); remembered so later rejects carry it.
    mutating func evaluateTCB(_ quote: DCAPQuote, _ pck: PCK, _ tcbInfo: TCBInfo, _ qeLevel: TCBInfo.IdentityLevel?)
        throws(Reason) -> TCBResult
    {
        let tcb: TCBResult
        switch TCBEvaluation.evaluate(platform: pck.sgx, tcbInfo: tcbInfo, td: quote.tdReport, qe: qeLevel) {
        case .success(let t): tcb = t
        case .failure(.noMatchingLevel(let m)), .failure(.moduleMismatch(let m)):
            throw Reason(.tcbNoMatchingLevel, "tdx.tcb", m)
        }
        if let td = quote.tdReport, let r = moduleIdentityCheck(td, tcbInfo: tcbInfo) { throw r }
        passed.append(
            "TCB: platform \(tcb.platformStatus)\(tcb.moduleStatus.map { ", TDX module \($0)" } ?? ""), QE \(tcb.qeStatus) → \(tcb.status)"
        )
        tcbResult = tcb
        return tcb
    }

    mutating func checkQuoteSignature(_ quote: DCAPQuote) throws(Reason) {
        let key: PublicKey
        do {
            // Decoded once per attestation key; the signature itself is checked every time.
            key = try PublicKey.cached(
                spkiDER: PublicKey.spki(
                    curve: .p256, x: Array(quote.attestationKey[0..<32]), y: Array(quote.attestationKey[32..<64])))
        } catch {
            throw Reason(.quoteSignatureInvalid, "tdx.quote.signature", "the attestation key is not a P-256 point")
        }
        guard key.verify(signature: quote.signature, message: quote.signedBytes, scheme: .ecdsa(.sha256)) else {
            throw Reason(
                .quoteSignatureInvalid, "tdx.quote.signature",
                "the quote signature does not verify under the attestation key")
        }
        passed.append("quote signature: valid under the attestation key")
    }

    /// REPORTDATA is the expected freshness value (a shorter nonce is its prefix, the rest zero).
    mutating func checkFreshness(_ quote: DCAPQuote, _ expectedNonce: Data?) throws(Reason) {
        guard let nonce = expectedNonce else { return }
        let expected = [UInt8](nonce.prefix(64)) + [UInt8](repeating: 0, count: max(0, 64 - nonce.count))
        guard nonce.count <= 64, quote.reportData == expected else {
            throw Reason(.nonceMismatch, "tdx.nonce", "REPORTDATA is not the expected freshness value")
        }
        passed.append("nonce: REPORTDATA matches")
    }

    /// The CCEL replays to RTMR0–3; returns the files it measured.
    mutating func replayEventLog(_ eventLog: Data?, _ quote: DCAPQuote) throws(Reason) -> [MeasuredFile] {
        guard let eventLog, let td = quote.tdReport else { return [] }
        switch CCELReplay.verify(eventLog, against: td) {
        case .failure(let r): throw r
        case .success(let summary):
            passed.append("event log: \(summary.events) events replay to RTMR0-3")
            return summary.measuredFiles
        }
    }

    /// The verifier's own acceptance options (debug, TCB status with grace, advisories); callers
    /// that judge by policy set them to accept everything and judge the facts themselves.
    func acceptance(_ quote: DCAPQuote, _ tcb: TCBResult, _ claims: VerifiedClaims) -> Verdict {
        var policy = [Reason]()
        if quote.isDebug, !options.allowDebug {
            policy.append(
                Reason(
                    .policyDebugNotAllowed, "tdx.policy.debug",
                    "the \(quote.tee == .tdx ? "TD" : "enclave") is a debug guest"))
        }
        if let r = statusCheck(tcb) { policy.append(r) }
        let rejected = Set(tcb.advisoryIDs).intersection(options.rejectedAdvisoryIDs).sorted()
        if !rejected.isEmpty {
            policy.append(
                Reason(
                    .tcbStatusNotAllowed, "tdx.policy.advisories",
                    "advisories rejected by policy: \(rejected.joined(separator: ", "))"))
        }
        guard policy.isEmpty else {
            return .reject(
                format: format, reasons: policy, passed: passed, tcbStatus: tcb.status, advisoryIDs: tcb.advisoryIDs)
        }
        return .accept(
            format: format, claims: claims, passed: passed, tcbStatus: tcb.status, advisoryIDs: tcb.advisoryIDs)
    }

    /// A signed collateral document, checked by `TCBSigner.verify`, then parsed.
    func verifySigned<T>(
        _ text: String, signature: [UInt8], chainPEM: String, name: String, rootCRL: RevocationList,
        chainCheck: ChainCheck,
        parse: (String) -> Result<T, Reason>
    ) -> Result<T, Reason> {
        TCBSigner.verify(
            text, signature: signature, chainPEM: chainPEM, name: name, check: chainCheck, at: time, rootCRL: rootCRL
        )
        .flatMap { _ in parse(text) }
    }

    /// A validity window, widened at its end by the collateral grace period.
    func window(_ name: String, issued: Date, next: Date, source: String) -> Reason? {
        if time < issued {
            return Reason(.collateralExpired, source, "\(name) is issued \(issued.rfc3339), after \(time.rfc3339)")
        }
        if time > next.addingTimeInterval(options.collateralGracePeriod) {
            let grace = options.collateralGracePeriod > 0 ? " (grace \(Int(options.collateralGracePeriod)) s)" : ""
            return Reason(
                .collateralExpired, source,
                "\(name) expired at its nextUpdate \(next.rfc3339)\(grace); now \(time.rfc3339)")
        }
        return nil
    }

    /// The SEAM module must be Intel's: MRSIGNERSEAM and SEAM attributes as the TCB info lists
    /// them for this module version (or the top-level module for version 0).
    func moduleIdentityCheck(_ td: TDReport, tcbInfo: TCBInfo) -> Reason? {
        guard let module = TCBEvaluation.moduleIdentity(version: td.teeTCBSVN[1], in: tcbInfo) else {
            return Reason(.tcbNoMatchingLevel, "tdx.tcb.module", "Intel lists no identity for this TDX module")
        }
        let masked = zip(td.seamAttributes, module.attributesMask).map { $0 & $1 }
        let expected = zip(module.attributes, module.attributesMask).map { $0 & $1 }
        guard td.mrSignerSeam == module.mrSigner, masked == expected else {
            return Reason(
                .tcbNoMatchingLevel, "tdx.tcb.module",
                "the TDX module's MRSIGNERSEAM or attributes are not Intel's \(module.id)")
        }
        return nil
    }

    /// Whether the policy accepts the status: listed, or out of date within the platform grace period.
    func statusCheck(_ tcb: TCBResult) -> Reason? {
        if options.acceptedStatuses.contains(tcb.status) { return nil }
        if options.platformGracePeriod > 0, TCBStatus.outOfDateNames.contains(tcb.status) {
            let end = tcb.tcbDate.addingTimeInterval(options.platformGracePeriod)
            if time <= end { return nil }
            return Reason(
                .tcbStatusNotAllowed, "tdx.policy.tcb-status",
                "TCB status \(tcb.status): the platform grace period ended \(end.rfc3339) (TCB level of \(tcb.tcbDate.rfc3339))"
            )
        }
        return Reason(
            .tcbStatusNotAllowed, "tdx.policy.tcb-status",
            "TCB status \(tcb.status) is not accepted (accepted: \(options.acceptedStatuses.sorted().joined(separator: ", ")))"
        )
    }
}

extension TDXQuoteVerifier {
    /// Parses envelope bytes and verifies them; unreadable envelopes are a malformed reject.
    public func verify(envelopeData: Data, expectedNonce: Data?, at time: Date) -> Verdict {
        switch EvidenceEnvelope.parse(envelopeData) {
        case .success(let envelope): verify(envelope, expectedNonce: expectedNonce, at: time)
        case .failure(let reason): .reject(format: "unknown", reasons: [reason])
        }
    }
}
