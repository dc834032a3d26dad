import Foundation
import TestSupport
import Testing

/// The `ccgate evidence verify` contract: verdicts, the single JSON object, and exit statuses.
@Suite struct EvidenceVerifyCLITests {
    static var binDirectory: URL {
        if let dir = ProcessInfo.processInfo.environment["CCGATE_BIN_DIR"] { return URL(fileURLWithPath: dir) }
        return Bundle.main.executableURL!.deletingLastPathComponent()
    }
    static var ccgate: String { binDirectory.appendingPathComponent("ccgate").path }
    static let tpmCases = (try? SharedTestData.cases(kind: "tpm")) ?? []

    func json(_ result: ProcessResult) throws -> [String: Any] {
        try #require(
            try JSONSerialization.jsonObject(with: result.stdoutData) as? [String: Any], "stdout: \(result.stdout)")
    }

    /// A lab policy trusting AKs as presented: the shared vectors carry bare AK public keys, and
    /// their expected verdicts are about the quote itself.
    static let labPolicy: String = {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("ccgate-lab-policy-\(getpid()).yaml")
        try? Data("schema: ccgate.policy/v1\nname: lab\nevidence: {tpm: {ak_trust: as-presented}}\n".utf8).write(
            to: url)
        return url.path
    }()

    @Test(arguments: tpmCases)
    func sharedCasesThroughTheCLI(_ c: SharedTestData.Case) async throws {
        var args = [
            "evidence", "verify", SharedTestData.url(c.envelope).path, "--at", c.verify_at, "--json",
            "--policy", Self.labPolicy,
        ]
        if let nonce = c.nonce_hex { args += ["--nonce", nonce] }
        let result = try await ProcessRunner.run(Self.ccgate, args)
        let object = try json(result)
        #expect(object["verdict"] as? String == c.expect.verdict)
        #expect(result.status == (c.expect.verdict == "accept" ? 0 : 1))
        if let reason = c.expect.reason { #expect(object["reason"] as? String == reason) }
        if c.expect.verdict == "accept" { #expect(object["reason"] is NSNull) }
        #expect(object["format"] as? String == "tpm2-quote")
        #expect(object["advisory_ids"] as? [String] == [])
        #expect(object["tcb_status"] is NSNull)
        if let pcrs = c.expect.claims?.pcrs {
            let claimed = (object["claims"] as? [String: Any])?["pcrs"] as? [String: [String: String]]
            for (bank, values) in pcrs { for (i, v) in values { #expect(claimed?[bank]?[i] == v) } }
        }
    }

    @Test func readableReportNamesTheReason() async throws {
        let result = try await ProcessRunner.run(
            Self.ccgate, ["evidence", "verify", SharedTestData.url("tpm/keylime-checkquote-flip.json").path])
        #expect(result.status == 1)
        #expect(result.stdout.contains("REJECT"))
        #expect(result.stdout.contains("quote.signature-invalid"))
    }

    @Test func standardInputIsAccepted() async throws {
        let data = try SharedTestData.data("tpm/keylime-checkquote.json")
        let result = try await ProcessRunner.run(
            Self.ccgate, ["evidence", "verify", "-", "--json", "--policy", Self.labPolicy], stdin: data)
        #expect(result.status == 0)
        #expect(try json(result)["verdict"] as? String == "accept")
    }

    /// Under the default policy a bare AK (no EK, no activation) is no anchor: the same genuine
    /// quote is refused with its own reason code.
    @Test func bareAKIsRefusedUnderTheDefaultPolicy() async throws {
        let c = try #require(Self.tpmCases.first { $0.expect.verdict == "accept" })
        var args = ["evidence", "verify", SharedTestData.url(c.envelope).path, "--at", c.verify_at, "--json"]
        if let nonce = c.nonce_hex { args += ["--nonce", nonce] }
        let result = try await ProcessRunner.run(Self.ccgate, args)
        #expect(result.status == 1)
        #expect(try json(result)["reason"] as? String == "tpm.ak-untrusted")
    }

    @Test func malformedEvidenceIsARejectNotACrash() async throws {
        let dir = try TemporaryDirectory()
        try Data("{\"format\": \"tpm2-quote\", \"version\": 1, \"quote\": 5".utf8).write(to: dir.file("bad.json"))
        let result = try await ProcessRunner.run(
            Self.ccgate, ["evidence", "verify", dir.file("bad.json").path, "--json"])
        #expect(result.status == 1)
        #expect(try json(result)["reason"] as? String == "evidence.malformed")
    }

    @Test(arguments: [
        ["evidence", "verify", "/nonexistent/evidence.json"],
        ["evidence", "verify", "x.json", "--nonce", "xyz"],
        ["evidence", "verify", "x.json", "--at", "tomorrow"],
        ["evidence", "verify"],
        ["evidence", "frobnicate"],
        ["evidence", "verify", "x.json", "--unknown-flag"],
    ])
    func badUsageExitsTwo(_ args: [String]) async throws {
        let result = try await ProcessRunner.run(Self.ccgate, args)
        #expect(result.status == 2, "\(args): \(result.stderr)")
        #expect(!result.stderr.isEmpty)
    }

    @Test func rootsMustBeCertificates() async throws {
        let dir = try TemporaryDirectory()
        try Data("not a certificate".utf8).write(to: dir.file("root.pem"))
        let envelope = SharedTestData.url("tpm/keylime-checkquote.json").path
        let bad = try await ProcessRunner.run(
            Self.ccgate, ["evidence", "verify", envelope, "--root", dir.file("root.pem").path])
        #expect(bad.status == 2)
        let good = try await ProcessRunner.run(
            Self.ccgate,
            [
                "evidence", "verify", envelope, "--root", SharedTestData.url("roots/intel-sgx-root-ca.pem").path,
                "--policy", Self.labPolicy,
            ])
        #expect(good.status == 0, "\(good.stderr)")
    }

    @Test func policyFileApplies() async throws {
        let envelope = SharedTestData.url("tpm/keylime-checkquote.json").path
        let policy = SharedTestData.packageRoot.appendingPathComponent("Policies/default.yaml").path
        let result = try await ProcessRunner.run(
            Self.ccgate, ["evidence", "verify", envelope, "--policy", policy, "--json"])
        #expect(result.status == 1)
        // The default policy's first objection to a bare AK is the AK itself.
        #expect(try json(result)["reason"] as? String == "tpm.ak-untrusted")
        let reasons = try json(result)["reasons"] as? [[String: String]] ?? []
        #expect(reasons.contains { $0["code"] == "policy.measurement-not-allowed" })

        let dir = try TemporaryDirectory()
        try Data(
            "schema: ccgate.policy/v1\nname: loose\nevidence:\n  tpm:\n    allow_sha1: true\n    ak_trust: as-presented\n"
                .utf8
        ).write(
            to: dir.file("loose.yaml"))
        let windows = SharedTestData.url("tpm/goattestation-windows-gcp-shielded-vm.json").path
        #expect(try await ProcessRunner.run(Self.ccgate, ["evidence", "verify", windows]).status == 1)
        let loose = try await ProcessRunner.run(
            Self.ccgate, ["evidence", "verify", windows, "--policy", dir.file("loose.yaml").path])
        #expect(loose.status == 0, "\(loose.stdout)")
    }

    @Test func policyLintReportsPositions() async throws {
        let dir = try TemporaryDirectory()
        try Data("schema: ccgate.policy/v1\nname: x\nevidence:\n  tpmm: {}\n".utf8).write(to: dir.file("p.yaml"))
        let result = try await ProcessRunner.run(Self.ccgate, ["policy", "lint", dir.file("p.yaml").path])
        #expect(result.status == 2)
        #expect(result.stderr.contains("p.yaml:4:3: unknown key 'tpmm'"))
        let ok = try await ProcessRunner.run(
            Self.ccgate,
            ["policy", "lint", SharedTestData.packageRoot.appendingPathComponent("Policies/default.yaml").path])
        #expect(ok.status == 0)
    }

    /// The entry `policy measure` prints is what sha256sum (an independent tool) computes, and a
    /// policy built from it admits exactly that file.
    @Test func policyMeasurePrintsAnEntryThePolicyAccepts() async throws {
        let dir = try TemporaryDirectory()
        try Data("engine bytes".utf8).write(to: dir.file("engine"))
        try Data("model bytes".utf8).write(to: dir.file("my model.gguf"))
        let binary = try await ProcessRunner.run(Self.ccgate, ["policy", "measure", dir.file("engine").path])
        let model = try await ProcessRunner.run(
            Self.ccgate,
            ["policy", "measure", "--name", "my model", "--version", "1.0", dir.file("my model.gguf").path])
        #expect(binary.status == 0 && model.status == 0)
        let independent = try await ProcessRunner.run("sha256sum", [dir.file("engine").path]).stdout.prefix(64)
        #expect(binary.stdout == "- {name: engine, sha256: \(independent), size: 12}\n")
        #expect(model.stdout.hasPrefix(#"- {name: "my model", version: "1.0", sha256: "#))
        let policy =
            "schema: ccgate.policy/v1\nname: measured\nmeasurements:\n  binaries:\n    \(binary.stdout)  models:\n    \(model.stdout)"
        try Data(policy.utf8).write(to: dir.file("p.yaml"))
        let lint = try await ProcessRunner.run(Self.ccgate, ["policy", "lint", dir.file("p.yaml").path])
        #expect(lint.status == 0, "\(lint.stderr)\n\(policy)")
        #expect(lint.stdout.contains("1 binaries, 1 models"))
        let missing = try await ProcessRunner.run(Self.ccgate, ["policy", "measure", dir.file("nope").path])
        #expect(missing.status == 2 && missing.stderr.contains("not a readable file"))
    }

    @Test func helpTeaches() async throws {
        let result = try await ProcessRunner.run(Self.ccgate, ["evidence", "verify", "--help"])
        #expect(result.status == 0)
        #expect(result.stdout.contains("Exit status: 0 accept, 1 reject, 2"))
        #expect(result.stdout.contains("Examples:"))
    }
}
