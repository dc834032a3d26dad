import AttestationCore
import AuditLog
import Foundation
import Synchronization

/// The gateway's state in one SQLite database (`DATA/ccgate.db`), written through one serialized
/// connection in WAL mode with `synchronous=FULL`: a transaction is on disk when `COMMIT`
/// returns, so an acknowledged decision survives `kill -9` and power loss (as far as the disk
/// honours fsync). Readers (exports, the offline CLI) use their own connections and never block
/// the writer.
public final class SQLiteStore: GatewayStore, @unchecked Sendable {
    // The connection is used only under `lock`.
    private let lock = NSLock()
    private let db: SQLiteConnection
    public let url: URL
    private var cachedHead: ChainHead?
    private var gateway: String?

    /// Opens or creates the database; `readOnly` for inspecting a gateway's data from outside.
    /// An older schema is migrated unless `migrate` is false (then opening fails and names
    /// `ccgate db migrate`); a newer one is refused either way (``Schema``).
    public init(
        url: URL, readOnly: Bool = false, migrate: Bool = true, progress: (Schema.Migration) -> Void = { _ in }
    ) throws {
        self.url = url
        if !readOnly {
            try FileManager.default.createDirectory(
                at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        } else if !FileManager.default.fileExists(atPath: url.path) {
            throw StoreError("\(url.path): no such database")
        }
        db = try SQLiteConnection(path: url.path, readOnly: readOnly)
        if readOnly {
            if let refusal = Schema.refusal(try Self.version(db), database: url.path) { throw refusal }
            return
        }
        // Evidence and key digests: the database is the gateway's alone (SQLite gives its journal files the same mode).
        chmod(url.path, 0o600)
        try db.exec("PRAGMA journal_mode=WAL")
        try db.exec("PRAGMA synchronous=FULL")
        let version = try Self.version(db)
        if let refusal = Schema.refusal(version, database: url.path) { throw refusal }
        guard version < Schema.current else { return }
        guard migrate || version == 0 else {
            throw StoreError(
                "\(url.path) has schema version \(version); this ccgate uses \(Schema.current): run `ccgate db migrate` first"
            )
        }
        try runMigrations(from: version, progress: progress)
    }

    /// The schema version of the database behind `db` (0: empty).
    private static func version(_ db: SQLiteConnection) throws -> Int {
        guard try db.scalar("SELECT COUNT(*) FROM sqlite_master WHERE type='table' AND name='meta'") == 1 else {
            return 0
        }
        return try db.scalar("SELECT CAST(value AS INTEGER) FROM meta WHERE key='schema'") ?? 0
    }

    /// Where the database at `url` stands, read without changing it (whatever its version).
    public static func schemaStatus(url: URL) throws -> SchemaStatus {
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw StoreError("\(url.path): no such database")
        }
        return SchemaStatus(version: try version(SQLiteConnection(path: url.path, readOnly: true)))
    }

    /// Where the database stands against this build's migrations.
    public func schemaStatus() throws -> SchemaStatus { SchemaStatus(version: try locked { try Self.version(db) }) }

