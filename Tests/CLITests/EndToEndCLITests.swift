import AttestationCore
import Foundation
import TestSupport
import Testing

/// Must show (end to end): a marker prompt sent through `ccgate client proxy` never appears in
/// the running gateway's memory (a core dump taken while the answer streams), its log, its data
/// directory or its audit export, while the same search finds a marker sent without end-to-end
/// mode; the `openai` SDK works unchanged against the proxy; and the proxy refuses a worker the
/// gateway admitted under a laxer policy than the client's.
@Suite(.serialized) struct EndToEndCLITests {
    static let ccgate = EvidenceVerifyCLITests.ccgate

    /// An engine that echoes the last user message: as JSON, or as 16 events 0.4 s apart.
    static func echoEngine(in dir: TemporaryDirectory) async throws -> PythonServer {
        try await offPool {
            try PythonServer(
                [
                    PythonServer.modelsHandler,
                    """
                    class H(Models):
                        def do_POST(self):
                            req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                            said = req["messages"][-1]["content"]
                            if not req.get("stream"):
                                body = json.dumps({"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "echo " + said}}], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}).encode()
                                self.send_response(200); self.send_header("Content-Type", "application/json")
                                self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body); return
                            self.send_response(200); self.send_header("Content-Type", "text/event-stream")
                            self.send_header("Connection", "close"); self.end_headers()
                            for i in range(16):
                                chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "%s tick-%d " % (said, i)}}]}
                                self.wfile.write(("data: " + json.dumps(chunk) + "\\n\\n").encode()); self.wfile.flush()
                                time.sleep(0.4)
                            self.wfile.write(b"data: [DONE]\\n\\n"); self.wfile.flush()

                    """, PythonServer.serveH,
                ], in: dir)
        }
    }

    /// `ccgate client proxy` as a process.
    final class ProxyProcess: @unchecked Sendable {
        let process = Process()
        let port: Int
        let log: URL
        init(_ args: [String], in dir: TemporaryDirectory) throws {
            let portsFile = dir.file("proxy-\(UUID().uuidString)")
            log = dir.file("proxy-\(UUID().uuidString).log")
            _ = FileManager.default.createFile(atPath: log.path, contents: nil)
            process.executableURL = URL(fileURLWithPath: EndToEndCLITests.ccgate)
            process.arguments = ["client", "proxy", "--listen", "127.0.0.1:0", "--ports-file", portsFile.path] + args
            let handle = try FileHandle(forWritingTo: log)
            process.standardOutput = handle
            process.standardError = handle
            try process.run()
            port = LoopbackServer.ports(in: portsFile, of: process, timeout: 60).first ?? 0
        }
        var output: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }
        deinit { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
    }

    static func policy(_ name: String, engines: [Data], model: Data) -> String {
        """
        schema: ccgate.policy/v1
        name: \(name)
        evidence: {formats: [tpm2-quote]}
        measurements:
          binaries: [\(engines.enumerated().map { "{name: engine-\($0.offset), sha256: \(HashAlgorithm.sha256.hash($0.element).hex)}" }.joined(separator: ", "))]
          models: [{name: model, names: [fake], sha256: \(HashAlgorithm.sha256.hash(model).hex)}]
          # The engine is a stand-in the worker does not start: it is hashed, not executed from its measured copy.
          allow_unmeasured_engine: true
        """
    }

    /// How many times `marker` occurs in the file (bytes, as grep counts lines holding it).
    static func occurrences(of marker: String, in file: URL) async throws -> Int {
        // grep exits 1 when it finds nothing, 2 when it cannot read: only the last is a failure.
        let r = try await ProcessRunner.run("grep", ["-c", "-a", "-F", marker, file.path])
        guard r.status <= 1, let count = Int(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw GatewayProcess.GatewayProcessError(message: "grep \(file.path): \(r.stderr)")
        }
        return count
    }

    /// A core dump of the running process `pid` (gcore), while it serves.
    static func core(of pid: Int32, into dir: TemporaryDirectory, name: String) async throws -> URL {
        let prefix = dir.file(name)
        let r = try await ProcessRunner.run("gcore", ["-o", prefix.path, String(pid)])
        let core = URL(fileURLWithPath: prefix.path + ".\(pid)")
        guard FileManager.default.fileExists(atPath: core.path) else {
            throw GatewayProcess.GatewayProcessError(message: "gcore wrote no core: \(r.stderr)")
        }
        return core
    }

