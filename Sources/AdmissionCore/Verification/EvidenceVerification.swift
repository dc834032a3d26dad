import AttestationCore
import Foundation
import NVGPUVerifier
import Policy
import TDXVerifier
import TPMVerifier

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
            return NVGPUReportVerifier().verify(envelope: envelope, expectedNonce: expectedNonce, at: time)
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
        case .tdxQuote?, .sgxQuote?:
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
