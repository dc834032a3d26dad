import Foundation

/// The stores' schema as numbered migrations, one list for SQLite and PostgreSQL alike: version N
/// of either database holds the same tables with the same meaning, so `ccgate db copy` moves
/// rows between them unchanged.
///
/// The version a database is at lives in `meta` (`key = 'schema'`). A migration runs in one
/// transaction with the version bump, so a crash leaves the database at the old version or the
/// new one, never between. A gateway refuses a database whose version is newer than the newest
/// it knows: a newer gateway may have added tables an older one would not keep up to date.
public enum Schema {
    public struct Migration: Sendable {
        public let version: Int
        public let summary: String
        /// The statements, with `INTEGER`/`BLOB` spelled `{INT}`/`{BYTES}` (the one difference
        /// between the two dialects here).
        let statements: [String]

        var sqlite: [String] { render(int: "INTEGER", bytes: "BLOB") }
        var postgres: [String] { render(int: "BIGINT", bytes: "BYTEA") }

        func render(int: String, bytes: String) -> [String] {
            statements.map {
                $0.replacingOccurrences(of: "{INT}", with: int).replacingOccurrences(of: "{BYTES}", with: bytes)
            }
        }
    }

    public static var current: Int { migrations.last?.version ?? 0 }

    /// Frozen once released: a change to the schema is a new migration at the end.
    public static let migrations: [Migration] = [
        Migration(
            version: 1,
            summary: "the audit chain, evidence, policy history, admitted workers and API keys",
            statements: [
                "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
                """
                CREATE TABLE audit(seq {INT} PRIMARY KEY, time TEXT NOT NULL, event TEXT NOT NULL, worker TEXT,
                  hash TEXT NOT NULL, line {BYTES} NOT NULL)
                """,
                "CREATE INDEX audit_time ON audit(time)",
                "CREATE INDEX audit_worker ON audit(worker)",
                "CREATE TABLE evidence(sha256 TEXT PRIMARY KEY, envelope {BYTES} NOT NULL, binding {BYTES} NOT NULL)",
                """
                CREATE TABLE policies(version {INT} PRIMARY KEY, name TEXT NOT NULL, text TEXT NOT NULL,
                  signature TEXT NOT NULL, signer TEXT, note TEXT NOT NULL, applied_at TEXT NOT NULL, actor TEXT NOT NULL)
                """,
                "CREATE TABLE workers(id TEXT PRIMARY KEY, session TEXT NOT NULL, record TEXT NOT NULL)",
                "CREATE TABLE api_keys(sha256 TEXT PRIMARY KEY, source TEXT NOT NULL, created_at TEXT NOT NULL)",
            ]),
        Migration(
            version: 2,
            summary: "several gateways on one database: the gateways' public keys, admitted workers per gateway",
            statements: [
                """
                CREATE TABLE gateways(id TEXT PRIMARY KEY, public_key TEXT NOT NULL, first_seen TEXT NOT NULL,
                  last_seen TEXT NOT NULL)
                """,
                // Worker rows are a gateway's live connections (cleared at its start): none to carry over.
                "DROP TABLE workers",
                """
                CREATE TABLE workers(gateway TEXT NOT NULL, id TEXT NOT NULL, session TEXT NOT NULL, record TEXT NOT NULL,
                  PRIMARY KEY(gateway, id))
                """,
            ]),
        Migration(
            version: 3,
            summary: "named API keys with limits, and the usage ledger",
            statements: [
                "CREATE TABLE client_keys(id TEXT PRIMARY KEY, record TEXT NOT NULL)",
                """
                CREATE TABLE usage_ledger(request_id TEXT PRIMARY KEY, time_ms {INT} NOT NULL, gateway TEXT NOT NULL,
                  key_id TEXT NOT NULL, model TEXT NOT NULL, worker TEXT, provider TEXT, prompt_tokens {INT} NOT NULL,
                  completion_tokens {INT} NOT NULL, ttft_ms {INT}, duration_ms {INT} NOT NULL, status {INT} NOT NULL,
                  source TEXT NOT NULL, mac TEXT NOT NULL)
                """,
                "CREATE INDEX usage_time ON usage_ledger(time_ms)",
                "CREATE INDEX usage_key_time ON usage_ledger(key_id, time_ms)",
                "CREATE INDEX usage_provider_time ON usage_ledger(provider, time_ms)",
            ]),
    ]

    /// The migrations a database at `version` still needs.
    public static func pending(from version: Int) -> [Migration] { migrations.filter { $0.version > version } }

    /// Why a database at `version` cannot be used by this build, or nil when it can (after
    /// `pending` migrations, when there are any).
    public static func refusal(_ version: Int, database: String) -> StoreError? {
        guard version > current else { return nil }
        return StoreError(
            "\(database) has schema version \(version), and this ccgate knows versions up to \(current): it was written by a newer ccgate; run that release (or newer), which needs schema \(version)"
        )
    }
}

/// Where a database stands against this build's migrations (`ccgate db status`).
public struct SchemaStatus: Sendable, Equatable {
    /// The version the database is at (0: empty).
    public let version: Int
    /// The newest version this build knows.
    public let known: Int
    /// The versions `ccgate db migrate` would apply, with what each adds.
    public let pending: [String]

    init(version: Int) {
        self.version = version
        known = Schema.current
        pending = Schema.pending(from: version).map { "\($0.version): \($0.summary)" }
    }
}
