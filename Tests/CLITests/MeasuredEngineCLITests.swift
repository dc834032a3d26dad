import AttestationCore
import Foundation
import TestSupport
import Testing

/// Measured = executed, through the executables: `ccworker run --engine-command` copies the
/// engine into a sealed memory file, measures that copy and starts the engine from it.
@Suite(.serialized) struct MeasuredEngineCLITests {
    static var ccworker: String { EvidenceVerifyCLITests.binDirectory.appendingPathComponent("ccworker").path }

    /// The children of `pid` (from /proc).
    static func children(of pid: Int32) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { Int32($0) }.filter { child in
            guard let stat = try? String(contentsOfFile: "/proc/\(child)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return false }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 2 && Int32(fields[1]) == pid
        }
    }

    /// Threat: a provider turning on the engine's prefix reuse, so that a faster first token
    /// tells one tenant its prompt began like another's. ccworker refuses the engine command
    /// before starting anything (usage error, exit 2), naming the flag.
    @Test func anEngineCommandWithPrefixReuseIsRefused() async throws {
        let dir = try TemporaryDirectory("prefix-reuse")
        let engine = dir.file("engine")
        try Data("#!/bin/sh\n".utf8).write(to: engine)
        chmod(engine.path, 0o755)
        try Data().write(to: dir.file("model"))
        let result = try await ProcessRunner.run(
            Self.ccworker,
            [
                "run", "--gateway", "127.0.0.1:1", "--gateway-key", String(repeating: "ab", count: 32), "--tpm",
                "swtpm:host=127.0.0.1,port=1", "--engine", engine.path, "--model", dir.file("model").path,
                "--model-name", "m", "--engine-url", "http://127.0.0.1:1", "--engine-command", "--", engine.path,
                "serve", "--prefix-reuse",
            ])
        #expect(result.status == 2, "\(result.stderr)")
        #expect(result.stderr.contains("--prefix-reuse"), "\(result.stderr)")
    }

    /// Threat: a provider (root on the worker host) swapping the engine file after it was
    /// measured. What runs is the sealed copy: the running engine's /proc/PID/exe hashes to the
    /// measured digest before and after the file on disk is replaced, and the strict policy (no
    /// allow_unmeasured_engine) admits the worker because its engine was executed from the copy.
    @Test func replacingTheEngineFileAfterMeasurementDoesNotChangeWhatRuns() async throws {
        let ca = try #require(SwtpmLocalCA.shared)
        let tpm = try await Swtpm.start()
        defer { tpm.stop() }
        let dir = try TemporaryDirectory("sealed-engine")
        // The engine: a copy of the Python interpreter (an ELF binary) running a tiny OpenAI-shaped server.
        let engine = dir.file("engine")
        try FileManager.default.copyItem(
            at: URL(fileURLWithPath: "/usr/bin/python3").resolvingSymlinksInPath(), to: engine)
        let server = dir.file("server.py")
        try """
        import http.server, json, sys
        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def answer(self, body):
                data = json.dumps(body).encode()
                self.send_response(200); self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
            def do_GET(self): self.answer({"object": "list", "data": [{"id": "sealed", "object": "model"}]})
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.answer({"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "from the sealed engine"}}]})
        http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
        """.write(to: server, atomically: true, encoding: .utf8)
        try Data("sealed model".utf8).write(to: dir.file("model"))
        let engineDigest = HashAlgorithm.sha256.hash(try Data(contentsOf: engine)).hex
        let policy = dir.file("policy.yaml")
        try """
        schema: ccgate.policy/v1
        name: sealed
        evidence: {formats: [tpm2-quote]}
        measurements:
          binaries: [{name: engine, sha256: \(engineDigest)}]
          models: [{name: model, names: [sealed], sha256: \(HashAlgorithm.sha256.hash(Data("sealed model".utf8)).hex)}]
        """.write(to: policy, atomically: true, encoding: .utf8)
        let gateway = try await offPool { try GatewayProcess(data: dir.file("data"), policy: policy, in: dir) }
        defer { gateway.stop() }

        let port = LoopbackPort.free()
        let worker = Process()
        worker.executableURL = URL(fileURLWithPath: Self.ccworker)
        worker.arguments = [
            "run", "--gateway", "127.0.0.1:\(gateway.ports["worker"]!)", "--gateway-key", gateway.keyFile.path, "--tpm",
            tpm.tcti, "--engine", engine.path,
            "--model", dir.file("model").path, "--model-name", "sealed", "--engine-url", "http://127.0.0.1:\(port)",
            "--worker-id", "sealed-1", "--tpm-ek-chain", ca.issuerCertificate.path, "--engine-command", "--",
            engine.path, server.path, String(port),
        ]
        // The interpreter finds its library by PYTHONHOME: it runs from a memory file, not /usr/bin.
        worker.environment = ProcessInfo.processInfo.environment.merging(["PYTHONHOME": "/usr"]) { $1 }
        let log = dir.file("worker.log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        worker.standardOutput = handle
        worker.standardError = handle
        try worker.run()
        defer {
            worker.terminate()
            worker.waitUntilExit()
        }

        let chat = #"{"model":"sealed","messages":[{"role":"user","content":"hi"}]}"#
        var answer = ""
        let deadline = Date() + 90
        while Date() < deadline, !answer.contains("from the sealed engine") {
            try await Task.sleep(for: .milliseconds(500))
            answer = try await ProcessRunner.run(
                "curl",
                [
                    "-s", "-H", "Authorization: Bearer crash-test-key", "-H", "Content-Type: application/json",
                    "--data-binary", chat, "http://127.0.0.1:\(gateway.ports["api"]!)/v1/chat/completions",
                ]
            ).stdout
        }
        let workerLog = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
        let gatewayLog = (try? String(contentsOf: gateway.log, encoding: .utf8)) ?? ""
        #expect(
            answer.contains("from the sealed engine"),
            "\(answer)\nworker:\n\(workerLog)\ngateway (last lines):\n\(gatewayLog.split(separator: "\n").suffix(40).joined(separator: "\n"))"
        )

        let pid = try #require(Self.children(of: worker.processIdentifier).first, "no engine process\n\(workerLog)")
        let exe = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe")
        #expect(exe.contains("memfd:"), "\(exe)")
        func running() throws -> String {
            HashAlgorithm.sha256.hash(try Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/exe"))).hex
        }
        #expect(try running() == engineDigest)
        // Replace the file on disk, in place and by rename: what runs does not change.
        try Data("#!/bin/sh\necho replaced\n".utf8).write(to: engine)
        #expect(try running() == engineDigest)
        try Data("another engine".utf8).write(to: dir.file("other"))
        _ = rename(dir.file("other").path, engine.path)
        #expect(try running() == engineDigest)
    }
}
