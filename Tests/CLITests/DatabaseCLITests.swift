import AttestationCore
import Foundation
import TestSupport
import Testing

/// `ccgate db` and `ccgate serve --database` as an operator uses them, on a real PostgreSQL
/// server: a data directory written by the release before schema versions moved (schema 1,
/// `Fixtures/schema-v1`, made by that release's `ccgate serve`) is migrated, served, copied into
/// PostgreSQL and served from there with its chain intact; a newer schema is refused by name.
@Suite(.serialized) struct DatabaseCLITests {
    static func ccgate(_ arguments: [String]) async throws -> ProcessResult {
        try await ProcessRunner.run(EvidenceVerifyCLITests.ccgate, arguments)
    }

    static let policy = SharedTestData.packageRoot.appendingPathComponent("Policies/default.yaml")

    /// A copy of the schema-1 data directory (the fixture itself is never written).
    static func oldDataDirectory(in dir: TemporaryDirectory) throws -> URL {
        let fixture = SharedTestData.packageRoot.appendingPathComponent("Tests/CLITests/Fixtures/schema-v1")
        let data = dir.file("data")
        try FileManager.default.copyItem(at: fixture, to: data)
        chmod(data.path, 0o700)
        for name in ["ccgate.db", "gateway.key", "admin.token"] { chmod(data.appendingPathComponent(name).path, 0o600) }
        return data
    }

    @Test func anOldDataDirectoryIsMigratedServedAndCopiedIntoPostgres() async throws {
        let dir = try TemporaryDirectory("db-cli")
        let data = try Self.oldDataDirectory(in: dir)
        let key = data.appendingPathComponent("gateway.pub").path

        let before = try await Self.ccgate(["db", "status", "--data-dir", data.path])
        #expect(before.status == 1)
        #expect(before.stdout.contains("schema version 1;") && before.stdout.contains("pending 2:"), "\(before.stdout)")
        let migrated = try await Self.ccgate(["db", "migrate", "--data-dir", data.path])
        #expect(migrated.status == 0, "\(migrated.stderr)")
        #expect(migrated.stdout.contains("applying schema 2"), "\(migrated.stdout)")
        let after = try await Self.ccgate(["db", "status", "--data-dir", data.path, "--json"])
        #expect(after.status == 0 && after.stdout.contains("\"state\":\"up to date\""), "\(after.stdout)")

        // Served: the chain goes on after the old entries and still verifies under the old key.
        let gateway = try await offPool { try GatewayProcess(data: data, policy: Self.policy, in: dir) }
        gateway.stop()
        let exported = dir.file("sqlite.jsonl")
        let export = try await Self.ccgate(["audit", "export", "--data-dir", data.path, "--out", exported.path])
        #expect(export.status == 0, "\(export.stderr)")
        let verified = try await Self.ccgate(["audit", "verify", exported.path, "--key", key])
        #expect(verified.status == 0, "\(verified.stderr)")
        let lines = try String(contentsOf: exported, encoding: .utf8).split(separator: "\n")
        #expect(lines.count > 4)
        #expect(lines.prefix(4).allSatisfy { !$0.contains("\"gateway\":") })
        #expect(lines.dropFirst(4).allSatisfy { $0.contains("\"gateway\":") })

        // Copied into PostgreSQL, then served from there by the same gateway (its key stays in DIR).
        let server = try await PostgresServer.shared()
        let database = try await offPool { try server.createDatabase() }
        let db = ["--database", server.url(database), "--database-password-file", server.passwordFile.path]
        let copied = try await Self.ccgate(["db", "copy", "--data-dir", data.path] + db)
        #expect(copied.status == 0, "\(copied.stderr)")
        #expect(copied.stdout.contains("copied \(lines.count) audit entries"), "\(copied.stdout)")
        let again = try await Self.ccgate(["db", "copy", "--data-dir", data.path] + db)
        #expect(
            again.status == 2 && again.stderr.contains("already holds \(lines.count) audit entries"), "\(again.stderr)")

        let shared = try await offPool { try GatewayProcess(data: data, policy: Self.policy, in: dir, extra: db) }
        let fromPG = dir.file("pg.jsonl")
        let pgExport = try await Self.ccgate(["audit", "export", "--out", fromPG.path] + shared.adminArgs)
        shared.stop()
        #expect(pgExport.status == 0, "\(pgExport.stderr)")
        let pgLines = try String(contentsOf: fromPG, encoding: .utf8).split(separator: "\n")
        #expect(pgLines.count > lines.count)
        #expect(Array(pgLines.prefix(lines.count)) == lines, "the copied entries are the same bytes")
        // Verified with the keys the database lists, and with the key file.
        let byDatabase = try await Self.ccgate(["audit", "verify", fromPG.path] + db)
        #expect(byDatabase.status == 0, "\(byDatabase.stderr)")
        let byKey = try await Self.ccgate(["audit", "verify", fromPG.path, "--key", key])
        #expect(byKey.status == 0, "\(byKey.stderr)")
    }

    /// A schema newer than this release is refused by `serve` (SQLite and PostgreSQL) and by
    /// `db migrate`, naming the version; nothing is written.
    @Test func aNewerSchemaIsRefusedWithItsVersion() async throws {
        let dir = try TemporaryDirectory("db-cli")
        let data = try Self.oldDataDirectory(in: dir)
        let bump = try await ProcessRunner.run(
            "python3",
            [
                "-c",
                "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"UPDATE meta SET value='41' WHERE key='schema'\"); c.commit()",
                data.appendingPathComponent("ccgate.db").path,
            ])
        #expect(bump.status == 0, "\(bump.stderr)")
        let serve = try await Self.ccgate([
            "serve", "--port", "0", "--worker-port", "0", "--admin-port=-1", "--api-key", "k", "--data-dir", data.path,
            "--policy", Self.policy.path,
        ])
        #expect(serve.status != 0)
        #expect(serve.stderr.contains("schema version 41"), "\(serve.stderr)")
        let migrate = try await Self.ccgate(["db", "migrate", "--data-dir", data.path])
        #expect(migrate.status == 2 && migrate.stderr.contains("schema version 41"), "\(migrate.stderr)")
        let status = try await Self.ccgate(["db", "status", "--data-dir", data.path])
        #expect(status.status == 1 && status.stdout.contains("newer than this release"), "\(status.stdout)")

        let server = try await PostgresServer.shared()
        let database = try await offPool { try server.createDatabase() }
        let db = ["--database", server.url(database), "--database-password-file", server.passwordFile.path]
        let made = try await Self.ccgate(["db", "migrate"] + db)
        #expect(made.status == 0, "\(made.stderr)")
        try await offPool { _ = try server.psql(database, "UPDATE meta SET value = '41' WHERE key = 'schema'") }
        let pgServe = try await Self.ccgate(
            [
                "serve", "--port", "0", "--worker-port", "0", "--admin-port=-1", "--api-key", "k", "--data-dir",
                dir.file("pg-data").path, "--policy", Self.policy.path,
            ] + db)
        #expect(pgServe.status != 0)
        #expect(pgServe.stderr.contains("schema version 41"), "\(pgServe.stderr)")
        let rows = try await offPool { try server.psql(database, "SELECT COUNT(*) FROM audit") }
        #expect(rows == "0")
    }
}
