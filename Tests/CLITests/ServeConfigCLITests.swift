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
        """.write(to: file, atomically: true, encoding: .utf8)
        let fromFile = try await Self.ccgate(["serve", "--config", file.path, "--print-config"])
        #expect(fromFile.status == 0, "\(fromFile.stderr)")
        let fromFlags = try await Self.ccgate([
            "serve", "--host", "0.0.0.0", "--port", "9443", "--admin-port", "9445", "--allow-plain-http",
            "--toncenter", "https://toncenter.example", "--toncenter", "https://ton.example.net", "--toncenter-rps",
            "5",
            "--checkpoint-seconds", "30", "--log-format", "json", "--ready-requires-workers", "--data-dir",
            "/var/lib/ccgate", "--api-key-file", "/etc/ccgate/keys.txt", "--print-config",
        ])
        #expect(fromFlags.status == 0, "\(fromFlags.stderr)")
        #expect(fromFile.stdout == fromFlags.stdout)
        #expect(fromFile.stdout.contains("port: 9443\n") && fromFile.stdout.contains("worker-port: 8444\n"))

        // Printed settings are a config file themselves.
        try fromFile.stdout.write(to: dir.file("printed.yaml"), atomically: true, encoding: .utf8)
        let again = try await Self.ccgate(["serve", "--config", dir.file("printed.yaml").path, "--print-config"])
        #expect(again.stdout == fromFile.stdout, "\(again.stderr)")

        // A flag replaces the file's value, a list wholly.
        let overridden = try await Self.ccgate([
            "serve", "--config", file.path, "--port", "7000", "--toncenter", "https://only.example", "--print-config",
        ])
        #expect(overridden.stdout.contains("port: 7000\n"))
        #expect(overridden.stdout.contains("toncenter:\n  - https://only.example\ntoncenter-key-file"))

        for (text, reason) in [
            ("bogus: 1\n", "unknown setting 'bogus'"), ("api-key: [sk-1]\n", "api-key-file"),
            ("port: [1, 2]\n", "single plain value"), ("port: lots\n", "invalid for '--port"),
            ("allow-plain-http: maybe\n", "true or false"), ("- a list\n", "not a mapping"),
        ] {
            try text.write(to: dir.file("bad.yaml"), atomically: true, encoding: .utf8)
            let refused = try await Self.ccgate(["serve", "--config", dir.file("bad.yaml").path, "--print-config"])
            #expect(refused.status == 2 && refused.stderr.contains(reason), "\(text): \(refused.stderr)")
        }
    }
}
