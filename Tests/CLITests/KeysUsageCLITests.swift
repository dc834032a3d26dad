import Foundation
import TestSupport
import Testing

/// Named API keys and the usage ledger through the executables, as an operator works them:
/// `ccgate keys` against a running gateway, `ccgate usage` against its data directory.
@Suite(.serialized) struct KeysUsageCLITests {
    static func ccgate(_ arguments: [String]) async throws -> ProcessResult {
        try await ProcessRunner.run(EvidenceVerifyCLITests.ccgate, arguments)
    }

    /// Status of `GET /v1/models` with `key`.
    static func models(_ gateway: GatewayProcess, key: String) async throws -> String {
        try await ProcessRunner.run(
            "curl",
            [
                "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(gateway.ports["api"]!)/v1/models",
                "-H", "Authorization: Bearer \(key)",
            ]
        ).stdout
    }

    @Test func anOperatorIssuesRotatesAndRevokesKeysAndSignsAStatement() async throws {
        let dir = try TemporaryDirectory("keys-cli")
        let policy = dir.file("policy.yaml")
        try "schema: ccgate.policy/v1\nname: keys\n".write(to: policy, atomically: true, encoding: .utf8)
        let gateway = try await offPool { try GatewayProcess(data: dir.file("data"), policy: policy, in: dir) }
        defer { gateway.stop() }

        let created = try await Self.ccgate(
            ["keys", "create", "--name", "team a", "--rpm", "60", "--quota", "1000/day", "--models", "fake", "--json"]
                + gateway.adminArgs)
        #expect(created.status == 0, "\(created.stderr)")
        let issued = try JSONSerialization.jsonObject(with: created.stdoutData) as? [String: Any]
        let secret = issued?["secret"] as? String ?? ""
        let id = (issued?["key"] as? [String: Any])?["id"] as? String ?? ""
        #expect(secret.hasPrefix("sk-ccg-") && id.hasPrefix("key_"))
        #expect(try await Self.models(gateway, key: secret) == "200")

        let list = try await Self.ccgate(["keys", "list"] + gateway.adminArgs)
        #expect(list.status == 0)
        #expect(list.stdout.contains(id) && list.stdout.contains("team a") && list.stdout.contains("0/1000 per day"))
        #expect(!list.stdout.contains(secret), "the list shows a secret")

        let rotated = try await Self.ccgate(["keys", "rotate", id, "--grace", "600"] + gateway.adminArgs)
        #expect(rotated.status == 0, "rotate: \(rotated.stderr)")
        let newSecret =
            rotated.stdout.split(separator: "\n").first { $0.hasPrefix("secret: ") }.map { String($0.dropFirst(8)) }
            ?? ""
        #expect(try await Self.models(gateway, key: secret) == "200", "the old secret ended inside its grace")
        #expect(try await Self.models(gateway, key: newSecret) == "200")
        let shown = try await Self.ccgate(["keys", "show", id] + gateway.adminArgs)
        #expect(shown.stdout.components(separatedBy: "  secret …").count == 3, "\(shown.stdout)")

        let revoked = try await Self.ccgate(["keys", "revoke", id] + gateway.adminArgs)
        #expect(revoked.status == 0 && revoked.stdout.hasPrefix("revoked \(id)"))
        #expect(try await Self.models(gateway, key: newSecret) == "401")
        #expect(try await Self.models(gateway, key: secret) == "401")

        // Refusals name their reason and exit non-zero.
        let unknown = try await Self.ccgate(["keys", "revoke", "key_0000000000000000"] + gateway.adminArgs)
        #expect(unknown.status != 0 && unknown.stderr.contains("key.unknown"), "\(unknown.stderr)")
        let badQuota = try await Self.ccgate(["keys", "create", "--name", "x", "--quota", "many"] + gateway.adminArgs)
        #expect(badQuota.status == 64 || badQuota.status == 2, "\(badQuota.status) \(badQuota.stderr)")

        // The ledger (empty: no worker served) reports, and a statement verifies until changed.
        let data = dir.file("data").path
        let report = try await Self.ccgate(["usage", "report", "--by", "provider", "--data-dir", data])
        #expect(report.status == 0 && report.stdout.contains("no requests"), "\(report.stdout)\(report.stderr)")
        let statement = dir.file("statement.json").path
        let provider = "0:" + String(repeating: "ab", count: 32)
        let open = try await Self.ccgate(
            ["usage", "statement", "--provider", provider, "--period", "2999-01", "--data-dir", data])
        #expect(open.status == 2 && open.stderr.contains("has not ended"), "\(open.stderr)")
        let signed = try await Self.ccgate(
            [
                "usage", "statement", "--provider", provider, "--period", "2026-11", "--data-dir", data, "--out",
                statement,
            ])
        #expect(signed.status == 0, "\(signed.stderr)")
        let verified = try await Self.ccgate(["usage", "verify", statement, "--key", gateway.keyFile.path])
        #expect(verified.status == 0 && verified.stdout.hasPrefix("ok: "), "\(verified.stderr)")
        let text = try String(contentsOfFile: statement, encoding: .utf8)
        try text.replacingOccurrences(of: #""requests":0"#, with: #""requests":7"#)
            .write(toFile: statement, atomically: true, encoding: .utf8)
        let changed = try await Self.ccgate(["usage", "verify", statement, "--key", gateway.keyFile.path])
        #expect(changed.status == 1 && changed.stderr.contains("statement.signature"), "\(changed.stderr)")

        // Every key change is in the audit log.
        let export = try await Self.ccgate(["audit", "export"] + gateway.adminArgs)
        for event in ["key-created", "key-rotated", "key-revoked"] {
            #expect(
                export.stdout.contains(#""event":"\#(event)""#), "no \(event) entry in \(export.stdout.count) bytes")
        }
    }
}
