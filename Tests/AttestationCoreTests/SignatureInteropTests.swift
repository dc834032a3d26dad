import AttestationCore
import Foundation
import TestSupport
import Testing

/// Signatures made by the openssl command (an independent implementation driving the same
/// primitives from outside) verify here; one changed byte of message or signature does not.
@Suite struct SignatureInteropTests {
    struct KeyCase: Sendable, CustomStringConvertible {
        let genArgs: [String]
        let signArgs: [String]
        let scheme: SignatureScheme
        var description: String { scheme.description + " " + genArgs.joined(separator: " ") }
    }

    static let cases = [
        KeyCase(
            genArgs: ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"], signArgs: ["-sha256"],
            scheme: .rsassaPKCS1v15(.sha256)),
        KeyCase(
            genArgs: ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"], signArgs: ["-sha384"],
            scheme: .rsassaPKCS1v15(.sha384)),
        KeyCase(
            genArgs: ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            signArgs: ["-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"],
            scheme: .rsaPSS(.sha256)),
        KeyCase(
            genArgs: ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            signArgs: ["-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:max"],
            scheme: .rsaPSS(.sha256)),
        KeyCase(
            genArgs: ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"], signArgs: ["-sha256"],
            scheme: .ecdsa(.sha256)),
        KeyCase(
            genArgs: ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"], signArgs: ["-sha384"],
            scheme: .ecdsa(.sha384)),
    ]

    @Test(arguments: cases)
    func opensslSignaturesVerify(_ c: KeyCase) async throws {
        let dir = try TemporaryDirectory()
        let message = Data("TPMS_ATTEST stand-in \(c)".utf8)
        try message.write(to: dir.file("msg"))
        try #require(
            try await ProcessRunner.run(
                "openssl", ["genpkey"] + c.genArgs + ["-out", "key.pem"], currentDirectory: dir.url
            )
            .status == 0)
        try #require(
            try await ProcessRunner.run(
                "openssl", ["pkey", "-in", "key.pem", "-pubout", "-outform", "DER", "-out", "pub.der"],
                currentDirectory: dir.url
            ).status == 0)
        try #require(
            try await ProcessRunner.run(
                "openssl", ["dgst"] + c.signArgs + ["-sign", "key.pem", "-out", "sig", "msg"],
                currentDirectory: dir.url
            ).status == 0)
        let key = try PublicKey(spkiDER: Data(contentsOf: dir.file("pub.der")))
        let sig = [UInt8](try Data(contentsOf: dir.file("sig")))
        #expect(key.verify(signature: sig, message: [UInt8](message), scheme: c.scheme))

        var badMessage = [UInt8](message)
        badMessage[3] ^= 0x20
        #expect(!key.verify(signature: sig, message: badMessage, scheme: c.scheme))
        var badSig = sig
        badSig[badSig.count / 2] ^= 0x01
        #expect(!key.verify(signature: badSig, message: [UInt8](message), scheme: c.scheme))
        // The wrong hash for the scheme fails too.
        let other: SignatureScheme
        switch c.scheme {
        case .rsassaPKCS1v15(let h): other = .rsassaPKCS1v15(h == .sha256 ? .sha384 : .sha256)
        case .rsaPSS(let h): other = .rsassaPKCS1v15(h)
        case .ecdsa(let h): other = .ecdsa(h == .sha256 ? .sha384 : .sha256)
        }
        #expect(!key.verify(signature: sig, message: [UInt8](message), scheme: other))
    }

    /// Threat: forging under a factorable key. RSA below 2048 bits is refused outright.
    @Test func shortRSAKeysAreRefused() async throws {
        let dir = try TemporaryDirectory()
        try #require(
            try await ProcessRunner.run(
                "openssl", ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out", "k.pem"],
                currentDirectory: dir.url
            ).status == 0)
        try #require(
            try await ProcessRunner.run(
                "openssl", ["pkey", "-in", "k.pem", "-pubout", "-outform", "DER", "-out", "p.der"],
                currentDirectory: dir.url
            ).status == 0)
        #expect(throws: PublicKeyError.self) { try PublicKey(spkiDER: Data(contentsOf: dir.file("p.der"))) }
    }

    /// A key rebuilt from its raw parts (as TPM structures carry it) equals the DER original.
    @Test func rawPartsRebuildTheSameKey() async throws {
        let dir = try TemporaryDirectory()
        try #require(
            try await ProcessRunner.run(
                "openssl", ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "k.pem"],
                currentDirectory: dir.url
            ).status == 0)
        try #require(
            try await ProcessRunner.run(
                "openssl", ["pkey", "-in", "k.pem", "-pubout", "-outform", "DER", "-out", "p.der"],
                currentDirectory: dir.url
            ).status == 0)
        let der = try Data(contentsOf: dir.file("p.der"))
        let point = [UInt8](der.suffix(65))
        #expect(point[0] == 0x04)
        let rebuilt = try PublicKey(curve: .p256, x: Array(point[1...32]), y: Array(point[33...64]))
        #expect(rebuilt.spkiDER == der)
        #expect(throws: PublicKeyError.self) {
            try PublicKey(curve: .p256, x: Array(point[1...32]), y: Array(repeating: 1, count: 32))
        }
        #expect(throws: PublicKeyError.self) { try PublicKey(spkiDER: der + Data([0])) }
        #expect(throws: PublicKeyError.self) { try PublicKey(spkiDER: Data(der.prefix(40))) }
    }
}

