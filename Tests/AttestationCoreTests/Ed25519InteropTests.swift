import AttestationCore
import Crypto
import Foundation
import TestSupport
import Testing

/// Ed25519 keys and signatures against two independent implementations: the openssl command
/// line (keys it generates load here; what is signed here verifies there) and swift-crypto
/// (Ed25519 is deterministic: the same seed signs the same message to the same bytes).
@Suite struct Ed25519InteropTests {
    @Test func opensslKeysLoadAndOpensslVerifiesOurSignatures() async throws {
        let dir = try TemporaryDirectory("ed25519")
        _ = try await ProcessRunner.run(
            "openssl", ["genpkey", "-algorithm", "ed25519", "-out", dir.file("k.pem").path])
        _ = try await ProcessRunner.run(
            "openssl", ["pkey", "-in", dir.file("k.pem").path, "-pubout", "-out", dir.file("p.pem").path])
        let key = try Ed25519PrivateKey(pem: try String(contentsOf: dir.file("k.pem"), encoding: .utf8))
        let pub = try Ed25519PublicKey(text: try String(contentsOf: dir.file("p.pem"), encoding: .utf8))
        #expect(key.publicKey == pub)
        let message = Data("ccgate interop \(UUID())".utf8)
        try message.write(to: dir.file("m"))
        try key.signature(for: message).write(to: dir.file("s"))
        let ok = try await ProcessRunner.run(
            "openssl",
            [
                "pkeyutl", "-verify", "-pubin", "-inkey", dir.file("p.pem").path, "-rawin", "-in", dir.file("m").path,
                "-sigfile", dir.file("s").path,
            ])
        #expect(ok.stdout.contains("Signature Verified Successfully"))

        // And the other way: openssl signs, we verify; one flipped bit fails.
        _ = try await ProcessRunner.run(
            "openssl",
            [
                "pkeyutl", "-sign", "-inkey", dir.file("k.pem").path, "-rawin", "-in", dir.file("m").path, "-out",
                dir.file("s2").path,
            ])
        var theirs = try Data(contentsOf: dir.file("s2"))
        #expect(pub.isValidSignature(theirs, for: message))
        theirs[10] ^= 1
        #expect(!pub.isValidSignature(theirs, for: message))
        #expect(!pub.isValidSignature(try Data(contentsOf: dir.file("s")), for: message + Data([0])))
        // Our PEM is openssl's PEM.
        #expect(try Ed25519PrivateKey(pem: key.pem).publicKey == pub)
        #expect(
            pub.pem.trimmingCharacters(in: .whitespacesAndNewlines)
                == (try String(contentsOf: dir.file("p.pem"), encoding: .utf8)).trimmingCharacters(
                    in: .whitespacesAndNewlines))
    }

    @Test func swiftCryptoSignsTheSameBytes() throws {
        var generator = SeededRandom(seed: 7)
        for _ in 0..<20 {
            let seed = Data((0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) })
            let ours = try Ed25519PrivateKey(seed: seed)
            let theirs = try Curve25519.Signing.PrivateKey(rawRepresentation: seed)
            #expect(ours.publicKey.raw == theirs.publicKey.rawRepresentation)
            let message = Data(
                (0..<Int.random(in: 0...200, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator)
                })
            #expect(ours.signature(for: message) == (try theirs.signature(for: message)))
            #expect(theirs.publicKey.isValidSignature(ours.signature(for: message), for: message))
        }
    }

    @Test func malformedKeysAreRefused() {
        #expect(throws: Ed25519KeyError.self) { try Ed25519PublicKey(text: "garbage") }
        #expect(throws: Ed25519KeyError.self) { try Ed25519PublicKey(raw: Data(count: 31)) }
        #expect(throws: Ed25519KeyError.self) {
            try Ed25519PrivateKey(pem: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        }
        // A P-256 public key in PEM is not an Ed25519 key.
        let p256 = P256.Signing.PrivateKey().publicKey.pemRepresentation
        #expect(throws: Ed25519KeyError.self) { try Ed25519PublicKey(text: p256) }
    }
}
