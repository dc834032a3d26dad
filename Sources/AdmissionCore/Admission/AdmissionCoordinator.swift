import AttestationCore
import AuditLog
import GatewayState
import Crypto
import Foundation
import NVGPUVerifier
import Policy
import Sealing
import Synchronization
import TDXVerifier
import TPMVerifier
import WorkerProtocol

/// Fetches what evidence needs before it is verified (online collateral); returns a note for logs.
public protocol EvidencePreparing: Sendable {
    func prepare(envelope: Data, at time: Date) async -> String?
}

/// Decides admissions and re-attestations: the evidence bound to this challenge and this
/// worker's key is verified once, the policy in force judges the facts, the provider's stake is
/// checked when the policy requires one, and an admitted worker gets a fresh session key sealed
/// to the key its quote is bound to. Every decision comes with the audit drafts that record it.
///
/// Threats: replayed quotes (the challenge nonce is fresh per connection and per
/// re-attestation), quotes lifted from another worker (the binding covers the worker's KEM key,
/// so a quote bound to other keys fails), workers running unaudited engines or models
/// (measurement allowlists), providers without stake (the stake check), and a decision acted on
/// under a policy that changed meanwhile (``recheck(_:)`` after registration).
public struct AdmissionCoordinator: Sendable {
    /// The policy in force; applying a policy replaces it for every later decision.
    public let policies: PolicyState
    public let clock: any AttestationClock
    /// Roots DCAP chains must end at (Intel's unless configured).
    public let dcapRoots: Set<String>
    /// Collateral for TDX workers whose envelope carries none.
    public let collateralSource: (any CollateralSource)?
    /// Online mode: fetches missing collateral before verification.
    public let preparer: (any EvidencePreparing)?
    /// Checks providers' stake when the policy requires one.
    public let stake: (any StakeChecking)?
    /// EK roots TPM identities are anchored at; activation records this gateway signed are trusted.
    public let tpmIdentity: TPMIdentityTrust
    /// Signs the activation records added to stored TPM evidence, so that replay re-checks them.
    public let activationSigner: ActivationSigner?
    /// The AKs this gateway has seen activated, so that a worker reconnecting is not asked again.
    public let activations = ActivationMemory()
    /// The roots TDX workers' GPU evidence is anchored in (NVIDIA's unless configured).
    public let gpuOptions: NVGPUReportVerifier.Options

    public init(
        policies: PolicyState, clock: any AttestationClock = SystemClock(),
        dcapRoots: Set<String> = PinnedRoots.production,
        collateralSource: (any CollateralSource)? = nil, preparer: (any EvidencePreparing)? = nil,
        stake: (any StakeChecking)? = nil, tpmIdentity: TPMIdentityTrust = TPMIdentityTrust(),
        activationSigner: ActivationSigner? = nil, gpuOptions: NVGPUReportVerifier.Options = .init()
    ) {
        self.gpuOptions = gpuOptions
        self.policies = policies
        self.clock = clock
        self.dcapRoots = dcapRoots
        self.collateralSource = collateralSource
        self.preparer = preparer
        self.stake = stake
        self.tpmIdentity = tpmIdentity
        self.activationSigner = activationSigner
    }

    public var policy: PolicyDocument { policies.current.document }

    /// The evidence judged under the policy in force: the verdict, the policy version it was
    /// reached under, and what the audit log keeps so it can be re-derived.
    public struct Judgement: Sendable {
        public let verdict: Verdict
        public let policy: ActivePolicy
        public let evidence: StoredEvidence
        /// What preparing the evidence did (online collateral fetches), for logs.
        public let note: String?
        /// The cached collateral the verifier used (nil: none outside the evidence).
        public var collateralSHA256: String? { verdict.collateralSHA256 }
    }

