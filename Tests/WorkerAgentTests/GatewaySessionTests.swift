import AttestationCore
import Foundation
import Sealing
import Testing
@testable import WorkerAgent
import WorkerProtocol

/// Every transition of the worker's side of the protocol, with no I/O, against a gateway key
/// made here: signed messages pass, anything else is refused before the worker acts on it.
@Suite struct GatewaySessionTests {
    let gateway = GatewayHandshakeKey(Ed25519PrivateKey.generate())
    let nonce = Data(repeating: 1, count: 32)
    let hello = WireMessage.Hello(
        workerID: "w", kemPublicKey: Data(repeating: 7, count: 32), models: ["m"],
        workerNonce: Data(repeating: 3, count: 32))
    let evidence = WireMessage.EvidenceMessage(envelope: Data("evidence".utf8), providerProof: Data("proof".utf8))
    var pin: GatewayKeyPin { GatewayKeyPin(key: gateway.key.publicKey) }
    var transcript: HandshakeTranscript { gateway.transcript(hello: hello, nonce: nonce) }

    /// An admission signed over what the gateway judged (by default: what this worker sent).
    func admitted(judging judged: WireMessage.EvidenceMessage? = nil) -> WireMessage.Admitted {
        var message = WireMessage.Admitted(
            sessionID: "s1", encapsulatedKey: Data([1]), sealedSessionKey: Data([2]), reattestSeconds: 60)
        message.signature = gateway.sign(
            .admitted, transcript, message.signedFields(judged: judgedDigest(judged ?? evidence, activation: nil)))
        return message
    }

    func refusal(judging judged: WireMessage.EvidenceMessage, activation: Data? = nil) -> WireMessage.Rejection {
        var refusal = WireMessage.Rejection(code: "nonce.mismatch", message: "m")
        refusal.signature = gateway.sign(
            .rejected, transcript, refusal.signedFields(judged: judgedDigest(judged, activation: activation)))
        return refusal
    }

    /// Challenged, evidence sent.
    func waiting() -> GatewaySession {
        var session = GatewaySession(hello: hello, pin: pin)
        _ = session.received(.challenge(gateway.challenge(hello: hello, nonce: nonce)))
        session.sending(evidence: evidence)
        return session
    }

    func admittedSession() -> GatewaySession {
        var session = waiting()
        _ = session.received(.admitted(admitted()))
        return session
    }