    /// Applies the pending migrations, each in its own transaction; `progress` is told each one.
    private func runMigrations(from version: Int, progress: (Schema.Migration) -> Void) throws {
        for migration in Schema.pending(from: version) {
            progress(migration)
            try db.transaction {
                // Another process may have migrated since the version was read (BEGIN IMMEDIATE holds the lock now).
                guard try Self.version(db) < migration.version else { return }
                for statement in migration.sqlite { try db.exec(statement) }
                try db.run(
                    "INSERT INTO meta(key, value) VALUES('schema', ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    [.text(String(migration.version))])
            }
        }
    }

    private func locked<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    // MARK: Audit chain

    private func currentHead() throws -> ChainHead {
        if let h = cachedHead { return h }
        var head = ChainHead.empty
        try db.run("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1") { row in
            head = ChainHead(count: row.int(0), hash: row.text(1) ?? "")
            return false
        }
        cachedHead = head
        return head
    }

    public func append(_ drafts: [AuditDraft], at time: Date, checkpointKey: Ed25519PrivateKey?) throws -> [AuditEntry]
    {
        try locked {
            let start = try currentHead()
            do {
                let entries = try db.transaction {
                    try appendDrafts(drafts, after: start, at: time, key: checkpointKey, gateway: gateway)
                }
                if let last = entries.last { cachedHead = ChainHead(count: last.seq, hash: last.hash) }
                return entries
            } catch {
                cachedHead = nil
                throw error
            }
        }
    }

    public func head() throws -> ChainHead { try locked { try currentHead() } }

    static func whereClause(_ q: AuditQuery) -> (String, [SQLiteValue]) {
        var clauses = [String]()
        var binds = [SQLiteValue]()
        if let s = q.since {
            clauses.append("time >= ?")
            binds.append(.text(s.rfc3339))
        }
        if let u = q.until {
            clauses.append("time <= ?")
            binds.append(.text(u.rfc3339))
        }
        if let w = q.worker {
            clauses.append("worker = ?")
            binds.append(.text(w))
        }
        if let f = q.fromSeq {
            clauses.append("seq >= ?")
            binds.append(.int(f))
        }
        return (clauses.isEmpty ? "" : " WHERE " + clauses.joined(separator: " AND "), binds)
    }

    /// Streams raw lines (the exported bytes) on a connection of its own, so a long export does
    /// not hold up the writer; the rows seen are those of one consistent snapshot.
    public func lines(_ query: AuditQuery, _ body: (Int, [UInt8]) throws -> Bool) throws {
        let reader = try SQLiteConnection(path: url.path, readOnly: true)
        let (clause, binds) = Self.whereClause(query)
        try reader.exec("BEGIN")
        defer { try? reader.exec("COMMIT") }
        try reader.run("SELECT seq, line FROM audit\(clause) ORDER BY seq", binds) { row in
            try body(row.int(0), row.bytes(1))
        }
    }

    public func entries(_ query: AuditQuery, _ body: (AuditEntry) throws -> Bool) throws {
        try parsedEntries(query, source: url.path, body)
    }

    public func count(_ query: AuditQuery) throws -> Int {
        let (clause, binds) = Self.whereClause(query)
        return try locked { try db.scalar("SELECT COUNT(*) FROM audit\(clause)", binds) ?? 0 }
    }

    public func entry(seq: Int) throws -> AuditEntry? {
        let line: [UInt8]? = try locked {
            var found: [UInt8]?
            try db.run("SELECT line FROM audit WHERE seq = ?", [.int(seq)]) { row in
                found = row.bytes(0)
                return false
            }
            return found
        }
        guard let line else { return nil }
        switch AuditEntry.parse(line: line) {
        case .success(let e): return e
        case .failure(let e): throw StoreError("\(url.path): audit entry \(seq): \(e)")
        }
    }

    public func evidence(sha256: String) throws -> StoredEvidence? {
        try locked {
            var found: StoredEvidence?
            try db.run("SELECT envelope, binding FROM evidence WHERE sha256 = ?", [.text(sha256)]) { row in
                found = StoredEvidence(sha256: sha256, envelope: row.blob(0), binding: row.blob(1))
                return false
            }
            return found
        }
    }

    // MARK: Policies

    private func policyRows(_ sql: String, _ binds: [SQLiteValue]) throws -> [PolicyRecord] {
        try locked {
            var out = [PolicyRecord]()
            try db.run(sql, binds) { row in
                out.append(
                    PolicyRecord(
                        version: row.int(0),
                        policy: NewPolicy(
                            name: row.text(1) ?? "", text: row.text(2) ?? "", signature: row.text(3) ?? "",
                            signer: row.text(4), note: row.text(5) ?? ""),
                        appliedAt: Date.rfc3339(row.text(6) ?? "") ?? .distantPast, actor: row.text(7) ?? ""))
                return true
            }
            return out
        }
    }

    static let policyColumns = "version, name, text, signature, signer, note, applied_at, actor"

    public func policies() throws -> [PolicyRecord] {
        try policyRows("SELECT \(Self.policyColumns) FROM policies ORDER BY version", [])
    }

    public func policy(version: Int) throws -> PolicyRecord? {
        try policyRows("SELECT \(Self.policyColumns) FROM policies WHERE version = ?", [.int(version)]).first
    }

    // MARK: Workers

    public func workers() throws -> [WorkerRecord] {
        try locked {
            var out = [WorkerRecord]()
            try db.run("SELECT record FROM workers WHERE gateway = ? ORDER BY id", [.text(gateway ?? "")]) { row in
                if let w = try? WorkerJSON.decoder.decode(WorkerRecord.self, from: row.blob(0)) { out.append(w) }
                return true
            }
            return out
        }
    }

    public func clearWorkers() throws {
        try locked { try db.run("DELETE FROM workers WHERE gateway = ?", [.text(gateway ?? "")]) }
    }

    // MARK: Gateways

    public func registerGateway(_ key: Ed25519PublicKey, at time: Date) throws {
        try locked {
            try db.run(
                """
                INSERT INTO gateways(id, public_key, first_seen, last_seen) VALUES(?, ?, ?, ?)
                ON CONFLICT(id) DO UPDATE SET last_seen=excluded.last_seen
                """,
                [.text(key.fingerprint), .text(key.base64), .text(time.rfc3339), .text(time.rfc3339)])
            gateway = key.fingerprint
        }
    }

    public func gateways() throws -> [GatewayRecord] {
        try locked {
            var out = [GatewayRecord]()
            try db.run("SELECT id, public_key, first_seen, last_seen FROM gateways ORDER BY first_seen, id") { row in
                out.append(
                    GatewayRecord(
                        id: row.text(0) ?? "", publicKey: row.text(1) ?? "",
                        firstSeen: Date.rfc3339(row.text(2) ?? "") ?? .distantPast,
                        lastSeen: Date.rfc3339(row.text(3) ?? "") ?? .distantPast))
                return true
            }
            return out
        }
    }

    // MARK: API keys

    public func apiKeyDigests() throws -> Set<String> {
        try locked {
            var out = Set<String>()
            try db.run("SELECT sha256 FROM api_keys") { row in
                if let s = row.text(0) { out.insert(s) }
                return true
            }
            return out
        }
    }

    public func replaceAPIKeys(source: String, digests: Set<String>, at time: Date) throws {
        try locked {
            try db.transaction {
                try db.run("DELETE FROM api_keys WHERE source = ?", [.text(source)])
                for d in digests.sorted() {
                    try db.run(
                        "INSERT OR IGNORE INTO api_keys(sha256, source, created_at) VALUES(?, ?, ?)",
                        [.text(d), .text(source), .text(time.rfc3339)])
                }
            }
        }
    }
}

extension SQLiteStore {
    // MARK: Named keys and the usage ledger

