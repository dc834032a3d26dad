import AttestationCore
import Foundation
import Policy
import TPMVerifier

/// Routes evidence to the verifier for its format and applies a policy to the result.
struct EvidenceVerification {
    let policy: PolicyDocument
    /// Policy documents were named explicitly: apply measurement and PCR rules too.
    let applyMeasurementRules: Bool

    func verify(envelopeData: Data, expectedNonce: Data?, at time: Date) -> Verdict {
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
