import AttestationCore
import Foundation
import Policy

/// What an admission proved about a worker, kept so that a new policy can be applied to it at
/// once, without new evidence.
public struct AdmittedWorker: Sendable {
    public let facts: AttestedFacts
    /// The provider's stake, when the policy required one.
    public let stake: ProviderStake?
    /// The model names the worker advertises (bound, by the policy, to models it measured).
    public let models: [String]

    public init(facts: AttestedFacts, stake: ProviderStake?, models: [String] = []) {
        self.facts = facts
        self.stake = stake
        self.models = models
    }

    /// Who the worker is, by what it attested rather than the id it chose: the TPM's EK (or its
    /// AK), or for DCAP evidence the platform model and guest image, with the provider when one
    /// staked. A session under the same worker id is replaced only by the same identity.
    public var identity: String {
        let f = facts.claims.fields
        let provider = stake.map { " provider:\($0.provider)" } ?? ""
        // The EK names the TPM only when activation showed the AK lives in it; a presented EK
        // alone is anyone's to copy.
        if let ek = f["ek.sha256"], ["live", "record"].contains(f["ak.activation"]) {
            return "tpm-ek:\(ek)\(provider)"
        }
        if let ak = f["ak.sha256"] { return "tpm-ak:\(ak)\(provider)" }
        let image = ["fmspc", "mrtd", "rtmr0", "rtmr1", "rtmr2", "mrenclave", "mrsigner"].map { f[$0] ?? "-" }
        return "dcap:" + image.joined(separator: ":") + provider
    }

    /// Why `document` would not admit this worker now, from what its admission proved: the one
    /// policy judgement, with the stake rule met only if the admission proved a stake. (A changed
    /// minimum or source is the stake monitor's to check, on the chain.)
    ///
    /// Threat: a worker admitted under a policy that has since been tightened (a binary pulled
    /// for a vulnerability, a TCB recovery) would otherwise keep serving until its next
    /// re-attestation, or forever if it stops answering slowly enough.
    public func reasons(under document: PolicyDocument, at time: Date) -> [Reason] {
        var facts = facts
        facts.stake = stake == nil ? .absent : .proven
        return document.judge(facts, at: time) + document.nameReasons(models, facts)
    }
}
