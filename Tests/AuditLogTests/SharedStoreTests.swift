import AttestationCore
@testable import AuditLog
@testable import GatewayState
import Foundation
import TestSupport
import Testing

/// The PostgreSQL store against a real server (PostgreSQL from Debian's packages, started by the
/// test process): the same results as the SQLite store for the same appends, one chain shared by
/// several gateways, schema versions, and the connection settings an operator gets wrong.
@Suite struct SharedStoreTests {
    static let time = Date(timeIntervalSince1970: 1_790_000_000)

    /// What `body` threw, as text; nil when it did not throw.
    func failure(_ body: () throws -> Void) -> String? {
        do {
            try body()
            return nil
        } catch { return "\(error)" }
    }

    static func postgres(_ server: PostgresServer, key: Ed25519PrivateKey? = nil) async throws -> PostgresStore {
        try await offPool {
            let database = try server.createDatabase()
            let store = try PostgresStore(
                location: try PostgresLocation(url: server.url(database), password: server.password))
            if let key { try store.registerGateway(key.publicKey, at: time) }
            return store
        }
    }

    /// The same decisions, policies, worker changes and checkpoints, appended to each store.
    static func script(_ store: any GatewayStore, key: Ed25519PrivateKey) throws -> [AuditEntry] {
        var out = [AuditEntry]()
        let policy = NewPolicy(name: "p", text: "schema: x\n", signature: "", signer: nil, note: "first")
        out += try store.append(
            [.policy(AuditEvent(event: "policy-applied", actor: "config", decision: "applied"), policy)], at: time,
            checkpointKey: key)
        for i in 0..<40 {
            let worker = WorkerRecord(
                id: "w\(i % 5)", session: "s\(i)", provider: nil, models: ["m"], format: "tpm", claims: ["i": "\(i)"],
                admittedAt: time, lastAttested: time, evidenceSHA256: "e", policyVersion: 1)
            let change: WorkerChange = i % 4 == 3 ? .remove(id: worker.id, session: "s\(i - 1)") : .upsert(worker)
            out += try store.append(
                [
                    .event(
                        AuditEvent(
                            event: "admission", worker: worker.id, decision: "admit",
                            reasons: i % 3 == 0 ? ["x.y"] : [],
                            policyVersion: 1, detail: ["i": "\(i)", "odd \"\n": "é\u{1}"]),
                        evidence: StoredEvidence(envelope: Data("env \(i % 7)".utf8), binding: Data([UInt8(i)])),
                        worker: change)
                ], at: time + Double(i), checkpointKey: key)
            if i % 10 == 9 { out += try store.append([.checkpoint], at: time + Double(i), checkpointKey: key) }
        }
        try store.replaceAPIKeys(source: "config", digests: ["aa", "bb"], at: time)
        try store.replaceAPIKeys(source: "config", digests: ["bb", "cc"], at: time)
        return out
    }

    static func export(_ store: any GatewayStore, _ query: AuditQuery = AuditQuery()) throws -> Data {
        var out = Data()
        try AuditExport.write(from: store, query: query, format: .jsonl, to: { out.append($0) })
        return out
    }

    /// Everything a store answers, in one comparable value.
    static func snapshot(_ store: any GatewayStore) throws -> [String] {
        var out = [String(decoding: try export(store), as: UTF8.self)]
        out.append(
            String(
                decoding: try export(store, AuditQuery(since: time + 5, until: time + 20, worker: "w2")), as: UTF8.self)
        )
        out.append(String(decoding: try export(store, AuditQuery(fromSeq: 30)), as: UTF8.self))
        out.append("count \(try store.count(AuditQuery(worker: "w1"))) head \(try store.head())")
        out.append("entry \(try store.entry(seq: 7)?.hash ?? "-") \(try store.entry(seq: 999) == nil)")
        let digest = HashAlgorithm.sha256.hash(Data("env 3".utf8)).hex
        out.append(
            "evidence \(try store.evidence(sha256: digest)?.binding.hex ?? "-") \(try store.evidence(sha256: "00") == nil)"
        )
        out.append("policies \(try store.policies().map { "\($0.version) \($0.policy) \($0.actor) \($0.appliedAt)" })")
        out.append("workers \(try store.workers().map { "\($0.id) \($0.session)" })")
        out.append("keys \(try store.apiKeyDigests().sorted())")
        out.append("gateways \(try store.gateways().map(\.id))")
        return out
    }

