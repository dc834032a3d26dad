import Foundation
import Testing
import WorkerAgent
import WorkerProtocol

/// Every transition of the worker's side of the protocol, with no I/O.
@Suite struct GatewaySessionTests {
    let nonce = Data(repeating: 1, count: 32)
    let admitted = WireMessage.Admitted(
        sessionID: "s1", encapsulatedKey: Data([1]), sealedSessionKey: Data([2]), reattestSeconds: 60)

    func admittedSession() -> GatewaySession {
        var session = GatewaySession()
        _ = session.received(.challenge(.init(nonce: nonce, gatewayID: "gw")))
        _ = session.received(.admitted(admitted))
        return session
    }

    @Test func theAdmissionChallengeCarriesTheProofsGatewayAndTheKeyIsBoundToItsNonce() {
        var session = GatewaySession()
        #expect(
            session.received(.challenge(.init(nonce: nonce, gatewayID: "gw")))
                == .attest(nonce: nonce, proofFor: "gw", reattestation: false))
        #expect(session.state == .awaitingAdmission(nonce: nonce))
        #expect(session.received(.admitted(admitted)) == .openSessionKey(admitted, nonce: nonce))
        #expect(session.state == .admitted(sessionID: "s1"))
    }

    @Test func reattestationSignsNoProofAndSealedDataIsOpened() {
        var session = admittedSession()
        let fresh = Data(repeating: 2, count: 32)
        // A gateway id on a later challenge is ignored: proofs are for admissions only.
        #expect(
            session.received(.challenge(.init(nonce: fresh, gatewayID: "other")))
                == .attest(nonce: fresh, proofFor: nil, reattestation: true))
        #expect(session.received(.sealed(Data([9]))) == .open(Data([9])))
    }

    @Test func aSecondAdmittedCannotSwapTheKey() {
        var session = admittedSession()
        #expect(
            session.received(.admitted(admitted))
                == .fail(code: ProtocolErrorCode.unexpectedMessage.rawValue, message: "admitted twice"))
        #expect(session.state == .closed(code: ProtocolErrorCode.unexpectedMessage.rawValue))
        #expect(
            session.received(.sealed(Data([1])))
                == .fail(code: ProtocolErrorCode.unexpectedMessage.rawValue, message: "the session is closed"))
    }

    @Test(arguments: [
        WireMessage.admitted(
            .init(sessionID: "s", encapsulatedKey: Data(), sealedSessionKey: Data(), reattestSeconds: 1)),
        .sealed(Data([1])), .hello(.init(workerID: "w", kemPublicKey: Data(count: 32), models: ["m"])),
        .evidence(.init(envelope: Data())),
    ])
    func outOfOrderMessagesEndTheSession(_ message: WireMessage) {
        var session = GatewaySession()
        guard case .fail(let code, _) = session.received(message) else {
            Issue.record("accepted \(message.typeName) before a challenge")
            return
        }
        #expect(code == ProtocolErrorCode.unexpectedMessage.rawValue)
    }

    @Test func refusalsAndErrorsEndTheSessionWithTheGatewaysCode() {
        var waiting = GatewaySession()
        _ = waiting.received(.challenge(.init(nonce: nonce)))
        #expect(
            waiting.received(.rejected(.init(code: "nonce.mismatch", message: "m")))
                == .fail(code: "nonce.mismatch", message: "m"))
        var serving = admittedSession()
        #expect(
            serving.received(.error(.init(code: "admin.evicted", message: "bye")))
                == .fail(code: "admin.evicted", message: "bye"))
        #expect(serving.state == .closed(code: "admin.evicted"))
    }

    @Test func onlyTransientCodesAreRetried() {
        #expect(WorkerRejected(code: ProtocolErrorCode.timeout.rawValue, message: "").isRetryable(hasProvider: false))
        #expect(
            WorkerRejected(code: ProtocolErrorCode.auditUnavailable.rawValue, message: "").isRetryable(
                hasProvider: false))
        #expect(WorkerRejected(code: "stake.unknown", message: "").isRetryable(hasProvider: false))
        #expect(
            !WorkerRejected(code: ProtocolErrorCode.adminEvicted.rawValue, message: "").isRetryable(hasProvider: false))
        #expect(!WorkerRejected(code: "nonce.mismatch", message: "").isRetryable(hasProvider: true))
        #expect(!WorkerRejected(code: "stake.proof-missing", message: "").isRetryable(hasProvider: false))
        #expect(WorkerRejected(code: "stake.proof-missing", message: "").isRetryable(hasProvider: true))
    }
}
