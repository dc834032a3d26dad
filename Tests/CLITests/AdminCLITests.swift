import Foundation
import TestSupport
import Testing

/// Policy administration through the executables, as an operator does it: keys, signing, apply
/// (dry run and real), show, history, diff against the gateway, rollback, and the refusals with
/// their codes and exit statuses.
@Suite(.serialized) struct AdminCLITests {
    static func ccgate(_ arguments: [String]) async throws -> ProcessResult {
        try await ProcessRunner.run(EvidenceVerifyCLITests.ccgate, arguments)
    }

    @Test func anOperatorAppliesShowsAndRollsBackSignedPolicies() async throws {
        let dir = try TemporaryDirectory("admin-cli")
        let admin = dir.file("admin").path
        #expect(try await Self.ccgate(["keys", "generate", "--out", admin]).status == 0)
        let first = dir.file("first.yaml")
        try "schema: ccgate.policy/v1\nname: first\n".write(to: first, atomically: true, encoding: .utf8)
        #expect(try await Self.ccgate(["policy", "sign", first.path, "--key", admin + ".key"]).status == 0)
        let gateway = try await offPool {
            try GatewayProcess(
                data: dir.file("data"), policy: first, in: dir, extra: ["--admin-key", admin + ".pub"])
        }
        defer { gateway.stop() }

        let second = dir.file("second.yaml")
        try
            "schema: ccgate.policy/v1\nname: second\nevidence:\n  formats: [tdx-quote]\n  tdx: {image_hashes: [\(String(repeating: "ab", count: 32))]}\n"
            .write(
                to: second, atomically: true, encoding: .utf8)
        // Unsigned: refused with its code, exit 1, nothing applied.
        let unsigned = try await Self.ccgate(["policy", "apply", second.path] + gateway.adminArgs)
        #expect(unsigned.status == 1)
        #expect(unsigned.stderr.contains("policy.unsigned"), "\(unsigned.stderr)")
        #expect(try await Self.ccgate(["policy", "sign", second.path, "--key", admin + ".key"]).status == 0)

        let dryRun = try await Self.ccgate(["policy", "apply", second.path, "--dry-run"] + gateway.adminArgs)
        #expect(dryRun.status == 0, "\(dryRun.stderr)")
        #expect(dryRun.stdout.contains("dry run: policy 'second'"), "\(dryRun.stdout)")
        #expect(dryRun.stdout.contains("would evict: no workers"))

        let applied = try await Self.ccgate(["policy", "apply", second.path, "--json"] + gateway.adminArgs)
        #expect(applied.status == 0, "\(applied.stderr)")
        let outcome = try JSONSerialization.jsonObject(with: applied.stdoutData) as? [String: Any]
        #expect(outcome?["version"] as? Int == 2)
        #expect(outcome?["dry_run"] as? Bool == false)

        let show = try await Self.ccgate(["policy", "show"] + gateway.adminArgs)
        #expect(show.status == 0)
        #expect(show.stdout == (try String(contentsOf: second, encoding: .utf8)))
        #expect(show.stderr.contains("# version 2 (in force): 'second'"), "\(show.stderr)")

        let history = try await Self.ccgate(["policy", "history"] + gateway.adminArgs)
        #expect(history.status == 0)
        let rows = history.stdout.split(separator: "\n").dropFirst()
        #expect(rows.count == 2)
        #expect(rows.last?.hasPrefix("*2") == true, "\(history.stdout)")

        let diff = try await Self.ccgate(["policy", "diff", "@1", "@active"] + gateway.adminArgs)
        #expect(diff.status == 1, "differences exit 1: \(diff.stderr)")
        #expect(diff.stdout.contains("formats"), "\(diff.stdout)")

        // Threat: the admin token alone bringing back an older (weaker) signed policy. Its old
        // signature's serial is below the one in force: a rollback needs a fresh signature.
        let replayed = try await Self.ccgate(["policy", "rollback", "1"] + gateway.adminArgs)
        #expect(replayed.status == 1, "\(replayed.stdout)")
        #expect(replayed.stderr.contains("policy.signature-stale"), "\(replayed.stderr)")
        let shown = try await Self.ccgate(["policy", "show", "--version", "1"] + gateway.adminArgs)
        try shown.stdout.write(to: dir.file("v1.yaml"), atomically: true, encoding: .utf8)
        #expect(
            try await Self.ccgate(["policy", "sign", dir.file("v1.yaml").path, "--key", admin + ".key"]).status == 0)
        let rollback = try await Self.ccgate(
            ["policy", "rollback", "1", "--signature", dir.file("v1.yaml.sig").path] + gateway.adminArgs)
        #expect(rollback.status == 0, "\(rollback.stderr)")
        #expect(rollback.stdout.contains("applied: policy 'first' is version 3"), "\(rollback.stdout)")

        let missing = try await Self.ccgate(["policy", "show", "--version", "9"] + gateway.adminArgs)
        #expect(missing.status == 2)
        #expect(missing.stderr.contains("policy.no-such-version"))
        let evict = try await Self.ccgate(["workers", "evict", "nobody"] + gateway.adminArgs)
        #expect(evict.status == 2)
        #expect(evict.stderr.contains("worker.not-admitted"))
        let workers = try await Self.ccgate(["workers", "list", "--json"] + gateway.adminArgs)
        #expect(workers.status == 0)
        #expect(
            (try JSONSerialization.jsonObject(with: workers.stdoutData) as? [String: Any])?["workers"] as? [Any] != nil)
    }
}
