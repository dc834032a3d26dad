import AttestationCore
import Foundation
import TestSupport
import Testing

@testable import TPMVerifier

/// Hostile input: thousands of mutated envelopes, each of which must be rejected with a known
/// reason code, without a crash or a hang. Seeds are real evidence; the generator is seeded so a
/// failure reproduces.
@Suite struct MutationTests {
    struct Seed: Sendable, CustomStringConvertible {
        let file: String
        let nonce: String?
        let allowSHA1: Bool
        var description: String { file }
    }

    static let seeds = [
        Seed(file: "tpm/keylime-checkquote.json", nonce: "4169354d35536a596a6e6b797634503769744831", allowSHA1: false),
        Seed(
            file: "tpm/trustee-tpm-evidence.json",
            nonce:
                "a04182b506878d4f29b91ee606a71a0d3361ccf1b22db20c98adcaa537bea393ef0e41a18b3569ab678f1497fbc5c12000000000000000000000000000000000",
            allowSHA1: false),
        Seed(file: "tpm/goattestation-windows-gcp-shielded-vm.json", nonce: "", allowSHA1: true),
    ]
    static let at = Date.rfc3339("2026-03-01T00:00:00Z")!
    static let known = Set(ReasonCode.all)

    func load(_ seed: Seed) throws -> (object: [String: Any], verifier: TPMQuoteVerifier, nonce: Data?) {
        let object = try #require(
            try JSONSerialization.jsonObject(with: SharedTestData.data(seed.file)) as? [String: Any])
        return (
            object, TPMQuoteVerifier(options: .init(allowSHA1: seed.allowSHA1)), seed.nonce.flatMap { Data(hex: $0) }
        )
    }

    /// Every mutation of a signed or key field must be rejected.
    @Test(arguments: seeds)
    func mutatedSignedFieldsAreRejected(_ seed: Seed) async throws {
        try await onCPULane {
            let (object, verifier, nonce) = try load(seed)
            #expect(
                verifier.verify(
                    envelopeData: try JSONSerialization.data(withJSONObject: object), expectedNonce: nonce, at: Self.at
                ).isAccepted)
            var rng = SeededRandom(seed: 0xCC6A7E)
            var count = 0
            var codes = [ReasonCode: Int]()
            let fields = ["quote", "signature"] + (object["ak_public"] != nil ? ["ak_public"] : [])
            for field in fields {
                let original = [UInt8](Data(base64Encoded: object[field] as! String)!)
                for mutation in Mutation.allCases {
                    for _ in 0..<20 {
                        var mutated = object
                        mutated[field] = Data(mutation.apply(original, &rng)).base64EncodedString()
                        let verdict = verifier.verify(
                            envelopeData: try JSONSerialization.data(withJSONObject: mutated),
                            expectedNonce: nonce, at: Self.at)
                        count += 1
                        #expect(!verdict.isAccepted, "\(seed) \(field) \(mutation) was accepted")
                        if let code = verdict.reason {
                            #expect(Self.known.contains(code))
                            codes[code, default: 0] += 1
                        }
                    }
                }
            }
            // Quoted PCR values: any change breaks the PCR digest.
            let pcrs = object["pcrs"] as! [String: [String: String]]
            for (bank, values) in pcrs {
                for (index, value) in values {
                    var bytes = [UInt8](Data(hex: value)!)
                    bytes[Int.random(in: 0..<bytes.count, using: &rng)] ^= 0x01
                    var mutated = object
                    var newPCRs = pcrs
                    newPCRs[bank]![index] = Data(bytes).hex
                    mutated["pcrs"] = newPCRs
                    let verdict = verifier.verify(
                        envelopeData: try JSONSerialization.data(withJSONObject: mutated),
                        expectedNonce: nonce, at: Self.at)
                    count += 1
                    // A PCR value outside the quoted selection is not covered by the quote and is
                    // not reported as a claim; one inside must break the digest.
                    if verdict.isAccepted {
                        #expect(verdict.claims?.pcrs[bank]?[Int(index)!] == nil)
                    } else {
                        #expect(verdict.reason == .pcrDigestMismatch)
                    }
                }
            }
            #expect(count >= 300)
            #expect(codes[.quoteSignatureInvalid, default: 0] > 0)
            #expect(codes[.evidenceMalformed, default: 0] > 0)
        }
    }

    /// Mutations of the JSON text itself and of field shapes: never a crash, every reject carries
    /// a known code, and an accept is only possible when the evidence bytes are unchanged.
    @Test(arguments: seeds)
    func mutatedEnvelopeTextNeverCrashes(_ seed: Seed) async throws {
        try await onCPULane {
            let (object, verifier, nonce) = try load(seed)
            let text = [UInt8](try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]))
            var rng = SeededRandom(seed: 0x5EED)
            var count = 0
            for mutation in Mutation.allCases {
                for _ in 0..<40 {
                    let mutated = Data(mutation.apply(text, &rng))
                    let verdict = verifier.verify(envelopeData: mutated, expectedNonce: nonce, at: Self.at)
                    count += 1
                    if let code = verdict.reason { #expect(Self.known.contains(code)) }
                    if verdict.isAccepted {
                        // Only harmless edits (inside unquoted or unsigned parts) can keep an accept.
                        let reparsed = try? JSONSerialization.jsonObject(with: mutated) as? [String: Any]
                        #expect(reparsed?["quote"] as? String == object["quote"] as? String)
                        #expect(reparsed?["signature"] as? String == object["signature"] as? String)
                    }
                }
            }
            // Field shape attacks.
            let shapes: [(String, Any)] = [
                ("quote", 42), ("quote", ["a": 1]), ("quote", "!!!not base64!!!"), ("signature", NSNull()),
                ("pcrs", "x"), ("pcrs", ["sha256": ["16": 5]]), ("pcrs", ["md5": ["0": "00"]]),
                ("pcrs", ["sha256": ["-1": String(repeating: "00", count: 32)]]),
                ("pcrs", ["sha256": ["016": String(repeating: "00", count: 32)]]),
                ("pcrs", ["sha256": ["99999999999999999999": String(repeating: "00", count: 32)]]),
                ("format", "tpm3-quote"), ("version", 2), ("version", "1"), ("version", 1.5), ("version", true),
                ("ak_tpm2b_public", "AAAA"), ("event_log", "AAAAAAAAAAA="),
                ("ima_log", Data("10 x ima-ng".utf8).base64EncodedString()),
                ("event_log", 7), ("ima_log", Data([0xff, 0xfe]).base64EncodedString()),
            ]
            for (field, value) in shapes {
                var mutated = object
                mutated[field] = value
                let verdict = verifier.verify(
                    envelopeData: try JSONSerialization.data(withJSONObject: mutated), expectedNonce: nonce, at: Self.at
                )
                count += 1
                #expect(!verdict.isAccepted, "\(field)=\(value) was accepted")
                if let code = verdict.reason { #expect(Self.known.contains(code)) }
            }
            #expect(count >= 250)
        }
    }

    @Test func deepNestingAndHugeInputAreRefusedCheaply() {
        let verifier = TPMQuoteVerifier()
        let deep = Data(String(repeating: "[", count: 100_000).utf8)
        #expect(verifier.verify(envelopeData: deep, expectedNonce: nil, at: Self.at).reason == .evidenceMalformed)
        let deepObject = Data(("{\"a\":" + String(repeating: "{\"a\":", count: 50_000)).utf8)
        #expect(verifier.verify(envelopeData: deepObject, expectedNonce: nil, at: Self.at).reason == .evidenceMalformed)
        let huge = Data(count: EvidenceEnvelope.maxSize + 1)
        #expect(verifier.verify(envelopeData: huge, expectedNonce: nil, at: Self.at).reason == .evidenceMalformed)
        for text in ["", "null", "[]", "\"tpm2-quote\"", "{\"format\":\"tpm2-quote\"}", "{\"version\":1}"] {
            #expect(
                verifier.verify(envelopeData: Data(text.utf8), expectedNonce: nil, at: Self.at).reason
                    == .evidenceMalformed)
        }
    }
}
