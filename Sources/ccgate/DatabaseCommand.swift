import ArgumentParser
import AttestationCore
import CommandLineSupport
import Foundation
import GatewayState

struct DatabaseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "db",
        abstract: "Show and migrate the gateway's database schema; copy a data directory into PostgreSQL.",
        discussion: """
            A gateway keeps its state in DATA_DIR/ccgate.db (SQLite) or, with `ccgate serve --database URL`, in a
            PostgreSQL database several gateways share. Both have a numbered schema. A gateway creates the schema in an
            empty database, migrates its own SQLite file at start, and refuses a PostgreSQL database with an older
            schema until `ccgate db migrate` has run once (the other gateways on it may still be the older release).
            A database with a newer schema than this release knows is always refused, naming the version it needs.

            `db copy` moves a single gateway's SQLite state into an empty PostgreSQL database: the audit chain entry by
            entry (checked link by link on the way, then byte for byte the same, so old exports and receipts still
            verify), the evidence it refers to, the policy history, and the gateway's public key (DATA_DIR/gateway.pub).

            Examples:
              ccgate db status --data-dir data
              ccgate db migrate --database 'postgres://ccgate@db.internal/ccgate?sslmode=verify-full' --database-password-file pw.txt
              ccgate db copy --data-dir data --database postgres://ccgate@/ccgate?host=/run/postgresql
            """,
        subcommands: [Status.self, Migrate.self, Copy.self])

    struct Target: ParsableArguments {
        @Option(help: ArgumentHelp("A data directory (its ccgate.db).", valueName: "DIR")) var dataDir: String?
        @OptionGroup var db: DatabaseOptions

        func validate() throws {
            guard (dataDir == nil) != (db.database == nil) else {
                throw ValidationError("give one of --data-dir DIR or --database URL")
            }
        }

        func location() throws -> PostgresLocation? { try db.location() }

        var database: String? { db.database }

        var sqliteURL: URL { URL(fileURLWithPath: dataDir ?? "data").appendingPathComponent("ccgate.db") }

        var name: String { db.database ?? sqliteURL.path }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Print the schema version of a database, the newest this release knows, and what migrate would do.",
            discussion:
                "Exit status: 0 up to date; 1 migrations pending or the schema is newer than this release; 2 unreadable."
        )
        @OptionGroup var target: Target
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let status: SchemaStatus
            do {
                if let location = try target.location() {
                    status = try PostgresStore(location: location, inspect: true).schemaStatus()
                } else {
                    status = try SQLiteStore.schemaStatus(url: target.sqliteURL)
                }
            } catch let error as ReportedFailure { throw error } catch { throw failure("\(error)") }
            let state =
                status.version > status.known
                ? "newer than this release" : status.pending.isEmpty ? "up to date" : "behind"
            if json {
                let object: [String: Any] = [
                    "database": target.name, "version": status.version, "known": status.known, "state": state,
                    "pending": status.pending,
                ]
                let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } else {
                print(
                    "\(target.name): schema version \(status.version); this release knows up to \(status.known): \(state)"
                )
                for item in status.pending { print("  pending \(item)") }
                if status.version > status.known {
                    print("  run a ccgate release that knows schema \(status.version)")
                } else if !status.pending.isEmpty {
                    print(
                        "  run: ccgate db migrate \(target.database.map { "--database \($0)" } ?? "--data-dir \(target.dataDir ?? "data")")"
                    )
                }
            }
            if status.version != status.known { throw ExitCode(1) }
        }
    }

    struct Migrate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Apply the pending schema migrations, each in one transaction.",
            discussion: """
                Safe to run while nothing writes, and safe to run twice (a second run finds nothing pending). On
                PostgreSQL the migrations take an advisory lock, so two runs at once apply each migration once.
                """)
        @OptionGroup var target: Target

        func run() throws {
            let report: (Schema.Migration) -> Void = { print("applying schema \($0.version): \($0.summary)") }
            let status: SchemaStatus
            do {
                if let location = try target.location() {
                    let store = try PostgresStore(location: location, inspect: true)
                    if let refusal = Schema.refusal(try store.schemaStatus().version, database: target.name) {
                        throw refusal
                    }
                    try store.migrate(progress: report)
                    status = try store.schemaStatus()
                } else {
                    guard FileManager.default.fileExists(atPath: target.sqliteURL.path) else {
                        throw failure("\(target.sqliteURL.path): no such database")
                    }
                    let store = try SQLiteStore(url: target.sqliteURL, migrate: true, progress: report)
                    status = try store.schemaStatus()
                }
            } catch let error as ReportedFailure { throw error } catch { throw failure("\(error)") }
            print("\(target.name): schema version \(status.version) (up to date)")
        }
    }

    struct Copy: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Copy a data directory's SQLite state into an empty PostgreSQL database, chain intact.",
            discussion: """
                The source is only read. The target must have an empty audit chain; its schema is created or
                migrated first. Everything is copied in one transaction: on any error nothing is left behind.
                Afterwards start the gateway with --database URL and the same --data-dir (its key stays there).
                """)
        @Option(help: ArgumentHelp("The data directory to copy from.", valueName: "DIR")) var dataDir: String
        @OptionGroup var db: DatabaseOptions

        func validate() throws {
            guard db.database != nil else { throw ValidationError("give --database URL to copy into") }
        }

        func run() throws {
            guard let location = try db.location() else { return }
            let bar = ProgressBar("copying")
            do {
                let source = try SQLiteStore(
                    url: URL(fileURLWithPath: dataDir).appendingPathComponent("ccgate.db"), readOnly: true)
                let total = try source.count(AuditQuery())
                let pub = try? String(contentsOfFile: dataDir + "/gateway.pub", encoding: .utf8)
                let key = try pub.map { try Ed25519PublicKey(text: $0) }
                let store = try PostgresStore(location: location, migrate: true)
                let ledger = try source.schemaStatus().version >= 3
                let copied = try store.copy(from: source, sourceGateway: key, withLedger: ledger) {
                    bar.update(done: $0, total: total, unit: "entries")
                }
                bar.finish(done: copied, total: total, unit: "entries")
                print(
                    "copied \(copied) audit entries, \(try store.policies().count) policy versions and the evidence they name into \(location)"
                )
                if key == nil { print("note: \(dataDir)/gateway.pub was not found; its gateway is not listed") }
            } catch let error as ReportedFailure { throw error } catch { throw failure("\(error)") }
        }
    }
}

/// `--database URL` and its password, as `serve`, `db` and `audit verify` take them.
struct DatabaseOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "A PostgreSQL database shared by several gateways: postgres://USER@HOST[:PORT]/DB?sslmode=verify-full[&sslrootcert=CA.pem] (a host off this machine needs sslmode: verify-full, or disable to go unencrypted), or postgres://USER@/DB?host=/run/postgresql[&port=N] (a Unix socket). The password comes from --database-password-file or CCGATE_DATABASE_PASSWORD, never the URL.",
            valueName: "URL"))
    var database: String?
    @Option(help: ArgumentHelp("The database password (its first line).", valueName: "FILE"))
    var databasePasswordFile: String?

    /// The database named, with its password; nil when none is.
    func location() throws -> PostgresLocation? {
        guard let database else {
            if databasePasswordFile != nil { throw failure("--database-password-file without --database") }
            return nil
        }
        do {
            return try PostgresLocation(
                url: database,
                password: PostgresLocation.password(
                    file: databasePasswordFile, environment: ProcessInfo.processInfo.environment))
        } catch { throw failure("\(error)") }
    }
}
