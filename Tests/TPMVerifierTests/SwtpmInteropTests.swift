import AttestationCore
import EventLog
import Foundation
import TestSupport
import Testing
import WorkerAgent

@testable import TPMVerifier

/// Interoperability with independent TPM software on a real swtpm: quotes made by tpm2-tools
/// verify here, and quotes made by this project's ESYS code verify with `tpm2_checkquote`.
/// The TPM is serialized per test (no resource manager), so each test starts its own.
@Suite(.serialized) struct SwtpmInteropTests {
    static let now = Date.rfc3339("2026-11-25T00:00:00Z")!

    /// A quote by `tpm2_quote` with an AK made by `tpm2_createak` under the EK.
    @Test(arguments: ["ecc", "rsa"])
    func tpm2ToolsQuoteVerifies(_ keyAlg: String) async throws {
        let tpm = try await Swtpm.start()
        defer { tpm.stop() }
        let dir = try TemporaryDirectory()
        let nonce = Data((0..<32).map { _ in UInt8.random(in: 0...255) })
        try await tpm.tool("tpm2_createek", ["-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"], in: dir.url)
        try await tpm.tool("tpm2_flushcontext", ["-t"], in: dir.url)
        try await tpm.tool(
            "tpm2_createak",
            [
                "-C", "ek.ctx", "-c", "ak.ctx", "-G", keyAlg, "-g", "sha256",
                "-s", keyAlg == "ecc" ? "ecdsa" : "rsassa", "-u", "ak.pem", "-f", "pem", "-n", "ak.name",
            ],
            in: dir.url)
        try await tpm.tool("tpm2_flushcontext", ["-t"], in: dir.url)
        try await tpm.tool("tpm2_pcrextend", ["16:sha256=" + String(repeating: "ab", count: 32)], in: dir.url)
        try await tpm.tool(
            "tpm2_quote",
            [
                "-c", "ak.ctx", "-l", "sha256:0,1,2,16", "-q", nonce.hex, "-m", "quote.msg",
                "-s", "quote.sig", "-g", "sha256",
            ], in: dir.url)
        try await tpm.tool("tpm2_flushcontext", ["-t"], in: dir.url)
        let pcrText = try await tpm.tool("tpm2_pcrread", ["sha256:0,1,2,16"], in: dir.url).stdout
        let pcrs = Self.parsePCRRead(pcrText)
        #expect(pcrs.count == 4)

        let pem = try String(contentsOf: dir.file("ak.pem"), encoding: .utf8)
        let der = pem.split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined()
        let envelope: [String: Any] = [
            "format": "tpm2-quote", "version": 1, "ak_public": der,
            "quote": try Data(contentsOf: dir.file("quote.msg")).base64EncodedString(),
            "signature": try Data(contentsOf: dir.file("quote.sig")).base64EncodedString(),
            "pcrs": ["sha256": pcrs],
        ]
        let data = try JSONSerialization.data(withJSONObject: envelope)
        let verdict = TPMQuoteVerifier().verify(envelopeData: data, expectedNonce: nonce, at: Self.now)
        #expect(verdict.isAccepted, "\(verdict.reasons)")
        #expect(verdict.claims?.pcrs["sha256"]?[16] == pcrs["16"])

        // The same quote presented with an old nonce is a replay.
        let replay = TPMQuoteVerifier().verify(
            envelopeData: data, expectedNonce: Data(repeating: 7, count: 32), at: Self.now)
        #expect(replay.reason == .nonceMismatch)
    }