    /// Verifies `envelope` against the challenge `nonce` and the worker's key, and judges it.
    /// `activation`: the TPM credential activation this session proved, if any; the stored
    /// evidence then carries a signed record of it.
    public func judge(envelope: Data, nonce: Data, workerKey: Data, activation: ProvenActivation? = nil) async
        -> Judgement
    {
        let binding = attestationBinding(nonce: nonce, workerPublicKeys: workerKey)
        // The decision is taken under the policy in force when the evidence arrived; one applied
        // meanwhile reaches the worker through the recheck after the decision is recorded.
        let active = policies.current
        let note = await preparer?.prepare(envelope: envelope, at: clock.now())
        let identity = tpmIdentity.with(
            activation.map { .live(akName: $0.akName, ekSHA256: $0.ekSHA256) } ?? .records(trustedKeys: []))
        var verification = EvidenceVerification(
            policy: active.document, scope: .all, dcapRoots: dcapRoots, collateralSource: collateralSource,
            tpmIdentity: identity)
        verification.gpuOptions = gpuOptions
        let verdict = verification.verify(envelopeData: envelope, expectedNonce: binding, at: clock.now())
        var stored = envelope
        // The record states what this session proved: only evidence that verified (accepted, or
        // refused by policy and kept for replay) quoting with the activated AK carries it, dated
        // when the activation happened. Evidence that did not verify keeps the bytes the worker
        // sent, so its audited digest is theirs.
        if AdmissionDecision.verifiedAndAnchored(verdict), let activation, let signer = activationSigner,
            Self.akName(of: envelope) == activation.akName,
            let withRecord = ActivationRecord.sign(
                akName: activation.akName, ekSHA256: activation.ekSHA256, gatewayID: signer.gatewayID,
                time: activation.activatedAt ?? clock.now(), with: signer.key
            ).adding(to: envelope)
        {
            stored = withRecord
        }
        return Judgement(
            verdict: verdict, policy: active, evidence: StoredEvidence(envelope: stored, binding: binding), note: note)
    }

    /// What admission needs before it judges TPM evidence whose AK is anchored by activation.
    public enum ActivationStep: Sendable {
        /// No activation: the policy trusts AKs as presented, the evidence is not TPM evidence,
        /// or it fails for reasons activation cannot change (the judgement says which).
        case notNeeded
        case challenge(PendingActivation)
        /// This AK was activated with this EK in an earlier session of this gateway.
        case known(ProvenActivation)
        /// Activation is needed but cannot be run for this EK (the reason is the refusal).
        case impossible(String)
    }

    /// Whether `envelope` needs a credential activation before it is judged, and the challenge.
    ///
    /// Threat: a peer making the gateway spend credential-making work, or hiding the real reason
    /// it fails behind an activation failure. A challenge is issued only for a quote that
    /// verifies (signature, the binding to `nonce` and `workerKey`, PCRs, logs) and whose AK
    /// facts meet the policy in every respect but the activation itself.
    public func activationStep(for envelope: Data, nonce: Data, workerKey: Data) -> ActivationStep {
        guard policy.tpm.akTrust != .asPresented,
            case .success(let parsed) = EvidenceEnvelope.parse(envelope),
            parsed.format == EvidenceFormat.tpm2Quote.rawValue
        else { return .notNeeded }
        guard case .success(let akBytes?) = parsed.optionalBase64("ak_tpm2b_public"),
            case .success(let ekBytes?) = parsed.optionalBase64("ek_public"),
            case .success(let ak) = TPMKeyIdentity.parse([UInt8](akBytes)),
            case .success(let ek) = TPMKeyIdentity.parse([UInt8](ekBytes))
        else { return .notNeeded }
        // A remembered pair costs no challenge, so nothing is verified twice: the judgement that
        // follows verifies the evidence in full, bound to this AK and EK, and gives its reasons.
        if let known = activations.recall(akName: ak.name, ekSHA256: ek.area.key.fingerprint, at: clock.now()) {
            return .known(known)
        }
        let options = TPMQuoteVerifier.Options(allowSHA1: policy.tpm.allowSHA1, ekRoots: tpmIdentity.ekRoots)
        let binding = attestationBinding(nonce: nonce, workerPublicKeys: workerKey)
        let facts = TPMQuoteVerifier(options: options).verify(parsed, expectedNonce: binding, at: clock.now())
        guard var fields = facts.claims?.fields, facts.isAccepted else { return .notNeeded }
        fields["ak.activation"] = "live"
        guard policy.judgeAK(fields, source: "policy").isEmpty else { return .notNeeded }
        let secret = Data((0..<32).map { _ in UInt8.random(in: 0...255) })
        do throws(CredentialActivation.Failure) {
            let challenge = try CredentialActivation.make(ek: ek, objectName: ak.name, secret: secret)
            return .challenge(
                PendingActivation(
                    message: .init(
                        credentialBlob: challenge.credentialBlob, encryptedSecret: challenge.encryptedSecret),
                    secret: secret, proven: ProvenActivation(akName: ak.name, ekSHA256: ek.area.key.fingerprint)))
        } catch {
            return .impossible("credential activation cannot be run for this EK: \(error)")
        }
    }

