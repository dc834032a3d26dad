import AttestationCore
import Foundation
import Sealing
import Synchronization
import TestSupport
import Testing
import WorkerAgent

/// `ccgate serve` as a process, for tests that kill it.
final class GatewayProcess: @unchecked Sendable {
    let process = Process()
    let data: URL
    let ports: [String: Int]
    /// Its standard output and error.
    let log: URL

    /// Starts the gateway and waits until it listens (up to a minute on a loaded machine).
    init(data: URL, policy: URL, in dir: TemporaryDirectory, extra: [String] = []) throws {
        self.data = data
        let portsFile = dir.file("ports-\(UUID().uuidString)")
        process.executableURL = URL(fileURLWithPath: EvidenceVerifyCLITests.ccgate)
        process.arguments =
            [
                "serve", "--port", "0", "--worker-port", "0", "--admin-port", "0", "--api-key", "crash-test-key",
                "--policy", policy.path, "--data-dir", data.path, "--ports-file", portsFile.path,
                "--checkpoint-seconds", "1",
            ] + (SwtpmLocalCA.shared.map { ["--tpm-ek-root", $0.rootCertificate.path] } ?? []) + extra
        log = dir.file("gateway-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        let deadline = Date() + 60
        var found: [String: Int] = [:]
        while Date() < deadline {
            if let text = try? String(contentsOf: portsFile, encoding: .utf8), text.contains("admin=") {
                for pair in text.split(whereSeparator: { $0 == " " || $0 == "\n" }) {
                    let kv = pair.split(separator: "=")
                    if kv.count == 2, let v = Int(kv[1]) { found[String(kv[0])] = v }
                }
                break
            }
            guard process.isRunning else { break }
            Thread.sleep(forTimeInterval: 0.05)
        }
        ports = found
        guard found["admin"] != nil else {
            process.terminate()
            throw GatewayProcessError(
                message: "the gateway did not start: \((try? String(contentsOf: log, encoding: .utf8)) ?? "")")
        }
    }

    struct GatewayProcessError: Error, CustomStringConvertible {
        let message: String
        var description: String { message }
    }

    /// The gateway's public key file, which a worker pins.
    var keyFile: URL { data.appendingPathComponent("gateway.pub") }
    var pin: GatewayKeyPin {
        get throws { try GatewayKeyPin(text: String(contentsOf: keyFile, encoding: .utf8)) }
    }

    /// `ccworker run` against this gateway (pinned to its key) on swtpm, measuring `engine` and
    /// `model` and serving model `fake` from the engine at `enginePort` (one ccworker does not
    /// start); killed when the returned process is released by the caller's `defer`.
    func startWorker(
        id: String, tpm: Swtpm, engine: URL, model: URL, enginePort: Int, log: URL? = nil, extra: [String] = []
    ) throws -> Process {
        let worker = Process()
        worker.executableURL = URL(
            fileURLWithPath: EvidenceVerifyCLITests.binDirectory.appendingPathComponent("ccworker").path)
        worker.arguments =
            [
                "run", "--gateway", "127.0.0.1:\(ports["worker"]!)", "--gateway-key", keyFile.path, "--tpm", tpm.tcti,
                "--engine", engine.path, "--model", model.path, "--tpm-ek-chain",
                SwtpmLocalCA.shared?.issuerCertificate.path ?? "", "--model-name", "fake", "--engine-url",
                "http://127.0.0.1:\(enginePort)", "--worker-id", id,
            ] + extra
        if let log {
            _ = FileManager.default.createFile(atPath: log.path, contents: nil)
            let handle = try FileHandle(forWritingTo: log)
            worker.standardOutput = handle
            worker.standardError = handle
        } else {
            worker.standardOutput = FileHandle.nullDevice
            worker.standardError = FileHandle.nullDevice
        }
        try worker.run()
        return worker
    }

    var adminArgs: [String] {
        [
            "--admin-url", "http://127.0.0.1:\(ports["admin"]!)", "--token-file",
            data.appendingPathComponent("admin.token").path,
        ]
    }

    func killHard() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    func stop() {
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
    }
}

/// Must show: a gateway killed with SIGKILL during a burst of admissions restarts with a chain
/// that verifies, and every decision a worker was told of is in it. Then the export, edited in
/// each way, fails `ccgate audit verify` naming the entry, and `ccgate audit replay` re-derives an
/// admission.
@Suite(.serialized) struct AuditCrashTests {
    /// Shared by the burst's connections: admissions acknowledged (worker → session), the next
    /// worker number, and whether the gateway has been killed.
    final class Burst: Sendable {
        let acknowledged = Mutex<[String: String]>([:])
        let next = Atomic<Int>(0)
        let killed = Atomic<Bool>(false)
    }

