import Foundation
import TestSupport
import Testing

/// Must show: the systemd units pass `systemd-analyze verify`, and keep their hardening.
@Suite struct PackagingTests {
    static let units = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("packaging/systemd")

    @Test(arguments: ["ccgate", "ccworker"]) func theUnitVerifies(_ name: String) async throws {
        let dir = try TemporaryDirectory("units")
        let text = try String(contentsOf: Self.units.appendingPathComponent("\(name).service"), encoding: .utf8)
        // The unit names the installed binary; verify checks it exists, so the built one stands in.
        let built = EvidenceVerifyCLITests.binDirectory.appendingPathComponent(name).path
        let unit = dir.file("\(name).service")
        try text.replacingOccurrences(of: "/usr/local/bin/\(name)", with: built).write(
            to: unit, atomically: true, encoding: .utf8)
        let verify = try await ProcessRunner.run("systemd-analyze", ["verify", unit.path])
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
        #expect((verify.stdout + verify.stderr).isEmpty, "systemd-analyze warns: \(verify.stdout)\(verify.stderr)")
        for line in [
            "User=\(name)", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "UMask=0077",
            "CapabilityBoundingSet=", "SystemCallFilter=@system-service", "StateDirectoryMode=0700",
        ] {
            #expect(text.contains("\n\(line)\n"), "\(name).service lacks \(line)")
        }
    }

    /// The users the units run as are made by systemd-sysusers from the shipped file.
    @Test func theUsersAreDeclared() async throws {
        let file = Self.units.appendingPathComponent("ccgate.sysusers")
        let dryRun = try await ProcessRunner.run("systemd-sysusers", ["--dry-run", file.path])
        #expect(dryRun.status == 0, "\(dryRun.stdout)\(dryRun.stderr)")
        let text = try String(contentsOf: file, encoding: .utf8)
        #expect(text.contains("u ccgate ") && text.contains("u ccworker ") && text.contains("m ccworker tss"))
    }
}
