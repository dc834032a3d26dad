import AttestationCore
import Foundation

extension PolicyDocument {
    /// Evaluates proven claims against the measurement and PCR rules. Returns the reasons the
    /// claims fail (empty when they meet the policy). Never throws: a policy that cannot be met
    /// fails closed.
    ///
    /// Threat: a worker running an engine or model other than the audited ones. Every measured
    /// file must be allowlisted, and (when required) at least one binary and one model must be.
    public func evaluate(_ claims: VerifiedClaims) -> [Reason] {
        var reasons = [Reason]()
        let source = "policy.\(name)"
        for (bank, rules) in tpm.pcrs.sorted(by: { $0.key < $1.key }) {
            for (index, accepted) in rules.sorted(by: { $0.key < $1.key }) {
                guard let value = claims.pcrs[bank]?[index] else {
                    reasons.append(
                        Reason(.policyMeasurementNotAllowed, source, "\(bank) PCR \(index) is required but not quoted"))
                    continue
                }
                if !accepted.contains(value) {
                    reasons.append(
                        Reason(
                            .policyMeasurementNotAllowed, source,
                            "\(bank) PCR \(index) = \(value) is not an accepted value"))
                }
            }
        }
        guard requireMeasurements else { return reasons }
        let binaryDigests = Set(binaries.map(\.sha256))
        let modelDigests = Set(models.map(\.sha256))
        var sawBinary = false
        var sawModel = false
        for file in claims.measuredFiles {
            guard file.algorithm == "sha256" else {
                reasons.append(
                    Reason(
                        .policyMeasurementNotAllowed, source,
                        "\(file.path) is measured with \(file.algorithm), not sha256"))
                continue
            }
            if binaryDigests.contains(file.digestHex) {
                sawBinary = true
            } else if modelDigests.contains(file.digestHex) {
                sawModel = true
            } else {
                reasons.append(
                    Reason(
                        .policyMeasurementNotAllowed, source,
                        "\(file.path) (sha256 \(file.digestHex)) is not on the allowlist"))
            }
        }
        if !sawBinary {
            reasons.append(Reason(.policyMeasurementNotAllowed, source, "no allowlisted inference binary was measured"))
        }
        if !sawModel {
            reasons.append(Reason(.policyMeasurementNotAllowed, source, "no allowlisted model was measured"))
        }
        return reasons
    }
}
