import AttestationCore
import Foundation

/// What verification proved about a worker, as a policy judges it. Verifiers report these facts;
/// only ``PolicyDocument/judge(_:at:scope:)`` decides whether they are good enough.
public struct AttestedFacts: Sendable {
    /// Whether the worker's provider has proven a stake (admission reads the chain only after the
    /// evidence passes, so at that point the stake is not yet known).
    public enum Stake: Sendable, Equatable {
        case notChecked
        case proven
        case absent
    }

    public let format: String
    public let claims: VerifiedClaims
    /// Intel's TCB status (DCAP formats), as the verifier determined it.
    public let tcbStatus: String?
    public let advisoryIDs: [String]
    public var stake: Stake

    public init(
        format: String, claims: VerifiedClaims, tcbStatus: String?, advisoryIDs: [String], stake: Stake = .notChecked
    ) {
        self.format = format
        self.claims = claims
        self.tcbStatus = tcbStatus
        self.advisoryIDs = advisoryIDs
        self.stake = stake
    }

    /// The facts of an accepted verdict; nil for a reject (it proved nothing).
    public init?(_ verdict: Verdict, stake: Stake = .notChecked) {
        guard verdict.isAccepted, let claims = verdict.claims else { return nil }
        self.init(
            format: verdict.format, claims: claims, tcbStatus: verdict.tcbStatus, advisoryIDs: verdict.advisoryIDs,
            stake: stake)
    }
}

extension PolicyDocument {
    /// Which of a policy's rules a judgement applies.
    public enum JudgeScope: Sendable {
        /// Format, TCB status with its grace period, advisories and debug: what `ccgate evidence
        /// verify` applies to a file by default.
        case evidence
        /// Everything: the evidence rules, then PCRs, TD measurements, the binary and model
        /// allowlists and the stake rule. What admission, re-attestation and policy apply use.
        case all
    }

    /// The one place that decides whether proven facts meet this policy at `time`. Admission,
    /// re-attestation, policy apply and hand verification all call it, so a rule can never mean
    /// one thing at admission and another when a policy changes. Returns the reasons the facts
    /// fail (empty: they meet the policy); never throws.
    ///
    /// Threats: a platform that fell behind Intel's security fixes (TCB status, with Intel's
    /// platform grace period measured from the matched level's tcbDate), one affected by an
    /// advisory the operator rejects, a debug guest whose memory the host reads, and (scope
    /// `.all`) unaudited binaries, models or guest images, and a provider without stake.
    public func judge(_ facts: AttestedFacts, at time: Date, scope: JudgeScope = .all) -> [Reason] {
        let source = "policy.\(name)"
        guard formats.contains(facts.format) else {
            return [
                Reason(.evidenceUnsupported, source, "evidence format '\(facts.format)' is not accepted by this policy")
            ]
        }
        var reasons = [Reason]()
        if EvidenceFormat(rawValue: facts.format)?.isDCAP == true {
            reasons += judgeTCB(facts, at: time, source: source)
        }
        // Every format: a worker whose evidence cannot carry GPUs has none to show.
        reasons += judgeGPUs(facts.claims.fields, source: "\(source).gpu")
        if facts.format == EvidenceFormat.tpm2Quote.rawValue {
            reasons += judgeAK(facts.claims.fields, source: source)
        }
        guard scope == .all else { return reasons }
        reasons += evaluate(facts.claims)
        if stake.minimumNanotons != nil, facts.stake == .absent {
            reasons.append(
                Reason(
                    ReasonCode(rawValue: "stake.proof-missing"), "\(source).stake", "the policy requires a TON stake"))
        }
        return reasons
    }

    /// The GPUs a TD presented (`gpu.count`, `gpu.<i>.driver`, …, set only once each GPU's report
    /// verified and was bound to the quote) against `evidence.gpu`.
    ///
    /// Threat: a TD serving prompts with no verified GPU, or with GPUs whose firmware or reference
    /// manifests the operator does not accept. (CC mode is not a field of the signed report: a
    /// GPU passes when its measurements match NVIDIA's golden values for its firmware.) Fails
    /// closed: facts without a GPU count meet no rule, and naming drivers, VBIOS versions,
    /// architectures or manifests requires a GPU as `required` does, so a worker cannot step
    /// around the lists by showing none.
    public func judgeGPUs(_ fields: [String: String], source: String) -> [Reason] {
        let count = min(max(0, fields["gpu.count"].flatMap { Int($0) } ?? 0), GPUEvidenceLimit.max)
        let listed = !gpu.drivers.isEmpty || !gpu.vbios.isEmpty || !gpu.architectures.isEmpty || !gpu.manifests.isEmpty
        if gpu.required || listed, count == 0 {
            return [
                Reason(
                    .policyGPUNotAllowed, source,
                    "the policy requires verified GPU evidence (evidence.gpu) and the worker presented none")
            ]
        }
        var reasons = [Reason]()
        for index in 0..<count {
            for (name, accepted, fold) in [
                ("driver", gpu.drivers, false), ("vbios", gpu.vbios, true), ("arch", gpu.architectures, false),
            ] where !accepted.isEmpty {
                let value = fields["gpu.\(index).\(name)"] ?? ""
                guard !accepted.contains(fold ? value.lowercased() : value) else { continue }
                reasons.append(
                    Reason(
                        .policyGPUNotAllowed, source,
                        "GPU \(index): \(name) '\(value)' is not one the policy accepts (\(accepted.joined(separator: ", ")))"
                    ))
            }
            for kind in ["driver", "vbios"] where !gpu.manifests.isEmpty {
                let digest = fields["gpu.\(index).rim.\(kind).sha256"] ?? ""
                guard !gpu.manifests.contains(digest) else { continue }
                reasons.append(
                    Reason(
                        .policyGPUNotAllowed, source,
                        "GPU \(index): the \(kind) manifest (SHA-256 \(digest)) is not one evidence.gpu.manifests pins")
                )
            }
        }
        return reasons
    }

