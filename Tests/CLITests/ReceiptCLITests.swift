import AttestationCore
import AuditLog
import Foundation
import TestSupport
import Testing

/// `ccgate receipt verify`: a receipt verifies offline under the gateway key, in both forms it
/// travels in, and any changed byte of the response, the request or the receipt fails it.
@Suite struct ReceiptCLITests {
    static var ccgate: String { EvidenceVerifyCLITests.ccgate }

    let key = Ed25519PrivateKey.generate()
    let request = Data(#"{"model":"fake","stream":true,"messages":[]}"#.utf8)
    let stream = Data("data: {\"choices\":[]}\n\ndata: [DONE]\n\n".utf8)

    func receipt(for body: Data, signer: Ed25519PrivateKey? = nil) -> SignedReceipt {
        Receipt(
            gateway: key.publicKey.fingerprint, path: "/v1/chat/completions",
            requestSHA256: HashAlgorithm.sha256.hash(request).hex,
            responseSHA256: HashAlgorithm.sha256.hash(body).hex, status: 200, model: "fake",
            usage: .object(["prompt_tokens": .int(3), "completion_tokens": .int(5)]), worker: "w1", session: "s1",
            evidenceSHA256: String(repeating: "ab", count: 32), policyVersion: 2,
            policySHA256: String(repeating: "cd", count: 32), admissionSeq: 7, time: 1_780_000_000
        ).signed(by: signer ?? key)
    }

    @Test func streamsAndHeaderReceiptsVerifyAndChangedBytesFail() async throws {
        let dir = try TemporaryDirectory("receipts")
        try key.publicKey.pem.write(to: dir.file("gateway.pub"), atomically: true, encoding: .utf8)
        try Ed25519PrivateKey.generate().publicKey.pem.write(
            to: dir.file("other.pub"), atomically: true, encoding: .utf8)
        try request.write(to: dir.file("request.json"))
        try (stream + receipt(for: stream).event).write(to: dir.file("stream.txt"))
        let key = ["--key", dir.file("gateway.pub").path]

        let good = try await ProcessRunner.run(
            Self.ccgate,
            ["receipt", "verify", dir.file("stream.txt").path, "--request", dir.file("request.json").path] + key)
        #expect(
            good.status == 0 && good.stdout.contains("verified") && good.stdout.contains("worker w1"), "\(good.stderr)")

        // The header form: the base64 value, with the response body beside it.
        let body = Data(#"{"choices":[{"message":{"content":"hi"}}]}"#.utf8)
        try body.write(to: dir.file("body.json"))
        try receipt(for: body).headerValue.write(to: dir.file("receipt.txt"), atomically: true, encoding: .utf8)
        let header = try await ProcessRunner.run(
            Self.ccgate,
            ["receipt", "verify", dir.file("receipt.txt").path, "--response", dir.file("body.json").path] + key)
        #expect(header.status == 0, "\(header.stdout)\(header.stderr)")

        var changed = stream
        changed[6] ^= 0x01
        try (changed + receipt(for: stream).event).write(to: dir.file("changed.txt"))
        // Signed by someone else in the gateway's name.
        try (stream + receipt(for: stream, signer: .generate()).event).write(to: dir.file("forged.txt"))
        try Data("{}".utf8).write(to: dir.file("other-request.json"))
        for (file, extra, code) in [
            ("changed.txt", [String](), "receipt.response-mismatch"),
            ("stream.txt", ["--request", dir.file("other-request.json").path], "receipt.request-mismatch"),
            ("forged.txt", [], "receipt.signature-invalid"),
            ("body.json", [], "receipt.malformed"),
        ] {
            let result = try await ProcessRunner.run(
                Self.ccgate, ["receipt", "verify", dir.file(file).path] + extra + key)
            #expect(result.status == 1 && result.stdout.contains(code), "\(file): \(result.stdout)")
        }
        let otherKey = try await ProcessRunner.run(
            Self.ccgate, ["receipt", "verify", dir.file("stream.txt").path, "--key", dir.file("other.pub").path])
        #expect(otherKey.status == 1 && otherKey.stdout.contains("receipt.key-mismatch"))
        let noKey = try await ProcessRunner.run(
            Self.ccgate, ["receipt", "verify", dir.file("stream.txt").path, "--key", dir.file("absent.pub").path])
        #expect(noKey.status == 2)
    }
}