    /// The Name of the AK a `tpm2-quote` envelope presents as a TPM2B_PUBLIC.
    static func akName(of envelope: Data) -> Data? {
        guard case .success(let parsed) = EvidenceEnvelope.parse(envelope),
            case .success(let bytes?) = parsed.optionalBase64("ak_tpm2b_public"),
            case .success(let ak) = TPMKeyIdentity.parse([UInt8](bytes))
        else { return nil }
        return ak.name
    }

    /// A refusal of evidence that was judged (an id held by another identity).
    public func refusal(_ hello: WireMessage.Hello, _ judgement: Judgement, code: String, message: String)
        -> AdmissionDecision
    {
        .refusal(hello, judgement, code: code, message: message, reasons: [code])
    }

    /// One admission decision. `activation`: the outcome of the credential activation this
    /// session ran (nil: none was needed).
    public func admit(
        hello: WireMessage.Hello, nonce: Data, evidence: WireMessage.EvidenceMessage,
        activation: ActivationOutcome? = nil
    ) async
        -> AdmissionDecision
    {
        var proven: ProvenActivation?
        if case .proven(var p) = activation {
            // A remembered activation keeps the time it happened.
            if p.activatedAt == nil { p.activatedAt = clock.now() }
            proven = p
        }
        let judgement = await judge(
            envelope: evidence.envelope, nonce: nonce, workerKey: hello.kemPublicKey, activation: proven)
        if case .failed(let message) = activation {
            let code = ReasonCode.tpmActivationFailed.rawValue
            return .refusal(hello, judgement, code: code, message: message, reasons: [code])
        }
        let verdict = judgement.verdict
        guard let facts = AttestedFacts(verdict) else {
            let first = verdict.reasons.first
            return .refusal(
                hello, judgement, code: first?.code.rawValue ?? ReasonCode.evidenceMalformed.rawValue,
                message: first?.message ?? "",
                reasons: verdict.reasons.map(\.code.rawValue))
        }
        let unbound = judgement.policy.document.unboundModelNames(hello.models, measured: facts.claims.measuredFiles)
        if !unbound.isEmpty {
            let code = ReasonCode.policyModelNameNotBound.rawValue
            return .refusal(
                hello, judgement, code: code,
                message:
                    "the worker advertises \(unbound.joined(separator: ", ")), which no model it measured is bound to by the policy",
                reasons: [code])
        }
        // The provider's stake, when the policy in force requires one (after the evidence: a
        // worker that cannot attest costs no chain reads).
        var outcome: StakeOutcome?
        let rules = judgement.policy.document.stake
        if rules.minimumNanotons != nil {
            let checked =
                await stake?.admit(proofData: evidence.providerProof, workerKey: hello.kemPublicKey, rules: rules)
                ?? StakeOutcome.refused("stake.unavailable", "this gateway reads no stake")
            if let refusal = checked.refusal {
                return .refusal(
                    hello, judgement, code: refusal.code, message: refusal.message, reasons: [refusal.code],
                    detail: checked.auditDetail)
            }
            outcome = checked
        }
        return AdmissionDecision.grant(
            hello, nonce: nonce, judgement, facts: facts, stake: outcome, activation: proven, at: clock.now())
    }

    /// A re-attestation: the same worker's fresh evidence under the policy in force.
    public func reattest(_ worker: AdmittedSession, nonce: Data, evidence: WireMessage.EvidenceMessage) async
        -> ReattestationDecision
    {
        var judgement = await judge(
            envelope: evidence.envelope, nonce: nonce, workerKey: worker.kemPublicKey, activation: worker.activation)
        // Threat: a worker admitted with one model re-attesting with another, keeping its names.
        if let facts = AttestedFacts(judgement.verdict) {
            let unbound = judgement.policy.document.nameReasons(worker.models, facts)
            if !unbound.isEmpty {
                judgement = Judgement(
                    verdict: judgement.verdict.adding(policyReasons: unbound), policy: judgement.policy,
                    evidence: judgement.evidence, note: judgement.note)
            }
        }
        return ReattestationDecision(worker: worker, judgement: judgement, at: clock.now())
    }

