import AttestationCore
import Foundation
import NVGPUVerifier
import Policy
import TDXVerifier
import TPMVerifier
import WorkerProtocol

/// Turns evidence into a verdict for the gateway and the CLI alike: the verifier for the
/// envelope's format establishes the facts, then the policy judges them
/// (``PolicyDocument/judge(_:at:scope:)``, the only place acceptance rules live).
///
/// Verifiers are run in "report the facts" mode: every TCB status, debug guests and every
/// advisory pass the verifier, and the policy refuses what it does not accept. What stays with
/// the verifier is what makes the facts true at all: signatures, chains, revocation, collateral
/// freshness (with the policy's collateral grace period), nonce binding and log replay.
public struct EvidenceVerification: Sendable {
    public let policy: PolicyDocument
    /// Apply every rule of the policy (`.all`: PCRs, measurements, TD allowlists) or only its
    /// evidence rules (`.evidence`).
    public let scope: PolicyDocument.JudgeScope

    /// SHA-256 fingerprints of the roots DCAP chains must end at: Intel's, unless configured.
    public let dcapRoots: Set<String>
    /// Collateral for quotes whose envelope carries none.
    public let collateralSource: (any CollateralSource)?
    /// Where TPM identities are anchored: the EK roots and how activation is known.
    public let tpmIdentity: TPMIdentityTrust
    /// The roots GPU evidence is anchored in: NVIDIA's, unless configured (test PKIs).
    public var gpuOptions = NVGPUReportVerifier.Options()

    public init(
        policy: PolicyDocument, scope: PolicyDocument.JudgeScope, dcapRoots: Set<String> = PinnedRoots.production,
        collateralSource: (any CollateralSource)? = nil, tpmIdentity: TPMIdentityTrust = TPMIdentityTrust()
    ) {
        self.policy = policy
        self.scope = scope
        self.dcapRoots = dcapRoots
        self.collateralSource = collateralSource
        self.tpmIdentity = tpmIdentity
    }

    public init(
        policy: PolicyDocument, applyMeasurementRules: Bool, dcapRoots: Set<String> = PinnedRoots.production,
        collateralSource: (any CollateralSource)? = nil, tpmIdentity: TPMIdentityTrust = TPMIdentityTrust()
    ) {
        self.init(
            policy: policy, scope: applyMeasurementRules ? .all : .evidence, dcapRoots: dcapRoots,
            collateralSource: collateralSource, tpmIdentity: tpmIdentity)
    }

    /// The DCAP verifier options for establishing facts under a policy: its roots and its
    /// collateral grace period. They accept every TCB status, debug guest and advisory, so they
    /// are never used without the judgement that follows (acceptance is the policy's).
    static func factFindingOptions(_ rules: PolicyDocument.TDXRules, roots: Set<String>) -> TDXQuoteVerifier.Options {
        var options = TDXQuoteVerifier.Options(pinnedRootFingerprints: roots)
        options.acceptedStatuses = Set(TCBStatus.allCases.map(\.rawValue))
        options.allowDebug = true
        options.rejectedAdvisoryIDs = []
        options.collateralGracePeriod = TimeInterval(rules.collateralGracePeriodDays) * 86_400
        return options
    }

    public func verify(envelopeData: Data, expectedNonce: Data?, at time: Date) -> Verdict {
        switch EvidenceEnvelope.parse(envelopeData) {
        case .success(let envelope): verify(envelope, expectedNonce: expectedNonce, at: time)
        case .failure(let reason): .reject(format: "unknown", reasons: [reason])
        }
    }

    /// A peer-chosen string as it may appear in reasons and the audit log: printable ASCII, at
    /// most 64 characters.
    static func printable(_ text: String) -> String {
        let cleaned = String(text.unicodeScalars.filter { $0.isASCII && $0.value >= 0x20 && $0.value < 0x7f })
        return cleaned.count <= 64 ? cleaned : String(cleaned.prefix(64)) + "…"
    }

