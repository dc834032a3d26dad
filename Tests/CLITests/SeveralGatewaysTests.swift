import AttestationCore
import Foundation
import Synchronization
import TestSupport
import Testing

/// Must show: three gateways on one PostgreSQL database, two swtpm workers connected to all
/// three. A client that moves to the next gateway when a connection fails keeps getting
/// completions while one gateway is killed with SIGKILL mid-load; every admission any gateway
/// acknowledged is in the one chain, and the export from each surviving gateway verifies under
/// the three gateway keys. Then a policy applied on gateway 1 evicts, on gateways 2 and 3, the
/// worker it no longer admits (the time that took is printed).
@Suite(.serialized) struct SeveralGatewaysTests {
    static let ccgate = EvidenceVerifyCLITests.ccgate
    static let apiKey = "crash-test-key"

    /// Shared by the load's clients.
    final class Load: Sendable {
        let answered = Atomic<Int>(0)
        let moved = Atomic<Int>(0)
        let killed = Atomic<Bool>(false)
    }

    /// One chat completion through `port`; the answer's text, or nil when the connection or the
    /// request failed.
    static func complete(port: Int, said: String) async -> String? {
        let body = #"{"model":"fake","messages":[{"role":"user","content":"\#(said)"}]}"#
        guard
            let r = try? await ProcessRunner.run(
                "curl",
                [
                    "-s", "-m", "20", "--connect-timeout", "2", "-w", "\n%{http_code}", "-H",
                    "Authorization: Bearer \(apiKey)", "-H", "Content-Type: application/json", "--data-binary", body,
                    "http://127.0.0.1:\(port)/v1/chat/completions",
                ]), r.status == 0, r.stdout.hasSuffix("\n200")
        else { return nil }
        return r.stdout
    }

    /// The worker ids and sessions a gateway lists as admitted.
    static func admitted(_ gateway: GatewayProcess) async -> [String: String] {
        guard let r = try? await ProcessRunner.run(ccgate, ["workers", "list", "--json"] + gateway.adminArgs),
            r.status == 0,
            let object = try? JSONSerialization.jsonObject(with: r.stdoutData) as? [String: Any],
            let workers = object["workers"] as? [[String: Any]]
        else { return [:] }
        var out = [String: String]()
        for w in workers { if let id = w["id"] as? String, let s = w["session"] as? String { out[id] = s } }
        return out
    }

    /// `ccworker run` against every gateway, measuring `engine`.
    static func worker(
        id: String, tpm: Swtpm, gateways: [GatewayProcess], engine: URL, model: URL, enginePort: Int, log: URL
    ) throws -> Process {
        let process = Process()
        process.executableURL = EvidenceVerifyCLITests.binDirectory.appendingPathComponent("ccworker")
        process.arguments =
            ["run"]
            + gateways.flatMap { ["--gateway", "127.0.0.1:\($0.ports["worker"]!)", "--gateway-key", $0.keyFile.path] }
            + [
                "--tpm", tpm.tcti, "--engine", engine.path, "--model", model.path, "--tpm-ek-chain",
                SwtpmLocalCA.shared?.issuerCertificate.path ?? "", "--model-name", "fake", "--engine-url",
                "http://127.0.0.1:\(enginePort)", "--worker-id", id,
            ]
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        return process
    }

