import AttestationCore
import AuditLog
import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO
import Synchronization

/// The gateway's state in PostgreSQL, shared by every gateway that names the same database: one
/// audit chain, one policy history, one list of gateways; worker rows kept per gateway.
///
/// Appends from all gateways are serialized in the database: each takes `LOCK TABLE audit IN
/// EXCLUSIVE MODE` in its transaction, reads the chain head there and links after it, so two
/// gateways never give out the same sequence number or link to the same entry, and readers
/// (`EXCLUSIVE` lets them in) always see a prefix of the chain. A transaction is durable when
/// `COMMIT` returns (the server's `synchronous_commit`, on by default).
///
/// The interface is synchronous, as ``GatewayStore`` is: each call waits for its reply on the
/// calling thread (never a thread of the database connection's event loop). Two connections,
/// each used under its own lock and opened again on the next call after the server drops it: one
/// for appends and other writes, one for reads outside a transaction (exports, the admin API's
/// reads, the policy history and chain the followers of the other gateways read), which so
/// never wait behind the audit writer.
public final class PostgresStore: GatewayStore, @unchecked Sendable {
    // `connection`, `inTransaction` and `gateway` are used only under `lock`.
    private let lock = NSLock()
    private var connection: PostgresConnection?
    /// The connection a transaction began on: every statement of it runs there or fails (never
    /// on a connection opened again half-way, outside the transaction and its lock).
    private var inTransaction: PostgresConnection?
    private var gateway: String?
    // `reader` is used only under `readLock`.
    private let readLock = NSLock()
    private var reader: PostgresConnection?
    public let location: PostgresLocation
    private let tls: PostgresConnection.Configuration.TLS
    private static let logger = Logger(label: "ccgate.postgres", factory: { _ in SwiftLogNoOpLogHandler() })

    /// Rows fetched per round trip when streaming the chain.
    static let pageSize = 512

    /// Connects and checks the schema. An empty database gets the current schema; an older one
    /// is migrated when `migrate` is true, else refused (`ccgate db migrate` migrates it once,
    /// for every gateway); a newer one is refused. `inspect`: no schema check at all (for
    /// `ccgate db status`, which reports what it finds).
    public init(location: PostgresLocation, migrate: Bool = false, inspect: Bool = false) throws {
        self.location = location
        switch location.tls {
        case .disable: tls = .disable
        case .verifyFull:
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.certificateVerification = .fullVerification
            if let file = location.rootCertificate { configuration.trustRoots = .file(file) }
            do { tls = .require(try NIOSSLContext(configuration: configuration)) } catch {
                throw StoreError("\(location): TLS setup: \(error)")
            }
        }
        if inspect {
            _ = try locked { try connected() }
            return
        }
        let version = try schemaStatus().version
        if let refusal = Schema.refusal(version, database: location.description) { throw refusal }
        guard version < Schema.current else { return }
        guard migrate || version == 0 else {
            throw StoreError(
                "\(location) has schema version \(version); this ccgate uses \(Schema.current): run `ccgate db migrate --database …` once (every gateway on it then starts)"
            )
        }
        try self.migrate()
    }

    deinit {
        Self.closing(connection)
        Self.closing(reader)
    }

    /// Starts closing `connection` without waiting: its event loop finishes the goodbye, and the
    /// connection is kept until then (PostgresNIO requires it to be closed before it goes).
    private static func closing(_ connection: PostgresConnection?) {
        guard let connection else { return }
        let done: EventLoopFuture<Void> = connection.close()
        done.whenComplete { _ in withExtendedLifetime(connection) {} }
    }

    // MARK: Connection

    private func locked<T>(_ body: () throws -> T) throws -> T {
        lock.lock()
        defer { lock.unlock() }
        return try explained(body)
    }

    /// Runs `body` with the reading connection to itself.
    private func reading<T>(_ body: () throws -> T) throws -> T {
        readLock.lock()
        defer { readLock.unlock() }
        return try explained(body)
    }