    /// Verifies a parsed envelope, then judges the facts under the policy.
    public func verify(_ envelope: EvidenceEnvelope, expectedNonce: Data?, at time: Date) -> Verdict {
        // A GPU's report proves the GPU, not the host it serves: it is checked by hand here, and
        // never admits a worker on its own (admission's scope is `.all`).
        if envelope.format == NVGPUReportVerifier.format, scope == .evidence {
            return NVGPUReportVerifier(options: gpuOptions).verify(
                envelope: envelope, expectedNonce: expectedNonce, at: time)
        }
        guard policy.formats.contains(envelope.format) else {
            return .reject(
                format: Self.printable(envelope.format),
                reasons: [
                    Reason(
                        .evidenceUnsupported, "policy.\(policy.name)",
                        "evidence format '\(Self.printable(envelope.format))' is not accepted by this policy")
                ])
        }
        let verdict: Verdict
        switch EvidenceFormat(rawValue: envelope.format) {
        case .tpm2Quote?:
            let options = TPMQuoteVerifier.Options(
                allowSHA1: policy.tpm.allowSHA1, requireRestrictedAK: policy.tpm.requireRestrictedAK,
                ekRoots: tpmIdentity.ekRoots, activation: tpmIdentity.activation)
            verdict = TPMQuoteVerifier(options: options).verify(envelope, expectedNonce: expectedNonce, at: time)
        case .tdxQuote?:
            verdict = verifyTD(envelope, expectedNonce: expectedNonce, at: time)
        case .sgxQuote?:
            verdict = TDXQuoteVerifier(
                options: Self.factFindingOptions(policy.tdx, roots: dcapRoots), collateralSource: collateralSource
            )
            .verify(envelope, expectedNonce: expectedNonce, at: time)
        case nil:
            verdict = .reject(
                format: Self.printable(envelope.format),
                reasons: [
                    Reason(
                        .evidenceUnsupported, "verifier", "unknown evidence format '\(Self.printable(envelope.format))'"
                    )
                ])
        }
        guard let facts = AttestedFacts(verdict) else { return verdict }
        return verdict.adding(policyReasons: policy.judge(facts, at: time, scope: scope))
    }
}

extension EvidenceVerification {
    /// A TD quote, and the GPUs its envelope names (`gpus`): each GPU's report answers the nonce
    /// derived from the binding REPORTDATA starts with, and REPORTDATA ends with the digest of
    /// every GPU's report and chain (``GPUEvidenceBinding``). The GPUs' facts join the TD's
    /// claims as `gpu.count` and `gpu.<i>.<fact>`.
    ///
    /// Threat: a genuine TD presenting GPU evidence it did not collect in this admission (another
    /// machine's, or an old one): the TD's quote would have to commit to it, and the GPU would
    /// have had to sign this admission's derived nonce.
    func verifyTD(_ envelope: EvidenceEnvelope, expectedNonce: Data?, at time: Date) -> Verdict {
        let format = EvidenceFormat.tdxQuote.rawValue
        let gpus: [NVGPUReportVerifier.Evidence]
        switch Self.gpuEvidence(envelope) {
        case .failure(let reason): return .reject(format: format, reasons: [reason])
        case .success(let list): gpus = list
        }
        let parts = gpus.map {
            GPUEvidenceBinding.Piece(
                report: Data($0.report), chain: Data($0.chainPEM), driverManifest: Data($0.driverManifest ?? []),
                vbiosManifest: Data($0.vbiosManifest ?? []))
        }
        let tdVerdict = TDXQuoteVerifier(
            options: Self.factFindingOptions(policy.tdx, roots: dcapRoots), collateralSource: collateralSource
        )
        .verify(envelope, expectedNonce: Self.expectedReportData(expectedNonce, gpus: parts), at: time)
        guard tdVerdict.isAccepted, let claims = tdVerdict.claims else { return tdVerdict }
        guard let reportData = claims.fields["report_data"].flatMap({ Data(hex: $0) }), reportData.count == 64 else {
            return .reject(format: format, reasons: [Reason(.evidenceMalformed, "tdx.report_data", "no REPORTDATA")])
        }
        var fields = claims.fields
        fields["gpu.count"] = "\(gpus.count)"
        var passed = tdVerdict.passedChecks
        if !gpus.isEmpty {
            guard reportData.suffix(32) == GPUEvidenceBinding.digest(parts) else {
                return .reject(
                    format: format,
                    reasons: [
                        Reason(
                            .gpuBindingMismatch, "gpu.binding",
                            "the TD's REPORTDATA does not commit to the GPU evidence beside it")
                    ], passed: passed)
            }
            passed.append("gpu.binding")
        }
        var devices = [String: Int]()
        for (index, gpu) in gpus.enumerated() {
            let nonce = GPUEvidenceBinding.nonce(binding: reportData.prefix(32), index: index)
            let verdict = NVGPUReportVerifier(options: gpuOptions).verify(gpu, expectedNonce: nonce, at: time)
            passed += verdict.passedChecks.map { "gpu.\(index): \($0)" }
            guard verdict.isAccepted, let gpuClaims = verdict.claims else {
                let reasons = verdict.reasons.map { Reason($0.code, "gpu.\(index).\($0.source)", $0.message) }
                return .reject(format: format, reasons: reasons, passed: passed)
            }
            // Threat: one GPU standing for several (a GPU signs whatever nonce it is asked for).
            let device = gpuClaims.fields["gpu.device.sha256"] ?? ""
            if let first = devices.updateValue(index, forKey: device) {
                return .reject(
                    format: format,
                    reasons: [
                        Reason(
                            .gpuBindingMismatch, "gpu.\(index).device",
                            "GPU \(index) is the same device as GPU \(first): one GPU cannot stand for two")
                    ], passed: passed)
            }
            for (name, value) in gpuClaims.fields {
                fields["gpu.\(index).\(name.hasPrefix("gpu.") ? String(name.dropFirst(4)) : name)"] = value
            }
        }
        return .accept(
            format: format,
            claims: VerifiedClaims(pcrs: claims.pcrs, measuredFiles: claims.measuredFiles, fields: fields),
            passed: passed, tcbStatus: tdVerdict.tcbStatus, advisoryIDs: tdVerdict.advisoryIDs
        ).citing(collateral: tdVerdict.collateralSHA256)
    }

