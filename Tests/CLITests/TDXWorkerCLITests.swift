import AttestationCore
import Foundation
import TDXVerifier
import TestSupport
import Testing

/// `ccworker quote --tee tdx` against a directory laid out like a TDX guest's configfs-tsm and
/// measurement registers (answered by a stand-in TDX module), judged by `ccgate evidence verify`.
@Suite struct TDXWorkerCLITests {
    static var ccworker: String { EvidenceVerifyCLITests.binDirectory.appendingPathComponent("ccworker").path }

    @Test func tdxQuoteFromConfigfsTSMVerifiesWithItsMeasurements() async throws {
        let world = DCAPWorld()
        let module = try FakeTDXModule(world: world)
        defer { module.stop() }
        let dir = try TemporaryDirectory()
        try Data("the engine".utf8).write(to: dir.file("ccinfer"))
        try Data("the model".utf8).write(to: dir.file("model.gguf"))
        try PEM.encode([world.root.certificate]).write(to: dir.file("root.pem"), atomically: true, encoding: .utf8)
        let bundle = try JSONSerialization.data(withJSONObject: world.collateral().fields)
        try bundle.write(to: dir.file("collateral.json"))
        let nonce = String(repeating: "5a", count: 32)

        let quote = try await ProcessRunner.run(
            Self.ccworker,
            [
                "quote", "--tee", "tdx", "--tsm-dir", module.tsm.path, "--rtmr-dir", module.measurements.path, "--ccel",
                module.ccel.path, "--nonce", nonce, "--measure", dir.file("ccinfer").path, "--measure",
                dir.file("model.gguf").path,
                "--out", dir.file("tdx.json").path,
            ])
        #expect(quote.status == 0, "\(quote.stderr)")
        // The register saw both measurements before the quote was made.
        #expect(module.currentRTMR3 != Data(count: 48))

        let imported = try await ProcessRunner.run(
            EvidenceVerifyCLITests.ccgate,
            [
                "collateral", "import", "--dir", dir.file("cache").path, "--root", dir.file("root.pem").path, "--at",
                DCAPWorld.referenceTime.rfc3339, dir.file("collateral.json").path,
            ])
        #expect(imported.status == 0, "\(imported.stderr)")
        let verify = try await ProcessRunner.run(
            EvidenceVerifyCLITests.ccgate,
            [
                "evidence", "verify", dir.file("tdx.json").path, "--root", dir.file("root.pem").path,
                "--collateral-dir",
                dir.file("cache").path, "--at", DCAPWorld.referenceTime.rfc3339, "--nonce", nonce, "--json",
            ])
        let parsed = try JSONSerialization.jsonObject(with: verify.stdoutData) as? [String: Any]
        let object = try #require(parsed, "\(verify.stdout)")
        #expect(verify.status == 0, "\(object)")
        let claims = try #require(object["claims"] as? [String: Any])
        let measured = try #require(claims["measurements"] as? [[String: Any]])
        let paths = measured.compactMap { $0["path"] as? String }
        #expect(paths == [dir.file("ccinfer").path, dir.file("model.gguf").path])
        #expect(measured.first?["digest"] as? String == HashAlgorithm.sha256.hash(Data("the engine".utf8)).hex)
        #expect(claims["rtmr3"] as? String == module.currentRTMR3.hex)
    }

    @Test func missingConfigfsTSMIsAClearError() async throws {
        let dir = try TemporaryDirectory()
        try Data("x".utf8).write(to: dir.file("f"))
        let result = try await ProcessRunner.run(
            Self.ccworker,
            [
                "quote", "--tee", "tdx", "--tsm-dir", dir.file("absent").path, "--rtmr-dir", dir.url.path, "--ccel",
                dir.file("none").path,
            ])
        #expect(result.status == 1)
        #expect(result.stderr.contains("configfs-tsm"))
    }
}
