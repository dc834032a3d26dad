import AttestationCore
import Foundation
import TestSupport
import Testing

/// Must show (TLS): `curl --cacert` reaches the API over TLS; plain HTTP on a non-loopback
/// address is refused without `--allow-plain-http`; SIGHUP makes new connections get the new
/// certificate while a stream opened before it completes.
@Suite(.serialized) struct TLSCLITests {
    static let ccgate = EvidenceVerifyCLITests.ccgate

    /// A local CA and two server certificates for 127.0.0.1 from it (subjects `ccgate-a`, `ccgate-b`).
    static func pki(in dir: TemporaryDirectory) async throws {
        func openssl(_ args: [String]) async throws {
            let r = try await ProcessRunner.run("openssl", args)
            guard r.status == 0 else { throw GatewayProcess.GatewayProcessError(message: "openssl: \(r.stderr)") }
        }
        try await openssl([
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=ccgate test CA", "-keyout", dir.file("ca.key").path, "-out", dir.file("ca.crt").path,
        ])
        try "subjectAltName=IP:127.0.0.1\n".write(to: dir.file("san.ext"), atomically: true, encoding: .utf8)
        for name in ["a", "b"] {
            try await openssl([
                "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=ccgate-\(name)",
                "-keyout", dir.file("\(name).key").path, "-out", dir.file("\(name).csr").path,
            ])
            try await openssl([
                "x509", "-req", "-in", dir.file("\(name).csr").path, "-CA", dir.file("ca.crt").path, "-CAkey",
                dir.file("ca.key").path, "-CAcreateserial", "-days", "2", "-extfile", dir.file("san.ext").path,
                "-out", dir.file("\(name).crt").path,
            ])
        }
    }

