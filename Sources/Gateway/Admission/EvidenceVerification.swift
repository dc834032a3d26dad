import AttestationCore
import Foundation
import Policy
import TPMVerifier

/// Routes evidence to the verifier for its format and applies a policy to the result. The one
/// place that turns envelope bytes into a verdict, for the gateway and the CLI alike.
public struct EvidenceVerification: Sendable {
    public let policy: PolicyDocument
    /// Apply the policy's measurement and PCR rules too (not only its evidence rules).
    public let applyMeasurementRules: Bool

    public init(policy: PolicyDocument, applyMeasurementRules: Bool) {
        self.policy = policy
        self.applyMeasurementRules = applyMeasurementRules
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
            verdict = .reject(
                format: envelope.format,
                reasons: [
                    Reason(
                        .evidenceUnsupported, "verifier",
                        "\(envelope.format) verification is not available in this build")
                ])
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