    /// Errors as the store's: the server's words, with the database named.
    private func explained<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch let error as StoreError { throw error } catch let error as PolicyVersionConflict
        {
            throw error
        } catch {
            throw StoreError("\(location): \(Self.describe(error))")
        }
    }

    /// How to reach the server.
    private func configuration() -> PostgresConnection.Configuration {
        var configuration: PostgresConnection.Configuration
        if let socket = location.socketPath {
            configuration = .init(
                unixSocketPath: socket, username: location.user, password: location.password,
                database: location.database)
        } else {
            configuration = .init(
                host: location.host ?? "localhost", port: location.port, username: location.user,
                password: location.password, database: location.database, tls: tls)
        }
        configuration.options.connectTimeout = .seconds(10)
        // A statement stuck behind a lock fails instead of holding up the audit writer for ever,
        // and a gateway that stops half-way through a transaction (paused, partitioned) does not
        // hold the chain's lock for the others for longer than a minute.
        configuration.options.additionalStartupParameters = [
            ("statement_timeout", "30s"), ("lock_timeout", "20s"), ("idle_in_transaction_session_timeout", "60s"),
        ]
        return configuration
    }

    /// The connection, opened (again) when there is none or the server closed it.
    private func connected() throws -> PostgresConnection {
        if let c = connection, !c.isClosed { return c }
        let c = try open(id: 1)
        connection = c
        return c
    }

    private func open(id: Int) throws -> PostgresConnection {
        do {
            return try Self.wait(
                PostgresConnection.connect(
                    on: MultiThreadedEventLoopGroup.singleton.next(), configuration: configuration(), id: id,
                    logger: Self.logger))
        } catch {
            throw StoreError("cannot connect to \(location): \(Self.describe(error))")
        }
    }

    /// A query on the reading connection (under `readLock`).
    private func read(_ query: PostgresQuery) throws -> PostgresQueryResult {
        if reader?.isClosed ?? true { reader = try open(id: 3) }
        let target = reader!
        do { return try Self.wait(target.query(query, logger: Self.logger)) } catch let error as StoreError {
            Self.closing(target)
            reader = nil
            throw error
        }
    }

    /// The channel a gateway notifies in the transaction that records something the other
    /// gateways act on: a policy version, an admin's eviction.
    static let changesChannel = "ccgate_changes"

    /// LISTENs on a connection of its own, opened again a second after it drops; yields once
    /// per connection and once per notification.
    public func changeNotifications() -> AsyncStream<Void>? {
        let configuration = configuration()
        let (stream, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let open = Mutex<PostgresConnection?>(nil)
        let task = Task {
            while !Task.isCancelled {
                do {
                    let listener = try await PostgresConnection.connect(
                        on: MultiThreadedEventLoopGroup.singleton.next(), configuration: configuration, id: 2,
                        logger: Self.logger)
                    open.withLock { $0 = listener }
                    try await listener.listen(on: Self.changesChannel) { notifications in
                        continuation.yield()
                        for try await _ in notifications { continuation.yield() }
                    }
                } catch {}
                Self.closing(open.withLock { $0.take() })
                try? await Task.sleep(for: .seconds(1))
            }
        }
        continuation.onTermination = { _ in
            task.cancel()
            Self.closing(open.withLock { $0.take() })
        }
        return stream
    }

    /// Waits on the calling thread for `future` (a semaphore, not `wait()`: callers may be on a
    /// thread of another event loop, where NIO forbids `wait()`), at most `limit`: a server that
    /// stops answering (a black-holed connection) fails the call instead of holding the store.
    private static func wait<T: Sendable>(_ future: EventLoopFuture<T>, limit: Double = 60) throws -> T {
        precondition(!future.eventLoop.inEventLoop, "a PostgresStore call on its own connection's event loop")
        let done = DispatchSemaphore(value: 0)
        let outcome = Mutex<Result<T, any Error>?>(nil)
        future.whenComplete { result in
            outcome.withLock { $0 = result }
            done.signal()
        }
        guard done.wait(timeout: .now() + limit) == .success else {
            throw StoreError("the database did not answer within \(Int(limit)) s")
        }
        return try outcome.withLock { $0! }.get()
    }

    @discardableResult
    private func run(_ query: PostgresQuery) throws -> PostgresQueryResult {
        let target: PostgresConnection
        if let open = inTransaction {
            guard !open.isClosed else {
                throw StoreError("the connection closed during a transaction; nothing of it was committed")
            }
            target = open
        } else {
            target = try connected()
        }
        do { return try Self.wait(target.query(query, logger: Self.logger)) } catch let error as StoreError {
            // No answer: this connection is no longer trusted to be in step; the next call opens another.
            Self.closing(target)
            if connection === target { connection = nil }
            throw error
        }
    }

    /// What went wrong, in the server's words where it gave some (PostgresNIO's own description
    /// is deliberately generic).
    static func describe(_ error: any Error) -> String {
        guard let e = error as? PSQLError else { return "\(error)" }
        if let message = e.serverInfo?[.message] {
            return message + (e.serverInfo?[.sqlState].map { " (SQLSTATE \($0))" } ?? "")
        }
        if let underlying = e.underlying { return "\(e.code): \(underlying)" }
        return "\(e.code)"
    }

    /// Runs `body` in one transaction: committed when it returns, rolled back when it throws.
    private func transaction<T>(_ body: () throws -> T) throws -> T {
        try run("BEGIN")
        inTransaction = connection
        defer { inTransaction = nil }
        do {
            let result = try body()
            try run("COMMIT")
            return result
        } catch {
            _ = try? run("ROLLBACK")
            throw error
        }
    }

    // MARK: Schema

    private func schemaVersion() throws -> Int {
        let exists = try run("SELECT to_regclass('meta') IS NOT NULL").first?.decode(Bool.self) ?? false
        guard exists else { return 0 }
        let text = try run("SELECT value FROM meta WHERE key = 'schema'").first?.decode(String.self)
        return text.flatMap { Int($0) } ?? 0
    }

    public func schemaStatus() throws -> SchemaStatus { SchemaStatus(version: try locked { try schemaVersion() }) }

    /// Applies the pending migrations, each in its own transaction under an advisory lock, so
    /// gateways starting together on an empty database create the schema once.
    public func migrate(progress: (Schema.Migration) -> Void = { _ in }) throws {
        try locked {
            for migration in Schema.pending(from: try schemaVersion()) {
                try transaction {
                    try run("SELECT pg_advisory_xact_lock(\(Self.migrationLock))")
                    guard try schemaVersion() < migration.version else { return }
                    progress(migration)
                    for statement in migration.postgres { try run(PostgresQuery(unsafeSQL: statement)) }
                    let version = String(migration.version)
                    try run(
                        "INSERT INTO meta(key, value) VALUES('schema', \(version)) ON CONFLICT(key) DO UPDATE SET value = EXCLUDED.value"
                    )
                }
            }
        }
    }

    /// The advisory lock key migrations take ("ccgate" in ASCII).
    static let migrationLock = 0x63_6367_6174_65

    // MARK: Audit chain

    private func currentHead() throws -> ChainHead {
        guard let row = try run("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").first else { return .empty }
        let (seq, hash) = try row.decode((Int, String).self)
        return ChainHead(count: seq, hash: hash)
    }

    public func append(_ drafts: [AuditDraft], at time: Date, checkpointKey: Ed25519PrivateKey?) throws -> [AuditEntry]
    {
        try locked {
            try transaction {
                // Serializes appends from every gateway on this database (readers are not held up).
                try run("LOCK TABLE audit IN EXCLUSIVE MODE")
                let entries = try appendDrafts(
                    drafts, after: try currentHead(), at: time, key: checkpointKey, gateway: gateway)
                // Delivered to every listening gateway when this transaction commits.
                if drafts.contains(where: \.concernsOtherGateways) {
                    try run(PostgresQuery(unsafeSQL: "NOTIFY \(Self.changesChannel)"))
                }
                return entries
            }
        }
    }

    public func head() throws -> ChainHead { try locked { try currentHead() } }

    static func whereClause(_ q: AuditQuery, after: Int?) throws -> (String, PostgresBindings) {
        var clauses = [String]()
        var binds = PostgresBindings()
        func add(_ sql: String, _ value: some PostgresEncodable & Sendable) throws {
            try binds.append(value)
            clauses.append(sql.replacingOccurrences(of: "?", with: "$\(binds.count)"))
        }
        if let s = q.since { try add("time >= ?", s.rfc3339) }
        if let u = q.until { try add("time <= ?", u.rfc3339) }
        if let w = q.worker { try add("worker = ?", w) }
        if let f = q.fromSeq { try add("seq >= ?", f) }
        if let after { try add("seq > ?", after) }
        return (clauses.isEmpty ? "" : " WHERE " + clauses.joined(separator: " AND "), binds)
    }

    /// Streams the lines a page at a time; the store is not locked while `body` runs. Entries
    /// are only ever appended, in sequence order, so the pages together are one prefix of the chain.
    public func lines(_ query: AuditQuery, _ body: (Int, [UInt8]) throws -> Bool) throws {
        var after: Int?
        while true {
            let page: [(Int, [UInt8])] = try reading {
                let (clause, binds) = try Self.whereClause(query, after: after)
                let sql = "SELECT seq, line FROM audit\(clause) ORDER BY seq LIMIT \(Self.pageSize)"
                return try read(PostgresQuery(unsafeSQL: sql, binds: binds)).map { row in
                    let (seq, line) = try row.decode((Int, ByteBuffer).self)
                    return (seq, Array(line.readableBytesView))
                }
            }
            for (seq, line) in page {
                guard try body(seq, line) else { return }
                after = seq
            }
            if page.count < Self.pageSize { return }
        }
    }

    public func entries(_ query: AuditQuery, _ body: (AuditEntry) throws -> Bool) throws {
        try parsedEntries(query, source: location.description, body)
    }

    public func count(_ query: AuditQuery) throws -> Int {
        try reading {
            let (clause, binds) = try Self.whereClause(query, after: nil)
            return try read(PostgresQuery(unsafeSQL: "SELECT COUNT(*) FROM audit\(clause)", binds: binds)).first?
                .decode(
                    Int.self) ?? 0
        }
    }

    public func entry(seq: Int) throws -> AuditEntry? {
        let line = try reading {
            try read("SELECT line FROM audit WHERE seq = \(seq)").first.map {
                Array(try $0.decode(ByteBuffer.self).readableBytesView)
            }
        }
        guard let line else { return nil }
        switch AuditEntry.parse(line: line) {
        case .success(let e): return e
        case .failure(let e): throw StoreError("\(location): audit entry \(seq): \(e)")
        }
    }

    public func evidence(sha256: String) throws -> StoredEvidence? {
        try reading {
            try read("SELECT envelope, binding FROM evidence WHERE sha256 = \(sha256)").first.map { row in
                let (envelope, binding) = try row.decode((Data, Data).self)
                return StoredEvidence(sha256: sha256, envelope: envelope, binding: binding)
            }
        }
    }

    // MARK: Policies

    private func policyRows(_ query: PostgresQuery) throws -> [PolicyRecord] {
        try reading {
            try read(query).map { row in
                let (version, name, text, signature, signer, note, appliedAt, actor) = try row.decode(
                    (Int, String, String, String, String?, String, String, String).self)
                return PolicyRecord(
                    version: version,
                    policy: NewPolicy(name: name, text: text, signature: signature, signer: signer, note: note),
                    appliedAt: Date.rfc3339(appliedAt) ?? .distantPast, actor: actor)
            }
        }
    }

    public func policies() throws -> [PolicyRecord] {
        try policyRows(
            "SELECT version, name, text, signature, signer, note, applied_at, actor FROM policies ORDER BY version")
    }

    public func policy(version: Int) throws -> PolicyRecord? {
        try policyRows(
            "SELECT version, name, text, signature, signer, note, applied_at, actor FROM policies WHERE version = \(version)"
        ).first
    }

    // MARK: Workers and gateways

    public func workers() throws -> [WorkerRecord] {
        let gateway = lock.withLock { self.gateway ?? "" }
        return try reading {
            try read("SELECT record FROM workers WHERE gateway = \(gateway) ORDER BY id").compactMap { row in
                try? WorkerJSON.decoder.decode(WorkerRecord.self, from: Data(try row.decode(String.self).utf8))
            }
        }
    }

    public func clearWorkers() throws {
        try locked {
            let gateway = self.gateway ?? ""
            try run("DELETE FROM workers WHERE gateway = \(gateway)")
        }
    }

    public func registerGateway(_ key: Ed25519PublicKey, at time: Date) throws {
        try locked {
            let (id, publicKey, now) = (key.fingerprint, key.base64, time.rfc3339)
            try run(
                """
                INSERT INTO gateways(id, public_key, first_seen, last_seen) VALUES(\(id), \(publicKey), \(now), \(now))
                ON CONFLICT(id) DO UPDATE SET last_seen = EXCLUDED.last_seen
                """)
            gateway = id
        }
    }

    public func gateways() throws -> [GatewayRecord] {
        try reading {
            try read("SELECT id, public_key, first_seen, last_seen FROM gateways ORDER BY first_seen, id").map { row in
                let (id, key, first, last) = try row.decode((String, String, String, String).self)
                return GatewayRecord(
                    id: id, publicKey: key, firstSeen: Date.rfc3339(first) ?? .distantPast,
                    lastSeen: Date.rfc3339(last) ?? .distantPast)
            }
        }
    }

    // MARK: API keys

    public func apiKeyDigests() throws -> Set<String> {
        try reading { Set(try read("SELECT sha256 FROM api_keys").map { try $0.decode(String.self) }) }
    }

    public func replaceAPIKeys(source: String, digests: Set<String>, at time: Date) throws {
        try locked {
            try transaction {
                try run("DELETE FROM api_keys WHERE source = \(source)")
                let created = time.rfc3339
                for d in digests.sorted() {
                    try run(
                        "INSERT INTO api_keys(sha256, source, created_at) VALUES(\(d), \(source), \(created)) ON CONFLICT(sha256) DO NOTHING"
                    )
                }
            }
        }
    }
}

