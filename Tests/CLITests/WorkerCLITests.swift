import Foundation
import TestSupport
import Testing

/// `ccworker quote` end to end against a real swtpm, judged by `ccgate evidence verify`.
@Suite struct WorkerCLITests {
    static var ccworker: String { EvidenceVerifyCLITests.binDirectory.appendingPathComponent("ccworker").path }
    static var ccgate: String { EvidenceVerifyCLITests.ccgate }

    @Test func quoteMadeByTheWorkerVerifies() throws {
        let tpm = try Swtpm.start()
        defer { tpm.stop() }
        let dir = try TemporaryDirectory()
        try Data("engine v1".utf8).write(to: dir.file("ccinfer"))
        let nonce = String(repeating: "5a", count: 32)
        let quote = try ProcessRunner.run(
            Self.ccworker,
            [
                "quote", "--tpm", tpm.tcti, "--nonce", nonce,
                "--measure", dir.file("ccinfer").path, "--out", dir.file("e.json").path,
            ])
        #expect(quote.status == 0, "\(quote.stderr)")
        let verify = try ProcessRunner.run(
            Self.ccgate, ["evidence", "verify", dir.file("e.json").path, "--nonce", nonce, "--json"])
        #expect(verify.status == 0, "\(verify.stdout)")
        let object = try #require(try JSONSerialization.jsonObject(with: verify.stdoutData) as? [String: Any])
        let measurements = (object["claims"] as? [String: Any])?["measurements"] as? [[String: Any]]
        #expect(measurements?.first?["path"] as? String == dir.file("ccinfer").path)

        // The policy allowlist decides: allow exactly this binary (and no model: rejected).
        let digest = (measurements?.first?["digest"] as? String) ?? ""
        try Data(
            """
            schema: ccgate.policy/v1
            name: test
            measurements:
              binaries: [{name: ccinfer, sha256: \(digest)}]
              models: [{name: m, sha256: \(String(repeating: "00", count: 32))}]
            """.utf8
        ).write(to: dir.file("p.yaml"))
        let policy = try ProcessRunner.run(
            Self.ccgate,
            [
                "evidence", "verify", dir.file("e.json").path, "--nonce", nonce,
                "--policy", dir.file("p.yaml").path, "--json",
            ])
        #expect(policy.status == 1)
        let reasons =
            (try JSONSerialization.jsonObject(with: policy.stdoutData) as? [String: Any])?["reasons"]
            as? [[String: String]]
        #expect(reasons?.map { $0["code"] } == ["policy.measurement-not-allowed"])
        #expect(reasons?.first?["message"]?.contains("no allowlisted model") == true)
    }

    @Test func unreachableTPMIsAClearError() throws {
        let result = try ProcessRunner.run(Self.ccworker, ["quote", "--tpm", "swtpm:host=127.0.0.1,port=1"])
        #expect(result.status == 1)
        #expect(result.stderr.hasPrefix("ccworker: TPM open"))
        #expect(!result.stderr.contains("ERROR:tcti"))
    }

    @Test(arguments: [
        ["quote", "--ak", "dsa"], ["quote", "--nonce", String(repeating: "00", count: 65)],
        ["quote", "--pcrs", "0,99"], ["quote", "--measure", "/nonexistent"], ["nope"],
    ])
    func badUsageExitsTwo(_ args: [String]) throws {
        let result = try ProcessRunner.run(Self.ccworker, args)
        #expect(result.status == 2, "\(args): \(result.stderr)")
    }
}
