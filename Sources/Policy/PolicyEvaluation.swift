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
        if claims.fields["tee"] == "tdx" { reasons += evaluateTD(claims.fields, source: source) }
        if claims.fields["mrenclave"] != nil { reasons += evaluateEnclave(claims.fields, source: source) }
        if claims.fields["engine.measured"] == "false", !allowUnmeasuredEngine {
            reasons.append(
                Reason(
                    .policyUnmeasuredEngine, source,
                    "the engine serving requests was not started from the measured binary (allow_unmeasured_engine is off)"
                ))
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

    /// TD measurement rules: MRTD, RTMR sets and Cocoon image hashes, each an allowlist that
    /// applies when non-empty.
    ///
    /// Threat: a genuine TDX platform running a guest image nobody audited (another firmware,
    /// kernel or command line changes MRTD and the RTMRs).
    /// An SGX enclave against `evidence.sgx`: its MRENCLAVE listed, or its signer with the
    /// product id and at least the minimum security version. Fails closed on missing fields.
    func evaluateEnclave(_ fields: [String: String], source: String) -> [Reason] {
        if sgx.mrenclaves.isEmpty, sgx.signers.isEmpty { return [] }
        if let enclave = fields["mrenclave"], sgx.mrenclaves.contains(enclave) { return [] }
        let prod = fields["isvprodid"].flatMap { Int($0) }
        let svn = fields["isvsvn"].flatMap { Int($0) }
        let signed = sgx.signers.contains { s in
            fields["mrsigner"] == s.mrsigner && prod == s.isvProdID && (svn ?? -1) >= s.minISVSVN
        }
        if signed { return [] }
        return [
            Reason(
                .policyMeasurementNotAllowed, source,
                "enclave MRENCLAVE \(fields["mrenclave"] ?? "?") / MRSIGNER \(fields["mrsigner"] ?? "?") ISVPRODID \(prod.map(String.init) ?? "?") ISVSVN \(svn.map(String.init) ?? "?") meets no evidence.sgx rule"
            )
        ]
    }

    func evaluateTD(_ fields: [String: String], source: String) -> [Reason] {
        var reasons = [Reason]()
        if !tdx.mrtds.isEmpty, !tdx.mrtds.contains(fields["mrtd"] ?? "") {
            reasons.append(
                Reason(.policyMeasurementNotAllowed, source, "MRTD \(fields["mrtd"] ?? "?") is not on the allowlist"))
        }
        if !tdx.rtmrSets.isEmpty {
            let met = tdx.rtmrSets.contains { set in set.allSatisfy { fields["rtmr\($0.key)"] == $0.value } }
            if !met {
                reasons.append(
                    Reason(.policyMeasurementNotAllowed, source, "the TD's RTMRs match no accepted RTMR set"))
            }
        }
        if !tdx.imageHashes.isEmpty, !tdx.imageHashes.contains(fields["cocoon_image_hash"] ?? "") {
            reasons.append(
                Reason(
                    .policyMeasurementNotAllowed, source,
                    "image hash \(fields["cocoon_image_hash"] ?? "?") is not among the accepted image hashes"))
        }
        return reasons
    }
}