extension PostgresStore {
    // MARK: Named keys and the usage ledger

    public func clientKeys() throws -> [ClientKeyRecord] {
        try reading {
            try read("SELECT id, record FROM client_keys ORDER BY id").compactMap { row in
                let (id, record) = try row.decode((String?, String?).self)
                return UsageColumns.key(id: id, record: record)
            }
        }
    }

    public func probeWrite(at time: Date) throws {
        try locked {
            let now = time.rfc3339
            try run(
                "INSERT INTO meta(key, value) VALUES('ready_probe', \(now)) ON CONFLICT(key) DO UPDATE SET value = EXCLUDED.value"
            )
        }
    }

    public func recordUsage(_ records: [UsageRecord]) throws {
        guard !records.isEmpty else { return }
        try locked {
            let gateway = self.gateway ?? ""
            // One statement per batch: a thousand rows cost one round trip, not a thousand, while
            // the audit writer waits for this connection.
            for start in stride(from: 0, to: records.count, by: 512) {
                try insertUsage(records[start..<min(start + 512, records.count)], gateway: gateway)
            }
        }
    }

    /// Ledger rows in one INSERT, each under its own gateway's name or `gateway` (a request id
    /// already there is kept).
    private func insertUsage(_ rows: ArraySlice<UsageRecord>, gateway: String) throws {
        var sql =
            "INSERT INTO usage_ledger(request_id, time_ms, gateway, key_id, model, worker, provider, prompt_tokens, completion_tokens, ttft_ms, duration_ms, status, source, mac) VALUES "
        var binds = PostgresBindings(capacity: rows.count * 14)
        for (n, r) in rows.enumerated() {
            let first = binds.count + 1
            binds.append(r.requestID)
            binds.append(UsageColumns.milliseconds(r.time))
            binds.append(r.gateway ?? gateway)
            binds.append(r.keyID)
            binds.append(r.model)
            binds.append(r.worker)
            binds.append(r.provider)
            binds.append(r.promptTokens)
            binds.append(r.completionTokens)
            binds.append(r.timeToFirstTokenMs)
            binds.append(r.durationMs)
            binds.append(r.status)
            binds.append(r.source)
            binds.append(r.mac ?? "")
            sql += (n == 0 ? "" : ", ") + "(" + (first..<first + 14).map { "$\($0)" }.joined(separator: ", ") + ")"
        }
        try run(PostgresQuery(unsafeSQL: sql + " ON CONFLICT(request_id) DO NOTHING", binds: binds))
    }