    /// Why the policy in force no longer admits `worker`, from what its admission proved (empty:
    /// it stays). Called after registration, so that a policy applied while the admission was in
    /// flight is not missed.
    public func recheck(_ worker: AdmittedWorker) -> (policy: ActivePolicy, reasons: [Reason]) {
        let now = policies.current
        return (now, worker.reasons(under: now.document, at: clock.now()))
    }
}

/// The worker and session an admission created, as later steps name it.
public struct AdmittedSession: Sendable, Equatable {
    public let workerID: String
    public let sessionID: String
    public let kemPublicKey: Data
    public let admittedAt: Date
    /// The TPM credential activation proved at admission: re-attestations must quote with the
    /// same AK (a quote by any other key is judged as unactivated).
    public let activation: ProvenActivation?
    /// The model names the worker advertised; every re-attestation must still bind them.
    public let models: [String]
}

/// A credential activation that succeeded: the AK with this Name lives in the TPM whose EK has
/// this SPKI digest.
public struct ProvenActivation: Sendable, Equatable {
    public let akName: Data
    public let ekSHA256: String
    /// When the worker answered the challenge (set when the admission is decided; for an
    /// activation remembered from an earlier session, that session's time).
    public var activatedAt: Date?
}

/// The AK Names this gateway has seen activated, each with its EK and the time of activation.
///
/// Why remembering is sound: an activation proves the AK is a fixed, restricted key inside the
/// TPM of that EK, and an AK never leaves its TPM; the AK is derived from the TPM's seed, so the
/// same TPM presents the same Name at every start. A later quote that verifies under that AK
/// therefore comes from the same TPM, and asking again (tens of milliseconds of TPM work each
/// time a worker reconnects) proves nothing new. Only the exact pair is recalled: the same AK
/// beside another EK, or another AK beside this EK, is challenged.
///
/// Threat: an AK's private key extracted from its TPM once (a timing attack on the TPM's
/// signing) being used from elsewhere for as long as the gateway remembers. An activation is
/// recalled for at most ``maxAge``, after which the TPM must answer again. Remembered in memory
/// only, once the admission it took part in is recorded and the worker registered; bounded,
/// forgetting all at the bound.
public final class ActivationMemory: Sendable {
    private let entries = Mutex<[Data: ProvenActivation]>([:])
    static let capacity = 65_536
    public static let maxAge: TimeInterval = 24 * 3600

    public init() {}

    public func remember(_ activation: ProvenActivation) {
        guard activation.activatedAt != nil else { return }
        entries.withLock { entries in
            if entries[activation.akName] == nil, entries.count >= Self.capacity { entries.removeAll() }
            entries[activation.akName] = activation
        }
    }

    func recall(akName: Data, ekSHA256: String, at now: Date) -> ProvenActivation? {
        guard let known = entries.withLock({ $0[akName] }), known.ekSHA256 == ekSHA256,
            let activatedAt = known.activatedAt, now.timeIntervalSince(activatedAt) < Self.maxAge,
            activatedAt.timeIntervalSince(now) < 60
        else { return nil }
        return known
    }
}

/// What the worker's answer to a credential challenge showed.
public enum ActivationOutcome: Sendable, Equatable {
    case proven(ProvenActivation)
    case failed(String)
}

/// A credential challenge sent to a worker, and the answer that proves activation.
public struct PendingActivation: Sendable, Equatable {
    public let message: WireMessage.Activate
    let secret: Data
    let proven: ProvenActivation

    /// The outcome of the worker's answer. The comparison takes the same time wherever the
    /// answer differs.
    public func outcome(of answer: WireMessage.Activation) -> ActivationOutcome {
        guard answer.secret.count == secret.count else {
            return .failed("the worker did not recover the credential secret (its AK is not in the EK's TPM)")
        }
        var difference: UInt8 = 0
        for (a, b) in zip(answer.secret, secret) { difference |= a ^ b }
        return difference == 0
            ? .proven(proven)
            : .failed("the worker did not recover the credential secret (its AK is not in the EK's TPM)")
    }
}

