import AttestationCore
import Foundation
import Gateway
import Policy
import TestSupport
import Testing
import WorkerAgent

/// The real thing: ccinfer serving SmolLM2-135M-Instruct (on lavapipe) behind an attested
/// worker, reached through the gateway by curl and by the official openai Python SDK, unchanged.
/// `scripts/reference-env` provides the SDK and the model (cached under ~/.cache/ccgate).
@Suite(.serialized) struct RealEngineTests {
    struct EngineEnvironment {
        let venv: URL
        let model: URL
        let engine: URL
    }

    static func environment() throws -> EngineEnvironment {
        let references = try ReferenceEnvironment.shared.get()
        let engine = Bundle.main.executableURL!.deletingLastPathComponent().appendingPathComponent("ccinfer")
        return EngineEnvironment(venv: references.venv, model: references.model, engine: engine)
    }

    struct SetupError: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }

    @Test func completionsFromTheRealModelThroughTheGateway() async throws {
        let env = try Self.environment()
        let socketDirectory = try TemporaryDirectory("engine-socket")
        let socketPath = socketDirectory.file("ccinfer.sock").path
        setenv("XDG_RUNTIME_DIR", NSTemporaryDirectory(), 0)
        if let icd = try? FileManager.default.contentsOfDirectory(atPath: "/usr/share/vulkan/icd.d").first(where: {
            $0.hasPrefix("lvp_icd")
        }) {
            setenv("VK_ICD_FILENAMES", "/usr/share/vulkan/icd.d/\(icd)", 1)
        }
        // As ccworker runs it: from a sealed, measured copy, told the measured model digest.
        let sealed = try SealedExecutable(copying: env.engine)
        let modelDigest = try FileMeasurer.digest(of: env.model).hex
        let engine = EngineSupervisor(
            executable: sealed,
            arguments: [
                "serve", "--model", env.model.path, "--model-name", "smollm2-135m-instruct",
                "--socket", socketPath, "--context", "1024",
            ], environment: ["CCINFER_MODEL_SHA256": modelDigest])
        let supervision = Task { await engine.run() }
        defer { engine.stop(); supervision.cancel() }
        // The engine listens on a Unix socket only its owner may open.
        var client = try #require(EngineClient(url: "unix:" + socketPath))
        client.expectedPeer = { engine.enginePID }
        var ready = false
        for _ in 0..<240 where !ready {
            ready = await client.isReady()
            if !ready { try await Task.sleep(for: .milliseconds(500)) }
        }
        try #require(ready, "the engine did not come up")
        let mode = try FileManager.default.attributesOfItem(atPath: socketPath)[.posixPermissions] as? Int
        #expect(mode == 0o600, "the engine's socket has mode \(String(mode ?? 0, radix: 8))")
        #expect(engine.ownsListener(client), "the started engine is the one listening on the socket")

        let policy = """
            schema: ccgate.policy/v1
            name: real
            evidence: {formats: [tpm2-quote], tpm: {require_restricted_ak: true}}
            measurements:
              binaries: [{name: ccinfer, sha256: \(try FileMeasurer.digest(of: env.engine).hex)}]
              models: [{name: smollm2, names: [smollm2-135m-instruct], sha256: b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53}]
            """
        let gateway = try await GatewayHarness(policy: policy)
        let worker = try await TestWorker(
            id: "gpu-1", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: 0,
            measured: [env.model], modelName: "smollm2-135m-instruct", executable: sealed, engine: client)
        defer {
            Teardown.after {
                await worker.stop(); await gateway.stop()
            }
        }
        guard case .success = await worker.admitted() else { Issue.record("not admitted"); return }

        let chat =
            #"{"model":"smollm2-135m-instruct","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":16,"temperature":0}"#
        let plain = try await gateway.request("/v1/chat/completions", method: "POST", body: chat, seconds: 600)
        #expect(plain.status == 200, "\(plain.body)")
        let object = try JSONSerialization.jsonObject(with: Data(plain.body.utf8)) as? [String: Any]
        let content =
            ((object?["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any])?["content"] as? String
        #expect(content?.isEmpty == false)
        #expect((object?["usage"] as? [String: Any])?["completion_tokens"] as? Int ?? 0 > 0)

        let streaming = chat.replacingOccurrences(of: #""max_tokens":16"#, with: #""max_tokens":16,"stream":true"#)
        let stream = try await gateway.request("/v1/chat/completions", method: "POST", body: streaming, seconds: 600)
        #expect(stream.status == 200)
        #expect(stream.body.components(separatedBy: "data: ").count > 3)
        #expect(stream.body.contains("[DONE]"))

        // The official openai SDK, unchanged, against the gateway.
        let script = SharedTestData.packageRoot.appendingPathComponent("Tests/GatewayTests/openai_sdk_check.py").path
        let sdk = try await ProcessRunner.run(
            env.venv.appendingPathComponent("bin/python").path,
            [script, gateway.baseURL + "/v1", gateway.apiKey, "smollm2-135m-instruct"])
        #expect(sdk.status == 0, "\(sdk.stdout)\n\(sdk.stderr)")
        let report = try JSONSerialization.jsonObject(with: sdk.stdoutData) as? [String: Any]
        #expect(report?["models"] as? [String] == ["smollm2-135m-instruct"])
        #expect((report?["chat"] as? String)?.isEmpty == false)
        #expect(report?["stream_chunks"] as? Int ?? 0 > 1)
        #expect((report?["completion"] as? String)?.isEmpty == false)
        #expect(report?["unknown_model_error"] as? String == "NotFoundError")
        #expect(report?["bad_key_error"] as? String == "AuthenticationError")
    }
}
