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
    /// The policy in force; applying a policy replaces it for every later decision.
    public let policies: PolicyState
    public var policy: PolicyDocument { policies.current.document }
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
        self.init(
            policies: PolicyState(ActivePolicy(version: 0, document: policy, text: "")), clock: clock, dcapRoots: dcapRoots,
            collateralSource: collateralSource, prefetcher: prefetcher)
    }

    public init(
        policies: PolicyState, clock: any AttestationClock = SystemClock(), dcapRoots: Set<String> = PinnedRoots.production,
        collateralSource: (any CollateralSource)? = nil, prefetcher: CollateralPrefetcher? = nil
    ) {
        self.policies = policies
        self.clock = clock
        self.dcapRoots = dcapRoots
        self.collateralSource = collateralSource ?? prefetcher?.cache
        self.prefetcher = prefetcher
    }

    /// In online mode, makes sure the collateral this evidence needs is cached; returns a note for logs.
    public func prepare(envelope: Data) async -> String? {
        await prefetcher?.prepare(envelope: envelope, at: clock.now())
    }

    /// One admission decision: the verdict, the policy version it was reached under, and what
    /// the audit log keeps so it can be re-derived (the envelope, the binding, the collateral's digest).
    public struct Decision: Sendable {
        public let verdict: Verdict
        public let policy: ActivePolicy
        public let evidence: StoredEvidence
        public let collateralSHA256: String?
    }

    public func evaluate(envelope: Data, nonce: Data, workerPublicKeys: Data) -> Decision {
        let binding = attestationBinding(nonce: nonce, workerPublicKeys: workerPublicKeys)
        let active = policies.current
        let now = clock.now()
        let verdict = EvidenceVerification(
            policy: active.document, applyMeasurementRules: true, dcapRoots: dcapRoots, collateralSource: collateralSource)
            .verify(envelopeData: envelope, expectedNonce: binding, at: now)
        return Decision(
            verdict: verdict, policy: active, evidence: StoredEvidence(envelope: envelope, binding: binding),
            collateralSHA256: collateralDigest(envelope: envelope, at: now))
    }

    /// SHA-256 of the cached collateral a DCAP quote was checked against (nil for TPM quotes and
    /// for collateral carried in the envelope, which the evidence digest already covers).
    func collateralDigest(envelope: Data, at time: Date) -> String? {
        guard let collateralSource, case .success(let e) = EvidenceEnvelope.parse(envelope), e.format != "tpm2-quote",
              !e.has("collateral"), case .success(let quoteBytes) = e.base64("quote"),
              let quote = try? DCAPQuote.parse([UInt8](quoteBytes)),
              let key = quote.collateralKey(roots: dcapRoots, at: time), let c = collateralSource.collateral(for: key, at: time)
        else { return nil }
        var bytes = [UInt8]()
        for part in [Array(c.tcbInfo.utf8), c.tcbInfoSignature, Array(c.qeIdentity.utf8), c.qeIdentitySignature, c.pckCRL, c.rootCACRL] {
            bytes += withUnsafeBytes(of: UInt32(part.count).bigEndian, Array.init) + part
        }
        return HashAlgorithm.sha256.hash(bytes).hex
    }
}