    public func usedTokens(keyID: String, since: Date) throws -> Int {
        let ms = UsageColumns.milliseconds(since)
        return try reading {
            try read(
                "SELECT CAST(COALESCE(SUM(LEAST(GREATEST(prompt_tokens, 0), 1000000000) + LEAST(GREATEST(completion_tokens, 0), 1000000000)), 0) AS BIGINT) FROM usage_ledger WHERE key_id = \(keyID) AND time_ms >= \(ms)"
            ).first?.decode(Int.self) ?? 0
        }
    }

    public func usage(_ query: UsageQuery, _ body: (UsageRecord) throws -> Bool) throws {
        var sql = "SELECT \(UsageColumns.list) FROM usage_ledger WHERE TRUE"
        var binds = PostgresBindings()
        func add(_ clause: String, _ value: some PostgresEncodable & Sendable) throws {
            try binds.append(value)
            sql += " AND \(clause) $\(binds.count)"
        }
        if let since = query.since { try add("time_ms >=", UsageColumns.milliseconds(since)) }
        if let until = query.until { try add("time_ms <", UsageColumns.milliseconds(until)) }
        if let key = query.keyID { try add("key_id =", key) }
        if let provider = query.provider { try add("provider =", provider) }
        let rows = try reading {
            try read(PostgresQuery(unsafeSQL: sql + " ORDER BY time_ms, request_id", binds: binds))
        }
        for row in rows {
            let c = try row.decode(
                (String, Int, String, String, String, String?, String?, Int, Int, Int?, Int, Int, String, String).self)
            let texts: [Int32: String?] = [0: c.0, 2: c.2, 3: c.3, 4: c.4, 5: c.5, 6: c.6, 12: c.12, 13: c.13]
            let ints: [Int32: Int?] = [1: c.1, 7: c.7, 8: c.8, 9: c.9, 10: c.10, 11: c.11]
            guard try body(UsageColumns.record(text: { texts[$0] ?? nil }, int: { ints[$0] ?? nil })) else { return }
        }
    }
}

