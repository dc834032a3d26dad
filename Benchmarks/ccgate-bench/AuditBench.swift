// The audit log: durable appends and export throughput, against the storage floor they stand on.
import AttestationCore
import AuditLog
import GatewayState
import Foundation

/// A decision as the gateway records it (an admission with its evidence digest and detail).
func benchEvent(_ i: Int) -> AuditEvent {
    AuditEvent(
        event: "admission", worker: "worker-\(i % 97)", decision: i % 5 == 0 ? "reject" : "admit",
        reasons: i % 5 == 0 ? ["policy.measurement-not-allowed"] : [], policyVersion: 3,
        evidenceSHA256: String(repeating: "ab", count: 32),
        detail: [
            "session": UUID().uuidString.lowercased(), "policy": "default", "format": "tpm2-quote", "models": "smollm2",
        ])
}

func elapsedSeconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }

func auditBench() async throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ccgate-audit-bench-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let clock = ContinuousClock()
    let window = Duration.milliseconds(Int(seconds * 1000))
    let sampleLine =
        Data(AuditEntry(seq: 1, time: Date(), prev: AuditEntry.genesis, event: benchEvent(1)).line) + Data("\n".utf8)

    // Baseline: the floor of a durable append on this disk — write one entry's bytes, fsync.
    let raw = dir.appendingPathComponent("raw.jsonl")
    _ = FileManager.default.createFile(atPath: raw.path, contents: nil)
    let handle = try FileHandle(forWritingTo: raw)
    var fsyncs = 0
    var start = clock.now
    while clock.now - start < window {
        try handle.write(contentsOf: sampleLine)
        try handle.synchronize()
        fsyncs += 1
    }
    let fsyncRate = Double(fsyncs) / elapsedSeconds(clock.now - start)
    try handle.close()
    print(
        String(format: "audit: baseline write+fsync of one %d-byte entry:       %8.0f /s", sampleLine.count, fsyncRate))

    let store = try SQLiteStore(url: dir.appendingPathComponent("ccgate.db"))
    let trail = AuditTrail(store: store, key: Ed25519PrivateKey.generate())
    defer { trail.close() }

    // One appender waiting for each entry to be durable (a lone admission).
    var appended = 0
    start = clock.now
    while clock.now - start < window {
        try await trail.record(benchEvent(appended))
        appended += 1
    }
    let sequential = Double(appended) / elapsedSeconds(clock.now - start)
    print(
        String(
            format: "audit: durable appends, 1 appender:                 %8.0f /s  (%.2f × baseline)", sequential,
            sequential / fsyncRate))

    // 64 appenders at once (a burst of admissions): group commit shares each fsync.
    for concurrency in [8, 64] {
        let counter = AppendCounter()
        start = clock.now
        let deadline = start + window
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<concurrency {
                group.addTask {
                    while clock.now < deadline {
                        try await trail.record(benchEvent(counter.increment()))
                    }
                }
            }
            try await group.waitForAll()
        }
        let concurrent = Double(counter.value) / elapsedSeconds(clock.now - start)
        print(
            String(
                format: "audit: durable appends, %2d appenders (group commit): %8.0f /s  (%.2f × baseline)",
                concurrency, concurrent, concurrent / fsyncRate))
    }

    // Export: fill to at least 50,000 entries in large batches, then stream them out.
    let want = 50_000
    var have = try store.head().count
    while have < want {
        let drafts = (0..<min(1000, want - have)).map { AuditDraft.event(benchEvent(have + $0)) }
        have += try await trail.record(drafts).count
    }
    try await trail.checkpoint()
    let total = try store.head().count

    // Baseline: reading the same bytes back from a file and finding its line ends.
    var exported = Data()
    try AuditExport.write(from: store, query: AuditQuery(), format: .jsonl, to: { exported.append($0) })
    let exportFile = dir.appendingPathComponent("export.jsonl")
    try exported.write(to: exportFile)
    start = clock.now
    var rounds = 0
    var lines = 0
    while clock.now - start < window || rounds == 0 {
        let bytes = try Data(contentsOf: exportFile)
        lines += bytes.withUnsafeBytes { raw in raw.reduce(0) { $1 == 0x0A ? $0 + 1 : $0 } }
        rounds += 1
    }
    let readRate = Double(lines) / elapsedSeconds(clock.now - start)
    print(String(format: "audit: baseline read of the exported file, line ends: %8.0f entries/s", readRate))

    for format in AuditExportFormat.allCases {
        start = clock.now
        var entries = 0
        var bytes = 0
        rounds = 0
        while clock.now - start < window || rounds == 0 {
            entries += try AuditExport.write(
                from: store, query: AuditQuery(), format: format, to: { bytes += $0.count })
            rounds += 1
        }
        let r = Double(entries) / elapsedSeconds(clock.now - start)
        print(
            String(
                format: "audit: export %-5@ (%d entries):                %8.0f entries/s  (%.2f × baseline)",
                format.rawValue, total, r, r / readRate))
    }

    start = clock.now
    _ = try AuditVerifier.verify(exported, key: trail.key.publicKey)
    let verifyRate = Double(total) / elapsedSeconds(clock.now - start)
    print(
        String(
            format: "audit: offline verify (audit verify):               %8.0f entries/s  (%.2f × baseline)",
            verifyRate, verifyRate / readRate))
}