    static let ccgate = EvidenceVerifyCLITests.ccgate

    @Test func killedGatewayKeepsEveryAcknowledgedDecision() async throws {
        let dir = try TemporaryDirectory("crash")
        let tpm = try await Swtpm.start()
        defer { tpm.stop() }
        try Data("crash-test engine".utf8).write(to: dir.file("engine"))
        try Data("crash-test model".utf8).write(to: dir.file("model.gguf"))
        let policy = dir.file("policy.yaml")
        try Data(
            """
            schema: ccgate.policy/v1
            name: crash
            evidence: {formats: [tpm2-quote]}
            measurements:
              binaries: [{name: engine, sha256: \(HashAlgorithm.sha256.hash(Data("crash-test engine".utf8)).hex)}]
              models: [{name: model, names: [fake], sha256: \(HashAlgorithm.sha256.hash(Data("crash-test model".utf8)).hex)}]
              # The engine is a stand-in the worker does not start: it is hashed, not executed from its measured copy.
              allow_unmeasured_engine: true
            """.utf8
        ).write(to: policy)
        let data = dir.file("data")
        let gateway = try await offPool { try GatewayProcess(data: data, policy: policy, in: dir) }
        defer { gateway.stop() }
        let attestor = try Attestor(
            tcti: tpm.tcti, files: [dir.file("engine"), dir.file("model.gguf")],
            ekChain: try SwtpmLocalCA.shared?.chainDER)

        // The burst: workers admitted one after another on 4 connections at a time; each
        // admission a worker receives is acknowledged. At 1,000 the gateway is killed mid-burst.
        let target = 1_000
        let burst = Burst()
        let workerPort = gateway.ports["worker"]!
        let pin = try gateway.pin
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<4 {
                group.addTask {
                    while !burst.killed.load(ordering: .relaxed) {
                        let i = burst.next.add(1, ordering: .relaxed).newValue
                        guard i <= target + 400 else { return }
                        let id = "crash-\(i)"
                        let (events, continuation) = AsyncStream<GatewayClient.Event>.makeStream()
                        let client = GatewayClient(
                            configuration: .init(
                                host: "127.0.0.1", port: workerPort, gatewayKey: pin, workerID: id, models: ["fake"]),
                            attestor: attestor, engine: EngineClient(port: 1), onEvent: { continuation.yield($0) })
                        let task = Task {
                            defer { continuation.finish() }
                            try await client.runOnce()
                        }
                        var session: String?
                        for await event in events {
                            if case .admitted(let s) = event {
                                session = s
                                break
                            }
                        }
                        task.cancel()
                        _ = try? await task.value
                        guard let session else { continue }
                        let count = burst.acknowledged.withLock { a in
                            a[id] = session
                            return a.count
                        }
                        if count >= target, !burst.killed.exchange(true, ordering: .relaxed) { gateway.killHard() }
                    }
                }
            }
        }
        let acks = burst.acknowledged.withLock { $0 }
        #expect(acks.count >= target)
        let wasKilled = burst.killed.load(ordering: .relaxed)
        #expect(wasKilled)

        // Restart on the same data directory; export through the admin API and verify offline.
        let restarted = try await offPool { try GatewayProcess(data: data, policy: policy, in: dir) }
        defer { restarted.stop() }
        let export = dir.file("audit.jsonl")
        let exported = try await ProcessRunner.run(
            Self.ccgate, ["audit", "export", "--out", export.path] + restarted.adminArgs)
        #expect(exported.status == 0, "\(exported.stderr)")
        let pub = data.appendingPathComponent("gateway.pub").path
        let verified = try await ProcessRunner.run(Self.ccgate, ["audit", "verify", export.path, "--key", pub])
        #expect(verified.status == 0, "\(verified.stdout)\(verified.stderr)")
        #expect(verified.stdout.contains(": ok"))