    /// The subject of the certificate the server at `port` presents to a new connection.
    static func servedSubject(_ port: Int, ca: URL) async throws -> String {
        let r = try await ProcessRunner.run(
            "bash",
            [
                "-c",
                "openssl s_client -connect 127.0.0.1:\(port) -CAfile \(ca.path) -verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -subject",
            ])
        return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// An engine whose chat completions stream 12 events 0.25 s apart.
    static func slowEngine(in dir: TemporaryDirectory) async throws -> PythonServer {
        try await offPool {
            try PythonServer(
                [
                    PythonServer.modelsHandler,
                    """
                    class H(Models):
                        def do_POST(self):
                            self.rfile.read(int(self.headers.get("Content-Length", "0")))
                            self.send_response(200); self.send_header("Content-Type", "text/event-stream")
                            self.send_header("Connection", "close"); self.end_headers()
                            for i in range(12):
                                self.wfile.write(('data: {"choices":[{"delta":{"content":"tick-%d"}}]}\\n\\n' % i).encode()); self.wfile.flush()
                                time.sleep(0.25)
                            self.wfile.write(b"data: [DONE]\\n\\n"); self.wfile.flush()

                    """, PythonServer.serveH,
                ], in: dir)
        }
    }

    @Test func tlsServesVerifiesAndReloadsWithoutDroppingAStream() async throws {
        let dir = try TemporaryDirectory("tls-cli")
        try await Self.pki(in: dir)
        try FileManager.default.copyItem(at: dir.file("a.crt"), to: dir.file("served.crt"))
        try FileManager.default.copyItem(at: dir.file("a.key"), to: dir.file("served.key"))
        let engine = dir.file("engine"), model = dir.file("model.gguf")
        try Data("tls engine".utf8).write(to: engine)
        try Data("tls model".utf8).write(to: model)
        let policy = dir.file("policy.yaml")
        try """
        schema: ccgate.policy/v1
        name: tls
        evidence: {formats: [tpm2-quote]}
        measurements:
          binaries: [{name: engine, sha256: \(HashAlgorithm.sha256.hash(try Data(contentsOf: engine)).hex)}]
          models: [{name: model, names: [fake], sha256: \(HashAlgorithm.sha256.hash(try Data(contentsOf: model)).hex)}]
          # The engine is a stand-in the worker does not start: it is hashed, not executed from its measured copy.
          allow_unmeasured_engine: true
        """.write(to: policy, atomically: true, encoding: .utf8)
        let gateway = try await offPool {
            try GatewayProcess(
                data: dir.file("data"), policy: policy, in: dir,
                extra: ["--tls-cert", dir.file("served.crt").path, "--tls-key", dir.file("served.key").path])
        }
        defer { gateway.stop() }
        let api = gateway.ports["api"]!
        let ca = dir.file("ca.crt")
        #expect(try await Self.servedSubject(api, ca: ca).contains("ccgate-a"))

        let slow = try await Self.slowEngine(in: dir)
        let tpm = try await Swtpm.start()
        defer { tpm.stop() }
        let worker = try gateway.startWorker(
            id: "tls-worker", tpm: tpm, engine: engine, model: model, enginePort: slow.port)
        defer { if worker.isRunning { kill(worker.processIdentifier, SIGKILL) } }

        // curl --cacert: the API over TLS, verified against the local CA.
        let curl = ["-s", "--cacert", ca.path, "-H", "Authorization: Bearer crash-test-key"]
        let listed = await eventually(90) {
            (try? await ProcessRunner.run("curl", curl + ["https://127.0.0.1:\(api)/v1/models"]).stdout.contains("fake"))
                == true
        }
        #expect(listed, "no worker listed over TLS")
        // The admin API speaks TLS too; the admin CLI trusts the CA it is given.
        let admin = try await ProcessRunner.run(
            Self.ccgate,
            [
                "workers", "list", "--admin-url", "https://127.0.0.1:\(gateway.ports["admin"]!)", "--admin-ca", ca.path,
                "--token-file", gateway.data.appendingPathComponent("admin.token").path,
            ])
        #expect(admin.status == 0 && admin.stdout.contains("tls-worker"), "\(admin.stderr)")
        // The official openai SDK, unchanged, over TLS: it trusts the local CA through SSL_CERT_FILE.
        let env = try ReferenceEnvironment.shared.get()
        let sdk = try await ProcessRunner.run(
            env.python.path,
            [
                "-c",
                "import sys; from openai import OpenAI; print(','.join(m.id for m in OpenAI(base_url=sys.argv[1], api_key='crash-test-key', max_retries=0).models.list()))",
                "https://127.0.0.1:\(api)/v1",
            ], environment: ["SSL_CERT_FILE": ca.path])
        #expect(sdk.status == 0 && sdk.stdout.contains("fake"), "\(sdk.stderr)")
        // Without the CA the certificate is not trusted; plain HTTP to the TLS port gets nothing.
        #expect(try await ProcessRunner.run("curl", ["-s", "https://127.0.0.1:\(api)/v1/models"]).status != 0)
        let plain = try await ProcessRunner.run(
            "curl", ["-s", "-w", "%{http_code}", "http://127.0.0.1:\(api)/v1/models"])
        #expect(!plain.stdout.hasSuffix("200"))

        // A stream opened under certificate A...
        let streamFile = dir.file("stream.txt")
        let stream = Process()
        stream.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        stream.arguments =
            curl + [
                "-N", "-o", streamFile.path, "-H", "Content-Type: application/json", "--data-binary",
                #"{"model":"fake","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
                "https://127.0.0.1:\(api)/v1/chat/completions",
            ]
        try stream.run()
        let started = await eventually(30) {
            ((try? String(contentsOf: streamFile, encoding: .utf8)) ?? "").contains("tick-0")
        }
        #expect(started, "the stream did not start")
        // ...then the files are replaced and the gateway told with SIGHUP.
        #expect(rename(dir.file("b.crt").path, dir.file("served.crt").path) == 0)
        #expect(rename(dir.file("b.key").path, dir.file("served.key").path) == 0)
        kill(gateway.process.processIdentifier, SIGHUP)
        let reloaded = await eventually(10) {
            (try? await Self.servedSubject(api, ca: ca).contains("ccgate-b")) == true
        }
        #expect(reloaded, "new connections do not get the new certificate")
        #expect(gateway.process.isRunning, "SIGHUP stopped the gateway")
        let finished = await eventually(60) { !stream.isRunning }
        #expect(finished && stream.terminationStatus == 0)
        let text = (try? String(contentsOf: streamFile, encoding: .utf8)) ?? ""
        #expect(text.contains("tick-11") && text.contains("data: [DONE]") && text.contains("event: ccgate-receipt"))
    }

    @Test func plainHTTPOnANonLoopbackAddressNeedsTheFlag() async throws {
        let dir = try TemporaryDirectory("plain-http")
        try "schema: ccgate.policy/v1\nname: plain\nevidence: {formats: [tpm2-quote]}\n".write(
            to: dir.file("policy.yaml"), atomically: true, encoding: .utf8)
        let base = [
            "serve", "--host", "0.0.0.0", "--port", "0", "--worker-port", "0", "--admin-port=-1", "--api-key",
            "plain-key", "--policy", dir.file("policy.yaml").path, "--data-dir", dir.file("data").path,
        ]
        let refused = try await ProcessRunner.run(Self.ccgate, base)
        #expect(refused.status == 2 && refused.stderr.contains("refusing plain HTTP on 0.0.0.0"), "\(refused.stderr)")

        let allowed = Process()
        allowed.executableURL = URL(fileURLWithPath: Self.ccgate)
        allowed.arguments = base + ["--allow-plain-http", "--ports-file", dir.file("ports").path]
        let log = dir.file("log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        allowed.standardError = try FileHandle(forWritingTo: log)
        try allowed.run()
        defer { if allowed.isRunning { allowed.terminate() } }
        let up = await eventually(60) { FileManager.default.fileExists(atPath: dir.file("ports").path) }
        #expect(up && allowed.isRunning)
        #expect(
            ((try? String(contentsOf: log, encoding: .utf8)) ?? "").contains("plain HTTP on a non-loopback address"))
    }
}