extension PostgresStore {
    /// Copies another store's chain, evidence and policy history into this (empty) database in
    /// one transaction, byte for byte: every entry keeps its number, time, links and line, so
    /// exports verify as before. `sourceGateway`, the key of the gateway that wrote the source,
    /// is listed with the gateways. The source chain is checked link by link on the way (a
    /// broken one is not copied); named API keys and the usage ledger are copied, the keys set by
    /// flag are not (each gateway records its own at start), nor are worker rows (connections). `progress` gets the entries copied so far.
    public func copy(
        from source: any GatewayStore, sourceGateway: Ed25519PublicKey?, withLedger: Bool = true,
        progress: (Int) -> Void = { _ in }
    ) throws -> Int {
        try locked {
            try transaction {
                try run("LOCK TABLE audit IN EXCLUSIVE MODE")
                let existing = try currentHead()
                guard existing.count == 0 else {
                    throw StoreError(
                        "\(location) already holds \(existing.count) audit entries: copy only into a database with an empty chain"
                    )
                }
                var head = ChainHead.empty
                var first: Date?
                try source.entries(AuditQuery()) { entry in
                    guard entry.seq == head.count + 1, entry.prev == head.hash else {
                        throw StoreError(
                            "the source chain breaks at entry \(entry.seq) (expected entry \(head.count + 1) after \(head.hash.prefix(16))…): nothing was copied; check it with `ccgate audit verify`"
                        )
                    }
                    if let digest = entry.event.evidenceSHA256, let evidence = try source.evidence(sha256: digest) {
                        try insertEvidence(evidence)
                    }
                    try insertEntry(entry)
                    head = ChainHead(count: entry.seq, hash: entry.hash)
                    first = first ?? entry.time
                    if entry.seq % 1000 == 0 { progress(entry.seq) }
                    return true
                }
                for record in try source.policies() {
                    let p = record.policy
                    let applied = record.appliedAt.rfc3339
                    try run(
                        """
                        INSERT INTO policies(version, name, text, signature, signer, note, applied_at, actor)
                        VALUES(\(record.version), \(p.name), \(p.text), \(p.signature), \(p.signer), \(p.note), \(applied), \(record.actor))
                        """)
                }
                // A schema-1 source has no gateways table: its writer is `sourceGateway`.
                var gateways = (try? source.gateways()) ?? []
                if let key = sourceGateway, !gateways.contains(where: { $0.id == key.fingerprint }) {
                    let seen = first ?? Date()
                    gateways.append(
                        GatewayRecord(id: key.fingerprint, publicKey: key.base64, firstSeen: seen, lastSeen: seen))
                }
                for g in gateways {
                    let (first, last) = (g.firstSeen.rfc3339, g.lastSeen.rfc3339)
                    try run(
                        "INSERT INTO gateways(id, public_key, first_seen, last_seen) VALUES(\(g.id), \(g.publicKey), \(first), \(last)) ON CONFLICT(id) DO NOTHING"
                    )
                }
                // Named keys and the ledger go along (a source older than schema 3 has neither); the
                // keys' history is in the copied chain.
                for key in try withLedger ? source.clientKeys() : [] { try upsertClientKey(key) }
                if withLedger {
                    var batch = [UsageRecord]()
                    try source.usage(UsageQuery()) { r in
                        batch.append(r)
                        if batch.count == 512 {
                            try insertUsage(batch[...], gateway: "")
                            batch.removeAll()
                        }
                        return true
                    }
                    if !batch.isEmpty { try insertUsage(batch[...], gateway: "") }
                }
                progress(head.count)
                return head.count
            }
        }
    }
}