@Suite struct EncodingTests {
    @Test func hexRoundTrips() {
        let bytes = Data((0...255).map { UInt8($0) })
        #expect(Data(hex: bytes.hex) == bytes)
        #expect(Data(hex: "0xABcd") == Data([0xab, 0xcd]))
        #expect(Data(hex: "abc") == nil)
        #expect(Data(hex: "zz") == nil)
    }

    @Test func digestsMatchKnownAnswers() {
        // FIPS 180 "abc" test vectors.
        let abc = Data("abc".utf8)
        #expect(HashAlgorithm.sha1.hash(abc).hex == "a9993e364706816aba3e25717850c26c9cd0d89d")
        #expect(
            HashAlgorithm.sha256.hash(abc).hex == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(HashAlgorithm.sha384.hash(abc).hex.hasPrefix("cb00753f45a35e8bb5a03d699ac65007272c32ab0eded163"))
    }

    @Test func rfc3339Parses() {
        #expect(Date.rfc3339("2026-03-01T00:00:00Z")?.timeIntervalSince1970 == 1_772_323_200)
        #expect(Date.rfc3339("2026-03-01T01:00:00.5+01:00")?.timeIntervalSince1970 == 1_772_323_200.5)
        #expect(Date.rfc3339("yesterday") == nil)
    }