    /// A quote by this project's ESYS code verifies with `tpm2_checkquote` (signature, nonce and
    /// PCR values), and in this project's verifier.
    @Test(arguments: AttestationKeyAlgorithm.allCases)
    func esysQuoteVerifiesWithCheckquote(_ keyAlg: AttestationKeyAlgorithm) async throws {
        let tpm = try await Swtpm.start()
        defer { tpm.stop() }
        let dir = try TemporaryDirectory()
        let nonce = Data((0..<32).map { _ in UInt8.random(in: 0...255) })
        let indices = [0, 7, 16, 23]
        let pcrValues: [Int: Data]
        let quote: TPMQuote
        let akPublic: Data
        do {
            let device = try TPMDevice(tcti: tpm.tcti)
            let key = try device.createAttestationKey(keyAlg)
            try device.extend(pcr: 23, digests: [.sha256: HashAlgorithm.sha256.hash(Data("engine".utf8))])
            quote = try device.quote(key: key, qualifyingData: nonce, bank: .sha256, indices: indices)
            pcrValues = try device.readPCRs(bank: .sha256, indices: indices)
            akPublic = key.tpm2bPublic
        }
        try akPublic.write(to: dir.file("ak.tss"))
        try quote.attest.write(to: dir.file("quote.msg"))
        try quote.signature.write(to: dir.file("quote.sig"))
        try Data(indices.flatMap { pcrValues[$0]! }).write(to: dir.file("pcrs.bin"))
        let check = try await ProcessRunner.run(
            "tpm2_checkquote",
            [
                "-u", "ak.tss", "-m", "quote.msg", "-s", "quote.sig", "-f", "pcrs.bin", "-l", "sha256:0,7,16,23",
                "-g", "sha256", "-q", nonce.hex,
            ], currentDirectory: dir.url)
        #expect(check.status == 0, "tpm2_checkquote: \(check.stderr)")

        // Independent check of a negative: tpm2_checkquote refuses a wrong nonce too.
        let wrong = try await ProcessRunner.run(
            "tpm2_checkquote",
            [
                "-u", "ak.tss", "-m", "quote.msg", "-s", "quote.sig", "-f", "pcrs.bin", "-l", "sha256:0,7,16,23",
                "-g", "sha256", "-q", String(repeating: "00", count: 32),
            ], currentDirectory: dir.url)
        #expect(wrong.status != 0)

        let envelope: [String: Any] = [
            "format": "tpm2-quote", "version": 1, "ak_tpm2b_public": akPublic.base64EncodedString(),
            "quote": quote.attest.base64EncodedString(), "signature": quote.signature.base64EncodedString(),
            "pcrs": ["sha256": Dictionary(uniqueKeysWithValues: pcrValues.map { (String($0.key), $0.value.hex) })],
        ]
        let verdict = TPMQuoteVerifier(options: .init(requireRestrictedAK: true))
            .verify(
                envelopeData: try JSONSerialization.data(withJSONObject: envelope), expectedNonce: nonce, at: Self.now)
        #expect(verdict.isAccepted, "\(verdict.reasons)")
        #expect(verdict.claims?.fields["ak.restricted"] == "true")
    }

    /// The negatives the gateway depends on, each from a genuine swtpm quote changed in one place:
    /// an old nonce, an altered PCR value, an altered measurement-log entry.
    @Test func negativesFromARealQuote() async throws {
        let tpm = try await Swtpm.start()
        defer { tpm.stop() }
        let dir = try TemporaryDirectory()
        let engine = dir.file("ccinfer")
        let model = dir.file("model.gguf")
        try Data("engine build 1".utf8).write(to: engine)
        try Data("model weights".utf8).write(to: model)
        let nonce = Data((0..<32).map { _ in UInt8.random(in: 0...255) })

        let device = try TPMDevice(tcti: tpm.tcti)
        defer { withExtendedLifetime(device) {} }
        let key = try device.createAttestationKey()
        let measurer = FileMeasurer(pcr: 23)
        let log = IMALog(entries: [
            try measurer.measure(engine, into: device), try measurer.measure(model, into: device),
        ])
        let builder = QuoteEnvelopeBuilder(device: device, key: key)
        let good = try builder.envelope(qualifyingData: nonce, indices: [0, 23], imaLog: log)

        let verifier = TPMQuoteVerifier()
        let accepted = verifier.verify(envelopeData: good, expectedNonce: nonce, at: Self.now)
        #expect(accepted.isAccepted, "\(accepted.reasons)")
        #expect(accepted.claims?.measuredFiles.map(\.path) == [engine.path, model.path])
        #expect(
            accepted.claims?.measuredFiles.first?.digestHex
                == HashAlgorithm.sha256.hash(Data("engine build 1".utf8)).hex)

        // Old nonce: a replayed quote.
        let oldNonce = verifier.verify(envelopeData: good, expectedNonce: Data(repeating: 0, count: 32), at: Self.now)
        #expect(oldNonce.reason == .nonceMismatch)

