import Foundation
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
/// Threats: a gateway (or a network in the middle) sending messages out of order, a second
/// `admitted` that would swap the session key, sealed data before a key exists.
public struct GatewaySession: Sendable {
    public enum State: Sendable, Equatable {
        case awaitingChallenge
        /// Evidence for the admission challenge `nonce` was sent.
        case awaitingAdmission(nonce: Data)
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
        /// The session is over: the gateway refused, or the peer broke the protocol.
        case fail(code: String, message: String)
    }

    public private(set) var state: State = .awaitingChallenge

    public init() {}

    public mutating func received(_ message: WireMessage) -> Action {
        switch (state, message) {
        case (.closed(let code), _):
            return .fail(code: code, message: "the session is closed")
        case (.awaitingChallenge, .challenge(let c)):
            state = .awaitingAdmission(nonce: c.nonce)
            return .attest(nonce: c.nonce, proofFor: c.gatewayID, reattestation: false)
        case (.awaitingAdmission, .activate(let challenge)):
            return .activateCredential(challenge)
        case (.admitted, .challenge(let c)):
            return .attest(nonce: c.nonce, proofFor: nil, reattestation: true)
        case (.awaitingAdmission(let nonce), .admitted(let admitted)):
            state = .admitted(sessionID: admitted.sessionID)
            return .openSessionKey(admitted, nonce: nonce)
        case (.admitted, .sealed(let box)):
            return .open(box)
        case (_, .rejected(let r)), (_, .error(let r)):
            return fail(r.code, r.message)
        case (.admitted, .admitted):
            return fail(ProtocolErrorCode.unexpectedMessage.rawValue, "admitted twice")
        case (_, .sealed):
            return fail(ProtocolErrorCode.unexpectedMessage.rawValue, "sealed message before admission")
        default:
            return fail(ProtocolErrorCode.unexpectedMessage.rawValue, "unexpected \(message.typeName)")
        }
    }

    mutating func fail(_ code: String, _ message: String) -> Action {
        state = .closed(code: code)
        return .fail(code: code, message: message)
    }
}