    /// Starts a streaming chat through `url` saying `said`; returns the curl process and its output.
    static func stream(_ url: String, said: String, key: String?, e2e dir: TemporaryDirectory) throws -> (Process, URL)
    {
        let out = dir.file("stream-\(UUID().uuidString)")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        p.arguments =
            ["-sN", "-o", out.path, "-H", "Content-Type: application/json"]
            + (key.map { ["-H", "Authorization: Bearer \($0)"] } ?? []) + [
                "--data-binary",
                #"{"model":"fake","stream":true,"messages":[{"role":"user","content":"\#(said)"}]}"#, url,
            ]
        try p.run()
        return (p, out)
    }

    @Test func thePromptNeverReachesTheGatewayAndTheClientsPolicyDecides() async throws {
        let env = try ReferenceEnvironment.shared.get()
        let dir = try TemporaryDirectory("e2e-cli")
        let engine = Data("e2e engine".utf8), other = Data("another engine build".utf8), model = Data("e2e model".utf8)
        try engine.write(to: dir.file("engine"))
        try model.write(to: dir.file("model.gguf"))
        // The gateway admits either build; one client accepts only this one, the other only the other.
        try Self.policy("gateway", engines: [engine, other], model: model).write(
            to: dir.file("gateway.yaml"), atomically: true, encoding: .utf8)
        try Self.policy("client", engines: [engine], model: model).write(
            to: dir.file("client.yaml"), atomically: true, encoding: .utf8)
        try Self.policy("strict", engines: [other], model: model).write(
            to: dir.file("strict.yaml"), atomically: true, encoding: .utf8)
        try "crash-test-key\n".write(to: dir.file("api.key"), atomically: true, encoding: .utf8)

        let gateway = try await offPool {
            try GatewayProcess(data: dir.file("data"), policy: dir.file("gateway.yaml"), in: dir)
        }
        defer { gateway.stop() }
        let api = "http://127.0.0.1:\(gateway.ports["api"]!)"
        let echo = try await Self.echoEngine(in: dir)
        let tpm = try await Swtpm.start()
        defer { tpm.stop() }
        let worker = try gateway.startWorker(
            id: "e2e-worker", tpm: tpm, engine: dir.file("engine"), model: dir.file("model.gguf"), enginePort: echo.port
        )
        defer { if worker.isRunning { kill(worker.processIdentifier, SIGKILL) } }
        let admitted = await eventually(90) {
            (try? await ProcessRunner.run(
                "curl", ["-s", "-H", "Authorization: Bearer crash-test-key", api + "/v1/models"]
            )
            .stdout.contains("fake")) == true
        }
        try #require(admitted, "the worker was not admitted")

        let common = [
            "--gateway", api, "--gateway-key", gateway.keyFile.path, "--api-key-file", dir.file("api.key").path,
            "--tpm-ek-root", SwtpmLocalCA.shared?.rootCertificate.path ?? "", "--trust-gateway-activation",
        ]
        let proxy = try await offPool {
            try ProxyProcess(common + ["--policy", dir.file("client.yaml").path], in: dir)
        }
        try #require(proxy.port > 0, "the proxy did not start: \(proxy.output)")
        let proxyURL = "http://127.0.0.1:\(proxy.port)"

        // The openai SDK, unchanged, against the proxy: plain and streamed.
        let script = SharedTestData.packageRoot.appendingPathComponent("Tests/CLITests/e2e_sdk_check.py").path
        let sdk = try await ProcessRunner.run(env.python.path, [script, proxyURL + "/v1", "fake"])
        #expect(sdk.status == 0, "\(sdk.stdout)\n\(sdk.stderr)\n\(proxy.output)")
        let report = try JSONSerialization.jsonObject(with: sdk.stdoutData) as? [String: Any]
        #expect(report?["models"] as? [String] == ["fake"])
        #expect(report?["chat"] as? String == "echo plain-question")
        #expect(report?["stream_chunks"] as? Int == 16)
        #expect((report?["stream_text"] as? String)?.hasPrefix("streamed-question tick-0 ") == true)

        // The marker, end to end: while its answer streams, the gateway's memory is dumped.
        let marker = "MARKER-E2E-\(UUID().uuidString)"
        let (sealed, sealedOut) = try Self.stream(proxyURL + "/v1/chat/completions", said: marker, key: nil, e2e: dir)
        let flowing = await eventually(30) {
            ((try? String(contentsOf: sealedOut, encoding: .utf8)) ?? "").contains("tick-2")
        }
        #expect(flowing, "the end-to-end stream did not start: \(proxy.output)")
        let sealedCore = try await Self.core(of: gateway.process.processIdentifier, into: dir, name: "sealed-core")
        #expect(try await Self.occurrences(of: marker, in: sealedCore) == 0, "the marker is in the gateway's memory")
        try? FileManager.default.removeItem(at: sealedCore)
        #expect(await eventually(60) { !sealed.isRunning })
        let answer = (try? String(contentsOf: sealedOut, encoding: .utf8)) ?? ""
        #expect(answer.contains("\(marker) tick-15") && answer.contains("[DONE]"), "\(answer)")

        // The control: the same search finds a marker sent to the gateway in the clear.
        let control = "MARKER-PLAIN-\(UUID().uuidString)"
        let (plain, plainOut) = try Self.stream(
            api + "/v1/chat/completions", said: control, key: "crash-test-key", e2e: dir)
        let plainFlowing = await eventually(30) {
            ((try? String(contentsOf: plainOut, encoding: .utf8)) ?? "").contains("tick-2")
        }
        #expect(plainFlowing)
        let plainCore = try await Self.core(of: gateway.process.processIdentifier, into: dir, name: "plain-core")
        #expect(
            try await Self.occurrences(of: control, in: plainCore) > 0, "the search does not find a plaintext marker")
        try? FileManager.default.removeItem(at: plainCore)
        _ = await eventually(60) { !plain.isRunning }