    public func clientKeys() throws -> [ClientKeyRecord] {
        try locked {
            var out = [ClientKeyRecord]()
            try db.run("SELECT id, record FROM client_keys ORDER BY id") { row in
                if let key = UsageColumns.key(id: row.text(0), record: row.text(1)) { out.append(key) }
                return true
            }
            return out
        }
    }

    public func probeWrite(at time: Date) throws {
        try locked {
            try db.transaction {
                try db.run(
                    "INSERT INTO meta(key, value) VALUES('ready_probe', ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    [.text(time.rfc3339)])
            }
        }
    }

    public func recordUsage(_ records: [UsageRecord]) throws {
        guard !records.isEmpty else { return }
        try locked {
            let gateway = SQLiteValue.text(self.gateway ?? "")
            try db.transaction {
                for r in records {
                    try db.run(
                        """
                        INSERT OR IGNORE INTO usage_ledger(request_id, time_ms, gateway, key_id, model, worker, provider,
                          prompt_tokens, completion_tokens, ttft_ms, duration_ms, status, source, mac)
                        VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                        """,
                        [
                            .text(r.requestID), .int(UsageColumns.milliseconds(r.time)),
                            r.gateway.map(SQLiteValue.text) ?? gateway, .text(r.keyID),
                            .text(r.model), .optional(r.worker), .optional(r.provider), .int(r.promptTokens),
                            .int(r.completionTokens), .optional(r.timeToFirstTokenMs), .int(r.durationMs),
                            .int(r.status), .text(r.source), .text(r.mac ?? ""),
                        ])
                }
            }
        }
    }

    public func usedTokens(keyID: String, since: Date) throws -> Int {
        try locked {
            try db.scalar(
                "SELECT COALESCE(SUM(MIN(MAX(prompt_tokens, 0), 1000000000) + MIN(MAX(completion_tokens, 0), 1000000000)), 0) FROM usage_ledger WHERE key_id = ? AND time_ms >= ?",
                [.text(keyID), .int(UsageColumns.milliseconds(since))]) ?? 0
        }
    }

    public func usage(_ query: UsageQuery, _ body: (UsageRecord) throws -> Bool) throws {
        var clauses = [String]()
        var binds = [SQLiteValue]()
        if let since = query.since {
            clauses.append("time_ms >= ?")
            binds.append(.int(UsageColumns.milliseconds(since)))
        }
        if let until = query.until {
            clauses.append("time_ms < ?")
            binds.append(.int(UsageColumns.milliseconds(until)))
        }
        if let key = query.keyID {
            clauses.append("key_id = ?")
            binds.append(.text(key))
        }
        if let provider = query.provider {
            clauses.append("provider = ?")
            binds.append(.text(provider))
        }
        let filter = clauses.isEmpty ? "" : " WHERE " + clauses.joined(separator: " AND ")
        try locked {
            try db.run("SELECT \(UsageColumns.list) FROM usage_ledger\(filter) ORDER BY time_ms, request_id", binds) {
                row in
                try body(
                    UsageColumns.record(
                        text: { row.isNull($0) ? nil : row.text($0) }, int: { row.isNull($0) ? nil : row.int($0) }))
            }
        }
    }
}

extension SQLiteStore: ChainTables {
    func clientKeyRevision(id: String) throws -> Int? {
        var found: Int?
        try db.run("SELECT record FROM client_keys WHERE id = ?", [.text(id)]) { row in
            found = (try? ClientKeyRecord.parse(row.text(0) ?? ""))?.revision ?? 0
            return false
        }
        return found
    }

