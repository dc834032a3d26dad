import AttestationCore
import Foundation
import Sealing
import WorkerProtocol

/// The worker's side of the worker protocol as a state machine: each message from the gateway
/// in, one action out. No I/O; ``GatewayClient`` performs the actions.
///
/// ```
/// awaitingChallenge ─challenge→ awaitingAdmission(nonce) ─admitted→ admitted(session) ─challenge→ (re-attest)
///                                awaitingAdmission ─activate→ (answer) ─┘
///        └──────────── rejected, error or anything out of order ────────────→ closed
/// ```
///
/// Threats: someone other than the pinned gateway speaking: every handshake message must carry a
/// signature by the pinned key over this connection's transcript (checked before the worker
/// quotes, activates a credential, signs a provider proof or serves), and after admission only
/// sealed messages are taken, so a plaintext challenge, error or second `admitted` injected by the
/// network ends the connection without effect. Also: messages out of order, sealed data before a
/// key exists.
public struct GatewaySession: Sendable {
    public enum State: Sendable, Equatable {
        case awaitingChallenge
        /// The admission challenge `nonce` was answered (or is being answered) with evidence.
        case awaitingAdmission(nonce: Data, transcript: HandshakeTranscript, gatewayKey: Data)
        case admitted(sessionID: String)
        case closed(code: String)
    }

    public enum Action: Sendable, Equatable {
        /// Attest to `nonce`; `proofFor` names the gateway a provider proof is signed for (the
        /// admission challenge only). `reattestation`: the worker is already admitted.
        case attest(nonce: Data, proofFor: String?, reattestation: Bool)
        /// Recover a credential's secret with the TPM (credential activation) and answer with it.
        case activateCredential(WireMessage.Activate)
        /// Open the session key sealed to this worker, bound to the admission nonce.
        case openSessionKey(WireMessage.Admitted, nonce: Data)
        /// A sealed box for the admitted session.
        case open(Data)
        /// The session is over. `authenticated`: the pinned gateway said so (a signed refusal, a
        /// sealed end); otherwise it may be anyone on the path, and the worker only retries.
        case fail(code: String, message: String, authenticated: Bool)
    }

    public private(set) var state: State = .awaitingChallenge
    let hello: WireMessage.Hello
    let pin: GatewayKeyPin
    /// What this worker sent to be judged (admission evidence, activation answer): a signed
    /// decision must cover exactly these.
    var admissionEvidence: WireMessage.EvidenceMessage?
    var activationAnswer: Data?
    var activationAsked = false
    /// SHA-256 of the latest re-attestation envelope sent, which a sealed end for a failed
    /// re-attestation must name.
    var reattestationSHA256: Data?

    public init(hello: WireMessage.Hello, pin: GatewayKeyPin) {
        self.hello = hello
        self.pin = pin
    }

    /// Evidence about to be sent: for admission it is what `admitted` or `rejected` must cover;
    /// after admission, what a sealed end for a failed re-attestation must name.
    public mutating func sending(evidence: WireMessage.EvidenceMessage) {
        switch state {
        case .awaitingAdmission where admissionEvidence == nil: admissionEvidence = evidence
        case .admitted: reattestationSHA256 = HashAlgorithm.sha256.hash(evidence.envelope)
        default: break
        }
    }

    /// The credential activation answer about to be sent.
    public mutating func sending(activation secret: Data) { activationAnswer = secret }

    var judged: Data { judgedDigest(admissionEvidence ?? .init(envelope: Data()), activation: activationAnswer) }

    public mutating func received(_ message: WireMessage) -> Action {
        switch (state, message) {
        case (.closed(let code), _):
            return .fail(code: code, message: "the session is closed", authenticated: false)
        case (.awaitingChallenge, .challenge(let c)):
            do throws(GatewayAuthenticationError) {
                let transcript = try pin.verify(c, hello: hello)
                state = .awaitingAdmission(nonce: c.nonce, transcript: transcript, gatewayKey: c.gatewayKey)
                return .attest(nonce: c.nonce, proofFor: c.gatewayID, reattestation: false)
            } catch {
                return fail(error)
            }
        case (.awaitingAdmission(_, let transcript, let key), .activate(let challenge)):
            // One credential per admission: a replayed one is not run through the TPM again.
            guard !activationAsked else {
                return fail(ProtocolErrorCode.unexpectedMessage.rawValue, "a second credential challenge")
            }
            do throws(GatewayAuthenticationError) {
                try pin.verify(challenge.signature, .activate, transcript, gatewayKey: key, challenge.signedFields)
                activationAsked = true
                return .activateCredential(challenge)
            } catch {
                return fail(error)
            }
        case (.awaitingAdmission(let nonce, let transcript, let key), .admitted(let admitted)):
            do throws(GatewayAuthenticationError) {
                try pin.verify(
                    admitted.signature, .admitted, transcript, gatewayKey: key, admitted.signedFields(judged: judged))
            } catch {
                return fail(error)
            }
            state = .admitted(sessionID: admitted.sessionID)
            return .openSessionKey(admitted, nonce: nonce)
        case (.awaitingAdmission(_, let transcript, let key), .rejected(let r)):
            // Signed by the pinned gateway over exactly what this worker sent: its verdict. A
            // refusal of evidence altered on the way is someone on the path's doing.
            guard
                (try? pin.verify(r.signature, .rejected, transcript, gatewayKey: key, r.signedFields(judged: judged)))
                    != nil
            else {
                return fail(
                    .unauthenticated(
                        "a refusal not signed by the pinned gateway over this worker's evidence: \(r.code)"))
            }
            return fail(r.code, r.message, authenticated: true)
        case (.admitted, .sealed(let box)):
            return .open(box)
        case (.admitted, _):
            // Threat: an injected plaintext challenge, error or admission after the channel exists.
            return fail(
                ProtocolErrorCode.gatewayUnauthenticated.rawValue,
                "plaintext \(message.typeName) after admission (the gateway speaks only sealed now)",
                authenticated: false)
        case (_, .error(let r)):
            // Unsigned: a reason worth logging, never a verdict.
            return fail(r.code, r.message, authenticated: false)
        case (_, .sealed):
            return fail(ProtocolErrorCode.unexpectedMessage.rawValue, "sealed message before admission")
        default:
            return fail(ProtocolErrorCode.unexpectedMessage.rawValue, "unexpected \(message.typeName)")
        }
    }

    /// A sealed `ended` from the admitted session: the gateway's own word, unless it judged
    /// evidence other than what this worker last sent (altered on the way).
    public mutating func ended(code: String, message: String, judged: Data?) -> Action {
        if let judged, judged != reattestationSHA256 {
            return fail(
                ProtocolErrorCode.gatewayUnauthenticated.rawValue,
                "the gateway judged evidence this worker did not send (\(code)): altered on the way",
                authenticated: false)
        }
        return fail(code, message, authenticated: true)
    }

    mutating func fail(_ error: GatewayAuthenticationError) -> Action {
        fail(error.code.rawValue, error.description, authenticated: false)
    }

    mutating func fail(_ code: String, _ message: String, authenticated: Bool = false) -> Action {
        state = .closed(code: code)
        return .fail(code: code, message: message, authenticated: authenticated)
    }
}
