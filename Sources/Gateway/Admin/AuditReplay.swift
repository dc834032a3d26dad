import AdmissionCore
import AttestationCore
import AuditLog
import GatewayState
import Foundation
import Policy
import TDXVerifier

/// Re-derives an audited decision from what the log stored: the evidence envelope, the binding
/// it was checked against, and the policy version in force.
public struct AuditReplay: Sendable {
    public struct Outcome: Sendable {
        public let entry: AuditEntry
        public let recordedAccept: Bool
        public let recordedReason: String?
        /// The verdict re-derived at the time of the decision.
        public let replayed: Verdict
        /// The same evidence judged at `now` (certificates and collateral may have expired since).
        public let today: Verdict
        public var matches: Bool {
            // A failed credential activation was a live exchange with the worker's TPM: offline,
            // the same evidence shows an AK that was never activated.
            if recordedReason == ReasonCode.tpmActivationFailed.rawValue {
                return !replayed.isAccepted && replayed.reason == .tpmAKUntrusted
            }
            // Refusals decided on the session, not the evidence (the names the worker advertised,
            // an id another identity holds, the provider's stake): the evidence replays as accepted.
            if let code = recordedReason,
                [ReasonCode.policyModelNameNotBound.rawValue, "worker.id-in-use"].contains(code)
                    || code.hasPrefix("stake.")
            {
                return replayed.isAccepted
            }
            return replayed.isAccepted == recordedAccept
                && (recordedAccept || replayed.reason?.rawValue == recordedReason)
        }
    }

    public struct Failure: Error, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }

    public let dcapRoots: Set<String>
    public let collateralSource: (any CollateralSource)?
    /// EK roots, and the gateway keys whose activation records are believed (the key of the
    /// gateway that wrote the log).
    public let tpmIdentity: TPMIdentityTrust

    public init(
        dcapRoots: Set<String> = PinnedRoots.production, collateralSource: (any CollateralSource)? = nil,
        tpmIdentity: TPMIdentityTrust = TPMIdentityTrust()
    ) {
        self.dcapRoots = dcapRoots
        self.collateralSource = collateralSource
        self.tpmIdentity = tpmIdentity
    }

    /// Replays `entry` (an admission or re-attestation) with its stored evidence and policy text.
    public func replay(_ entry: AuditEntry, evidence: StoredEvidence?, policyText: String?, now: Date) throws(Failure)
        -> Outcome
    {
        let e = entry.event
        guard ["admission", "reattestation"].contains(e.event), let decision = e.decision else {
            throw Failure(
                message:
                    "entry \(entry.seq) is a '\(e.event)' entry; only admissions and re-attestations carry evidence to replay"
            )
        }
        guard let evidence else { throw Failure(message: "entry \(entry.seq): its evidence is not in the store") }
        guard evidence.sha256 == e.evidenceSHA256 else {
            throw Failure(message: "entry \(entry.seq): the stored evidence does not have the recorded digest")
        }
        guard let policyText, let version = e.policyVersion else {
            throw Failure(message: "entry \(entry.seq): the policy version it was decided under is not in the store")
        }
        let policy: PolicyDocument
        do throws(PolicyLoadErrors) {
            policy = try PolicyDocument.parse(policyText, file: "policy version \(version)")
        } catch {
            throw Failure(message: "policy version \(version) no longer loads: \(error)")
        }
        let verification = EvidenceVerification(
            policy: policy, applyMeasurementRules: true, dcapRoots: dcapRoots, collateralSource: collateralSource,
            tpmIdentity: tpmIdentity)
        let replayed = verification.verify(
            envelopeData: evidence.envelope, expectedNonce: evidence.binding, at: entry.time)
        let today = verification.verify(envelopeData: evidence.envelope, expectedNonce: evidence.binding, at: now)
        return Outcome(
            entry: entry, recordedAccept: decision == "admit" || decision == "pass", recordedReason: e.reasons.first,
            replayed: replayed, today: today)
    }
}
