import Foundation
import Gateway
import TestSupport
import Testing

/// `/metrics` (checked by Prometheus's own promtool) and `/readyz` on a running gateway with a
/// real swtpm worker.
@Suite(.serialized) struct MetricsReadinessTests {
    static func scrape(_ gateway: GatewayHarness) async throws -> String {
        try await ProcessRunner.run(
            "curl",
            [
                "-s", "--max-time", "30", "http://127.0.0.1:\(gateway.adminPort)/metrics", "-H",
                "Authorization: Bearer \(gateway.server.adminToken)",
            ]
        ).stdout
    }

    /// The value of the sample whose line starts with `prefix` (name and labels), 0 when absent.
    static func sample(_ text: String, _ prefix: String) -> Double {
        text.split(separator: "\n").first { $0.hasPrefix(prefix + " ") }.flatMap {
            Double($0.split(separator: " ").last ?? "")
        }
            ?? 0
    }

    /// Must show: `/metrics` passes `promtool check metrics` and its counters move as requests
    /// and admissions happen; `/readyz` fails while the store is unwritable.
    @Test func metricsPassPromtoolAndMoveAndReadinessFollowsTheStore() async throws {
        let (gateway, fake, worker) = try await ClientKeyTests.setUp()
        defer {
            Task {
                await worker.stop(); await fake.stop(); await gateway.stop()
            }
        }

        let before = try await Self.scrape(gateway)
        #expect(Self.sample(before, #"ccgate_admissions_total{decision="admit",reason="none"}"#) == 1, "\(before)")
        #expect(Self.sample(before, #"ccgate_workers_admitted{model="fake",tier="tpm-agent-log"}"#) == 1)
        #expect(Self.sample(before, #"ccgate_requests_total{model="fake",status="200"}"#) == 0)

        for i in 0..<3 {
            #expect(try await ClientKeyTests.chat(gateway, key: gateway.apiKey, tag: "[m-\(i)]").status == 200)
        }
        _ = try await ClientKeyTests.chat(gateway, key: "wrong", tag: "[m-x]")
        let after = try await Self.scrape(gateway)
        #expect(Self.sample(after, #"ccgate_requests_total{model="fake",status="200"}"#) == 3, "\(after)")
        #expect(Self.sample(after, #"ccgate_tokens_total{model="fake",kind="completion"}"#) > 0)
        #expect(Self.sample(after, #"ccgate_request_duration_seconds_count{model="fake"}"#) == 3)
        #expect(Self.sample(after, #"ccgate_refusals_total{status="401",code="invalid_api_key"}"#) == 1)
        #expect(Self.sample(after, "ccgate_audit_append_seconds_count") >= 1)

        // Prometheus's own checker reads the exposition.
        let scratch = try TemporaryDirectory("metrics")
        let file = scratch.file("metrics.txt")
        try after.write(to: file, atomically: true, encoding: .utf8)
        let check = try await ProcessRunner.run("sh", ["-c", "promtool check metrics < '\(file.path)'"])
        #expect(check.status == 0, "promtool: \(check.stdout) \(check.stderr)")

        // Ready, then not while another process holds the database's write lock, then ready again.
        let ready = try await gateway.request("/readyz", key: "")
        #expect(ready.status == 200, "\(ready.body)")
        let locked = gateway.dataDirectory.appendingPathComponent("locked")
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        holder.arguments = [
            "-c",
            "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None); c.execute('BEGIN IMMEDIATE'); open(sys.argv[2],'w').close(); time.sleep(6)",
            gateway.dataDirectory.appendingPathComponent("ccgate.db").path, locked.path,
        ]
        try holder.run()
        defer { holder.terminate() }
        for _ in 0..<200 where !FileManager.default.fileExists(atPath: locked.path) {
            try await Task.sleep(for: .milliseconds(50))
        }
        // A verdict is reused for a second: the next check is a fresh probe.
        try await Task.sleep(for: .milliseconds(1100))
        let unwritable = try await gateway.request("/readyz", key: "")
        #expect(unwritable.status == 503, "\(unwritable.body)")
        #expect(unwritable.body.contains(#""status":"not ready""#))
        #expect(unwritable.body.contains(#""store":"failing""#), "\(unwritable.body)")
        holder.waitUntilExit()
        var again = 0
        for _ in 0..<40 {
            again = try await gateway.request("/readyz", key: "").status
            if again == 200 { break }
            try await Task.sleep(for: .milliseconds(500))
        }
        #expect(again == 200, "the gateway did not become ready again once the lock was released")
    }
}
