import Crypto
import Foundation
import Sealing
import Testing

@Suite struct SessionKeySealingTests {
    @Test func onlyTheBoundWorkerOpensTheSessionKey() throws {
        let worker = WorkerKEMKey()
        let other = WorkerKEMKey()
        let key = SymmetricKey(size: .bits256)
        let context = Data("session-1".utf8)
        let sealed = try SessionKeySealing.seal(key, to: worker.publicKeyBytes, context: context)
        let opened = try SessionKeySealing.open(sealed, with: worker, context: context)
        #expect(opened == key)
        // Another worker's key, another session's context, or a flipped byte: refused.
        #expect(throws: SealingError.openFailed) { try SessionKeySealing.open(sealed, with: other, context: context) }
        #expect(throws: SealingError.openFailed) {
            try SessionKeySealing.open(sealed, with: worker, context: Data("session-2".utf8))
        }
        var bad = sealed.ciphertext
        bad[0] ^= 1
        #expect(throws: SealingError.openFailed) {
            try SessionKeySealing.open(
                .init(encapsulatedKey: sealed.encapsulatedKey, ciphertext: bad), with: worker, context: context)
        }
        #expect(throws: SealingError.badPublicKey) {
            try SessionKeySealing.seal(key, to: Data([1, 2, 3]), context: context)
        }
    }

    @Test func bindingChangesWithNonceAndKey() {
        let a = attestationBinding(nonce: Data([1]), workerPublicKeys: Data([2]))
        #expect(a.count == 32)
        #expect(a != attestationBinding(nonce: Data([3]), workerPublicKeys: Data([2])))
        #expect(a != attestationBinding(nonce: Data([1]), workerPublicKeys: Data([4])))
        // SHA-256 of the two-byte string 0x01 0x02.
        #expect(a == Data(SHA256.hash(data: Data([1, 2]))))
    }
}

@Suite struct SecureChannelTests {
    let key = SymmetricKey(size: .bits256)

    func pair(_ direction: ChannelDirection = .gatewayToWorker) -> (ChannelSealer, ChannelOpener) {
        (
            ChannelSealer(sessionKey: key, sessionID: "s1", direction: direction),
            ChannelOpener(sessionKey: key, sessionID: "s1", direction: direction)
        )
    }

    func seal(_ sealer: ChannelSealer, _ text: String) throws -> Data {
        var out = Data()
        try sealer.seal(Data(text.utf8)) { out = $0 }
        return out
    }

    @Test func messagesRoundTripInOrder() throws {
        let (sealer, opener) = pair()
        for i in 0..<10 {
            #expect(try opener.open(try seal(sealer, "m\(i)")) == Data("m\(i)".utf8))
        }
    }

    @Test func replayReorderTamperAndReflectionFail() throws {
        let (sealer, opener) = pair()
        let m0 = try seal(sealer, "first")
        let m1 = try seal(sealer, "second")
        #expect(throws: SealingError.openFailed) { try opener.open(m1) }  // reordered
        #expect(try opener.open(m0) == Data("first".utf8))
        #expect(throws: SealingError.openFailed) { try opener.open(m0) }  // replayed
        var tampered = m1
        tampered[tampered.count - 1] ^= 0x80
        #expect(throws: SealingError.openFailed) { try opener.open(tampered) }
        #expect(try opener.open(m1) == Data("second".utf8))

        // A message sealed for the other direction is not accepted here.
        let reverse = ChannelSealer(sessionKey: key, sessionID: "s1", direction: .workerToGateway)
        let reflected = try seal(reverse, "third")
        #expect(throws: SealingError.openFailed) { try opener.open(reflected) }
        // Nor one from another session.
        let otherSession = ChannelSealer(sessionKey: key, sessionID: "s2", direction: .gatewayToWorker)
        _ = try seal(otherSession, "x"); _ = try seal(otherSession, "y")
        #expect(throws: SealingError.openFailed) { try opener.open(try seal(otherSession, "z")) }
        #expect(throws: SealingError.openFailed) { try opener.open(Data([1, 2, 3])) }
    }

    @Test func oversizedMessagesAreRefused() {
        let (sealer, _) = pair()
        #expect(throws: SealingError.self) { try sealer.seal(Data(count: ChannelSealer.maxMessageSize + 1)) { _ in } }
    }
}