final class AppendCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func increment() -> Int {
        lock.withLock {
            n += 1; return n
        }
    }
    var value: Int { lock.withLock { n } }
}

/// Durable appends to one chain in PostgreSQL (`CCGATE_BENCH_DATABASE`), from 1 and from 3
/// gateways (each its own store, connection, key and group-committing writer), beside pgbench's
/// simple-update transactions per second on the same server in the same run
/// (`CCGATE_BENCH_PGBENCH`: `clients:tps,…`, measured by scripts/bench-postgres just before).
func postgresAuditBench() async throws {
    let env = ProcessInfo.processInfo.environment
    guard let url = env["CCGATE_BENCH_DATABASE"] else {
        print("audit-pg: CCGATE_BENCH_DATABASE is not set (scripts/bench-postgres sets it); skipped")
        return
    }
    var pgbench = [Int: Double]()
    for pair in (env["CCGATE_BENCH_PGBENCH"] ?? "").split(separator: ",") {
        let parts = pair.split(separator: ":")
        if parts.count == 2, let c = Int(parts[0]), let tps = Double(parts[1]) { pgbench[c] = tps }
    }
    let location = try PostgresLocation(url: url)
    let clock = ContinuousClock()
    let window = Duration.milliseconds(Int(seconds * 1000))
    for (gateways, appenders) in [(1, 1), (1, 24), (3, 8)] {
        var trails = [AuditTrail]()
        for _ in 0..<gateways {
            let store = try PostgresStore(location: location)
            let key = Ed25519PrivateKey.generate()
            try store.registerGateway(key.publicKey, at: Date())
            trails.append(AuditTrail(store: store, key: key))
        }
        defer { for t in trails { t.close() } }
        let counter = AppendCounter()
        let start = clock.now
        let deadline = start + window
        try await withThrowingTaskGroup(of: Void.self) { group in
            for trail in trails {
                for _ in 0..<appenders {
                    group.addTask {
                        while clock.now < deadline { try await trail.record(benchEvent(counter.increment())) }
                    }
                }
            }
            try await group.waitForAll()
        }
        let rate = Double(counter.value) / elapsedSeconds(clock.now - start)
        let clients = gateways * appenders
        let baseline =
            pgbench[clients].map {
                String(format: "(%.2f × pgbench simple-update, %d clients: %.0f tps)", rate / $0, clients, $0)
            } ?? "(no pgbench figure)"
        print(
            String(
                format: "audit-pg: durable appends, %d gateway%@ × %2d appenders: %8.0f /s  ", gateways,
                gateways == 1 ? " " : "s", appenders, rate)
                + baseline)
    }
}