/// The gateway's key and id, which sign activation records.
public struct ActivationSigner: Sendable {
    public let key: Ed25519PrivateKey
    public let gatewayID: String
    public init(key: Ed25519PrivateKey, gatewayID: String) {
        self.key = key
        self.gatewayID = gatewayID
    }
}

/// The outcome of one admission: what the worker hears, and the audit drafts that must be
/// durable before it does.
public struct AdmissionDecision: Sendable {
    /// An admitted worker's grant: the session, its key (sealed to the attested KEM key), its
    /// registry entry and row.
    public struct Grant: Sendable {
        public let session: AdmittedSession
        package let sessionKey: SymmetricKey
        public let models: [String]
        public let record: WorkerRecord
        public let admitted: AdmittedWorker
        /// The session key sealed to the worker's attested KEM key.
        public let sealed: SessionKeySealing.Sealed

        /// What the worker hears, with the re-attestation interval the gateway will keep.
        public func message(reattestSeconds: Int) -> WireMessage.Admitted {
            .init(
                sessionID: session.sessionID, encapsulatedKey: sealed.encapsulatedKey,
                sealedSessionKey: sealed.ciphertext,
                reattestSeconds: reattestSeconds)
        }
    }

    public let judgement: AdmissionCoordinator.Judgement
    /// Nil for a refusal.
    public let grant: Grant?
    /// The refusal the worker hears (nil when admitted).
    public let refusal: WireMessage.Rejection?
    /// Recorded in one transaction before the worker hears anything.
    public let drafts: [AuditDraft]
    public var verdict: Verdict { judgement.verdict }

    /// Whether the evidence verified and its key is anchored in hardware, whatever the policy
    /// then decided: what a refusal keeps, and what an activation record is added to.
    static func verifiedAndAnchored(_ verdict: Verdict) -> Bool {
        let unanchored: Set<ReasonCode> = [.evidenceUnsupported, .tpmAKUntrusted, .tpmEKChainInvalid]
        return verdict.reasons.allSatisfy { $0.source.hasPrefix("policy") && !unanchored.contains($0.code) }
    }

    static func refusal(
        _ hello: WireMessage.Hello, _ judgement: AdmissionCoordinator.Judgement, code: String, message: String,
        reasons: [String],
        detail: [String: String] = [:]
    ) -> AdmissionDecision {
        // Threat: a peer filling the data directory with garbage (each rejected envelope up to
        // the 2 MiB frame). Evidence that did not verify, or whose key is not anchored in
        // hardware (a format the policy does not take, an untrusted AK or EK chain), proves
        // nothing about anyone and is recorded by digest only; evidence from anchored hardware
        // that the policy refused is kept, so that the refusal can be replayed.
        let verified = verifiedAndAnchored(judgement.verdict)
        let event = AuditEvent(
            .admission, worker: hello.workerID, decision: .reject, reasons: reasons,
            policyVersion: judgement.policy.version, evidenceSHA256: verified ? nil : judgement.evidence.sha256,
            collateralSHA256: judgement.collateralSHA256,
            detail: [
                "message": message, "policy": judgement.policy.document.name, "format": judgement.verdict.format,
                "evidence": verified ? "stored" : "digest only (did not verify)",
            ]
            .merging(detail) { a, _ in a })
        return AdmissionDecision(
            judgement: judgement, grant: nil, refusal: .init(code: code, message: message),
            drafts: [.event(event, evidence: verified ? judgement.evidence : nil)])
    }