    @Test func threeGatewaysOneDatabaseLoseOneAndStayConsistent() async throws {
        let dir = try TemporaryDirectory("gateways")
        let engineA = Data("shared engine A".utf8), engineB = Data("shared engine B".utf8)
        let model = Data("shared model".utf8)
        try engineA.write(to: dir.file("engine-a"))
        try engineB.write(to: dir.file("engine-b"))
        try model.write(to: dir.file("model.gguf"))
        let admin = dir.file("admin").path
        #expect(try await ProcessRunner.run(Self.ccgate, ["keys", "generate", "--out", admin]).status == 0)
        for (name, engines) in [("both", [engineA, engineB]), ("only-a", [engineA])] {
            let file = dir.file("\(name).yaml")
            try EndToEndCLITests.policy(name, engines: engines, model: model).write(
                to: file, atomically: true, encoding: .utf8)
            let signed = try await ProcessRunner.run(
                Self.ccgate, ["policy", "sign", file.path, "--key", admin + ".key"])
            #expect(signed.status == 0, "\(signed.stderr)")
        }

        let server = try await PostgresServer.shared()
        let database = try await offPool { try server.createDatabase() }
        let db = [
            "--database", server.url(database), "--database-password-file", server.passwordFile.path, "--admin-key",
            admin + ".pub",
        ]
        var gateways = [GatewayProcess]()
        for i in 1...3 {
            let gateway = try await offPool {
                try GatewayProcess(data: dir.file("gw\(i)"), policy: dir.file("both.yaml"), in: dir, extra: db)
            }
            gateways.append(gateway)
        }
        defer { for g in gateways { g.stop() } }
        let keys = gateways.flatMap { ["--key", $0.keyFile.path] }

        let echo = try await EndToEndCLITests.echoEngine(in: dir)
        var tpms = [Swtpm]()
        var workers = [Process]()
        defer {
            for w in workers where w.isRunning { kill(w.processIdentifier, SIGKILL) }
            for t in tpms { t.stop() }
        }
        for (id, engine) in [("worker-a", "engine-a"), ("worker-b", "engine-b")] {
            let tpm = try await Swtpm.start()
            tpms.append(tpm)
            workers.append(
                try Self.worker(
                    id: id, tpm: tpm, gateways: gateways, engine: dir.file(engine), model: dir.file("model.gguf"),
                    enginePort: echo.port, log: dir.file("\(id).log")))
        }
        let connected = await eventually(120) {
            for g in gateways where await Self.admitted(g).count < 2 { return false }
            return true
        }
        let workerLog = (try? String(contentsOf: dir.file("worker-a.log"), encoding: .utf8)) ?? ""
        try #require(connected, "the workers were not admitted on every gateway: \(workerLog.suffix(2000))")
        // Every admission a gateway acknowledged (its workers list) must be in the chain.
        var acknowledged = [String]()
        for g in gateways { acknowledged += await Self.admitted(g).values }

        // The load: three clients, 15 completions each, moving to the next gateway when one fails.
        let load = Load()
        let victim = gateways[1]
        let apiPorts = gateways.map { $0.ports["api"]! }
        let results = await withTaskGroup(of: [String?].self) { group in
            for client in 0..<3 {
                group.addTask {
                    var out = [String?]()
                    var target = client
                    for n in 0..<15 {
                        let said = "c\(client)-n\(n)"
                        var answer: String?
                        for _ in 0..<6 where answer == nil {
                            answer = await Self.complete(port: apiPorts[target % 3], said: said)
                            if answer == nil {
                                load.moved.add(1, ordering: .relaxed)
                                target += 1
                            }
                        }
                        out.append(answer.map { $0.contains("echo \(said)") ? said : "wrong: \($0)" })
                        let total = load.answered.add(1, ordering: .relaxed).newValue
                        if total >= 15, !load.killed.exchange(true, ordering: .relaxed) { victim.killHard() }
                    }
                    return out
                }
            }
            return await group.reduce(into: [String?]()) { $0 += $1 }
        }
        let wasKilled = load.killed.load(ordering: .relaxed)
        #expect(wasKilled)
        #expect(results.count == 45)
        #expect(results.allSatisfy { $0 != nil && !$0!.hasPrefix("wrong") }, "\(results)")
        print(
            "several gateways: \(results.compactMap { $0 }.count) of 45 completions answered while gateway 2 was killed (SIGKILL) after 15; the clients moved gateway \(load.moved.load(ordering: .relaxed)) times"
        )

        // One chain: the exports from the surviving gateways verify under the three keys and hold
        // every acknowledged admission.
        for (i, g) in [(1, gateways[0]), (3, gateways[2])] {
            let file = dir.file("gw\(i).jsonl")
            let export = try await ProcessRunner.run(
                Self.ccgate, ["audit", "export", "--out", file.path] + g.adminArgs)
            #expect(export.status == 0, "\(export.stderr)")
            let verified = try await ProcessRunner.run(Self.ccgate, ["audit", "verify", file.path] + keys)
            #expect(verified.status == 0, "gateway \(i): \(verified.stdout)\(verified.stderr)")
            let text = try String(contentsOf: file, encoding: .utf8)
            for session in acknowledged {
                #expect(text.contains("\"session\":\"\(session)\""), "gateway \(i)'s export lacks session \(session)")
            }
        }

        // The killed gateway comes back on the same database and ports; the workers dial it again.
        let same = ["--port", String(victim.ports["api"]!), "--worker-port", String(victim.ports["worker"]!)]
        gateways[1] = try await offPool {
            try GatewayProcess(data: dir.file("gw2"), policy: dir.file("both.yaml"), in: dir, extra: db + same)
        }
        let back = await eventually(90) { await Self.admitted(gateways[1]).count == 2 }
        #expect(back, "the workers did not return to the restarted gateway")

        // A policy applied on gateway 1 reaches gateways 2 and 3 and evicts worker-b there.
        let started = Date()
        let applied = try await ProcessRunner.run(
            Self.ccgate, ["policy", "apply", dir.file("only-a.yaml").path] + gateways[0].adminArgs)
        #expect(applied.status == 0, "\(applied.stdout)\(applied.stderr)")
        var took = [Double]()
        for g in gateways.dropFirst() {
            let evicted = await eventually(30) { await Self.admitted(g)["worker-b"] == nil }
            #expect(evicted)
            took.append(Date().timeIntervalSince(started))
            #expect(await Self.admitted(g)["worker-a"] != nil)
        }
        print(
            "several gateways: the policy applied on gateway 1 evicted worker-b on gateway 2 after \(String(format: "%.2f", took.first ?? -1)) s and on gateway 3 after \(String(format: "%.2f", took.last ?? -1)) s"
        )
        let final = dir.file("final.jsonl")
        #expect(
            try await ProcessRunner.run(Self.ccgate, ["audit", "export", "--out", final.path] + gateways[2].adminArgs)
                .status == 0)
        let finalText = try String(contentsOf: final, encoding: .utf8)
        let evictions = finalText.split(separator: "\n").filter {
            $0.contains("\"event\":\"eviction\"") && $0.contains("\"worker\":\"worker-b\"")
                && $0.contains("\"policy_version\":2")
        }
        // Once per gateway that held worker-b: three.
        #expect(evictions.count == 3, "\(evictions)")
        let verified = try await ProcessRunner.run(Self.ccgate, ["audit", "verify", final.path] + keys)
        #expect(verified.status == 0, "\(verified.stdout)\(verified.stderr)")
        #expect(verified.stdout.contains("signed by gateway"), "\(verified.stdout)")

