import ArgumentParser
import AdmissionCore
import AttestationCore
import AuditLog
import GatewayState
import CommandLineSupport
import Foundation
import Gateway
import TDXVerifier

struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit", abstract: "Export, verify and replay the attestation audit log.",
        discussion: """
            Every decision the gateway takes is an entry in a hash chain, with a checkpoint signed by the gateway's
            key (DATA/gateway.pub) at least every minute. Exports go through the admin API, which signs a checkpoint
            first, or are read offline from a data directory (--data-dir). `audit verify` needs only the export and
            the gateway's public key.

            Examples:
              ccgate audit export --out audit.jsonl
              ccgate audit export --since 2026-12-01T00:00:00Z --worker gpu-7 --format csv --out gpu-7.csv
              ccgate audit verify audit.jsonl --key data/gateway.pub
              ccgate audit replay 1042
            """,
        subcommands: [Export.self, Verify.self, Replay.self])

    /// Opens a data directory's store without writing to it.
    static func offlineStore(_ dir: String) throws -> SQLiteStore {
        do {
            return try SQLiteStore(url: URL(fileURLWithPath: dir).appendingPathComponent("ccgate.db"), readOnly: true)
        } catch {
            throw failure("\(error)")
        }
    }

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Stream audit entries as JSON Lines (verifiable) or CSV, with a progress bar on a terminal.")
        @Option(help: ArgumentHelp("Entries at or after this time (RFC 3339).", valueName: "T")) var since: String?
        @Option(help: ArgumentHelp("Entries at or before this time (RFC 3339).", valueName: "T")) var until: String?
        @Option(
            help: ArgumentHelp(
                "Only this worker's entries (the export then has gaps: verify with --allow-gaps).", valueName: "ID"))
        var worker: String?
        @Option(help: ArgumentHelp("jsonl or csv.", valueName: "FORMAT")) var format = "jsonl"
        @Option(help: ArgumentHelp("Write here instead of standard output.", valueName: "FILE")) var out: String?
        @Option(
            help: ArgumentHelp(
                "Read a data directory directly instead of asking the admin API (no new checkpoint).", valueName: "DIR")
        )
        var dataDir: String?
        @OptionGroup var admin: AdminOptions

        func validate() throws {
            guard AuditExportFormat(rawValue: format) != nil else { throw ValidationError("--format is jsonl or csv") }
            for (name, value) in [("--since", since), ("--until", until)] {
                if let value, Date.rfc3339(value) == nil {
                    throw ValidationError("\(name) must be an RFC 3339 time such as 2026-12-01T00:00:00Z")
                }
            }
        }

        func run() async throws {
            let output: FileHandle
            if let out {
                guard FileManager.default.createFile(atPath: out, contents: nil),
                    let h = FileHandle(forWritingAtPath: out)
                else {
                    throw failure("\(out): cannot write")
                }
                output = h
            } else {
                output = FileHandle.standardOutput
            }
            defer { if out != nil { try? output.close() } }
            let bar = ProgressBar("exporting")
            let lines = LineCounter()
            let sink: @Sendable (Data) -> Void = { data in
                output.write(data)
                lines.add(data)
            }
            var total: Int?
            if let dataDir {
                let store = try AuditCommand.offlineStore(dataDir)
                let query = AuditQuery(
                    since: since.flatMap(Date.rfc3339), until: until.flatMap(Date.rfc3339), worker: worker)
                total = try? store.count(query)
                do {
                    try AuditExport.write(
                        from: store, query: query, format: AuditExportFormat(rawValue: format)!, to: sink
                    ) { done in
                        bar.update(done: done, total: total, unit: "entries")
                    }
                } catch { throw failure("\(error)") }
            } else {
                var query = [URLQueryItem(name: "format", value: format)]
                if let since { query.append(URLQueryItem(name: "since", value: since)) }
                if let until { query.append(URLQueryItem(name: "until", value: until)) }
                if let worker { query.append(URLQueryItem(name: "worker", value: worker)) }
                let headerLine = format == "csv" ? 1 : 0
                let known = try await admin.client().download("v1/admin/audit/export", query: query, sink: sink) {
                    _, total in
                    bar.update(done: max(0, lines.count - headerLine), total: total, unit: "entries")
                }
                total = known >= 0 ? known : nil
            }
            let written = max(0, lines.count - (format == "csv" ? 1 : 0))
            bar.finish(done: written, total: total, unit: "entries")
            if let out { FileHandle.standardError.write(Data("\(out): \(written) entries\n".utf8)) }
        }
    }

    final class LineCounter: @unchecked Sendable {
        private let lock = NSLock()
        private var n = 0
        func add(_ data: Data) {
            let c = data.reduce(0) { $1 == 0x0A ? $0 + 1 : $0 }
            lock.withLock { n += c }
        }
        var count: Int { lock.withLock { n } }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check an exported chain offline and name the first bad entry.",
            discussion: """
                Checks every entry's hash, every link to the entry before, the sequence, and every checkpoint's
                signature under the gateway's public key. Where several gateways share one chain (one PostgreSQL
                database), each signs its own checkpoints: give every gateway's key (--key repeated), or
                --database URL to take the keys the database lists (trusting whoever can write to it); the summary
                names which key signed how many checkpoints. Exit status: 0 the export verifies, 1 it does not (the
                first bad entry is named), 2 unreadable input.

                Examples:
                  ccgate audit verify audit.jsonl --key data/gateway.pub
                  ccgate audit verify audit.jsonl --key gw1/gateway.pub --key gw2/gateway.pub --key gw3/gateway.pub
                """)
        @Argument(help: ArgumentHelp("The export (JSON Lines).", valueName: "FILE")) var file: String
        @Option(
            name: .customLong("key"),
            help: ArgumentHelp(
                "A gateway's public key (PEM, or the base64 of its 32 bytes); repeatable.", valueName: "GATEWAY_PUB"))
        var keys: [String] = []
        @OptionGroup(title: "Also accept the gateway keys a shared database lists") var db: DatabaseOptions
        @Flag(help: "Accept gaps in the sequence (an export filtered by --worker).") var allowGaps = false

        func validate() throws {
            guard !keys.isEmpty || db.database != nil else {
                throw ValidationError("give --key GATEWAY_PUB or --database URL")
            }
        }

        func publicKeys() throws -> [Ed25519PublicKey] {
            var out = try keys.map { key in
                let keyText = (try? String(contentsOfFile: key, encoding: .utf8)) ?? key
                do { return try Ed25519PublicKey(text: keyText) } catch { throw failure("--key \(key): \(error)") }
            }
            if let location = try db.location() {
                let database = location.description
                do {
                    for g in try PostgresStore(location: location, inspect: true).gateways() {
                        out.append(try Ed25519PublicKey(text: g.publicKey))
                    }
                } catch let error as ReportedFailure { throw error } catch { throw failure("--database: \(error)") }
                guard !out.isEmpty else { throw failure("\(database) lists no gateway keys") }
                FileHandle.standardError.write(
                    Data(
                        "note: the gateway keys were taken from \(database): whoever can write to it can list a key of their own; give the keys with --key to check against keys you hold\n"
                            .utf8))
            }
            return out
        }

        func run() throws {
            let publicKeys = try publicKeys()
            guard let handle = FileHandle(forReadingAtPath: file) else { throw failure("\(file): cannot read") }
            defer { try? handle.close() }
            var verifier = AuditVerifier(keys: publicKeys, allowGaps: allowGaps)
            var pending = Data()
            var lineNumber = 0
            do {
                while true {
                    let chunk = try handle.read(upToCount: 1 << 20) ?? Data()
                    if chunk.isEmpty { break }
                    pending.append(chunk)
                    while let newline = pending.firstIndex(of: 0x0A) {
                        lineNumber += 1
                        let line = pending[pending.startIndex..<newline]
                        if !line.isEmpty { try verifier.feed(line: line, lineNumber: lineNumber) }
                        pending.removeSubrange(pending.startIndex...newline)
                    }
                }
                if !pending.isEmpty {
                    lineNumber += 1
                    try verifier.feed(line: pending, lineNumber: lineNumber)
                }
                let s = try verifier.finish()
                let range = s.entries == 0 ? "no entries" : "entries \(s.firstSeq)–\(s.lastSeq) (\(s.entries))"
                print(
                    "\(file): ok — \(range), \(s.checkpoints) signed checkpoint\(s.checkpoints == 1 ? "" : "s"), head \(s.head)"
                )
                if s.signers.count > 1 || publicKeys.count > 1 {
                    for (fingerprint, n) in s.signers.sorted(by: { $0.key < $1.key }) {
                        print("  \(n) checkpoint\(n == 1 ? "" : "s") signed by gateway \(fingerprint.prefix(16))…")
                    }
                }
                if s.firstSeq > 1 {
                    print("  starts at entry \(s.firstSeq), linked to the entry before it by hash \(s.anchoredOn)")
                }
                if s.gaps > 0 {
                    print(
                        "  \(s.gaps) gap\(s.gaps == 1 ? "" : "s") in the sequence (a filtered export): links across gaps are not checked"
                    )
                }
                if s.unsignedTail > 0 {
                    print(
                        "  warning: the last \(s.unsignedTail) entr\(s.unsignedTail == 1 ? "y is" : "ies are") after the last checkpoint: linked, not yet signed"
                    )
                }
            } catch let failed as AuditVerifier.Failure {
                FileHandle.standardError.write(
                    Data("\(file): FAILED at entry \(failed.entry) (line \(failed.line)): \(failed.message)\n".utf8))
                throw ExitCode(1)
            } catch {
                throw failure("\(file): \(error)")
            }
        }
    }

    struct Replay: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Re-verify an admission's stored evidence under its recorded policy; say whether the verdict matches.",
            discussion: """
                The entry's evidence, binding and policy version come from the admin API (or --data-dir); the
                verification runs here, at the time of the decision, and once more at the current time. TDX/SGX evidence
                whose collateral came from the gateway's cache needs that cache (--collateral-dir). Exit status: 0 the
                verdict matches, 1 it does not, 2 the entry cannot be replayed.

                Example:
                  ccgate audit replay 1042
                """)
        @Argument(help: ArgumentHelp("The entry's sequence number.", valueName: "ENTRY_ID")) var entry: Int
        @Option(help: ArgumentHelp("Read a data directory directly instead of asking the admin API.", valueName: "DIR"))
        var dataDir: String?
        @Option(help: ArgumentHelp("Intel collateral cache for TDX/SGX evidence that carried none.", valueName: "DIR"))
        var collateralDir: String?
        @Option(
            name: .customLong("dcap-root"),
            help: ArgumentHelp("A PEM root replacing the pinned Intel root; repeatable.", valueName: "PEM"))
        var dcapRoots: [String] = []
        @Option(
            name: .customLong("tpm-ek-root"),
            help: ArgumentHelp(
                "A PEM CA certificate EK chains may end at, beside the pinned ones; repeatable.", valueName: "PEM"))
        var tpmEKRootFiles: [String] = []
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let record: AuditEntry
            let evidence: StoredEvidence?
            let policyText: String?
            let gatewayKey: String?
            if let dataDir {
                guard let key = try? String(contentsOfFile: dataDir + "/gateway.pub", encoding: .utf8) else {
                    throw failure(
                        "\(dataDir)/gateway.pub: cannot read (the gateway key whose activation records replay believes)"
                    )
                }
                gatewayKey = key
                let store = try AuditCommand.offlineStore(dataDir)
                do {
                    guard let e = try store.entry(seq: entry) else { throw failure("there is no audit entry \(entry)") }
                    record = e
                    evidence = try e.event.evidenceSHA256.flatMap { try store.evidence(sha256: $0) }
                    policyText = try e.event.policyVersion.flatMap { try store.policy(version: $0) }?.policy.text
                } catch let reported as ReportedFailure { throw reported } catch { throw failure("\(error)") }
            } else {
                gatewayKey =
                    try await admin.client().call("GET", "v1/admin/audit/key", as: AdminMessage.AuditKey.self).publicKey
                let o = try await admin.client().call(
                    "GET", "v1/admin/audit/entries/\(entry)", as: AdminMessage.AuditEntryRecord.self)
                guard case .success(let e) = AuditEntry.parse(line: Array(o.line.utf8)) else {
                    throw failure("the gateway answered an entry that does not match its hash")
                }
                record = e
                if let ev = o.evidence, let env = Data(base64Encoded: ev.envelope),
                    let binding = Data(base64Encoded: ev.binding)
                {
                    evidence = StoredEvidence(envelope: env, binding: binding)
                } else {
                    evidence = nil
                }
                policyText = o.policy?.text
            }
            let roots = try dcapRootFingerprints(dcapRoots)
            var source: (any CollateralSource)?
            if let collateralDir {
                do {
                    source = try CollateralCache(directory: URL(fileURLWithPath: collateralDir), mode: "offline")
                } catch { throw failure("\(error)") }
            }
            let outcome: AuditReplay.Outcome
            do {
                let keys = try gatewayKey.map { [try Ed25519PublicKey(text: $0)] } ?? []
                outcome = try AuditReplay(
                    dcapRoots: roots, collateralSource: source,
                    tpmIdentity: TPMIdentityTrust(
                        ekRoots: try tpmEKRoots(tpmEKRootFiles), activation: .records(trustedKeys: keys))
                )
                .replay(record, evidence: evidence, policyText: policyText, now: Date())
            } catch { throw failure("\(error)") }
            let e = record.event
            func describe(_ v: Verdict) -> String {
                v.isAccepted ? "accept" : "reject (\(v.reasons.first.map { "\($0.code): \($0.message)" } ?? "?"))"
            }
            print(
                "entry \(record.seq): \(e.event) of \(e.worker ?? "?") at \(record.time.rfc3339) under policy version \(e.policyVersion ?? 0)"
            )
            print("  recorded: \(outcome.recordedAccept ? "accept" : "reject (\(outcome.recordedReason ?? "?"))")")
            print("  replayed at the time of the decision: \(describe(outcome.replayed))")
            print("  verified now: \(describe(outcome.today))")
            print(outcome.matches ? "the verdict matches" : "the verdict DOES NOT match")
            if !outcome.matches { throw ExitCode(1) }
        }
    }
}
