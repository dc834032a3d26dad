import Foundation
import TestSupport
import Testing

/// `ccgate evidence verify` on TDX and SGX envelopes, and `ccgate collateral import/list`.
@Suite struct DCAPCLITests {
    static var ccgate: String { EvidenceVerifyCLITests.ccgate }
    static let dcapCases =
        ((try? SharedTestData.cases(kind: "tdx")) ?? []) + ((try? SharedTestData.cases(kind: "sgx")) ?? [])

    func json(_ result: ProcessResult) throws -> [String: Any] {
        try #require(
            try JSONSerialization.jsonObject(with: result.stdoutData) as? [String: Any], "stdout: \(result.stdout)")
    }

    @Test(arguments: dcapCases)
    func sharedCasesThroughTheCLI(_ c: SharedTestData.Case) async throws {
        var args = ["evidence", "verify", SharedTestData.url(c.envelope).path, "--at", c.verify_at, "--json"]
        if let nonce = c.nonce_hex { args += ["--nonce", nonce] }
        for root in c.roots ?? [] { args += ["--root", SharedTestData.url(root).path] }
        let result = try await ProcessRunner.run(Self.ccgate, args)
        let object = try json(result)
        #expect(object["verdict"] as? String == c.expect.verdict, "\(c.id): \(object["reasons"] ?? "")")
        #expect(result.status == (c.expect.verdict == "accept" ? 0 : 1))
        if let reason = c.expect.reason { #expect(object["reason"] as? String == reason, "\(c.id)") }
        if let status = c.expect.tcb_status { #expect(object["tcb_status"] as? String == status, "\(c.id)") }
        if let ids = c.expect.advisory_ids { #expect(object["advisory_ids"] as? [String] == ids, "\(c.id)") }
        if c.expect.verdict == "accept", let mrtd = c.expect.claims?.mrtd {
            #expect((object["claims"] as? [String: Any])?["mrtd"] as? String == mrtd)
        }
    }

    /// Offline mode: a quote without collateral is rejected, then accepted once its collateral is
    /// imported into a cache directory, and the verdict names the cache.
    @Test func importedCollateralVerifiesAQuoteWithoutIt() async throws {
        let dir = try TemporaryDirectory()
        let bare = SharedTestData.url("tdx/cocoon-quote-no-collateral.json").path
        let at = "2026-03-01T00:00:00Z"
        let before = try await ProcessRunner.run(
            Self.ccgate, ["evidence", "verify", bare, "--at", at, "--collateral-dir", dir.url.path, "--json"])
        #expect(try json(before)["reason"] as? String == "collateral.missing")

        let imported = try await ProcessRunner.run(
            Self.ccgate,
            [
                "collateral", "import", "--dir", dir.url.path, "--at", at,
                SharedTestData.url("tdx/cocoon-quote-d5-collateral.json").path,
            ])
        #expect(imported.status == 0, "\(imported.stderr)")
        #expect(imported.stdout.contains("4 added"))
        let again = try await ProcessRunner.run(
            Self.ccgate,
            [
                "collateral", "import", "--dir", dir.url.path, "--at", at,
                SharedTestData.url("tdx/cocoon-quote-d5-collateral.json").path,
            ])
        #expect(again.stdout.contains("0 added, 0 replaced, 4 kept"))

        let listed = try await ProcessRunner.run(
            Self.ccgate, ["collateral", "list", "--dir", dir.url.path, "--at", at, "--json"])
        let lines = listed.stdout.split(separator: "\n")
        #expect(lines.count == 4)
        #expect(lines.allSatisfy { $0.contains("\"state\":\"current\"") })

        let after = try await ProcessRunner.run(
            Self.ccgate, ["evidence", "verify", bare, "--at", at, "--collateral-dir", dir.url.path, "--json"])
        let object = try json(after)
        #expect(after.status == 0, "\(object)")
        #expect((object["claims"] as? [String: Any])?["collateral.source"] as? String == "cache")
    }

    /// The shipped Cocoon policy admits the Cocoon image and no other genuine TD.
    @Test func cocoonPolicyPinsTheImageHash() async throws {
        let policy = SharedTestData.packageRoot.appendingPathComponent("Policies/cocoon-tdx.yaml").path
        let cocoon = try await ProcessRunner.run(
            Self.ccgate,
            [
                "evidence", "verify", SharedTestData.url("tdx/cocoon-quote-d5-collateral.json").path, "--at",
                "2026-03-01T00:00:00Z",
                "--policy", policy, "--json",
            ])
        #expect(cocoon.status == 0, "\(cocoon.stdout)")
        let other = try await ProcessRunner.run(
            Self.ccgate,
            [
                "evidence", "verify", SharedTestData.url("tdx/d2-near-gas-test.json").path, "--at",
                "2025-09-10T00:00:00Z",
                "--policy", policy, "--json",
            ])
        #expect(other.status == 1)
        #expect(try json(other)["reason"] as? String == "policy.measurement-not-allowed")
    }

    @Test func garbageBundleIsAClearError() async throws {
        let dir = try TemporaryDirectory()
        try Data("{\"tcb_info\": 3}".utf8).write(to: dir.file("bad.json"))
        let result = try await ProcessRunner.run(
            Self.ccgate, ["collateral", "import", "--dir", dir.file("cache").path, dir.file("bad.json").path])
        #expect(result.status == 2)
        #expect(result.stderr.contains("bad.json"))
        #expect(result.stderr.contains("lacks"))
    }
}
