import AttestationCore
import Crypto
import Foundation
import TestSupport
import Testing

/// Ed25519 keys and signatures against an independent implementation, the openssl command line
/// (keys it generates load here; what is signed here verifies there), and against RFC 8032's
/// test vectors (Ed25519 is deterministic: a seed signs a message to exactly the listed bytes).
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

    /// RFC 8032 section 7.1, tests 1 and 2: keys, and signatures byte for byte.
    @Test(arguments: [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
        ),
    ])
    func rfc8032Vectors(_ vector: (seed: String, publicKey: String, message: String, signature: String)) throws {
        let key = try Ed25519PrivateKey(seed: try #require(Data(hex: vector.seed)))
        #expect(key.publicKey.raw.hex == vector.publicKey)
        let message = try #require(Data(hex: vector.message))
        let signature = key.signature(for: message)
        #expect(signature.hex == vector.signature)
        #expect(key.publicKey.isValidSignature(signature, for: message))
        // A changed message, a changed signature byte and a non-canonical S (S + L) all fail.
        #expect(!key.publicKey.isValidSignature(signature, for: message + Data([0])))
        var flipped = signature
        flipped[flipped.startIndex + 10] ^= 0x01
        #expect(!key.publicKey.isValidSignature(flipped, for: message))
        #expect(!key.publicKey.isValidSignature(Self.addingL(signature), for: message))
    }

    /// The signature with L (the group order) added to its scalar S: the same point equation
    /// holds, so only a verifier that insists on S < L refuses it (malleability).
    static func addingL(_ signature: Data) -> Data {
        let l: [UInt8] = [
            0xED, 0xD3, 0xF5, 0x5C, 0x1A, 0x63, 0x12, 0x58, 0xD6, 0x9C, 0xF7, 0xA2, 0xDE, 0xF9, 0xDE, 0x14,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ]
        var bytes = [UInt8](signature)
        var carry = 0
        for i in 0..<32 {
            let sum = Int(bytes[32 + i]) + Int(l[i]) + carry
            bytes[32 + i] = UInt8(sum & 0xFF)
            carry = sum >> 8
        }
        return Data(bytes)
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