    func upsertClientKey(_ key: ClientKeyRecord) throws {
        try db.run(
            "INSERT INTO client_keys(id, record) VALUES(?, ?) ON CONFLICT(id) DO UPDATE SET record=excluded.record",
            [.text(key.id), .text(try key.json())])
    }

    func insertEvidence(_ evidence: StoredEvidence) throws {
        try db.run(
            "INSERT OR IGNORE INTO evidence(sha256, envelope, binding) VALUES(?, ?, ?)",
            [.text(evidence.sha256), .blob(evidence.envelope), .blob(evidence.binding)])
    }

    func insertPolicy(_ policy: NewPolicy, actor: String, at time: Date) throws -> Int {
        let version = (try db.scalar("SELECT MAX(version) FROM policies") ?? 0) + 1
        try db.run(
            "INSERT INTO policies(version, name, text, signature, signer, note, applied_at, actor) VALUES(?,?,?,?,?,?,?,?)",
            [
                .int(version), .text(policy.name), .text(policy.text), .text(policy.signature),
                .optional(policy.signer), .text(policy.note), .text(time.rfc3339), .text(actor),
            ])
        return version
    }

    func apply(_ change: WorkerChange) throws {
        let gateway = SQLiteValue.text(self.gateway ?? "")
        switch change {
        case .upsert(let worker):
            try db.run(
                """
                INSERT INTO workers(gateway, id, session, record) VALUES(?, ?, ?, ?)
                ON CONFLICT(gateway, id) DO UPDATE SET session=excluded.session, record=excluded.record
                """,
                [gateway, .text(worker.id), .text(worker.session), .text(try WorkerJSON.text(worker))])
        case .update(let worker):
            try db.run(
                "UPDATE workers SET record = ? WHERE gateway = ? AND id = ? AND session = ?",
                [.text(try WorkerJSON.text(worker)), gateway, .text(worker.id), .text(worker.session)])
        case .remove(let id, let session):
            try db.run(
                "DELETE FROM workers WHERE gateway = ? AND id = ? AND session = ?",
                [gateway, .text(id), .text(session)])
        }
    }

    func insertEntry(_ entry: AuditEntry) throws {
        try db.run(
            "INSERT INTO audit(seq, time, event, worker, hash, line) VALUES(?, ?, ?, ?, ?, ?)",
            [
                .int(entry.seq), .text(entry.time.rfc3339), .text(entry.event.event), .optional(entry.event.worker),
                .text(entry.hash), .blob(Data(entry.line)),
            ])
    }
}
