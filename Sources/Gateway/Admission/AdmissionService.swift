import AttestationCore
import AuditLog
import Foundation
import Policy
import Sealing
import TDXVerifier

/// Decides whether a worker's evidence admits it: verify the evidence bound to this challenge
/// and this worker's keys, then apply the policy's evidence and measurement rules.
///
/// Threats: replayed quotes (the challenge nonce is fresh per connection and per
/// re-attestation), quotes lifted from another worker (the binding covers the worker's KEM key,
/// so a quote bound to other keys fails), and workers running unaudited engines or models
/// (measurement allowlists).
public struct AdmissionService: Sendable {
    public let policy: PolicyDocument
    public let clock: any AttestationClock
    /// Roots DCAP chains must end at (Intel's unless configured) and where collateral comes from
    /// when a TDX worker's envelope carries none.
    public let dcapRoots: Set<String>
    public let collateralSource: (any CollateralSource)?
    /// Online mode: fetches missing collateral before verification.
    public let prefetcher: CollateralPrefetcher?

    public init(
        policy: PolicyDocument, clock: any AttestationClock = SystemClock(), dcapRoots: Set<String> = PinnedRoots.production,
        collateralSource: (any CollateralSource)? = nil, prefetcher: CollateralPrefetcher? = nil
    ) {
        self.policy = policy
        self.clock = clock
        self.dcapRoots = dcapRoots
        self.collateralSource = collateralSource ?? prefetcher?.cache
        self.prefetcher = prefetcher
    }

    /// In online mode, makes sure the collateral this evidence needs is cached; returns a note for logs.
    public func prepare(envelope: Data) async -> String? {
        await prefetcher?.prepare(envelope: envelope, at: clock.now())
    }

    public func evaluate(envelope: Data, nonce: Data, workerPublicKeys: Data) -> Verdict {
        let binding = attestationBinding(nonce: nonce, workerPublicKeys: workerPublicKeys)
        return EvidenceVerification(
            policy: policy, applyMeasurementRules: true, dcapRoots: dcapRoots, collateralSource: collateralSource)
            .verify(envelopeData: envelope, expectedNonce: binding, at: clock.now())
    }
}
