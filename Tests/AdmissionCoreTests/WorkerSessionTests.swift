import AdmissionCore
import AttestationCore
import Foundation
import Sealing
import Testing
import TestSupport
import WorkerProtocol

/// Every transition of the worker session state machine, driven with no I/O.
@Suite struct WorkerSessionTests {
    let nonce = Data(repeating: 7, count: 32)
    let worker = TestWorker()
    let gateway = GatewayHandshakeKey(Ed25519PrivateKey.generate())

    var hello: WireMessage.Hello {
        guard case .hello(let h) = worker.hello else { fatalError() }
        return h
    }

    /// A machine that has sent its admission challenge.
    func challenged() -> WorkerSession {
        var session = WorkerSession(identity: gateway)
        _ = session.received(.hello(hello), nonce: { nonce })
        return session
    }

    /// A machine serving an admitted worker, with the decision that admitted it.
    func serving(_ core: Core) async -> (WorkerSession, AdmissionDecision) {
        var session = challenged()
        let evidence = core.evidence(nonce: nonce, key: worker.kem.publicKeyBytes)
        _ = session.received(.evidence(evidence), nonce: { nonce })
        let decision = await core.coordinator.admit(hello: hello, nonce: nonce, evidence: evidence)
        _ = session.admissionDecided(decision)
        return (session, decision)
    }

    @Test func helloIsAnsweredWithAChallengeNamingTheGateway() {
        var session = WorkerSession(identity: gateway)
        guard case .send(.challenge(let c)) = session.received(.hello(hello), nonce: { nonce }) else {
            Issue.record("no challenge")
            return
        }
        #expect(c.nonce == nonce)
        #expect(c.gatewayID == gateway.gatewayID)
        // Signed over this hello: the worker's pin accepts it.
        #expect(throws: Never.self) { try GatewayKeyPin(key: gateway.key.publicKey).verify(c, hello: hello) }
        #expect(session.state == .awaitingEvidence(hello: hello, nonce: nonce))
    }

    @Test(arguments: [
        WireMessage.Hello(protocolVersion: 1, workerID: "w", kemPublicKey: Data(count: 32), models: ["m"]),
        // Version 2 sent its traffic as JSON: refused by name, not misread.
        WireMessage.Hello(protocolVersion: 2, workerID: "w", kemPublicKey: Data(count: 32), models: ["m"]),
        WireMessage.Hello(workerID: "w", kemPublicKey: Data(count: 32), models: ["m"], workerNonce: Data(count: 31)),
        WireMessage.Hello(workerID: "", kemPublicKey: Data(count: 32), models: ["m"]),
        WireMessage.Hello(workerID: "../../etc", kemPublicKey: Data(count: 32), models: ["m"]),
        WireMessage.Hello(workerID: "wörker", kemPublicKey: Data(count: 32), models: ["m"]),
        WireMessage.Hello(workerID: String(repeating: "a", count: 129), kemPublicKey: Data(count: 32), models: ["m"]),
        WireMessage.Hello(workerID: "w", kemPublicKey: Data(count: 31), models: ["m"]),
        WireMessage.Hello(workerID: "w", kemPublicKey: Data(count: 32), models: []),
        WireMessage.Hello(workerID: "w", kemPublicKey: Data(count: 32), models: Array(repeating: "m", count: 17)),
        WireMessage.Hello(workerID: "w", kemPublicKey: Data(count: 32), models: [String(repeating: "m", count: 257)]),
    ])
    func badHellosEndTheSession(_ bad: WireMessage.Hello) {
        var session = WorkerSession(identity: gateway)
        guard case .end(let code, _, true) = session.received(.hello(bad), nonce: { nonce }) else {
            Issue.record("not ended")
            return
        }
        #expect(code == ProtocolErrorCode.badHello.rawValue)
        #expect(session.state == .closed(code: code))
    }

