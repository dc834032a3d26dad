import Foundation
import Testing
import AttestationCore

/// The one-pass JSON member reader the gateway routes and counts with, checked against
/// Foundation's JSON parser on the same texts.
@Suite struct JSONMembersTests {
    static let request = Data(
        #"""
        {"model":"llama-3.1-8b-instruct","messages":[{"role":"system","content":"Be brief.\n\t\"Quoted\" \\ \/ \u00e9\ud83d\ude00 é"},
         {"role":"user","content":"Hi","name":null}],"max_tokens":128,"temperature":0.7,"top_p":1e-2,
         "stream":true,"stop":["\u0000"],"n":-0,"logit_bias":{"50256":-100.5E+2},"extra":[[[]],{},false]}
        """#.utf8)

    @Test func membersAndValuesMatchFoundation() throws {
        let members = try JSONMembers(Self.request)
        let object = try #require(try JSONSerialization.jsonObject(with: Self.request) as? [String: Any])
        #expect(Set(members.members.keys) == Set(object.keys))
        #expect(members.duplicates.isEmpty)
        #expect(members.string("model") == object["model"] as? String)
        #expect(members.bool("stream") == true)
        #expect(members.integer("max_tokens") == 128)
        #expect(members.integer("temperature") == nil, "a fraction is not an integer")
        #expect(members.string("max_tokens") == nil)
        #expect(members.members["messages"]?.kind == .array)
        let system = try #require((object["messages"] as? [[String: Any]])?.first?["content"] as? String)
        let inner = try JSONMembers(Data(#"{"content":"Be brief.\n\t\"Quoted\" \\ \/ \u00e9\ud83d\ude00 é"}"#.utf8))
        #expect(inner.string("content") == system)
        #expect(members.object("logit_bias")?.members["50256"]?.kind == .number)
    }

    /// Threat: a text two parsers read two ways. A name given twice is reported, whatever the
    /// spelling of its escapes.
    @Test func aMemberNamedTwiceIsReported() throws {
        let twice = try JSONMembers(Data(#"{"model":"a","messages":[],"m\u006fdel":"b"}"#.utf8))
        #expect(twice.duplicates == ["model"])
        #expect(twice.string("model") == "a")
        let nestedOnly = try JSONMembers(Data(#"{"model":"a","x":{"model":"b","model":"c"}}"#.utf8))
        #expect(nestedOnly.duplicates.isEmpty, "only the object's own members are its members")
    }

    /// Every strict prefix of a JSON object is not one: each is refused with an offset, none
    /// crashes.
    @Test func everyTruncationIsRefused() {
        for end in 0..<Self.request.count {
            #expect(throws: JSONMembers.Malformed.self) { try JSONMembers(Self.request.prefix(end)) }
        }
    }

    @Test func nestingIsBoundedWithoutExhaustingTheStack() throws {
        func nested(_ depth: Int) -> Data {
            Data(("{\"a\":" + String(repeating: "[", count: depth) + String(repeating: "]", count: depth) + "}").utf8)
        }
        _ = try JSONMembers(nested(JSONMembers.maxDepth - 2))
        #expect(throws: JSONMembers.Malformed.self) { try JSONMembers(nested(JSONMembers.maxDepth)) }
        #expect(throws: JSONMembers.Malformed.self) { try JSONMembers(nested(100_000)) }
    }

    @Test(arguments: [
        "", "[]", "\"x\"", "{", "{}x", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "{,}", "{\"a\":01}", "{\"a\":1.}",
        "{\"a\":.5}", "{\"a\":1e}", "{\"a\":+1}", "{\"a\":tru}", "{\"a\":nul}", "{\"a\":\"\\x\"}",
        "{\"a\":\"\\u12\"}", "{\"a\":\"\\ud800\"}", "{\"a\":\"\\udc00\"}", "{\"a\":\"\\ud800\\u0041\"}",
        "{\"a\":\"\t\"}", "{\"a\":NaN}", "{\"a\":[1,]}", "{'a':1}", "{\"a\":1}}",
    ])
    func malformedTextIsRefused(text: String) {
        #expect(throws: JSONMembers.Malformed.self) { try JSONMembers(Data(text.utf8)) }
    }

    @Test(
        arguments: [
            [0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xC0, 0xAF, 0x22, 0x7D],  // overlong "/"
            [0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xED, 0xA0, 0x80, 0x22, 0x7D],  // encoded surrogate
            [0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xF4, 0x90, 0x80, 0x80, 0x22, 0x7D],  // above U+10FFFF
            [0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xE2, 0x82, 0x22, 0x7D],  // truncated sequence
            [0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0x80, 0x22, 0x7D],  // lone continuation byte
        ] as [[UInt8]])
    func invalidUTF8IsRefused(bytes: [UInt8]) {
        #expect(throws: JSONMembers.Malformed.self) { try JSONMembers(Data(bytes)) }
        #expect((try? JSONSerialization.jsonObject(with: Data(bytes))) == nil, "Foundation accepts it too")
    }

    /// Byte mutations of a real request: accepted exactly when Foundation accepts the text as an
    /// object (an independent parser), and then with the same members.
    @Test func mutationsAgreeWithFoundation() throws {
        var generator = SplitMix(seed: 0x5EED)
        let alphabet = Array(#"{}[]":,\ -+.0123456789eEtrufalsn"#.utf8) + [0x00, 0x09, 0x0A, 0x80, 0xC3, 0xA9, 0xFF]
        var disagreements: [String] = []
        for _ in 0..<10000 {
            var bytes = Array(Self.request)
            for _ in 0..<Int(generator.next() % 3 + 1) {
                let at = Int(generator.next() % UInt64(bytes.count))
                switch generator.next() % 3 {
                case 0: bytes[at] = alphabet[Int(generator.next() % UInt64(alphabet.count))]
                case 1: bytes.remove(at: at)
                default: bytes.insert(alphabet[Int(generator.next() % UInt64(alphabet.count))], at: at)
                }
            }
            let data = Data(bytes)
            let ours = try? JSONMembers(data)
            let theirs = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
            // Foundation accepts a comma before a closing bracket; RFC 8259 does not, nor does this reader.
            if ours == nil, theirs != nil, Self.hasTrailingComma(bytes) { continue }
            if (ours == nil) != (theirs == nil)
                || (ours != nil && ours!.duplicates.isEmpty && Set(ours!.members.keys) != Set(theirs!.keys))
            {
                disagreements.append(String(decoding: data, as: UTF8.self))
            }
        }
        #expect(
            disagreements.isEmpty, "\(disagreements.count) texts read differently, first: \(disagreements.prefix(3))")
    }

    /// Whether a `,` is followed (after whitespace) by `}` or `]` outside strings.
    static func hasTrailingComma(_ bytes: [UInt8]) -> Bool {
        var inString = false
        var escaped = false
        var lastSignificant: UInt8 = 0
        for byte in bytes {
            if inString {
                if escaped {
                    escaped = false
                } else if byte == 0x5C {
                    escaped = true
                } else if byte == 0x22 {
                    inString = false
                }
                continue
            }
            if byte == 0x22 { inString = true }
            if (byte == 0x7D || byte == 0x5D) && lastSignificant == 0x2C { return true }
            if ![0x20, 0x09, 0x0A, 0x0D].contains(byte) { lastSignificant = byte }
        }
        return false
    }
}

/// A small deterministic generator, so that a failing mutation can be reproduced.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
