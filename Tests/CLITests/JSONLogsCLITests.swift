import AttestationCore
import Foundation
import TestSupport
import Testing

/// Must show: JSON logs parse line by line, carry the request id end to end (gateway, worker,
/// engine), and contain no prompt text.
@Suite(.serialized) struct JSONLogsCLITests {
    /// An engine that records each request's `x-request-id` in `seen` and answers with usage.
    static func engine(recordingInto seen: URL, in dir: TemporaryDirectory) async throws -> PythonServer {
        try await offPool {
            try PythonServer(
                [
                    PythonServer.modelsHandler,
                    """
                    class H(Models):
                        def do_POST(self):
                            req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                            open("\(seen.path)", "a").write((self.headers.get("x-request-id") or "-") + "\\n")
                            if req.get("stream"):
                                self.send_response(200); self.send_header("Content-Type", "text/event-stream")
                                self.send_header("Connection", "close"); self.end_headers()
                                for i in range(3):
                                    self.wfile.write(('data: {"choices":[{"delta":{"content":"t%d"}}]}\\n\\n' % i).encode())
                                if (req.get("stream_options") or {}).get("include_usage"):
                                    self.wfile.write(b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":3}}\\n\\n')
                                self.wfile.write(b"data: [DONE]\\n\\n"); self.wfile.flush(); return
                            body = json.dumps({"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}], "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}}).encode()
                            self.send_response(200); self.send_header("Content-Type", "application/json")
                            self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)

                    """, PythonServer.serveH,
                ], in: dir)
        }
    }

    static func lines(_ file: URL) -> [String] {
        ((try? String(contentsOf: file, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    @Test func jsonLogsCarryTheRequestIDAndNoPrompt() async throws {
        let dir = try TemporaryDirectory("json-logs")
        let engine = Data("json-logs engine".utf8), model = Data("json-logs model".utf8)
        try engine.write(to: dir.file("engine"))
        try model.write(to: dir.file("model.gguf"))
        try EndToEndCLITests.policy("logs", engines: [engine], model: model).write(
            to: dir.file("policy.yaml"), atomically: true, encoding: .utf8)
        let gateway = try await offPool {
            try GatewayProcess(
                data: dir.file("data"), policy: dir.file("policy.yaml"), in: dir,
                extra: ["--log-format", "json", "--log-level", "info"])
        }
        let seen = dir.file("engine-request-ids")
        let echo = try await Self.engine(recordingInto: seen, in: dir)
        let tpm = try await Swtpm.start()
        defer { tpm.stop() }
        let workerLog = dir.file("worker.log")
        // The worker's log settings come from a config file (ccworker run --config).
        try "log-format: json\nlog-level: info\n".write(to: dir.file("worker.yaml"), atomically: true, encoding: .utf8)
        let worker = try gateway.startWorker(
            id: "log-worker", tpm: tpm, engine: dir.file("engine"), model: dir.file("model.gguf"),
            enginePort: echo.port, log: workerLog, extra: ["--config", dir.file("worker.yaml").path])
        defer { if worker.isRunning { kill(worker.processIdentifier, SIGKILL) } }
        let api = "http://127.0.0.1:\(gateway.ports["api"]!)"
        let admitted = await eventually(90) {
            (try? await ProcessRunner.run(
                "curl", ["-s", "-H", "Authorization: Bearer crash-test-key", api + "/v1/models"]
            )
            .stdout.contains("fake")) == true
        }
        try #require(admitted, "the worker was not admitted")

        let marker = "prompt-marker-\(UUID().uuidString)"
        var ids = [String]()
        for (n, stream) in [false, true].enumerated() {
            let body = #"{"model":"fake","messages":[{"role":"user","content":"\#(marker)"}],"stream":\#(stream)}"#
            let id = "trace-\(n)-\(UUID().uuidString.prefix(8))"
            let answer = try await ProcessRunner.run(
                "curl",
                [
                    "-s", "-D", "-", "-X", "POST", api + "/v1/chat/completions", "-H",
                    "Authorization: Bearer crash-test-key",
                    "-H", "Content-Type: application/json", "-H", "x-request-id: \(id)", "--data-binary", body,
                ])
            #expect(answer.stdout.lowercased().contains("x-request-id: \(id.lowercased())"), "\(answer.stdout)")
            #expect(answer.stdout.contains(" 200 "), "\(answer.stdout)")
            ids.append(id)
        }
        gateway.stop()
        kill(worker.processIdentifier, SIGTERM)
        worker.waitUntilExit()

        for (name, file) in [("gateway", gateway.log), ("worker", workerLog)] {
            let lines = Self.lines(file)
            #expect(lines.count > 3, "\(name) logged \(lines.count) lines")
            for line in lines {
                let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
                #expect(
                    object?["message"] is String && object?["level"] is String, "\(name): not a JSON log line: \(line)")
            }
            #expect(!lines.contains { $0.contains(marker) }, "the \(name) log holds the prompt")
            for id in ids {
                #expect(lines.contains { $0.contains(#""ccgate.request_id":"\#(id)""#) }, "\(name) never names \(id)")
            }
        }
        let access = Self.lines(gateway.log).filter {
            $0.contains(#""message":"access""#) && $0.contains("ccgate.worker.id")
        }
        #expect(access.count == 2, "one access line per served request: \(access)")
        #expect(access.allSatisfy { $0.contains(#""ccgate.usage_source":"engine""#) }, "\(access)")
        #expect(Self.lines(seen) == ids, "the engine saw \(Self.lines(seen))")
    }
}