    @Test func aSignedChallengeIsAnsweredAndASignedAdmissionOpensTheKey() {
        var session = GatewaySession(hello: hello, pin: pin)
        #expect(
            session.received(.challenge(gateway.challenge(hello: hello, nonce: nonce)))
                == .attest(nonce: nonce, proofFor: gateway.gatewayID, reattestation: false))
        session.sending(evidence: evidence)
        #expect(session.received(.admitted(admitted())) == .openSessionKey(admitted(), nonce: nonce))
        #expect(session.state == .admitted(sessionID: "s1"))
    }

    /// Must show: a worker pinned to key A refuses a gateway with key B before it quotes.
    @Test func aGatewayWithAnotherKeyIsRefusedBeforeAnyQuote() {
        let other = GatewayHandshakeKey(Ed25519PrivateKey.generate())
        var session = GatewaySession(hello: hello, pin: pin)
        guard
            case .fail(let code, _, let authenticated) = session.received(
                .challenge(other.challenge(hello: hello, nonce: nonce)))
        else {
            Issue.record("a challenge signed by another key was answered")
            return
        }
        #expect(code == ProtocolErrorCode.gatewayKeyMismatch.rawValue && !authenticated)
    }

    /// Threat: the pinned key presented with a signature someone else made, a recorded challenge
    /// replayed to a new connection (another worker nonce), or an id that is not the key's.
    @Test func forgedReplayedOrMislabelledChallengesAreRefused() {
        var forged = gateway.challenge(hello: hello, nonce: nonce)
        forged.signature = GatewayHandshakeKey(Ed25519PrivateKey.generate()).sign(.challenge, transcript, [])
        var later = hello
        later.workerNonce = Data(repeating: 4, count: 32)
        // Signed by the pinned key, but naming another gateway id (a proof would be for it).
        var relabelled = gateway.challenge(hello: hello, nonce: nonce)
        relabelled.gatewayID = String(repeating: "0", count: 64)
        relabelled.signature = gateway.sign(
            .challenge,
            HandshakeTranscript(
                hello: hello, nonce: nonce, gatewayID: relabelled.gatewayID, gatewayKey: gateway.key.publicKey.raw), [])
        var swappedNonce = gateway.challenge(hello: hello, nonce: nonce)
        swappedNonce.nonce = Data(repeating: 9, count: 32)
        for (session, challenge) in [
            (GatewaySession(hello: hello, pin: pin), forged),
            (GatewaySession(hello: later, pin: pin), gateway.challenge(hello: hello, nonce: nonce)),
            (GatewaySession(hello: hello, pin: pin), relabelled),
            (GatewaySession(hello: hello, pin: pin), swappedNonce),
        ] {
            var session = session
            guard case .fail(let code, _, _) = session.received(.challenge(challenge)) else {
                Issue.record("an unauthenticated challenge was answered")
                continue
            }
            #expect(code == ProtocolErrorCode.gatewayUnauthenticated.rawValue)
        }
    }

    /// Threat: a network in the middle substituting its own `admitted` (a session key it chose)
    /// or keeping the admission while swapping the evidence.
    @Test func anUnsignedOrSubstitutedAdmissionIsRefused() {
        var unsigned = admitted()
        unsigned.signature = Data(repeating: 0, count: 64)
        var swappedKey = admitted()
        swappedKey.sealedSessionKey = Data([3])
        for message in [unsigned, swappedKey, admitted(judging: .init(envelope: Data("other evidence".utf8)))] {
            var session = waiting()
            guard case .fail(let code, _, let authenticated) = session.received(.admitted(message)) else {
                Issue.record("an unauthenticated admission was accepted")
                continue
            }
            #expect(code == ProtocolErrorCode.gatewayUnauthenticated.rawValue && !authenticated)
        }
    }

    @Test func credentialChallengesMustBeSigned() {
        var activate = WireMessage.Activate(credentialBlob: Data([1, 2]), encryptedSecret: Data([3]))
        activate.signature = gateway.sign(.activate, transcript, activate.signedFields)
        var session = waiting()
        var tampered = activate
        tampered.credentialBlob = Data([1, 3])
        guard case .fail(let code, _, _) = session.received(.activate(tampered)) else {
            Issue.record("a tampered credential was activated")
            return
        }
        #expect(code == ProtocolErrorCode.gatewayUnauthenticated.rawValue)
        // The genuine one runs once; a replay of it on the same connection does not reach the TPM.
        var fresh = waiting()
        #expect(fresh.received(.activate(activate)) == .activateCredential(activate))
        guard case .fail = fresh.received(.activate(activate)) else {
            Issue.record("a replayed credential challenge was activated again")
            return
        }
    }

    /// Must show: a plaintext challenge injected after admission is refused (no quote), as is any
    /// other plaintext message; only sealed payloads are taken.
    @Test(arguments: [
        WireMessage.challenge(
            .init(nonce: Data(repeating: 2, count: 32), gatewayID: "", gatewayKey: Data(), signature: Data())),
        .error(.init(code: "admin.evicted", message: "bye")),
        .rejected(.init(code: "nonce.mismatch", message: "m")),
    ])
    func plaintextAfterAdmissionIsRefused(_ message: WireMessage) {
        var session = admittedSession()
        #expect(session.received(.sealed(Data([9]))) == .open(Data([9])))
        guard case .fail(let code, _, let authenticated) = session.received(message) else {
            Issue.record("plaintext \(message.typeName) accepted after admission")
            return
        }
        #expect(code == ProtocolErrorCode.gatewayUnauthenticated.rawValue && !authenticated)
        #expect(session.state == .closed(code: code))
    }

    @Test func aSecondAdmittedCannotSwapTheKey() {
        var session = admittedSession()
        guard case .fail = session.received(.admitted(admitted())) else {
            Issue.record("admitted twice")
            return
        }
        guard case .fail(_, "the session is closed", _) = session.received(.sealed(Data([1]))) else {
            Issue.record("sealed data after the session closed")
            return
        }
    }

    @Test(arguments: [
        WireMessage.admitted(
            .init(sessionID: "s", encapsulatedKey: Data(), sealedSessionKey: Data(), reattestSeconds: 1)),
        .sealed(Data([1])),
        .hello(.init(workerID: "w", kemPublicKey: Data(count: 32), models: ["m"], workerNonce: Data(count: 32))),
        .evidence(.init(envelope: Data())),
    ])
    func outOfOrderMessagesEndTheSession(_ message: WireMessage) {
        var session = GatewaySession(hello: hello, pin: pin)
        guard case .fail(let code, _, _) = session.received(message) else {
            Issue.record("accepted \(message.typeName) before a challenge")
            return
        }
        #expect(code == ProtocolErrorCode.unexpectedMessage.rawValue)
    }

    /// A signed refusal is the gateway's verdict; an unsigned one, or an `error`, is only a reason
    /// to retry: anyone on the path could have sent it.
    @Test func onlySignedRefusalsAreVerdicts() {
        var signed = waiting()
        #expect(
            signed.received(.rejected(refusal(judging: evidence)))
                == .fail(code: "nonce.mismatch", message: "m", authenticated: true))
        var unsigned = waiting()
        guard case .fail(_, _, false) = unsigned.received(.rejected(.init(code: "admin.evicted", message: "m"))) else {
            Issue.record("an unsigned refusal was taken as the gateway's")
            return
        }
        var errored = waiting()
        #expect(
            errored.received(.error(.init(code: "admin.evicted", message: "bye")))
                == .fail(code: "admin.evicted", message: "bye", authenticated: false))
        #expect(
            WorkerRejected(code: "admin.evicted", message: "bye", authenticated: false).isRetryable(hasProvider: false))
        var serving = admittedSession()
        #expect(
            serving.ended(code: "admin.evicted", message: "bye", judged: nil)
                == .fail(code: "admin.evicted", message: "bye", authenticated: true))
    }

    /// Threat: someone on the path altering or replacing the worker's evidence, proof or
    /// activation answer so that the real gateway refuses it, to stop the worker for good. The
    /// gateway's signed refusal covers what it judged; a refusal of anything but what this worker
    /// sent is not a verdict on it, and the worker only retries.
    @Test func refusalsOfEvidenceAlteredOnTheWayAreNotVerdicts() {
        let altered = [
            WireMessage.EvidenceMessage(envelope: Data("older evidence".utf8), providerProof: evidence.providerProof),
            WireMessage.EvidenceMessage(envelope: evidence.envelope, providerProof: Data("forged proof".utf8)),
            WireMessage.EvidenceMessage(envelope: evidence.envelope, providerProof: nil),
        ]
        for judged in altered {
            var session = waiting()
            guard case .fail(let code, _, false) = session.received(.rejected(refusal(judging: judged))) else {
                Issue.record("a refusal of altered evidence was taken as the gateway's verdict")
                continue
            }
            #expect(code == ProtocolErrorCode.gatewayUnauthenticated.rawValue)
        }
        var activated = waiting()
        activated.sending(activation: Data([1, 2, 3]))
        guard case .fail(_, _, false) = activated.received(.rejected(refusal(judging: evidence, activation: Data([9]))))
        else {
            Issue.record("a refusal of an altered activation answer was taken as a verdict")
            return
        }
        var honest = waiting()
        honest.sending(activation: Data([1, 2, 3]))
        guard
            case .fail(_, _, true) = honest.received(
                .rejected(refusal(judging: evidence, activation: Data([1, 2, 3]))))
        else {
            Issue.record("a refusal of exactly what was sent is the gateway's verdict")
            return
        }
        // After admission: a sealed end naming evidence other than the last sent is not a verdict.
        var serving = admittedSession()
        let sent = WireMessage.EvidenceMessage(envelope: Data("re-attestation".utf8))
        serving.sending(evidence: sent)
        guard
            case .fail(_, _, false) = serving.ended(
                code: "nonce.mismatch", message: "m", judged: HashAlgorithm.sha256.hash(Data("other".utf8)))
        else {
            Issue.record("an end judging other evidence was taken as a verdict")
            return
        }
        var judgedRight = admittedSession()
        judgedRight.sending(evidence: sent)
        #expect(
            judgedRight.ended(code: "nonce.mismatch", message: "m", judged: HashAlgorithm.sha256.hash(sent.envelope))
                == .fail(code: "nonce.mismatch", message: "m", authenticated: true))
    }

    @Test func pinsReadFingerprintsAndKeys() throws {
        let key = gateway.key.publicKey
        #expect(try GatewayKeyPin(text: key.pem) == pin)
        #expect(try GatewayKeyPin(text: key.fingerprint.uppercased()) == pin)
        #expect(try GatewayKeyPin(text: key.base64) == pin)
        #expect(throws: Ed25519KeyError.self) { try GatewayKeyPin(text: "not a key") }
    }

    @Test func onlyTransientCodesAreRetried() {
        #expect(
            WorkerRejected(code: ProtocolErrorCode.timeout.rawValue, message: "", authenticated: true).isRetryable(
                hasProvider: false))
        #expect(
            WorkerRejected(code: ProtocolErrorCode.auditUnavailable.rawValue, message: "", authenticated: true)
                .isRetryable(
                    hasProvider: false))
        #expect(WorkerRejected(code: "stake.unknown", message: "", authenticated: true).isRetryable(hasProvider: false))
        #expect(
            !WorkerRejected(code: ProtocolErrorCode.adminEvicted.rawValue, message: "", authenticated: true)
                .isRetryable(hasProvider: false))
        #expect(
            !WorkerRejected(code: "nonce.mismatch", message: "", authenticated: true).isRetryable(hasProvider: true))
        #expect(
            !WorkerRejected(code: "stake.proof-missing", message: "", authenticated: true).isRetryable(
                hasProvider: false))
        #expect(
            WorkerRejected(code: "stake.proof-missing", message: "", authenticated: true).isRetryable(hasProvider: true)
        )
        #expect(
            WorkerRejected(code: ProtocolErrorCode.gatewayKeyMismatch.rawValue, message: "", authenticated: false)
                .isRetryable(
                    hasProvider: false))
    }
}