    static func grant(
        _ hello: WireMessage.Hello, nonce: Data, _ judgement: AdmissionCoordinator.Judgement, facts: AttestedFacts,
        stake: StakeOutcome?, activation: ProvenActivation?, at now: Date
    ) -> AdmissionDecision {
        let sessionID = UUID().uuidString.lowercased()
        let sessionKey = SymmetricKey(size: .bits256)
        let verdict = judgement.verdict
        let policy = judgement.policy
        guard
            let sealed = try? SessionKeySealing.seal(
                sessionKey, to: hello.kemPublicKey, context: Data(sessionID.utf8) + nonce)
        else {
            // The hello's key was checked to be 32 bytes; X25519 accepts any 32 bytes, so this is unreachable in practice.
            return refusal(
                hello, judgement, code: ProtocolErrorCode.badHello.rawValue, message: "the KEM key cannot be sealed to",
                reasons: [ProtocolErrorCode.badHello.rawValue])
        }
        let record = WorkerRecord(
            id: hello.workerID, session: sessionID, provider: stake?.stake?.provider, models: hello.models,
            format: verdict.format,
            claims: WorkerRecord.summary(facts), admittedAt: now, lastAttested: now,
            evidenceSHA256: judgement.evidence.sha256,
            policyVersion: policy.version)
        let admit = AuditEvent(
            .admission, worker: hello.workerID, decision: .admit, policyVersion: policy.version,
            collateralSHA256: judgement.collateralSHA256,
            detail: [
                "session": sessionID, "policy": policy.document.name, "format": verdict.format,
                "models": hello.models.joined(separator: ","),
                "measurements": facts.claims.measuredFiles.map { "\($0.path)=\($0.digestHex)" }.joined(separator: ";"),
            ].merging(stake?.auditDetail ?? [:]) { a, _ in a })
        let keyIssued = AuditEvent(
            .sessionKey, worker: hello.workerID, decision: .issued, policyVersion: policy.version,
            detail: ["session": sessionID, "kem": "X25519-HKDF-SHA256/ChaCha20Poly1305"])
        let session = AdmittedSession(
            workerID: hello.workerID, sessionID: sessionID, kemPublicKey: hello.kemPublicKey, admittedAt: now,
            activation: activation, models: hello.models)
        let grant = Grant(
            session: session, sessionKey: sessionKey, models: hello.models, record: record,
            admitted: AdmittedWorker(facts: facts, stake: stake?.stake, models: hello.models), sealed: sealed)
        // One transaction: the admission, the key issued on it, the worker's row.
        return AdmissionDecision(
            judgement: judgement, grant: grant, refusal: nil,
            drafts: [.event(admit, evidence: judgement.evidence, worker: .upsert(record)), .event(keyIssued)])
    }
}

/// The outcome of one re-attestation and its audit entry.
public struct ReattestationDecision: Sendable {
    public let worker: AdmittedSession
    public let judgement: AdmissionCoordinator.Judgement
    public let at: Date
    public var passed: Bool { judgement.verdict.isAccepted }
    /// The first reason of a failure.
    public var failure: (code: String, message: String)? {
        guard !passed else { return nil }
        let reason = judgement.verdict.reasons.first
        return (
            reason?.code.rawValue ?? ReasonCode.evidenceMalformed.rawValue,
            "re-attestation failed: \(reason?.message ?? "")"
        )
    }

    /// The audit entry; `updated` is the worker's row after a pass.
    public func draft(updated: WorkerRecord?) -> AuditDraft {
        if passed {
            return .event(
                AuditEvent(
                    .reattestation, worker: worker.workerID, decision: .pass, policyVersion: judgement.policy.version,
                    collateralSHA256: judgement.collateralSHA256, detail: ["session": worker.sessionID]),
                evidence: judgement.evidence, worker: updated.map(WorkerChange.update))
        }
        let reason = judgement.verdict.reasons.first
        return .event(
            AuditEvent(
                .reattestation, worker: worker.workerID, decision: .fail,
                reasons: judgement.verdict.reasons.map(\.code.rawValue),
                policyVersion: judgement.policy.version, collateralSHA256: judgement.collateralSHA256,
                detail: ["message": reason?.message ?? "", "session": worker.sessionID]),
            evidence: judgement.evidence)
    }
}

extension WorkerRecord {
    /// A few claims worth listing per worker.
    static func summary(_ facts: AttestedFacts) -> [String: String] {
        var out = [String: String]()
        for key in [
            "mrtd", "tcb_status", "ak.sha256", "ek.sha256", "ak.activation", "tee", "debug", "cocoon_image_hash",
        ] {
            if let v = facts.claims.fields[key] { out[key] = v }
        }
        if let status = facts.tcbStatus { out["tcb_status"] = status }
        for file in facts.claims.measuredFiles.prefix(8) { out["measured:" + file.path] = file.digestHex }
        return out
    }
}
