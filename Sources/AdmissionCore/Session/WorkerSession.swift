import AttestationCore
import Foundation
import Sealing
import WorkerProtocol

/// The gateway's side of the worker protocol as a state machine: events in (messages from the
/// worker, decisions, timers, ends), actions out. It holds no I/O and no clock; the session
/// runner performs its actions and feeds their results back.
///
/// ```
/// awaitingHello ─hello→ awaitingEvidence(nonce) ─evidence→ admitting ─decided→ serving ⇄ reattesting
///                                                  admitting ─activate→ activating ─activation→ admitting
///        └───────────── any error, timeout, eviction or disconnect ──────────────→ closed
/// ```
///
/// TPM workers whose policy anchors AKs in hardware take the `activating` detour: the gateway
/// sends a credential made for the evidence's AK and EK, and judges the evidence only with the
/// worker's answer.
///
/// Every handshake message it emits is signed by the gateway's identity key over the handshake
/// transcript (``HandshakeTranscript``); after admission, what the gateway says goes sealed
/// (``Action/seal(_:)``).
///
/// Threats: messages out of order (evidence before a challenge, sealed data before admission, a
/// second hello), a worker that stops answering re-attestation challenges, and results that
/// arrive after the session ended (a re-attestation verdict after the session's end is dropped;
/// the runner also drops a pass for a session that is no longer registered, and a pass that
/// races an eviction never restores the worker: its row update applies only to a live session).
public struct WorkerSession: Sendable {
    public enum State: Sendable, Equatable {
        case awaitingHello
        case awaitingEvidence(hello: WireMessage.Hello, nonce: Data)
        case admitting(hello: WireMessage.Hello)
        /// A credential challenge was sent; the evidence is judged once it is answered.
        case activating(
            hello: WireMessage.Hello, nonce: Data, evidence: WireMessage.EvidenceMessage, pending: PendingActivation)
        /// Admitted; `challenge` is the outstanding re-attestation nonce.
        case serving(AdmittedSession, challenge: Data?)
        /// Fresh evidence is being verified.
        case reattesting(AdmittedSession)
        case closed(code: String)
    }

    public enum Action: Sendable {
        case send(WireMessage)
        /// Seal and send a control payload on the admitted session's channel.
        case seal(ChannelPayload)
        /// Verify and judge admission evidence; `activation`: the answer to a credential challenge.
        case verifyAdmission(
            WireMessage.Hello, nonce: Data, WireMessage.EvidenceMessage, activation: ActivationOutcome?)
        /// Record the decision durably, then tell the worker (and register it when admitted).
        case commitAdmission(AdmissionDecision)
        case verifyReattestation(AdmittedSession, nonce: Data, WireMessage.EvidenceMessage)
        /// Record the re-attestation durably (a failure ends the session after it is recorded).
        case commitReattestation(ReattestationDecision)
        /// A sealed box from the worker, to open and route.
        case route(Data)
        /// End the session with `code`; `notifyPeer`: send an `error` message first.
        case end(code: String, message: String, notifyPeer: Bool)
        case none
    }

    public private(set) var state: State = .awaitingHello
    /// The gateway's identity: signs the handshake; its fingerprint is the id provider proofs name.
    let identity: GatewayHandshakeKey
    /// What the handshake's signatures cover, from the hello on.
    public private(set) var transcript: HandshakeTranscript?
    /// What the worker sent to be judged: its admission evidence and its activation answer.
    private var judgedEvidence: WireMessage.EvidenceMessage?
    private var activationAnswer: Data?

    public init(identity: GatewayHandshakeKey) {
        self.identity = identity
    }

    /// What the handshake waits for, for timeout messages.
    public var waitingFor: String {
        switch state {
        case .awaitingHello: "hello"
        case .activating: "the credential activation answer"
        default: "evidence"
        }
    }

    public var isClosed: Bool {
        if case .closed = state { return true }
        return false
    }

    /// A message from the worker. `nonce` makes a fresh challenge when one is needed.
    public mutating func received(_ message: WireMessage, nonce: () -> Data) -> Action {
        switch (state, message) {
        case (.awaitingHello, .hello(let hello)):
            if let problem = Self.problem(with: hello) { return end(.badHello, problem) }
            let fresh = nonce()
            state = .awaitingEvidence(hello: hello, nonce: fresh)
            transcript = identity.transcript(hello: hello, nonce: fresh)
            return .send(.challenge(identity.challenge(hello: hello, nonce: fresh)))
        case (.awaitingEvidence(let hello, let challenge), .evidence(let evidence)):
            state = .admitting(hello: hello)
            judgedEvidence = evidence
            return .verifyAdmission(hello, nonce: challenge, evidence, activation: nil)
        case (.activating(let hello, let nonce, let evidence, let pending), .activation(let answer)):
            state = .admitting(hello: hello)
            activationAnswer = answer.secret
            return .verifyAdmission(hello, nonce: nonce, evidence, activation: pending.outcome(of: answer))
        case (.serving(let session, let challenge?), .evidence(let evidence)):
            state = .reattesting(session)
            return .verifyReattestation(session, nonce: challenge, evidence)
        case (.serving(_, nil), .evidence):
            return end(.unexpectedMessage, "evidence without a challenge")
        case (.serving, .sealed(let box)):
            return .route(box)
        case (.closed, _):
            return .none
        case (.awaitingHello, _):
            return end(.unexpectedMessage, "expected hello")
        case (.awaitingEvidence, _):
            return end(.unexpectedMessage, "expected evidence")
        case (.activating, _):
            return end(.unexpectedMessage, "expected the credential activation answer")
        default:
            return end(.unexpectedMessage, "unexpected \(message.typeName) from an admitted worker")
        }
    }