extension PostgresStore: ChainTables {
    func clientKeyRevision(id: String) throws -> Int? {
        try run("SELECT record FROM client_keys WHERE id = \(id) FOR UPDATE").first.map { row in
            (try? ClientKeyRecord.parse(row.decode(String.self)))?.revision ?? 0
        }
    }

    func upsertClientKey(_ key: ClientKeyRecord) throws {
        let (id, record) = (key.id, try key.json())
        try run(
            "INSERT INTO client_keys(id, record) VALUES(\(id), \(record)) ON CONFLICT(id) DO UPDATE SET record = EXCLUDED.record"
        )
    }

    func insertEvidence(_ evidence: StoredEvidence) throws {
        try run(
            """
            INSERT INTO evidence(sha256, envelope, binding) VALUES(\(evidence.sha256), \(evidence.envelope), \(evidence.binding))
            ON CONFLICT(sha256) DO NOTHING
            """)
    }

    func insertPolicy(_ policy: NewPolicy, actor: String, at time: Date) throws -> Int {
        let version = try run("SELECT COALESCE(MAX(version), 0) + 1 FROM policies").first?.decode(Int.self) ?? 1
        let applied = time.rfc3339
        try run(
            """
            INSERT INTO policies(version, name, text, signature, signer, note, applied_at, actor)
            VALUES(\(version), \(policy.name), \(policy.text), \(policy.signature), \(policy.signer), \(policy.note), \(applied), \(actor))
            """)
        return version
    }

    func apply(_ change: WorkerChange) throws {
        let gateway = self.gateway ?? ""
        switch change {
        case .upsert(let worker):
            let record = try WorkerJSON.text(worker)
            try run(
                """
                INSERT INTO workers(gateway, id, session, record) VALUES(\(gateway), \(worker.id), \(worker.session), \(record))
                ON CONFLICT(gateway, id) DO UPDATE SET session = EXCLUDED.session, record = EXCLUDED.record
                """)
        case .update(let worker):
            let record = try WorkerJSON.text(worker)
            try run(
                "UPDATE workers SET record = \(record) WHERE gateway = \(gateway) AND id = \(worker.id) AND session = \(worker.session)"
            )
        case .remove(let id, let session):
            try run("DELETE FROM workers WHERE gateway = \(gateway) AND id = \(id) AND session = \(session)")
        }
    }

    func insertEntry(_ entry: AuditEntry) throws {
        let (time, event, worker, hash, line) = (
            entry.time.rfc3339, entry.event.event, entry.event.worker, entry.hash, Data(entry.line)
        )
        try run(
            "INSERT INTO audit(seq, time, event, worker, hash, line) VALUES(\(entry.seq), \(time), \(event), \(worker), \(hash), \(line))"
        )
    }
}
