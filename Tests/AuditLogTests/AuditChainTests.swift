import AttestationCore
@testable import AuditLog
@testable import GatewayState
import Foundation
import TestSupport
import Testing

/// The audit chain, its checkpoints and the offline verifier, on a real SQLite store.
@Suite struct AuditChainTests {
    static let time = Date(timeIntervalSince1970: 1_790_000_000)

    /// A store with `count` decisions and a checkpoint after them; returns the export.
    static func chain(_ count: Int, key: Ed25519PrivateKey = Ed25519PrivateKey.generate(), in dir: TemporaryDirectory)
        async throws
        -> (SQLiteStore, AuditTrail, Data)
    {
        let store = try SQLiteStore(url: dir.file("ccgate.db"))
        let trail = AuditTrail(store: store, key: key, clock: FixedClock(time))
        for i in 0..<count {
            try await trail.record(
                AuditEvent(
                    event: "admission", worker: "w\(i % 7)", decision: i % 3 == 0 ? "reject" : "admit",
                    reasons: i % 3 == 0 ? ["nonce.mismatch"] : [], policyVersion: 1,
                    detail: ["i": String(i), "quote \"\n\\": "é\u{1}"]),
                evidence: StoredEvidence(envelope: Data("envelope \(i)".utf8), binding: Data([UInt8(i & 0xFF)])))
        }
        try await trail.checkpoint()
        return (store, trail, try export(store))
    }

    static func export(_ store: SQLiteStore, _ query: AuditQuery = AuditQuery()) throws -> Data {
        var out = Data()
        try AuditExport.write(from: store, query: query, format: .jsonl, to: { out.append($0) })
        return out
    }

    static func lines(_ data: Data) -> [Data] { data.split(separator: 0x0A).map { Data($0) } }
    static func join(_ lines: [Data]) -> Data {
        lines.reduce(into: Data()) {
            $0.append($1); $0.append(0x0A)
        }
    }

    func failure(_ data: Data, key: Ed25519PublicKey) -> AuditVerifier.Failure? {
        do {
            _ = try AuditVerifier.verify(data, key: key)
            return nil
        } catch { return error }
    }

    @Test func chainVerifiesAndContinuesAcrossReopening() async throws {
        let dir = try TemporaryDirectory("audit")
        let key = Ed25519PrivateKey.generate()
        let (store, trail, export) = try await Self.chain(20, key: key, in: dir)
        trail.close()
        let summary = try AuditVerifier.verify(export, key: key.publicKey)
        #expect(summary.entries == 21 && summary.checkpoints == 1 && summary.unsignedTail == 0 && summary.firstSeq == 1)
        #expect(try store.head().count == 21)
        #expect(
            try store.evidence(sha256: HashAlgorithm.sha256.hash(Data("envelope 4".utf8)).hex)?.binding == Data([4]))