    /// What REPORTDATA must be: the expected value as given for a TD without GPUs; with GPUs,
    /// the binding (32 bytes, zero-padded) followed by the GPUs' digest. A value longer than 32
    /// bytes leaves no room for the GPUs: it stays as given, and the binding check that follows
    /// the quote's refuses the GPUs.
    static func expectedReportData(_ nonce: Data?, gpus: [GPUEvidenceBinding.Piece]) -> Data? {
        guard let nonce, !gpus.isEmpty, nonce.count <= 32 else { return nonce }
        return GPUEvidenceBinding.reportData(binding: nonce, gpus: gpus)
    }

    /// The `gpus` member: GPUs named "0", "1", … in order, at most ``GPUEvidenceBinding/maxGPUs``.
    static func gpuEvidence(_ envelope: EvidenceEnvelope) -> Result<[NVGPUReportVerifier.Evidence], Reason> {
        let table: [String: [String: String]]?
        switch envelope.stringTable("gpus") {
        case .failure(let reason): return .failure(reason)
        case .success(let value): table = value
        }
        guard let table else { return .success([]) }
        guard table.count <= GPUEvidenceBinding.maxGPUs,
            Set(table.keys) == Set((0..<table.count).map(String.init))
        else {
            return .failure(
                Reason(
                    .evidenceMalformed, "envelope.gpus",
                    "'gpus' names its GPUs 0, 1, … (at most \(GPUEvidenceBinding.maxGPUs))"))
        }
        var list = [NVGPUReportVerifier.Evidence]()
        for index in 0..<table.count {
            switch NVGPUReportVerifier.Evidence.from(row: table[String(index)]!, name: String(index)) {
            case .failure(let reason): return .failure(reason)
            case .success(let evidence): list.append(evidence)
            }
        }
        return .success(list)
    }
}

/// What anchors TPM attestation keys for one verification: the EK certificate roots (the pinned
/// manufacturer roots plus any configured) and how credential activation is known (live in this
/// session, or records signed by trusted gateway keys).
public struct TPMIdentityTrust: Sendable {
    public var ekRoots: [Data]
    public var activation: AKActivation

    public init(ekRoots: [Data] = EKRoots.pinnedDER, activation: AKActivation = .records(trustedKeys: [])) {
        self.ekRoots = ekRoots
        self.activation = activation
    }

    /// The same roots with another way of knowing activation.
    public func with(_ activation: AKActivation) -> TPMIdentityTrust {
        var copy = self
        copy.activation = activation
        return copy
    }
}