        // Threat: a writer of the database adds a version (the first policy's text and signature,
        // an older serial) and notifies. No gateway puts it in force; each audits its refusal once.
        try await offPool {
            _ = try server.psql(
                database,
                "INSERT INTO policies SELECT 3, name, text, signature, signer, note, applied_at, actor FROM policies WHERE version = 1; NOTIFY ccgate_changes"
            )
        }
        func refusals() async -> [Substring] {
            let file = dir.file("after-\(UUID().uuidString).jsonl")
            guard
                (try? await ProcessRunner.run(
                    Self.ccgate, ["audit", "export", "--out", file.path] + gateways[0].adminArgs))?
                    .status == 0,
                let text = try? String(contentsOf: file, encoding: .utf8)
            else { return [] }
            return text.split(separator: "\n").filter {
                $0.contains("\"event\":\"policy-adopted\"") && $0.contains("\"decision\":\"refused\"")
            }
        }
        #expect(await eventually(30) { await refusals().count >= 3 })
        // Past a re-read by every gateway (every 5 s): still one refusal each.
        try await Task.sleep(for: .seconds(6))
        let refused = await refusals()
        #expect(refused.count == 3, "one refusal per gateway, not one per re-read: \(refused)")
        for g in gateways {
            let show = try await ProcessRunner.run(Self.ccgate, ["policy", "show"] + g.adminArgs)
            #expect(show.stderr.contains("# version 2 (in force)"), "\(show.stderr)")
        }

        // An admin's eviction on gateway 3 reaches gateways 1 and 2: each evicts its own session
        // of worker-a, audited as its own decision at the admin's request.
        let evict = try await ProcessRunner.run(Self.ccgate, ["workers", "evict", "worker-a"] + gateways[2].adminArgs)
        #expect(evict.status == 0, "\(evict.stdout)\(evict.stderr)")
        var followed = [Substring]()
        let reached = await eventually(20) {
            let file = dir.file("evict-\(UUID().uuidString).jsonl")
            guard
                (try? await ProcessRunner.run(
                    Self.ccgate, ["audit", "export", "--out", file.path] + gateways[0].adminArgs))?
                    .status == 0,
                let text = try? String(contentsOf: file, encoding: .utf8)
            else { return false }
            followed = text.split(separator: "\n").filter {
                $0.contains("\"event\":\"eviction\"") && $0.contains("\"worker\":\"worker-a\"")
                    && $0.contains("\"requested_by\":\"admin:")
            }
            return followed.count == 2
        }
        #expect(reached, "evictions that followed the admin's: \(followed)")
        let gatewaysThatFollowed = Set(
            followed.compactMap { line in
                line.range(of: #""gateway":"[0-9a-f]+""#, options: .regularExpression).map { String(line[$0]) }
            })
        #expect(gatewaysThatFollowed.count == 2)
    }
}