    @Test(arguments: [
        WireMessage.evidence(.init(envelope: Data())), .sealed(Data([1])),
        .challenge(.init(nonce: Data(), gatewayID: "", gatewayKey: Data(), signature: Data())),
        .admitted(.init(sessionID: "s", encapsulatedKey: Data(), sealedSessionKey: Data(), reattestSeconds: 1)),
        .rejected(.init(code: "c", message: "m")), .error(.init(code: "c", message: "m")),
    ])
    func anythingButHelloFirstIsUnexpected(_ first: WireMessage) {
        var session = WorkerSession(identity: gateway)
        guard case .end(let code, let message, true) = session.received(first, nonce: { nonce }) else {
            Issue.record("not ended")
            return
        }
        #expect(code == ProtocolErrorCode.unexpectedMessage.rawValue)
        #expect(message == "expected hello")
    }

    @Test func evidenceIsVerifiedAgainstTheChallenge() {
        var session = challenged()
        let evidence = WireMessage.EvidenceMessage(envelope: Data("{}".utf8))
        guard case .verifyAdmission(let h, let n, let e, nil) = session.received(.evidence(evidence), nonce: { Data() })
        else {
            Issue.record("not verified")
            return
        }
        #expect(h == hello && n == nonce && e == evidence)
        #expect(session.state == .admitting(hello: hello))
        // Nothing else is accepted while the decision is pending.
        guard case .end(let code, _, _) = session.received(.sealed(Data([1])), nonce: { nonce }) else {
            Issue.record("sealed data during admission was accepted")
            return
        }
        #expect(code == ProtocolErrorCode.unexpectedMessage.rawValue)
    }

    @Test func aSecondHelloIsUnexpected() {
        var session = challenged()
        guard case .end(let code, let message, _) = session.received(.hello(hello), nonce: { nonce }) else {
            Issue.record("accepted")
            return
        }
        #expect(code == ProtocolErrorCode.unexpectedMessage.rawValue)
        #expect(message == "expected evidence")
    }

    @Test func anAdmissionServesAndARefusalCloses() async throws {
        let core = try Core()
        let (session, decision) = await serving(core)
        let grant = try #require(decision.grant)
        #expect(session.state == .serving(grant.session, challenge: nil))

        var refused = challenged()
        let wrong = core.evidence(nonce: Data(repeating: 9, count: 32), key: worker.kem.publicKeyBytes)
        _ = refused.received(.evidence(wrong), nonce: { nonce })
        let refusal = await core.coordinator.admit(hello: hello, nonce: nonce, evidence: wrong)
        guard case .commitAdmission = refused.admissionDecided(refusal) else {
            Issue.record("refusal not committed")
            return
        }
        #expect(refused.state == .closed(code: ReasonCode.nonceMismatch.rawValue))
    }

    @Test func servingRoutesSealedDataAndRefusesUnaskedEvidence() async throws {
        let core = try Core()
        var (session, _) = await serving(core)
        guard case .route(let box) = session.received(.sealed(Data([1, 2])), nonce: { nonce }) else {
            Issue.record("not routed")
            return
        }
        #expect(box == Data([1, 2]))
        guard
            case .end(let code, let message, true) = session.received(
                .evidence(.init(envelope: Data())), nonce: { nonce })
        else {
            Issue.record("unasked evidence accepted")
            return
        }
        #expect(code == ProtocolErrorCode.unexpectedMessage.rawValue)
        #expect(message == "evidence without a challenge")
    }

    @Test func reattestationChallengesAndTimesOut() async throws {
        let core = try Core()
        var (session, _) = await serving(core)
        let fresh = Data(repeating: 1, count: 32)
        // Sealed: after admission the gateway says nothing in the clear.
        guard case .seal(.challenge(let c)) = session.reattestDue(nonce: fresh, keyAge: 10, keyLifetime: nil) else {
            Issue.record("no sealed challenge")
            return
        }
        #expect(c == fresh)
        // A deadline for another challenge does nothing; this one's ends the session.
        guard case .none = session.reattestDeadline(nonce: Data(repeating: 2, count: 32)) else {
            Issue.record("stale deadline acted on")
            return
        }
        guard case .end(let code, _, false) = session.reattestDeadline(nonce: fresh) else {
            Issue.record("deadline ignored")
            return
        }
        #expect(code == ProtocolErrorCode.timeout.rawValue)
    }

