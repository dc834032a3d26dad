import Foundation
import TestSupport
import Testing

/// Must show: the config file and flags give the same effective settings
/// (`ccgate serve --config FILE --print-config`); flags override the file; a bad file is refused
/// with the reason.
@Suite struct ServeConfigCLITests {
    static func ccgate(_ arguments: [String]) async throws -> ProcessResult {
        try await ProcessRunner.run(EvidenceVerifyCLITests.ccgate, arguments)
    }

    @Test func aConfigFileAndFlagsGiveTheSameSettings() async throws {
        let dir = try TemporaryDirectory("serve-config")
        let file = dir.file("gateway.yaml")
        try """
        # a gateway behind a load balancer
        host: 0.0.0.0
        port: 9443
        admin-port: 9445
        allow-plain-http: true
        toncenter: [https://toncenter.example, https://ton.example.net]
        toncenter-rps: 5
        checkpoint-seconds: 30
        log-format: json
        ready-requires-workers: true
        data-dir: /var/lib/ccgate
        api-key-file: /etc/ccgate/keys.txt
        worker-host: "::"
        admin-host: "@local"
        """.write(to: file, atomically: true, encoding: .utf8)
        let fromFile = try await Self.ccgate(["serve", "--config", file.path, "--print-config"])
        #expect(fromFile.status == 0, "\(fromFile.stderr)")
        let fromFlags = try await Self.ccgate([
            "serve", "--host", "0.0.0.0", "--port", "9443", "--admin-port", "9445", "--allow-plain-http",
            "--toncenter", "https://toncenter.example", "--toncenter", "https://ton.example.net", "--toncenter-rps",
            "5",
            "--checkpoint-seconds", "30", "--log-format", "json", "--ready-requires-workers", "--data-dir",
            "/var/lib/ccgate", "--api-key-file", "/etc/ccgate/keys.txt", "--worker-host", "::", "--admin-host=@local",
            "--print-config",
        ])
        #expect(fromFlags.status == 0, "\(fromFlags.stderr)")
        #expect(fromFile.stdout == fromFlags.stdout)
        #expect(fromFile.stdout.contains("port: 9443\n") && fromFile.stdout.contains("worker-port: 8444\n"))

        // Printed settings are a config file themselves.
        try fromFile.stdout.write(to: dir.file("printed.yaml"), atomically: true, encoding: .utf8)
        let again = try await Self.ccgate(["serve", "--config", dir.file("printed.yaml").path, "--print-config"])
        #expect(again.stdout == fromFile.stdout, "\(again.stderr)")

        // A value that starts with a dash is a value (no admin API).
        try "admin-port: -1\n".write(to: dir.file("no-admin.yaml"), atomically: true, encoding: .utf8)
        let noAdmin = try await Self.ccgate(["serve", "--config", dir.file("no-admin.yaml").path, "--print-config"])
        #expect(noAdmin.stdout.contains("admin-port: -1\n"), "\(noAdmin.stderr)")

        // A flag replaces the file's value, a list wholly.
        let overridden = try await Self.ccgate([
            "serve", "--config", file.path, "--port", "7000", "--toncenter", "https://only.example", "--print-config",
        ])
        #expect(overridden.stdout.contains("port: 7000\n"))
        #expect(overridden.stdout.contains("toncenter:\n  - \"https://only.example\"\ntoncenter-key-file"))

        for (text, reason) in [
            ("bogus: 1\n", "unknown setting 'bogus'"), ("api-key: [sk-1]\n", "api-key-file"),
            ("port: [1, 2]\n", "single plain value"), ("port: lots\n", "invalid for '--port"),
            ("allow-plain-http: maybe\n", "true or false"), ("- a list\n", "not a mapping"),
        ] {
            try text.write(to: dir.file("bad.yaml"), atomically: true, encoding: .utf8)
            let refused = try await Self.ccgate(["serve", "--config", dir.file("bad.yaml").path, "--print-config"])
            #expect(refused.status == 2 && refused.stderr.contains(reason), "\(text): \(refused.stderr)")
        }

        // ccworker run takes a config file the same way: its parser names what it does not know.
        let ccworker = EvidenceVerifyCLITests.binDirectory.appendingPathComponent("ccworker").path
        try Data("e".utf8).write(to: dir.file("engine"))
        try Data("m".utf8).write(to: dir.file("model"))
        try """
        engine: \(dir.file("engine").path)
        model: \(dir.file("model").path)
        model-name: m
        gateway: ["127.0.0.1:1"]
        gateway-key: ["\(String(repeating: "ab", count: 32))"]
        bogus-setting: 3
        """.write(to: dir.file("worker.yaml"), atomically: true, encoding: .utf8)
        let worker = try await ProcessRunner.run(ccworker, ["run", "--config", dir.file("worker.yaml").path])
        #expect(worker.status != 0 && worker.stderr.contains("--bogus-setting"), "\(worker.stderr)")
        try "model: [a, [b]]\n".write(to: dir.file("worker.yaml"), atomically: true, encoding: .utf8)
        let nested = try await ProcessRunner.run(ccworker, ["run", "--config", dir.file("worker.yaml").path])
        #expect(nested.status == 2 && nested.stderr.contains("list of plain values"), "\(nested.stderr)")
    }
}