    @Test func postgresAnswersAsSQLiteDoes() async throws {
        let server = try await PostgresServer.shared()
        let key = Ed25519PrivateKey.generate()
        let pg = try await Self.postgres(server, key: key)
        let dir = try TemporaryDirectory("store")
        let lite = try SQLiteStore(url: dir.file("ccgate.db"))
        try lite.registerGateway(key.publicKey, at: Self.time)
        try await offPool {
            let a = try Self.script(pg, key: key)
            let b = try Self.script(lite, key: key)
            #expect(a == b)
            let (x, y) = (try Self.snapshot(pg), try Self.snapshot(lite))
            #expect(x == y)
            #expect(try !pg.workers().isEmpty)
            let summary = try AuditVerifier.verify(try Self.export(pg), key: key.publicKey)
            #expect(summary.entries == 45 && summary.checkpoints == 4)
            // Every entry names the gateway that wrote it.
            #expect(a.allSatisfy { $0.event.gateway == key.publicKey.fingerprint })
        }
    }

    /// Three gateways append at once to one database: one chain, every place given out once,
    /// each gateway's checkpoints verifying under its own key, and only under the keys given.
    @Test func threeGatewaysShareOneChain() async throws {
        let server = try await PostgresServer.shared()
        let database = try await offPool { try server.createDatabase() }
        let keys = (0..<3).map { _ in Ed25519PrivateKey.generate() }
        var trails = [AuditTrail]()
        for key in keys {
            let store = try await offPool {
                let s = try PostgresStore(
                    location: try PostgresLocation(url: server.url(database), password: server.password))
                try s.registerGateway(key.publicKey, at: Self.time)
                return s
            }
            trails.append(AuditTrail(store: store, key: key))
        }
        defer { for t in trails { t.close() } }
        let seqs = try await withThrowingTaskGroup(of: Int.self) { group in
            for i in 0..<240 {
                let trail = trails[i % 3]
                group.addTask {
                    if i % 40 == 39 { _ = try await trail.checkpoint() }
                    return try await trail.record(AuditEvent(event: "admission", worker: "w\(i)", decision: "admit"))
                        .seq
                }
            }
            return try await group.reduce(into: [Int]()) { $0.append($1) }
        }
        #expect(Set(seqs).count == 240)
        for t in trails { try await t.checkpoint() }
        let store = trails[0].store
        let (export, listed) = try await offPool { (try Self.export(store), try store.gateways()) }
        #expect(Set(listed.map(\.id)) == Set(keys.map(\.publicKey.fingerprint)))
        let summary = try AuditVerifier.verify(export, keys: keys.map(\.publicKey))
        let count = try await offPool { try store.head().count }
        #expect(summary.entries == count)
        #expect(Set(summary.signers.keys) == Set(keys.map(\.publicKey.fingerprint)))
        let entries = export.split(separator: 0x0A).compactMap { try? AuditEntry.parse(line: $0).get() }
        for key in keys {
            let mine = entries.filter { $0.event.gateway == key.publicKey.fingerprint && $0.event.event == "admission" }
            #expect(mine.count == 80)
        }
        // Threat: a checkpoint by a key the verifier was not given authenticates nothing.
        #expect(throws: AuditVerifier.Failure.self) {
            try AuditVerifier.verify(export, keys: [keys[0].publicKey, keys[1].publicKey])
        }
    }

    /// A database written by a newer release is refused by both stores, naming both versions;
    /// an older PostgreSQL schema waits for `ccgate db migrate`.
    @Test func schemaVersionsAreEnforced() async throws {
        let server = try await PostgresServer.shared()
        let database = try await offPool { try server.createDatabase() }
        let location = try PostgresLocation(url: server.url(database), password: server.password)
        try await offPool {
            _ = try PostgresStore(location: location)
            try server.psql(database, "UPDATE meta SET value = '99' WHERE key = 'schema'")
            let newer = failure { _ = try PostgresStore(location: location, migrate: true) }
            #expect(newer?.contains("schema version 99") == true && newer?.contains("up to \(Schema.current)") == true)
            #expect(try PostgresStore(location: location, inspect: true).schemaStatus().version == 99)

            try server.psql(database, "UPDATE meta SET value = '1' WHERE key = 'schema'")
            #expect(failure { _ = try PostgresStore(location: location) }?.contains("ccgate db migrate") == true)
            let store = try PostgresStore(location: location, inspect: true)
            #expect(try store.schemaStatus().pending.count == Schema.current - 1)
        }

        let dir = try TemporaryDirectory("store")
        _ = try SQLiteStore(url: dir.file("ccgate.db"))
        let db = try SQLiteConnection(path: dir.file("ccgate.db").path)
        try db.exec("UPDATE meta SET value = '7' WHERE key = 'schema'")
        #expect(failure { _ = try SQLiteStore(url: dir.file("ccgate.db")) }?.contains("schema version 7") == true)
        #expect(
            failure { _ = try SQLiteStore(url: dir.file("ccgate.db"), readOnly: true) }?.contains("schema version 7")
                == true)
        #expect(try SQLiteStore.schemaStatus(url: dir.file("ccgate.db")).version == 7)
    }

    /// Connection settings an operator can get wrong fail with what to do, before any write.
    @Test func badDatabaseSettingsAreRefusedClearly() async throws {
        for (url, expected) in [
            ("postgres://ccgate:secret@db/ccgate", "process list"),
            ("postgres://ccgate@db/ccgate?sslmode=require", "verify-full"),
            ("postgres://ccgate@db/ccgate?sslmod=disable", "unknown or empty option 'sslmod'"),
            ("postgres://db/ccgate", "name the database user"),
            ("postgres://ccgate@db/", "name the database"),
            ("mysql://ccgate@db/ccgate", "not a postgres:// URL"),
            ("postgres://ccgate@db/x?host=relative", "absolute path"),
            // Threat: a network in the middle. Off this machine the operator must choose.
            ("postgres://ccgate@db.internal/ccgate", "sslmode=verify-full"),
            ("postgres://ccgate@db/ccgate?sslmode=verify-full&sslmode=disable", "given twice"),
            ("postgres://ccgate@db/ccgate?sslmode=disable&sslrootcert=ca.pem", "only with sslmode=verify-full"),
        ] {
            #expect(failure { _ = try PostgresLocation(url: url) }?.contains(expected) == true, "\(url)")
        }
        // The password never appears in an error, even one about the URL it was put in.
        #expect(failure { _ = try PostgresLocation(url: "mysql://u:hunter2@db/x") }?.contains("hunter2") == false)

        let server = try await PostgresServer.shared()
        try await offPool {
            let wrong = try PostgresLocation(url: server.url("postgres"), password: "not-the-password")
            let refused = failure { _ = try PostgresStore(location: wrong) }
            #expect(refused?.contains("cannot connect") == true, "\(refused ?? "")")
            #expect(refused?.contains("password authentication failed") == true, "\(refused ?? "")")
            let closed = try PostgresLocation(url: "postgres://ccgate@127.0.0.1:1/ccgate", password: "x")
            #expect(
                failure { _ = try PostgresStore(location: closed) }?.contains(
                    "cannot connect to postgres://ccgate@127.0.0.1:1/ccgate") == true)
            // Over the Unix socket, with the same password.
            let database = try server.createDatabase()
            let socket = try PostgresLocation(url: server.socketURL(database), password: server.password)
            #expect(try PostgresStore(location: socket).head() == .empty)
        }
    }

    /// Two gateways applying a policy at once: the second, checked against a version that is no
    /// longer the newest, is refused by the store and writes nothing.
    @Test func aPolicyCheckedAgainstAStaleVersionIsRefused() async throws {
        let server = try await PostgresServer.shared()
        let key = Ed25519PrivateKey.generate()
        let first = try await Self.postgres(server, key: key)
        let location = first.location
        try await offPool {
            let second = try PostgresStore(location: location)
            var policy = NewPolicy(name: "p", text: "a", signature: "", signer: nil, note: "")
            policy.after = 0
            let applied = AuditEvent(event: "policy-applied")
            _ = try first.append([.policy(applied, policy)], at: Self.time, checkpointKey: key)
            #expect(throws: PolicyVersionConflict.self) {
                _ = try second.append([.policy(applied, policy)], at: Self.time, checkpointKey: key)
            }
            #expect(try second.policies().count == 1 && second.head().count == 1)
            policy.after = 1
            #expect(
                try second.append([.policy(applied, policy)], at: Self.time, checkpointKey: key)[0].event.policyVersion
                    == 2)
        }
    }

    /// The server dropping the connection (a restart, a failover) costs the call in flight only:
    /// the next call connects again and the chain goes on from where it was.
    @Test func aDroppedConnectionIsOpenedAgain() async throws {
        let server = try await PostgresServer.shared()
        let key = Ed25519PrivateKey.generate()
        let store = try await Self.postgres(server, key: key)
        try await offPool {
            _ = try store.append([.event(AuditEvent(event: "a"))], at: Self.time, checkpointKey: key)
            try server.psql(
                "postgres",
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '\(store.location.database)'")
            var appended: [AuditEntry]?
            for _ in 0..<2 where appended == nil {
                appended = try? store.append([.event(AuditEvent(event: "b"))], at: Self.time, checkpointKey: key)
            }
            #expect(appended?.first?.seq == 2)
            #expect(try store.head().count == 2)
        }
    }
}