    @Test func anUnansweredChallengeEndsTheSessionAtTheNextRound() async throws {
        let core = try Core()
        var (session, _) = await serving(core)
        _ = session.reattestDue(nonce: Data(repeating: 1, count: 32), keyAge: 10, keyLifetime: nil)
        guard
            case .end(let code, let message, false) = session.reattestDue(
                nonce: Data(repeating: 2, count: 32), keyAge: 20, keyLifetime: nil)
        else {
            Issue.record("second challenge sent")
            return
        }
        #expect(code == ProtocolErrorCode.timeout.rawValue)
        #expect(message == "re-attestation challenge unanswered")
    }

    @Test func theSessionKeyLifetimeEndsTheSession() async throws {
        let core = try Core()
        var (session, _) = await serving(core)
        guard case .seal = session.reattestDue(nonce: nonce, keyAge: 99, keyLifetime: 100) else {
            Issue.record("ended early")
            return
        }
        var (other, _) = await serving(core)
        guard case .end(let code, _, false) = other.reattestDue(nonce: nonce, keyAge: 100, keyLifetime: 100) else {
            Issue.record("key outlived its lifetime")
            return
        }
        #expect(code == ProtocolErrorCode.keyExpired.rawValue)
    }

    @Test func reattestationPassesFailsAndSkipsARoundWhileVerifying() async throws {
        let core = try Core()
        var (session, decision) = await serving(core)
        let admitted = try #require(decision.grant).session
        let fresh = Data(repeating: 3, count: 32)
        _ = session.reattestDue(nonce: fresh, keyAge: 1, keyLifetime: nil)
        let good = core.evidence(nonce: fresh, key: worker.kem.publicKeyBytes)
        guard case .verifyReattestation(let s, let n, _) = session.received(.evidence(good), nonce: { nonce }) else {
            Issue.record("not verified")
            return
        }
        #expect(s == admitted && n == fresh)
        #expect(session.state == .reattesting(admitted))
        guard case .none = session.reattestDue(nonce: nonce, keyAge: 2, keyLifetime: nil) else {
            Issue.record("a round during verification was not skipped")
            return
        }
        let pass = await core.coordinator.reattest(admitted, nonce: fresh, evidence: good)
        guard case .commitReattestation = session.reattestationDecided(pass) else {
            Issue.record("pass not committed")
            return
        }
        #expect(session.state == .serving(admitted, challenge: nil))

        _ = session.reattestDue(nonce: fresh, keyAge: 3, keyLifetime: nil)
        let replayed = core.evidence(nonce: nonce, key: worker.kem.publicKeyBytes)
        _ = session.received(.evidence(replayed), nonce: { nonce })
        let fail = await core.coordinator.reattest(admitted, nonce: fresh, evidence: replayed)
        #expect(fail.failure?.code == ReasonCode.nonceMismatch.rawValue)
        _ = session.reattestationDecided(fail)
        #expect(session.state == .closed(code: ReasonCode.nonceMismatch.rawValue))
    }

    @Test func aClosedSessionIgnoresEverythingIncludingLateDecisions() async throws {
        let core = try Core()
        var (session, decision) = await serving(core)
        let admitted = try #require(decision.grant).session
        _ = session.reattestDue(nonce: nonce, keyAge: 1, keyLifetime: nil)
        let evidence = core.evidence(nonce: nonce, key: worker.kem.publicKeyBytes)
        _ = session.received(.evidence(evidence), nonce: { nonce })
        guard case .end = session.end(code: "admin.evicted", message: "evicted", notifyPeer: false) else {
            Issue.record("not ended")
            return
        }
        let late = await core.coordinator.reattest(admitted, nonce: nonce, evidence: evidence)
        #expect(late.passed)
        guard case .none = session.reattestationDecided(late) else {
            Issue.record("a verdict after the end was committed")
            return
        }
        guard case .none = session.end(code: "x", message: "again", notifyPeer: true) else {
            Issue.record("ended twice")
            return
        }
        guard case .none = session.received(.sealed(Data([1])), nonce: { nonce }) else {
            Issue.record("closed session routed data")
            return
        }
        #expect(session.state == .closed(code: "admin.evicted"))
        #expect(session.isClosed)
    }
}