        // Altered PCR value.
        var object = try #require(try JSONSerialization.jsonObject(with: good) as? [String: Any])
        var pcrs = object["pcrs"] as! [String: [String: String]]
        pcrs["sha256"]!["23"] = String(repeating: "00", count: 32)
        object["pcrs"] = pcrs
        let altered = verifier.verify(
            envelopeData: try JSONSerialization.data(withJSONObject: object), expectedNonce: nonce, at: Self.now)
        #expect(altered.reason == .pcrDigestMismatch)

        // Altered log entry: a different engine digest, with a consistent template hash.
        let forged = IMALog.Entry(
            pcr: 23, fileAlgorithm: .sha256, fileDigest: HashAlgorithm.sha256.hash(Data("engine build 2".utf8)),
            path: engine.path)
        var object2 = try #require(try JSONSerialization.jsonObject(with: good) as? [String: Any])
        object2["ima_log"] = Data(IMALog(entries: [forged, log.entries[1]]).text.utf8).base64EncodedString()
        let forgedVerdict = verifier.verify(
            envelopeData: try JSONSerialization.data(withJSONObject: object2), expectedNonce: nonce, at: Self.now)
        #expect(forgedVerdict.reason == .eventLogReplayMismatch)

        // A log whose register was not quoted proves nothing.
        let unquoted = try builder.envelope(qualifyingData: nonce, indices: [0], imaLog: log)
        #expect(
            verifier.verify(envelopeData: unquoted, expectedNonce: nonce, at: Self.now).reason
                == .eventLogReplayMismatch)
    }

    /// Mutations of a genuine ECDSA quote with an IMA log, made on swtpm: every change to a
    /// signed field or to the log is rejected with a known code (an emptied log proves nothing
    /// and so yields no measured files).
    @Test func mutatedSwtpmEvidenceIsRejected() async throws {
        let tpm = try await Swtpm.start()
        defer { tpm.stop() }
        let dir = try TemporaryDirectory()
        try Data("engine".utf8).write(to: dir.file("engine"))
        let nonce = Data(repeating: 0x42, count: 32)
        let good: Data
        do {
            let device = try TPMDevice(tcti: tpm.tcti)
            let key = try device.createAttestationKey(.eccP256)
            let entry = try FileMeasurer(pcr: 23).measure(dir.file("engine"), into: device)
            good = try QuoteEnvelopeBuilder(device: device, key: key)
                .envelope(qualifyingData: nonce, indices: [0, 23], imaLog: IMALog(entries: [entry]))
        }
        let object = try #require(try JSONSerialization.jsonObject(with: good) as? [String: Any])
        let verifier = TPMQuoteVerifier()
        let baseline = verifier.verify(envelopeData: good, expectedNonce: nonce, at: Self.now)
        #expect(baseline.isAccepted)
        let originalFiles = baseline.claims?.measuredFiles ?? []
        #expect(originalFiles.count == 1)
        var rng = SeededRandom(seed: 0x7A7)
        var count = 0
        for field in ["quote", "signature", "ak_tpm2b_public", "ima_log"] {
            let bytes = [UInt8](Data(base64Encoded: object[field] as! String)!)
            for mutation in Mutation.allCases {
                for _ in 0..<15 {
                    var mutated = object
                    mutated[field] = Data(mutation.apply(bytes, &rng)).base64EncodedString()
                    let verdict = verifier.verify(
                        envelopeData: try JSONSerialization.data(withJSONObject: mutated),
                        expectedNonce: nonce, at: Self.now)
                    count += 1
                    if verdict.isAccepted {
                        // Only changes that leave the proven facts as they were can keep an accept:
                        // attributes of the AK's public area outside the key, hex case in the log,
                        // or an emptied log (which proves no measured files).
                        let files = verdict.claims?.measuredFiles ?? []
                        #expect(
                            field == "ak_tpm2b_public"
                                || (field == "ima_log" && (files.isEmpty || files == originalFiles)),
                            "mutated \(field) was accepted")
                    } else {
                        #expect(ReasonCode.all.contains(verdict.reason!))
                    }
                }
            }
        }
        #expect(count == 420)
    }

    /// `tpm2_pcrread` prints `  16: 0xABCD…` lines under `sha256:`.
    static func parsePCRRead(_ text: String) -> [String: String] {
        var values = [String: String]()
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, let index = Int(parts[0]), parts[1].hasPrefix("0x") else { continue }
            values[String(index)] = parts[1].dropFirst(2).lowercased()
        }
        return values
    }
}
