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
        let first = sealer.seal(Data("a".utf8), final: false)
        let second = sealer.seal(Data("b".utf8), final: false)
        let last = sealer.seal(Data(), final: true)

        let (_, otherClient) = try sealed()
        #expect(throws: EndToEnd.Failure.self) { try otherClient.open(first) }

        #expect(throws: EndToEnd.Failure.self) { try opener.open(second) }
        #expect(try opener.open(first) == Data("a".utf8))
        #expect(throws: EndToEnd.Failure.self) { try opener.open(first) }
        var flipped = second
        flipped[flipped.count - 1] ^= 1
        #expect(throws: EndToEnd.Failure.self) { try opener.open(flipped) }
        #expect(try opener.open(second) == Data("b".utf8))
        #expect(throws: EndToEnd.Failure.truncated) { try opener.finish() }
        #expect(try opener.open(last).isEmpty)
        try opener.finish()
        #expect(throws: EndToEnd.Failure.outOfOrder) { try opener.open(second) }
    }
}