        // Nor is it in the gateway's log, data directory or audit export.
        let export = dir.file("audit.jsonl")
        let exported = try await ProcessRunner.run(
            Self.ccgate, ["audit", "export", "--out", export.path] + gateway.adminArgs)
        #expect(exported.status == 0, "\(exported.stderr)")
        var searched = [export]
        searched += (try FileManager.default.contentsOfDirectory(at: gateway.data, includingPropertiesForKeys: nil))
        searched += (try FileManager.default.contentsOfDirectory(at: dir.url, includingPropertiesForKeys: nil))
            .filter { $0.lastPathComponent.hasPrefix("gateway-") && $0.pathExtension == "log" }
        #expect(searched.count >= 3)
        for file in searched {
            #expect(try await Self.occurrences(of: marker, in: file) == 0, "the marker is in \(file.lastPathComponent)")
        }

        // A client stricter than the gateway: the worker is refused, nothing is sent to it.
        let strict = try await offPool {
            try ProxyProcess(common + ["--policy", dir.file("strict.yaml").path], in: dir)
        }
        try #require(strict.port > 0, "the strict proxy did not start: \(strict.output)")
        #expect(strict.output.contains("refused e2e-worker"), "\(strict.output)")
        let none = try await ProcessRunner.run(
            "curl", ["-s", "-w", "\n%{http_code}", "http://127.0.0.1:\(strict.port)/v1/models"])
        #expect(none.stdout.contains(#""data":[]"#))
        let refused = try await ProcessRunner.run(
            "curl",
            [
                "-s", "-w", "\n%{http_code}", "-H", "Content-Type: application/json", "--data-binary",
                #"{"model":"fake","messages":[{"role":"user","content":"hi"}]}"#,
                "http://127.0.0.1:\(strict.port)/v1/chat/completions",
            ])
        #expect(refused.stdout.hasSuffix("503") && refused.stdout.contains("no_verified_worker"), "\(refused.stdout)")

        // A client that requires a TEE refuses a TPM worker whatever its policy says.
        let tee = try await offPool {
            try ProxyProcess(common + ["--policy", dir.file("client.yaml").path, "--min-tier", "tdx"], in: dir)
        }
        try #require(tee.port > 0, "the tier-requiring proxy did not start: \(tee.output)")
        #expect(tee.output.contains("tier tpm-agent-log is below the required tdx"), "\(tee.output)")
    }
}