        let reopened = try SQLiteStore(url: dir.file("ccgate.db"))
        let trail2 = AuditTrail(store: reopened, key: key, clock: FixedClock(Self.time + 60))
        defer { trail2.close() }
        let next = try await trail2.record(AuditEvent(event: "gateway-start"))
        #expect(next.seq == 22)
        #expect(next.prev == summary.head)
        try await trail2.checkpoint()
        let again = try AuditVerifier.verify(try Self.export(reopened), key: key.publicKey)
        #expect(again.entries == 23 && again.checkpoints == 2)
    }

    /// Threat: an edited export. Each kind of edit fails and names the entry.
    @Test func everyKindOfTamperingIsCaughtAndNamed() async throws {
        let dir = try TemporaryDirectory("audit")
        let key = Ed25519PrivateKey.generate()
        let (_, trail, export) = try await Self.chain(12, key: key, in: dir)
        trail.close()
        var lines = Self.lines(export)
        #expect(lines.count == 13)

        // Changed: the decision of entry 5 flipped, hash left alone.
        var changed = lines
        changed[4] = Data(
            String(decoding: lines[4], as: UTF8.self).replacingOccurrences(of: "\"admit\"", with: "\"reject\"").utf8)
        #expect(changed[4] != lines[4])
        let f1 = failure(Self.join(changed), key: key.publicKey)
        #expect(f1?.entry == 5)
        #expect(f1?.message.contains("altered") == true)

        // Changed and re-hashed: entry 5 is consistent in itself, but entry 6 no longer links to it.
        let original = try #require(CanonicalJSON.parse(lines[4])?.object)
        var fields = original
        fields.removeValue(forKey: "hash")
        fields["decision"] = .string("reject")
        let rehash = HashAlgorithm.sha256.hash(CanonicalJSON.encode(.object(fields))).hex
        fields["hash"] = .string(rehash)
        var relinked = lines
        relinked[4] = Data(CanonicalJSON.encode(.object(fields)))
        let f2 = failure(Self.join(relinked), key: key.publicKey)
        #expect(f2?.entry == 5)

        // Deleted: entry 7 removed.
        var deleted = lines
        deleted.remove(at: 6)
        let f3 = failure(Self.join(deleted), key: key.publicKey)
        #expect(f3?.entry == 7)
        #expect(f3?.message.contains("missing") == true)

        // Reordered: entries 8 and 9 swapped.
        var reordered = lines
        reordered.swapAt(7, 8)
        let f4 = failure(Self.join(reordered), key: key.publicKey)
        #expect(f4?.entry == 8)

        // Inserted: a well-formed entry claiming to follow entry 3.
        let forged = AuditEntry(
            seq: 4, time: Self.time, prev: try #require(CanonicalJSON.parse(lines[2])?.object?["hash"]?.string),
            event: AuditEvent(event: "admission", worker: "intruder", decision: "admit"))
        var inserted = lines
        inserted.insert(Data(forged.line), at: 3)
        let f5 = failure(Self.join(inserted), key: key.publicKey)
        #expect(f5?.entry == 4)

        // The untouched export still verifies.
        #expect(failure(export, key: key.publicKey) == nil)
        _ = (lines.removeLast())
    }

    /// Threat: a consistent rewrite (every hash recomputed from entry 3 on), or a checkpoint
    /// signed by another key: the signed checkpoint no longer matches.
    @Test func rewrittenChainFailsAtTheCheckpoint() async throws {
        let dir = try TemporaryDirectory("audit")
        let key = Ed25519PrivateKey.generate()
        let (_, trail, export) = try await Self.chain(6, key: key, in: dir)
        trail.close()
        let lines = Self.lines(export)
        var rewritten = Array(lines.prefix(2))
        var prev = try #require(CanonicalJSON.parse(lines[1])?.object?["hash"]?.string)
        for (i, line) in lines.enumerated().dropFirst(2) {
            var fields = try #require(CanonicalJSON.parse(line)?.object)
            fields.removeValue(forKey: "hash")
            fields["prev"] = .string(prev)
            if i == 2 { fields["worker"] = .string("someone-else") }
            let hash = HashAlgorithm.sha256.hash(CanonicalJSON.encode(.object(fields))).hex
            fields["hash"] = .string(hash)
            rewritten.append(Data(CanonicalJSON.encode(.object(fields))))
            prev = hash
        }
        let f = failure(Self.join(rewritten), key: key.publicKey)
        #expect(f?.entry == 7)
        #expect(f?.message.contains("checkpoint") == true)

        let other = Ed25519PrivateKey.generate().publicKey
        let wrongKey = failure(export, key: other)
        #expect(wrongKey?.entry == 7)
        #expect(wrongKey?.message.contains("not by the given gateway key") == true)
    }

    @Test func exportWithoutCheckpointIsNotAuthenticated() async throws {
        let dir = try TemporaryDirectory("audit")
        let store = try SQLiteStore(url: dir.file("ccgate.db"))
        let key = Ed25519PrivateKey.generate()
        let trail = AuditTrail(store: store, key: key, clock: FixedClock(Self.time))
        defer { trail.close() }
        try await trail.record(AuditEvent(event: "gateway-start"))
        let f = failure(try Self.export(store), key: key.publicKey)
        #expect(f?.message.contains("no signed checkpoint") == true)
        // Entries after the last checkpoint verify, and are reported as unsigned.
        try await trail.checkpoint()
        try await trail.record(AuditEvent(event: "admission", worker: "w", decision: "admit"))
        let s = try AuditVerifier.verify(try Self.export(store), key: key.publicKey)
        #expect(s.unsignedTail == 1)
        #expect(try await trail.checkpoint() != nil)
        #expect(try await trail.checkpoint() == nil)
    }

    /// Filtered exports: a time range is contiguous and verifies from its anchor; a worker's
    /// entries have gaps, accepted only when asked for.
    @Test func filteredExports() async throws {
        let dir = try TemporaryDirectory("audit")
        let key = Ed25519PrivateKey.generate()
        let (store, trail, _) = try await Self.chain(30, key: key, in: dir)
        trail.close()
        let fromTen = try Self.export(store, AuditQuery(fromSeq: 10))
        let s = try AuditVerifier.verify(fromTen, key: key.publicKey)
        #expect(s.firstSeq == 10 && s.entries == 22 && s.anchoredOn != AuditEntry.genesis)
        let byWorker = try Self.export(store, AuditQuery(worker: "w3"))
        #expect(failure(byWorker, key: key.publicKey)?.message.contains("missing") == true)
        #expect(try store.count(AuditQuery(worker: "w3")) == Self.lines(byWorker).count)
    }

    /// Group commit: concurrent appenders each get a distinct place, all in one verifiable chain.
    @Test func concurrentAppendsFormOneChain() async throws {
        let dir = try TemporaryDirectory("audit")
        let store = try SQLiteStore(url: dir.file("ccgate.db"))
        let key = Ed25519PrivateKey.generate()
        let trail = AuditTrail(store: store, key: key)
        defer { trail.close() }
        let seqs = try await withThrowingTaskGroup(of: Int.self) { group in
            for i in 0..<300 {
                group.addTask {
                    try await trail.record(AuditEvent(event: "admission", worker: "w\(i)", decision: "admit")).seq
                }
            }
            return try await group.reduce(into: [Int]()) { $0.append($1) }
        }
        #expect(Set(seqs) == Set(1...300))
        try await trail.checkpoint()
        #expect(try AuditVerifier.verify(try Self.export(store), key: key.publicKey).entries == 301)
    }

    /// The canonical form is checked against an independent encoder: Python's json module with
    /// sorted keys, compact separators and raw UTF-8 produces the same bytes for the audit schema.
    @Test func canonicalFormMatchesPython() async throws {
        let dir = try TemporaryDirectory("audit")
        let (_, trail, export) = try await Self.chain(8, in: dir)
        trail.close()
        try export.write(to: dir.file("export.jsonl"))
        let script = """
            import hashlib, json, sys
            for line in open(sys.argv[1], encoding='utf-8'):
                o = json.loads(line)
                h = o.pop('hash')
                body = json.dumps(o, sort_keys=True, separators=(',', ':'), ensure_ascii=False).encode('utf-8')
                print(hashlib.sha256(body).hexdigest() == h, end=' ')
            """
        let result = try await ProcessRunner.run("python3", ["-c", script, dir.file("export.jsonl").path])
        #expect(result.stdout.split(separator: " ").count == 9)
        #expect(!result.stdout.contains("False"))
    }

    @Test func csvQuotesAndDefusesFormulas() {
        let entry = AuditEntry(
            seq: 1, time: Self.time, prev: AuditEntry.genesis,
            event: AuditEvent(
                event: "admission", worker: "=HYPERLINK(\"x\")", decision: "reject", reasons: ["a", "b"],
                detail: ["m": "1,2"]))
        let row = AuditExport.csvRow(entry)
        #expect(row.contains("\"'=HYPERLINK(\"\"x\"\")\""))
        #expect(row.contains(",a;b,"))
        #expect(row.hasSuffix("\r\n"))
    }

    /// Bad lines are named, never crash the verifier.
    @Test func garbageLinesAreReported() {
        let key = Ed25519PrivateKey.generate().publicKey
        for garbage in [
            "not json", "{}", "[1,2]", "{\"seq\":1,\"hash\":\"00\"}", "{\"seq\":1.5}",
            String(repeating: "[", count: 10_000),
        ] {
            #expect(throws: AuditVerifier.Failure.self) { try AuditVerifier.verify(Data(garbage.utf8), key: key) }
        }
    }
}