    @Test func envelopeFieldsAreTyped() throws {
        let env = try EvidenceEnvelope.parse(
            Data(#"{"format":"tpm2-quote","version":1,"quote":"AAEC","pcrs":{"sha256":{"0":"00"}}}"#.utf8)
        ).get()
        #expect(try env.base64("quote").get() == Data([0, 1, 2]))
        #expect(throws: Reason.self) { try env.base64("signature").get() }
        #expect(try env.stringTable("pcrs").get()?["sha256"]?["0"] == "00")
        #expect(throws: Reason.self) { try EvidenceEnvelope.parse(Data(#"{"format":"x","version":true}"#.utf8)).get() }
    }

    /// Certificate chains as collateral carries them: every block in order, line breaks of
    /// either kind and text between blocks allowed; a block without an end or with a body that
    /// is not base64 makes the whole text unreadable, never a shorter chain.
    @Test func pemBlocksAreReadInOrderOrNotAtAll() {
        let a = Data([0x30, 0x03, 0x02, 0x01, 0x01])
        let b = Data(repeating: 0xAB, count: 100)
        let text =
            "junk\r\n" + PEMBlock.encode(a, label: "CERTIFICATE").replacingOccurrences(of: "\n", with: "\r\n")
            + "between\n" + PEMBlock.encode(b, label: "CERTIFICATE")
        #expect(PEMBlock.all(in: Array(text.utf8), label: "CERTIFICATE") == [a, b])
        #expect(PEMBlock.all(in: Array("no blocks".utf8), label: "CERTIFICATE") == [])
        let unterminated = PEMBlock.encode(a, label: "CERTIFICATE") + "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n"
        #expect(PEMBlock.all(in: Array(unterminated.utf8), label: "CERTIFICATE") == nil)
        let notBase64 = "-----BEGIN CERTIFICATE-----\nMAM*AQE=\n-----END CERTIFICATE-----\n"
        #expect(PEMBlock.all(in: Array(notBase64.utf8), label: "CERTIFICATE") == nil)
    }

    /// Nesting up to 16 levels is read; deeper is refused before it costs stack.
    @Test func envelopeNestingIsBoundedAtSixteen() {
        func nested(_ levels: Int) -> Data {
            let arrays = levels - 1
            return Data(
                (#"{"format":"f","version":1,"a":"# + String(repeating: "[", count: arrays)
                    + String(repeating: "]", count: arrays) + "}").utf8)
        }
        #expect((try? EvidenceEnvelope.parse(nested(16)).get()) != nil)
        let scalarAtSixteen = Data(
            (#"{"format":"f","version":1,"a":"# + String(repeating: "[", count: 15) + "1"
                + String(repeating: "]", count: 15) + "}").utf8)
        #expect((try? EvidenceEnvelope.parse(scalarAtSixteen).get()) != nil)
        #expect(throws: Reason.self) { try EvidenceEnvelope.parse(nested(17)).get() }
        #expect(throws: Reason.self) { try EvidenceEnvelope.parse(nested(100_000)).get() }
    }

    /// Threat: evidence text two readers see differently. A member named twice, at the top or in
    /// an object a verifier reads, is malformed evidence, whichever copy a reader would take;
    /// and base64 with bytes outside ASCII is not quietly read around them.
    @Test func envelopeMembersNamedTwiceAreMalformed() throws {
        let twice = #"{"format":"tpm2-quote","version":1,"quote":"AAEC","quote":"AAED"}"#
        let failure = EvidenceEnvelope.parse(Data(twice.utf8))
        guard case .failure(let reason) = failure else {
            Issue.record("an envelope naming 'quote' twice was read")
            return
        }
        #expect(reason.code == .evidenceMalformed && reason.message.contains("quote"))
        let escapedTwice = #"{"format":"tpm2-quote","version":1,"quote":"AAEC","\u0071uote":"AAED"}"#
        #expect(throws: Reason.self) { try EvidenceEnvelope.parse(Data(escapedTwice.utf8)).get() }

        let nested = try EvidenceEnvelope.parse(
            Data(
                #"{"format":"f","version":1,"pcrs":{"sha256":{"0":"00","0":"11"}},"collateral":{"a":"1","a":"2"},"ok":{"a":"1"}}"#
                    .utf8)
        ).get()
        #expect(throws: Reason.self) { try nested.stringTable("pcrs").get() }
        #expect(throws: Reason.self) { try nested.stringObject("collateral").get() }
        #expect(try nested.stringObject("ok").get() == ["a": "1"])

        let foreign = try EvidenceEnvelope.parse(Data(#"{"format":"f","version":1,"quote":"AA\u00e9EC"}"#.utf8)).get()
        #expect(throws: Reason.self) { try foreign.base64("quote").get() }
        // The peer's name is not echoed when it is not short printable text (refusals are audited).
        let hostile = EvidenceEnvelope.parse(Data(#"{"format":"f","version":1,"\u001b[2J":1,"\u001b[2J":2}"#.utf8))
        guard case .failure(let hidden) = hostile else {
            Issue.record("an envelope naming a member twice was read")
            return
        }
        #expect(!hidden.message.unicodeScalars.contains("\u{1B}"), "\(hidden.message)")

        let wrapped = try EvidenceEnvelope.parse(Data(#"{"format":"f","version":1,"quote":"AA\nEC"}"#.utf8)).get()
        #expect(try wrapped.base64("quote").get() == Data([0, 1, 2]))
    }
}