    /// Admission evidence needs a credential activation first: send the challenge.
    public mutating func activationNeeded(
        _ hello: WireMessage.Hello, nonce: Data, _ evidence: WireMessage.EvidenceMessage, _ pending: PendingActivation
    ) -> Action {
        guard case .admitting = state, let transcript else { return .none }
        state = .activating(hello: hello, nonce: nonce, evidence: evidence, pending: pending)
        var message = pending.message
        message.signature = identity.sign(.activate, transcript, message.signedFields)
        return .send(.activate(message))
    }

    /// The admission was decided.
    public mutating func admissionDecided(_ decision: AdmissionDecision) -> Action {
        guard case .admitting = state else { return .none }
        if let grant = decision.grant {
            state = .serving(grant.session, challenge: nil)
        } else {
            state = .closed(code: decision.refusal?.code ?? ProtocolErrorCode.disconnected.rawValue)
        }
        return .commitAdmission(decision)
    }

    /// Time for a re-attestation: a new challenge, unless the previous one is still unanswered
    /// or the session key reached its lifetime.
    public mutating func reattestDue(nonce: Data, keyAge: TimeInterval, keyLifetime: Int?) -> Action {
        switch state {
        case .serving(let session, nil):
            if let keyLifetime, keyAge >= TimeInterval(keyLifetime) {
                return end(
                    .keyExpired, "the session key reached its lifetime of \(keyLifetime) s; attest again for a new one",
                    notify: false)
            }
            state = .serving(session, challenge: nonce)
            return .seal(.challenge(nonce: nonce))
        case .serving(_, _?):
            return end(.timeout, "re-attestation challenge unanswered", notify: false)
        case .reattesting:
            // The answer is being verified: this round is skipped.
            return .none
        default:
            return .none
        }
    }

    /// The deadline for answering the challenge `nonce` passed.
    public mutating func reattestDeadline(nonce: Data) -> Action {
        guard case .serving(_, let challenge?) = state, challenge == nonce else { return .none }
        return end(.timeout, "re-attestation challenge unanswered", notify: false)
    }

    /// A re-attestation was decided. Dropped when the session ended meanwhile.
    public mutating func reattestationDecided(_ decision: ReattestationDecision) -> Action {
        guard case .reattesting(let session) = state else { return .none }
        if let failure = decision.failure {
            state = .closed(code: failure.code)
        } else {
            state = .serving(session, challenge: nil)
        }
        return .commitReattestation(decision)
    }

    /// The session ends for a reason outside the protocol (timeout, frame error, eviction, the
    /// audit log unavailable).
    public mutating func end(code: String, message: String, notifyPeer: Bool) -> Action {
        if case .closed = state { return .none }
        state = .closed(code: code)
        return .end(code: code, message: message, notifyPeer: notifyPeer)
    }

    mutating func end(_ code: ProtocolErrorCode, _ message: String, notify: Bool = true) -> Action {
        end(code: code.rawValue, message: message, notifyPeer: notify)
    }

    /// The digest of what the worker sent to be judged (empty fields before its evidence).
    var judged: Data {
        judgedDigest(judgedEvidence ?? .init(envelope: Data()), activation: activationAnswer)
    }

    /// `admitted`, signed over the transcript and what was judged. Only after a hello.
    public func signed(_ admitted: WireMessage.Admitted) -> WireMessage.Admitted {
        guard let transcript else { preconditionFailure("an admission before a hello") }
        var message = admitted
        message.signature = identity.sign(.admitted, transcript, admitted.signedFields(judged: judged))
        return message
    }

    /// A refusal, signed over the transcript and what was judged. Only after a hello.
    public func signed(_ rejection: WireMessage.Rejection) -> WireMessage.Rejection {
        guard let transcript else { preconditionFailure("a refusal before a hello") }
        var message = rejection
        message.signature = identity.sign(.rejected, transcript, rejection.signedFields(judged: judged))
        return message
    }

    /// Bounds on hello: ids are names, not payloads; a worker serves a handful of models.
    static func problem(with hello: WireMessage.Hello) -> String? {
        guard hello.protocolVersion == WireMessage.Hello.currentVersion else {
            return
                "protocol version \(hello.protocolVersion) is not supported (\(WireMessage.Hello.currentVersion): the gateway signs the handshake, and traffic travels in binary sealed frames)"
        }
        guard hello.workerNonce.count == 32 else { return "worker nonce must be 32 bytes" }
        let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-_.:"))
        let idOK =
            (1...128).contains(hello.workerID.utf8.count)
            && hello.workerID.unicodeScalars.allSatisfy { $0.isASCII && allowed.contains($0) }
        guard idOK else { return "worker id must be 1-128 characters of [A-Za-z0-9-_.:]" }
        guard hello.kemPublicKey.count == 32 else { return "KEM public key must be 32 bytes" }
        guard (1...16).contains(hello.models.count), hello.models.allSatisfy({ (1...256).contains($0.utf8.count) })
        else {
            return "a worker serves 1-16 models with names of 1-256 bytes"
        }
        return nil
    }
}