/// The worker's check of a gateway-blind request against the routing fields the gateway saw.
@Suite struct SealedRoutingTests {
    @Test func theBodyMustAskWhatItWasRoutedAs() {
        let ask = { (body: String, model: String, stream: Bool) in
            GatewayClient.bodyMatchesRouting(Data(body.utf8), model: model, stream: stream)
        }
        #expect(ask(#"{"model":"m","messages":[]}"#, "m", false))
        #expect(ask(#"{"model":"m","stream":true,"messages":[]}"#, "m", true))
        #expect(!ask(#"{"model":"m","stream":true}"#, "m", false))
        #expect(!ask(#"{"model":"other","messages":[]}"#, "m", false))
        // Threat: named twice, the gateway's reading and the engine's may differ.
        #expect(!ask(#"{"model":"m","model":"other"}"#, "m", false))
        #expect(!ask(#"{"model":"m","m\u006fdel":"other"}"#, "m", false))
        #expect(!ask(#"{"model":"m","stream":false,"stream":true}"#, "m", false))
        #expect(!ask(#"{"model":"m",}"#, "m", false))
        #expect(!ask("not json", "m", false))
        // A `stream` that is not a boolean is not "absent": an engine may read it as true.
        #expect(!ask(#"{"model":"m","stream":1}"#, "m", false))
        #expect(!ask(#"{"model":"m","stream":"true"}"#, "m", true))
        // Canonically equivalent is not the same name: "é" precomposed against e + combining accent.
        #expect(!ask(#"{"model":"caf\u00e9"}"#, "cafe\u{301}", false))
    }
}
