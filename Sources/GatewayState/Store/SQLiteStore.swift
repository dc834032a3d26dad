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

    public static let schemaVersion = 1

    /// Opens or creates the database; `readOnly` for inspecting a gateway's data from outside.
    public init(url: URL, readOnly: Bool = false) throws {
        self.url = url
        if !readOnly {
            try FileManager.default.createDirectory(
                at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        } else if !FileManager.default.fileExists(atPath: url.path) {
            throw StoreError("\(url.path): no such database")
        }
        db = try SQLiteConnection(path: url.path, readOnly: readOnly)
        if readOnly { return }
        // Evidence and key digests: the database is the gateway's alone (SQLite gives its journal files the same mode).
        chmod(url.path, 0o600)
        try db.exec("PRAGMA journal_mode=WAL")
        try db.exec("PRAGMA synchronous=FULL")
        try db.exec(
            """
            CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS audit(
              seq INTEGER PRIMARY KEY, time TEXT NOT NULL, event TEXT NOT NULL, worker TEXT,
              hash TEXT NOT NULL, line BLOB NOT NULL);
            CREATE INDEX IF NOT EXISTS audit_time ON audit(time);
            CREATE INDEX IF NOT EXISTS audit_worker ON audit(worker);
            CREATE TABLE IF NOT EXISTS evidence(sha256 TEXT PRIMARY KEY, envelope BLOB NOT NULL, binding BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS policies(
              version INTEGER PRIMARY KEY, name TEXT NOT NULL, text TEXT NOT NULL, signature TEXT NOT NULL,
              signer TEXT, note TEXT NOT NULL, applied_at TEXT NOT NULL, actor TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS workers(id TEXT PRIMARY KEY, session TEXT NOT NULL, record TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS api_keys(sha256 TEXT PRIMARY KEY, source TEXT NOT NULL, created_at TEXT NOT NULL);
            """)
        if let version = try db.scalar("SELECT CAST(value AS INTEGER) FROM meta WHERE key='schema'") {
            guard version == Self.schemaVersion else {
                throw StoreError("\(url.path): schema version \(version) is not \(Self.schemaVersion)")
            }
        } else {
            try db.run("INSERT INTO meta(key, value) VALUES('schema', ?)", [.text(String(Self.schemaVersion))])
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
                let entries = try db.transaction { () throws -> [AuditEntry] in
                    var head = start
                    var out = [AuditEntry]()
                    for draft in drafts {
                        var event: AuditEvent
                        switch draft {
                        case .event(let e, let evidence, let worker):
                            event = e
                            if let worker { try apply(worker) }
                            if let evidence {
                                try db.run(
                                    "INSERT OR IGNORE INTO evidence(sha256, envelope, binding) VALUES(?, ?, ?)",
                                    [.text(evidence.sha256), .blob(evidence.envelope), .blob(evidence.binding)])
                                event.evidenceSHA256 = evidence.sha256
                            }
                        case .policy(let e, let policy):
                            event = e
                            let version = (try db.scalar("SELECT MAX(version) FROM policies") ?? 0) + 1
                            try db.run(
                                "INSERT INTO policies(version, name, text, signature, signer, note, applied_at, actor) VALUES(?,?,?,?,?,?,?,?)",
                                [
                                    .int(version), .text(policy.name), .text(policy.text), .text(policy.signature),
                                    .optional(policy.signer), .text(policy.note), .text(time.rfc3339), .text(e.actor),
                                ])
                            event.policyVersion = version
                        case .checkpoint:
                            guard let checkpointKey else { throw StoreError("a checkpoint needs the gateway key") }
                            event = Checkpoint.event(head: head, time: time, key: checkpointKey)
                        }
                        let entry = AuditEntry(seq: head.count + 1, time: time, prev: head.hash, event: event)
                        try db.run(
                            "INSERT INTO audit(seq, time, event, worker, hash, line) VALUES(?, ?, ?, ?, ?, ?)",
                            [
                                .int(entry.seq), .text(time.rfc3339), .text(event.event), .optional(event.worker),
                                .text(entry.hash), .blob(Data(entry.line)),
                            ])
                        head = ChainHead(count: entry.seq, hash: entry.hash)
                        out.append(entry)
                    }
                    return out
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
        try lines(query) { seq, line in
            guard case .success(let entry) = AuditEntry.parse(line: line) else {
                throw StoreError("\(url.path): audit entry \(seq) in the database does not match its hash")
            }
            return try body(entry)
        }
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

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .secondsSince1970
        e.outputFormatting = .sortedKeys
        return e
    }()
    static let decoder: JSONDecoder = {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .secondsSince1970
        return d
    }()

    /// Inside `append`'s transaction.
    private func apply(_ change: WorkerChange) throws {
        switch change {
        case .upsert(let worker):
            let json = String(decoding: try Self.encoder.encode(worker), as: UTF8.self)
            try db.run(
                "INSERT INTO workers(id, session, record) VALUES(?, ?, ?) ON CONFLICT(id) DO UPDATE SET session=excluded.session, record=excluded.record",
                [.text(worker.id), .text(worker.session), .text(json)])
        case .update(let worker):
            let json = String(decoding: try Self.encoder.encode(worker), as: UTF8.self)
            try db.run(
                "UPDATE workers SET record = ? WHERE id = ? AND session = ?",
                [.text(json), .text(worker.id), .text(worker.session)])
        case .remove(let id, let session):
            try db.run("DELETE FROM workers WHERE id = ? AND session = ?", [.text(id), .text(session)])
        }
    }

    public func workers() throws -> [WorkerRecord] {
        try locked {
            var out = [WorkerRecord]()
            try db.run("SELECT record FROM workers ORDER BY id") { row in
                if let w = try? Self.decoder.decode(WorkerRecord.self, from: row.blob(0)) { out.append(w) }
                return true
            }
            return out
        }
    }

    public func clearWorkers() throws { try locked { try db.exec("DELETE FROM workers") } }

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