        var admitted = [String: String]()
        var lines = [Data]()
        for line in try Data(contentsOf: export).split(separator: 0x0A) {
            lines.append(Data(line))
            guard let o = try JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
                o["event"] as? String == "admission", o["decision"] as? String == "admit",
                let worker = o["worker"] as? String, let session = (o["detail"] as? [String: String])?["session"]
            else { continue }
            admitted[worker] = session
        }
        let lost = acks.filter { admitted[$0.key] != $0.value }
        #expect(lost.isEmpty, "acknowledged admissions missing after the crash: \(lost.keys.sorted().prefix(10))")
        print(
            "crash test: \(acks.count) admissions acknowledged before SIGKILL, \(admitted.count) in the chain, \(lines.count) entries"
        )

        // Tampering with the export: each edit fails verification and names the entry.
        func verify(_ edited: [Data]) async throws -> (Int32, String) {
            let path = dir.file("tampered-\(UUID().uuidString).jsonl")
            try edited.reduce(into: Data()) {
                $0.append($1); $0.append(0x0A)
            }.write(to: path)
            let r = try await ProcessRunner.run(Self.ccgate, ["audit", "verify", path.path, "--key", pub])
            return (r.status, r.stderr)
        }
        let k = 40
        try #require(lines.count > k + 1)
        var changed = lines
        changed[k - 1] = Data(
            String(decoding: lines[k - 1], as: UTF8.self).replacingOccurrences(
                of: "\"actor\":\"", with: "\"actor\":\"x"
            ).utf8)
        var deleted = lines
        deleted.remove(at: k - 1)
        var reordered = lines
        reordered.swapAt(k - 1, k)
        var inserted = lines
        inserted.insert(lines[k - 1], at: k)
        for (name, edited, entry) in [
            ("changed", changed, k), ("deleted", deleted, k), ("reordered", reordered, k), ("inserted", inserted, k),
        ] {
            let (status, stderr) = try await verify(edited)
            #expect(status == 1, "\(name)")
            #expect(stderr.contains("FAILED at entry \(entry) "), "\(name): \(stderr)")
        }
        let wrongKey = dir.file("other.pub")
        try Ed25519PrivateKey.generate().publicKey.pem.write(to: wrongKey, atomically: true, encoding: .utf8)
        let other = try await ProcessRunner.run(Self.ccgate, ["audit", "verify", export.path, "--key", wrongKey.path])
        #expect(other.status == 1)

        // Replay: an admission re-derived from its stored evidence under its recorded policy.
        let seq =
            try #require(lines.firstIndex { String(decoding: $0, as: UTF8.self).contains("\"decision\":\"admit\"") })
            + 1
        let ekRoot = ["--tpm-ek-root", try #require(SwtpmLocalCA.shared).rootCertificate.path]
        let replay = try await ProcessRunner.run(
            Self.ccgate, ["audit", "replay", String(seq)] + ekRoot + restarted.adminArgs)
        #expect(replay.status == 0, "\(replay.stdout)\(replay.stderr)")
        #expect(replay.stdout.contains("the verdict matches"))
        let offline = try await ProcessRunner.run(
            Self.ccgate, ["audit", "replay", String(seq), "--data-dir", data.path] + ekRoot)
        #expect(offline.status == 0, "\(offline.stdout)\(offline.stderr)")
        let notEvidence = try await ProcessRunner.run(Self.ccgate, ["audit", "replay", "1"] + restarted.adminArgs)
        #expect(notEvidence.status == 2)
        // A worker the burst saw admitted: under load an attempt can fail and its id be skipped.
        let exportedWorker = try #require(acks.keys.min())
        let csv = try await ProcessRunner.run(
            Self.ccgate, ["audit", "export", "--format", "csv", "--worker", exportedWorker] + restarted.adminArgs)
        #expect(csv.stdout.hasPrefix("seq,time,actor,event,worker"))
        #expect(csv.stdout.contains(",\(exportedWorker),"), "\(csv.stdout.prefix(400))")
    }
}
