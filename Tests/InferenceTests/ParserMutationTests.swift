import Foundation
@testable import Inference
import TestSupport
import Testing

/// The engine's HTTP request reader and JSON parser on thousands of mutated requests (the same
/// exercise `make fuzz` runs under libFuzzer): every input ends in parsed requests or a refusal
/// with a 4xx/501 status, and never in a crash; the framings a client may use give the same
/// request, and the ones that can be read two ways are refused.
@Suite struct ParserMutationTests {
    static let body = Array(
        #"{"model":"m","messages":[{"role":"user","content":"Hi \u00e9 \ud83d\ude00"}],"max_tokens":16,"stop":["\n"],"stream":true}"#
            .utf8)

    static func lengthFramed(_ body: [UInt8]) -> [UInt8] {
        Array("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body
    }

    static func chunked(_ body: [UInt8], size: Int) -> [UInt8] {
        var out = Array("POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)
        for start in stride(from: 0, to: body.count, by: size) {
            let piece = body[start..<min(body.count, start + size)]
            out += Array("\(String(piece.count, radix: 16))\r\n".utf8) + piece + [13, 10]
        }
        return out + Array("0\r\n\r\n".utf8)
    }

    @Test func framingsGiveTheSameRequest() {
        let expected = ParserExercise.Outcome.request(
            method: "POST", path: "/v1/chat/completions", bodyBytes: Self.body.count, json: true)
        #expect(ParserExercise.run(Self.lengthFramed(Self.body)) == [expected])
        #expect(ParserExercise.run(Self.chunked(Self.body, size: 7)) == [expected])
        // Two pipelined requests are two requests.
        #expect(ParserExercise.run(Self.lengthFramed(Self.body) + Self.chunked(Self.body, size: 50)).count == 2)
    }

    /// Threat: request smuggling — a body whose end two readers on the path would find in
    /// different places.
    @Test func ambiguousFramingsAreRefused() {
        let both = Array(
            "POST /v1/completions HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".utf8)
        #expect(ParserExercise.run(both) == [.refused(status: 400)])
        let gzip = Array("POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".utf8)
        #expect(ParserExercise.run(gzip) == [.refused(status: 501)])
        // Repeated or disguised framing headers, signed or padded numbers, folded lines, lone
        // line ends, non-ASCII look-alikes. Each is followed by what a lenient reader would take
        // as a whole request (a 2-byte body, or a chunked one), so only a refusal passes.
        let body = "2\r\nab\r\n0\r\n\r\n"
        for head in [
            "Content-Length: 2\r\nContent-Length: 2", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            "Content-Length: +2", "Content-Length: 2\u{A0}", "Transfer-Encoding : chunked",
            "Transfer-Encoding: chunked\u{3000}",
            "Transfer-Encoding: chun\u{212A}ed", "Tran\u{17F}fer-Encoding: chunked", "X-A: 1\r\n folded: x",
            "X: a\nTransfer-Encoding: chunked", "X: a\rTransfer-Encoding: chunked",
        ] {
            let framing = head.contains("Content-Length") ? "ab" : body
            let bytes = Array("POST /v1/completions HTTP/1.1\r\n\(head)\r\n\r\n\(framing)".utf8)
            // 400, or 501 for a coding that is not exactly "chunked".
            let outcome = ParserExercise.run(bytes)
            #expect(
                outcome == [.refused(status: 400)] || outcome == [.refused(status: 501)],
                "\(head.debugDescription) → \(outcome)")
        }
        // The same requests, well formed, are read.
        for head in ["Content-Length: 2", "Transfer-Encoding: chunked"] {
            let framing = head.contains("Content-Length") ? "ab" : body
            let bytes = Array("POST /v1/completions HTTP/1.1\r\n\(head)\r\n\r\n\(framing)".utf8)
            #expect(
                ParserExercise.run(bytes)
                    == [.request(method: "POST", path: "/v1/completions", bodyBytes: 2, json: false)])
        }
        // Chunk sizes that are not plain hex (a sign, a space, one that would overflow the body
        // count), each followed by enough bytes for a lenient reader to take the chunk.
        for size in ["7fffffffffffffff", "-1", "+a", " a", "a\n"] {
            let bytes = Array(
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n\(size)\r\n0123456789\r\n0\r\n\r\n"
                    .utf8)
            #expect(ParserExercise.run(bytes) == [.refused(status: 400)], "\(size.debugDescription)")
        }
        let plain = Array(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\na\r\n0123456789\r\n0\r\n\r\n".utf8)
        #expect(ParserExercise.run(plain) == [.request(method: "POST", path: "/", bodyBytes: 11, json: false)])
        // A chunk longer than its size line says.
        let overlong = Array(
            "POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n".utf8)
        #expect(ParserExercise.run(overlong) == [.refused(status: 400)])
    }

    /// Threat: a body of many repeated keys made to cost quadratic time. 200,000 keys parse in
    /// one pass (a scan per key would take minutes).
    @Test func manyKeysParseInLinearTime() async throws {
        // Off the cooperative pool: seconds of work in a debug build.
        let value = try await offPool { () throws -> JSONValue in
            var text = "{"
            for i in 0..<200_000 { text += "\"k\(i % 100_000)\":\(i)," }
            text += "\"end\":true}"
            return try JSONValue.parse(text)
        }
        guard case .object(let pairs) = value else { throw SetupError("not an object") }
        #expect(pairs.count == 100_001)
        #expect(value["k5"] == .number(100_005))
    }

    @Test func mutatedRequestsNeverCrash() {
        var rng = SeededGenerator(seed: 0x5EED)
        let seeds = [
            Self.lengthFramed(Self.body), Self.chunked(Self.body, size: 9),
            Array("GET /v1/models HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\nConnection: close\r\n\r\n".utf8),
        ]
        let tokens = [
            "\r\n", "\r\n\r\n", ":", "Content-Length: ", "Transfer-Encoding: chunked", "-1", "ffffffffffffffff",
            "99999999999999999999", "\\u", "\\ud800", "[", "{", "\"", "1e999", "\u{0}", "\u{FF}",
        ].map { Array($0.utf8) }
        var outcomes = [String: Int]()
        for round in 0..<3000 {
            var bytes = seeds[round % seeds.count]
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                let at = Int.random(in: 0...bytes.count, using: &rng)
                switch Int.random(in: 0..<5, using: &rng) {
                case 0 where at < bytes.count: bytes[at] ^= UInt8(1 << Int.random(in: 0..<8, using: &rng))
                case 1: bytes.removeLast(bytes.count - at)
                case 2: bytes.insert(contentsOf: tokens.randomElement(using: &rng)!, at: at)
                case 3 where at < bytes.count: bytes.remove(at: at)
                default: bytes.insert(UInt8.random(in: 0...255, using: &rng), at: at)
                }
            }
            for outcome in ParserExercise.run(bytes) {
                switch outcome {
                case .request(_, _, _, let json): outcomes[json ? "request, JSON body" : "request", default: 0] += 1
                case .refused(let status): outcomes["refused \(status)", default: 0] += 1
                }
            }
            _ = ParserExercise.json(Data(bytes.suffix(from: min(bytes.count, bytes.count / 2))))
        }
        print("parser mutations: \(outcomes.sorted { $0.key < $1.key })")
        // The mutations reach both sides: requests still parse, and each refusal kind occurs.
        #expect(outcomes["request, JSON body", default: 0] > 30)
        #expect(outcomes["refused 400", default: 0] > 100)
    }
}
