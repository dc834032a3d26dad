import Foundation
import TestSupport
import Testing

@testable import Inference

/// The engine checks the model it loads against the digest its worker measured.
@Suite struct ModelDigestTests {
    static func hex(_ text: String, chunk: Int = .max) -> String {
        var hasher = SHA256Hasher()
        let bytes = Array(text.utf8)
        var offset = 0
        repeat {
            let end = min(offset + chunk, bytes.count)
            bytes[offset..<end].withUnsafeBytes { hasher.update($0) }
            offset = end
        } while offset < bytes.count
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    /// FIPS 180-4 examples, fed whole and in odd-sized pieces.
    @Test func knownAnswers() {
        #expect(Self.hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(Self.hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        let two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
        for chunk in [1, 7, 63, 64, 65, .max] {
            #expect(Self.hex(two, chunk: chunk) == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        }
        #expect(
            Self.hex(String(repeating: "a", count: 1000), chunk: 100)
                == "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3")
    }

    /// Threat: a model swapped on disk after the worker measured it. ccinfer refuses to serve it
    /// with its own code, whether the digest comes by option or from the worker's environment.
    @Test func aModelOtherThanTheMeasuredOneIsRefused() async throws {
        let model = try References.environment.get().model.path
        let other = String(repeating: "0", count: 64)
        let byOption = try await ProcessRunner.run(
            EngineErrorTests.ccinfer, ["generate", "--model", model, "--model-sha256", other, "--prompt", "x"],
            environment: Lavapipe.environment)
        #expect(byOption.status == 1)
        #expect(byOption.stderr.contains("model.digest-mismatch"), "\(byOption.stderr)")
        var env = Lavapipe.environment
        env["CCINFER_MODEL_SHA256"] = other
        let byWorker = try await ProcessRunner.run(
            EngineErrorTests.ccinfer, ["generate", "--model", model, "--prompt", "x", "--max-tokens", "1"],
            environment: env)
        #expect(byWorker.status == 1)
        #expect(byWorker.stderr.contains("model.digest-mismatch"))
        // The measured digest (the published one for this file) is accepted.
        env["CCINFER_MODEL_SHA256"] = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
        let measured = try await ProcessRunner.run(
            EngineErrorTests.ccinfer, ["generate", "--model", model, "--prompt", "x", "--max-tokens", "1"],
            environment: env)
        #expect(measured.status == 0, "\(measured.stderr)")
        // The worker's digest wins: an engine argument naming another digest is refused.
        let contradicted = try await ProcessRunner.run(
            EngineErrorTests.ccinfer,
            ["generate", "--model", model, "--model-sha256", String(repeating: "1", count: 64), "--prompt", "x"],
            environment: env)
        #expect(contradicted.status == 2)
        #expect(contradicted.stderr.contains("contradicts"), "\(contradicted.stderr)")
        let bad = try await ProcessRunner.run(
            EngineErrorTests.ccinfer, ["generate", "--model", model, "--model-sha256", "xyz", "--prompt", "x"])
        #expect(bad.status == 2)
    }
}
