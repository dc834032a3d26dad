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
        // Threat: a file IMA measured while it was open for writing; what ran is unknown.
        if let violations = claims.fields["ima.violations"].flatMap(Int.init), violations > 0 {
            reasons.append(
                Reason(
                    .policyMeasurementNotAllowed, source,
                    "the IMA log records \(violations) violation\(violations == 1 ? "" : "s") (a file measured while open for writing): what ran is unknown"
                ))
        }
        guard requireMeasurements else { return reasons }
        let binaryDigests = Set(binaries.map(\.sha256))
        let modelDigests = Set(models.map(\.sha256))
        var sawBinary = false
        var sawExecutedBinary = false
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
                sawExecutedBinary = sawExecutedBinary || file.wasExecutedFromMeasuredCopy
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
        // Threat: a binary hashed on disk while another one serves. Only a binary the worker
        // measured in a sealed copy and executed from it counts, unless the policy says otherwise.
        if sawBinary, !sawExecutedBinary, !allowUnmeasuredEngine {
            reasons.append(
                Reason(
                    .policyUnmeasuredEngine, source,
                    "the allowlisted inference binary was hashed, not executed from its measured copy (measurements.allow_unmeasured_engine is off)"
                ))
        }
        return reasons
    }

    /// An SGX enclave against `evidence.sgx`: its MRENCLAVE listed, or its signer with the
    /// product id and at least the minimum security version. Fails closed on missing fields.
    ///
    /// Threat: a genuine SGX platform running an enclave nobody audited.
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

    /// TD measurement rules: MRTD, RTMR sets and Cocoon image hashes, each an allowlist that
    /// applies when non-empty.
    ///
    /// Threat: a genuine TDX platform running a guest image nobody audited (another firmware,
    /// kernel or command line changes MRTD and the RTMRs).
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

    /// The names in `advertised` that no allowlisted model the worker measured binds (empty:
    /// all are bound). Names are bound by model entries' `names`; a policy none of whose model
    /// entries lists names checks nothing (lint warns about it).
    ///
    /// Threat: a worker attested with one model advertising another model's name, so that
    /// clients asking for the larger model get the smaller one's answers.
    public func unboundModelNames(_ advertised: [String], measured: [MeasuredFile]) -> [String] {
        guard models.contains(where: { !$0.names.isEmpty }) else { return [] }
        let digests = Set(measured.filter { $0.algorithm == "sha256" }.map(\.digestHex))
        let bound = Set(models.filter { digests.contains($0.sha256) }.flatMap(\.names))
        return advertised.filter { !bound.contains($0) }
    }

    /// The reasons advertised `names` fail ``unboundModelNames(_:measured:)``.
    public func nameReasons(_ names: [String], _ facts: AttestedFacts) -> [Reason] {
        let unbound = unboundModelNames(names, measured: facts.claims.measuredFiles)
        guard !unbound.isEmpty else { return [] }
        return [
            Reason(
                .policyModelNameNotBound, "policy.\(name)",
                "the worker advertises \(unbound.joined(separator: ", ")), which no model it measured is bound to by the policy"
            )
        ]
    }
}
