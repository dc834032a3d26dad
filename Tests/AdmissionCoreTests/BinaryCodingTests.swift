import Foundation
import Testing
import WorkerProtocol

/// The binary forms of channel payloads and sealed frames (BinaryCoding.swift).
@Suite struct BinaryCodingTests {
    static let payloads: [ChannelPayload] = [
        .request(
            id: 1, method: "POST", path: "/v1/chat/completions", body: Data(#"{"model":"m"}"#.utf8), requestID: "r-1"),
        .request(id: .max, method: "", path: "", body: Data(), requestID: ""),
        .head(id: 2, status: 200, contentType: "text/event-stream"),
        .head(id: 3, status: -1, contentType: "ünïcode"),
        .data(id: 4, bytes: Data((0..<300).map { UInt8($0 % 256) })),
        .end(id: 5),
        .failure(id: 6, message: "engine closed the connection"),
        .cancel(id: 7),
        .sealedRequest(id: 8, path: "/v1/completions", envelope: Data(repeating: 0xAB, count: 64), requestID: "x"),
        .usage(id: 9, counts: Data(#"{"prompt_tokens":3}"#.utf8)),
        .challenge(nonce: Data(repeating: 7, count: 32)),
        .ended(code: "admin.evicted", message: "bye", judged: nil),
        .ended(code: "evidence.bad", message: "", judged: Data(repeating: 1, count: 32)),
    ]

    @Test func everyPayloadRoundTrips() throws {
        for payload in Self.payloads {
            #expect(try ChannelPayload(decoding: payload.encoded()) == payload)
            #expect(payload.encodedSize == payload.encoded().count)
            // Also from a slice that does not start at index 0 (as bytes cut from a larger buffer).
            let padded = Data([0xFF]) + payload.encoded()
            #expect(try ChannelPayload(decoding: padded.dropFirst()) == payload)
        }
    }

    /// Threat: a peer sending cut, padded or corrupted payloads to crash the reader or make it
    /// allocate what a length field claims. Every prefix, every byte appended, unknown tags,
    /// lengths past the end and invalid UTF-8 are malformed, never a crash.
    @Test func damagedPayloadsAreMalformed() {
        for payload in Self.payloads {
            let bytes = payload.encoded()
            for cut in 0..<bytes.count {
                #expect(throws: FrameError.self) { try ChannelPayload(decoding: bytes.prefix(cut)) }
            }
            #expect(throws: FrameError.self) { try ChannelPayload(decoding: bytes + Data([0])) }
        }
        var unknown = ChannelPayload.end(id: 1).encoded()
        unknown[0] = 0xEE
        #expect(throws: FrameError.malformed("unknown channel payload 238")) { try ChannelPayload(decoding: unknown) }
        // A length of 4 GiB - 1 with a few bytes behind it.
        var huge = ChannelPayload.data(id: 1, bytes: Data([1, 2, 3])).encoded()
        huge.replaceSubrange(9..<13, with: [0xFF, 0xFF, 0xFF, 0xFF])
        #expect(throws: FrameError.self) { try ChannelPayload(decoding: huge) }
        // A string that is not UTF-8.
        var text = ChannelPayload.failure(id: 1, message: "ab").encoded()
        text[text.count - 1] = 0xFF
        #expect(throws: FrameError.malformed("a string is not UTF-8")) { try ChannelPayload(decoding: text) }
        // A control payload carrying a request id; a bad flag.
        var control = ChannelPayload.challenge(nonce: Data([1])).encoded()
        control[8] = 1
        #expect(throws: FrameError.self) { try ChannelPayload(decoding: control) }
        var flag = ChannelPayload.ended(code: "c", message: "m", judged: nil).encoded()
        flag[flag.count - 1] = 2
        #expect(throws: FrameError.malformed("bad flag")) { try ChannelPayload(decoding: flag) }
    }

    @Test func sealedMessagesTravelAsBinaryFrames() throws {
        let box = Data((0..<64).map { UInt8($0) })
        let frame = try WireMessage.sealed(box).frame()
        // 4-byte length, the marker, the box: no JSON, no base64.
        #expect(frame.count == 4 + 1 + box.count)
        #expect(frame[4] == 0x01)
        #expect(try WireMessage(frameBody: frame.dropFirst(4)) == .sealed(box))
        // Other messages stay JSON and round-trip.
        let hello = WireMessage.hello(.init(workerID: "w", kemPublicKey: Data(count: 32), models: ["m"]))
        let helloFrame = try hello.frame()
        #expect(helloFrame[4] == UInt8(ascii: "{"))
        #expect(try WireMessage(frameBody: helloFrame.dropFirst(4)) == hello)
        // The JSON form of a sealed message is refused: each message has one form.
        let json = Data(#"{"type":"sealed","body":{"box":"AAEC"}}"#.utf8)
        #expect(throws: FrameError.self) { try WireMessage(frameBody: json) }
        #expect(throws: EncodingError.self) { try JSONEncoder().encode(WireMessage.sealed(box)) }
        #expect(throws: FrameError.empty) { try WireMessage(frameBody: Data()) }
    }
}