    /// Whether the attestation key is believable under `evidence.tpm.ak_trust`, from the facts
    /// the TPM verifier established (its attributes, the EK and its certificate, activation).
    ///
    /// Threat: a quote signed by a software key. Fails closed: facts that do not say the EK
    /// certificate verified, or that activation happened, meet neither `ek-certificate` nor
    /// `enrolled`.
    public func judgeAK(_ fields: [String: String], source: String) -> [Reason] {
        let untrusted = ReasonCode.tpmAKUntrusted
        switch tpm.akTrust {
        case .asPresented:
            return []
        case .ekCertificate:
            if fields["ak.tpm_key"] != "true" {
                return [Reason(untrusted, source, fields["ak.detail"] ?? "the attestation key is not a TPM key")]
            }
            switch fields["ek.certificate"] {
            case "verified": break
            case "untrusted", "invalid":
                return [
                    Reason(.tpmEKChainInvalid, source, fields["ek.certificate.detail"] ?? "EK certificate rejected")
                ]
            default:
                return [Reason(untrusted, source, "the evidence carries no EK certificate (ak_trust: ek-certificate)")]
            }
        case .enrolled:
            if fields["ak.tpm_key"] != "true" {
                return [Reason(untrusted, source, fields["ak.detail"] ?? "the attestation key is not a TPM key")]
            }
            guard let ek = fields["ek.sha256"], tpm.enrolledEKs.contains(ek) else {
                return [Reason(untrusted, source, "the TPM's EK \(fields["ek.sha256"] ?? "(none)") is not enrolled")]
            }
        }
        guard ["live", "record"].contains(fields["ak.activation"]) else {
            let detail = fields["ak.activation.detail"].map { " (\($0))" } ?? ""
            return [
                Reason(
                    untrusted, source,
                    "the attestation key was not shown by credential activation to live in the EK's TPM\(detail)")
            ]
        }
        return []
    }

    /// Debug, TCB status (with the platform grace period) and advisories, in the order the DCAP
    /// verifier reports them.
    func judgeTCB(_ facts: AttestedFacts, at time: Date, source: String) -> [Reason] {
        var reasons = [Reason]()
        let guest = facts.format == EvidenceFormat.sgxQuote.rawValue ? "enclave" : "TD"
        // Fails closed: facts that do not say whether the guest is a debug guest, or what its TCB
        // status is, meet no DCAP rule.
        switch facts.claims.fields["debug"] {
        case "false": break
        case "true" where tdx.allowDebug: break
        case "true":
            reasons.append(
                Reason(.policyDebugNotAllowed, source, "the \(guest) is a debug guest and debug guests are not allowed")
            )
        default:
            reasons.append(
                Reason(
                    .policyDebugNotAllowed, source, "the evidence does not say whether the \(guest) is a debug guest"))
        }
        guard let status = facts.tcbStatus else {
            return reasons + [Reason(.tcbStatusNotAllowed, source, "the evidence carries no TCB status")]
        }
        if !tdx.acceptedTCBStatuses.contains(status) {
            let tcbDate = facts.claims.fields["tcb_date"]
            let graceEnd = tcbDate.flatMap(Date.rfc3339)?.addingTimeInterval(
                TimeInterval(tdx.platformGracePeriodDays) * 86_400)
            let graceApplies =
                tdx.platformGracePeriodDays > 0
                && TCBStatus(rawValue: status).map(TCBStatus.outOfDateFamily.contains) == true
            if graceApplies, let graceEnd, time <= graceEnd {
                // Out of date, but within the grace period Intel's appraisal allows.
            } else if graceApplies, let graceEnd {
                let message =
                    "TCB status \(status): the platform grace period ended \(graceEnd.rfc3339) (TCB level of \(tcbDate ?? "?"))"
                reasons.append(Reason(.tcbStatusNotAllowed, source, message))
            } else {
                let accepted = tdx.acceptedTCBStatuses.sorted().joined(separator: ", ")
                reasons.append(
                    Reason(.tcbStatusNotAllowed, source, "TCB status \(status) is not accepted (accepted: \(accepted))")
                )
            }
        }
        let rejected = Set(facts.advisoryIDs).intersection(tdx.rejectedAdvisoryIDs).sorted()
        if !rejected.isEmpty {
            reasons.append(
                Reason(
                    .tcbStatusNotAllowed, source, "advisories rejected by policy: \(rejected.joined(separator: ", "))"))
        }
        return reasons
    }
}

/// How many GPUs one worker's facts may name (``judgeGPUs``); the composite envelope's limit.
enum GPUEvidenceLimit {
    static let max = 8
}
