import Crypto
import Foundation
import Sealing
import Testing

/// Gateway-blind sealing: only the worker's key opens a request, routing fields cannot be
/// changed on the way, and answers open only whole and in order.
@Suite struct EndToEndTests {
    let worker = WorkerKEMKey()
    let body = Data(#"{"model":"m","messages":[{"role":"user","content":"secret"}]}"#.utf8)

    func sealed() throws -> (EndToEnd.Request, EndToEnd.ResponseOpener) {
        try EndToEnd.seal(
            body, path: "/v1/chat/completions", model: "m", stream: true, worker: "w1", workerKey: worker.publicKeyBytes
        )
    }

    @Test func theWorkerOpensTheRequestAndTheClientTheAnswer() throws {
        let (request, opener) = try sealed()
        #expect(request.ciphertext.range(of: Data("secret".utf8)) == nil)
        let (opened, sealer) = try EndToEnd.open(request, path: "/v1/chat/completions", privateKey: worker.privateKey)
        #expect(opened == body)
        let head = sealer.head(status: 201, contentType: "text/event-stream")
        #expect(try opener.openHead(head) == EndToEnd.Head(status: 201, contentType: "text/event-stream"))
        let frames = [
            sealer.seal(Data("a".utf8), final: false), sealer.seal(Data("b".utf8), final: false),
            sealer.seal(Data(), final: true),
        ]
        #expect(try frames.map { try opener.open($0) } == [Data("a".utf8), Data("b".utf8), Data()])
        try opener.finish()
    }

    /// Threat: a gateway re-routing a request (another path, model, worker or stream flag) or
    /// handing it to another worker.
    @Test func changedRoutingOrAnotherKeyDoesNotOpen() throws {
        let (request, _) = try sealed()
        #expect(throws: EndToEnd.Failure.self) {
            try EndToEnd.open(request, path: "/v1/completions", privateKey: worker.privateKey)
        }
        for change in [
            { (r: inout EndToEnd.Request) in r.model = "other" }, { $0.stream = false }, { $0.worker = "w2" },
        ] {
            var altered = request
            change(&altered)
            #expect(throws: EndToEnd.Failure.self) {
                try EndToEnd.open(altered, path: "/v1/chat/completions", privateKey: worker.privateKey)
            }
        }
        #expect(throws: EndToEnd.Failure.badKey) {
            try EndToEnd.open(request, path: "/v1/chat/completions", privateKey: WorkerKEMKey().privateKey)
        }
    }

    /// Threat: answers dropped, reordered, replayed, altered or cut short on the way back, or
    /// sealed under another client's context.
    @Test func answersOpenOnlyWholeAndInOrder() throws {
        let (request, opener) = try sealed()
        let (_, sealer) = try EndToEnd.open(request, path: "/v1/chat/completions", privateKey: worker.privateKey)
        let head = sealer.head(status: 200, contentType: "application/json")
        let first = sealer.seal(Data("a".utf8), final: false)
        let second = sealer.seal(Data("b".utf8), final: false)
        let last = sealer.seal(Data(), final: true)

        let (_, otherClient) = try sealed()
        #expect(throws: EndToEnd.Failure.self) { try otherClient.openHead(head) }
        #expect(throws: EndToEnd.Failure.self) { try opener.open(first) }  // before the head
        var kindFlipped = head
        kindFlipped[kindFlipped.count - 1] ^= 1
        #expect(throws: EndToEnd.Failure.self) { try opener.openHead(kindFlipped) }
        _ = try opener.openHead(head)

        #expect(throws: EndToEnd.Failure.self) { try opener.open(second) }
        #expect(try opener.open(first) == Data("a".utf8))
        #expect(throws: EndToEnd.Failure.self) { try opener.open(first) }
        var flipped = second
        flipped[flipped.count - 1] ^= 1
        #expect(throws: EndToEnd.Failure.self) { try opener.open(flipped) }
        // The kind byte is authenticated: a data frame passed off as the final one fails.
        var finalized = second
        finalized[0] = 1
        #expect(throws: EndToEnd.Failure.self) { try opener.open(finalized) }
        #expect(try opener.open(second) == Data("b".utf8))
        #expect(throws: EndToEnd.Failure.truncated) { try opener.finish() }
        #expect(try opener.open(last).isEmpty)
        try opener.finish()
        #expect(throws: EndToEnd.Failure.outOfOrder) { try opener.open(second) }
    }

    /// Threat: a gateway replaying a sealed request so that the worker answers twice under one
    /// key and nonce sequence. Each answer draws its own salt: the same plaintext seals to
    /// different frames, and one answer's frames do not open under the other's head.
    @Test func aReplayedRequestIsAnsweredUnderAFreshKey() throws {
        let (request, opener) = try sealed()
        let (_, one) = try EndToEnd.open(request, path: "/v1/chat/completions", privateKey: worker.privateKey)
        let (_, two) = try EndToEnd.open(request, path: "/v1/chat/completions", privateKey: worker.privateKey)
        let headOne = one.head(status: 200, contentType: "application/json")
        let headTwo = two.head(status: 200, contentType: "application/json")
        let frameOne = one.seal(Data("same answer".utf8), final: true)
        let frameTwo = two.seal(Data("same answer".utf8), final: true)
        #expect(headOne != headTwo && frameOne != frameTwo)
        _ = try opener.openHead(headOne)
        #expect(throws: EndToEnd.Failure.self) { try opener.open(frameTwo) }
        #expect(try opener.open(frameOne) == Data("same answer".utf8))
    }
}
