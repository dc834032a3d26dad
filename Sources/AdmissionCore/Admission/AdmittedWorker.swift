import AttestationCore
import Foundation
import Policy

/// What an admission proved about a worker, kept so that a new policy can be applied to it at
/// once, without new evidence.
public struct AdmittedWorker: Sendable {
    public let facts: AttestedFacts
    /// The provider's stake, when the policy required one.
    public let stake: ProviderStake?

    public init(facts: AttestedFacts, stake: ProviderStake?) {
        self.facts = facts
        self.stake = stake
    }

    /// Who the worker is, by what it attested rather than the id it chose: the TPM's EK (or its
    /// AK), or for DCAP evidence the platform model and guest image, with the provider when one
    /// staked. A session under the same worker id is replaced only by the same identity.
    public var identity: String {
        let f = facts.claims.fields
        let provider = stake.map { " provider:\($0.provider)" } ?? ""
        if let ek = f["ek.sha256"] { return "tpm-ek:\(ek)\(provider)" }
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
        return document.judge(facts, at: time)
    }
}
