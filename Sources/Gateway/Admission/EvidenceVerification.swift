import AttestationCore
import Foundation
import Policy
import TDXVerifier
import TPMVerifier

/// Routes evidence to the verifier for its format and applies a policy to the result. The one
/// place that turns envelope bytes into a verdict, for the gateway and the CLI alike.
public struct EvidenceVerification: Sendable {
    public let policy: PolicyDocument
    /// Apply the policy's measurement and PCR rules too (not only its evidence rules).
    public let applyMeasurementRules: Bool

    /// SHA-256 fingerprints of the roots DCAP chains must end at: Intel's, unless configured.
    public let dcapRoots: Set<String>
    /// Collateral for quotes whose envelope carries none.
    public let collateralSource: (any CollateralSource)?

    public init(
        policy: PolicyDocument, applyMeasurementRules: Bool, dcapRoots: Set<String> = PinnedRoots.production,
        collateralSource: (any CollateralSource)? = nil
    ) {
        self.policy = policy
        self.applyMeasurementRules = applyMeasurementRules
        self.dcapRoots = dcapRoots
        self.collateralSource = collateralSource
    }

    /// The DCAP verifier options a policy's TDX rules stand for.
    public static func dcapOptions(_ rules: PolicyDocument.TDXRules, roots: Set<String>) -> TDXQuoteVerifier.Options {
        var options = TDXQuoteVerifier.Options(pinnedRootFingerprints: roots)
        options.acceptedStatuses = Set(rules.acceptedTCBStatuses)
        options.allowDebug = rules.allowDebug
        options.platformGracePeriod = TimeInterval(rules.platformGracePeriodDays) * 86_400
        options.collateralGracePeriod = TimeInterval(rules.collateralGracePeriodDays) * 86_400
        options.rejectedAdvisoryIDs = Set(rules.rejectedAdvisoryIDs)
        return options
    }

    public func verify(envelopeData: Data, expectedNonce: Data?, at time: Date) -> Verdict {
        let envelope: EvidenceEnvelope
        switch EvidenceEnvelope.parse(envelopeData) {
        case .success(let e): envelope = e
        case .failure(let reason): return .reject(format: "unknown", reasons: [reason])
        }
        guard policy.formats.contains(envelope.format) else {
            return .reject(
                format: envelope.format,
                reasons: [
                    Reason(
                        .evidenceUnsupported, "policy.\(policy.name)",
                        "evidence format '\(envelope.format)' is not accepted by this policy")
                ])
        }
        let verdict: Verdict
        switch envelope.format {
        case TPMQuoteVerifier.format:
            let options = TPMQuoteVerifier.Options(
                allowSHA1: policy.tpm.allowSHA1,
                requireRestrictedAK: policy.tpm.requireRestrictedAK)
            verdict = TPMQuoteVerifier(options: options).verify(envelope, expectedNonce: expectedNonce, at: time)
        case "tdx-quote", "sgx-quote":
            verdict = TDXQuoteVerifier(
                options: Self.dcapOptions(policy.tdx, roots: dcapRoots), collateralSource: collateralSource
            ).verify(envelope, expectedNonce: expectedNonce, at: time)
        default:
            verdict = .reject(
                format: envelope.format,
                reasons: [
                    Reason(.evidenceUnsupported, "verifier", "unknown evidence format '\(envelope.format)'")
                ])
        }
        guard applyMeasurementRules, verdict.isAccepted, let claims = verdict.claims else { return verdict }
        return verdict.adding(policyReasons: policy.evaluate(claims))
    }
}
