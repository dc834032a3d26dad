import AttestationCore
import Foundation
import TestSupport
import Testing
import TONKit
import TONStake

/// The staking gate through the executables, as an operator runs them: `ccgate serve --toncenter …`
/// with a staked policy, `ccworker run --provider-wallet … --provider-key …` on swtpm, the loopback
/// chain of `toncenter_tvm.py` (the real nominator-pool code in pytvm), `ccgate workers list`.
@Suite(.serialized) struct StakeCLITests {
    static var ccworker: String { EvidenceVerifyCLITests.binDirectory.appendingPathComponent("ccworker").path }

    /// An engine stand-in that answers `GET /v1/models` (all the worker waits for).
    /// An engine that only lists its model (the worker checks it is up; nothing is served).
    static func modelsOnly(in dir: TemporaryDirectory) async throws -> PythonServer {
        try await offPool {
            try PythonServer([PythonServer.modelsHandler, "class H(Models): pass", PythonServer.serveH], in: dir)
        }
    }

    static func workers(_ gateway: GatewayProcess) async throws -> String {
        try await ProcessRunner.run(EvidenceVerifyCLITests.ccgate, ["workers", "list"] + gateway.adminArgs).stdout
    }

    @Test func stakedWorkerThroughTheExecutables() async throws {
        let dir = try TemporaryDirectory("stake-cli")
        let chain = try await offPool { try TONChain() }
        let key = Ed25519PrivateKey.generate()
        let wallet = try await chain.wallet(publicKey: key.publicKey.raw, balance: 40_000_000_000_000)
        #expect(
            try await chain.send(from: wallet, to: TONChain.pool, value: 15_001_000_000_000, comment: "d").exitCode == 0
        )
        try key.pem.write(to: dir.file("provider.key"), atomically: true, encoding: .utf8)
        try chain.apiKey.write(to: dir.file("toncenter.key"), atomically: true, encoding: .utf8)

        let engine = dir.file("ccinfer"), model = dir.file("model.gguf")
        try Data("cli staked engine".utf8).write(to: engine)
        try Data("cli staked model".utf8).write(to: model)
        let policy = dir.file("staked.yaml")
        try """
        schema: ccgate.policy/v1
        name: staked-cli
        evidence: {formats: [tpm2-quote]}
        measurements:
          binaries: [{name: ccinfer, sha256: \(HashAlgorithm.sha256.hash(try Data(contentsOf: engine)).hex)}]
          models: [{name: model, names: [fake], sha256: \(HashAlgorithm.sha256.hash(try Data(contentsOf: model)).hex)}]
          # The engine is a stand-in the worker does not start: it is hashed, not executed from its measured copy.
          allow_unmeasured_engine: true
        stake:
          minimum_ton: 10000
          pool: "\(TONChain.pool)"
          code_hashes: [\(TONChain.poolCodeHash)]
          refresh_seconds: 2
        """.write(to: policy, atomically: true, encoding: .utf8)
        let lint = try await ProcessRunner.run(EvidenceVerifyCLITests.ccgate, ["policy", "lint", policy.path])
        #expect(lint.status == 0, "\(lint.stderr)")

        let extra =
            chain.ports.indices.flatMap {
                ["--toncenter", chain.url($0).absoluteString, "--toncenter-key-file", dir.file("toncenter.key").path]
            } + ["--toncenter-rps", "100"]
        let gateway = try await offPool {
            try GatewayProcess(data: dir.file("data"), policy: policy, in: dir, extra: extra)
        }
        defer { gateway.stop() }
        let tpm = try await Swtpm.start()
        defer { tpm.stop() }
        let fake = try await Self.modelsOnly(in: dir)

        // A key file that is not a key: a clear error before anything is dialled.
        try "not a key".write(to: dir.file("bad.key"), atomically: true, encoding: .utf8)
        // The wallet as a wallet app shows it (user-friendly, non-bounceable).
        let friendly = try #require(try TONAddress.parseRaw(wallet).friendly(bounceable: false))
        let common = [
            "run", "--gateway", "127.0.0.1:\(gateway.ports["worker"]!)", "--gateway-key", gateway.keyFile.path, "--tpm",
            tpm.tcti, "--engine", engine.path,
            "--model", model.path, "--tpm-ek-chain", SwtpmLocalCA.shared?.issuerCertificate.path ?? "",
            "--model-name", "fake", "--engine-url", "http://127.0.0.1:\(fake.port)", "--worker-id", "cli-staked",
            "--provider-wallet", friendly,
        ]
        let bad = try await ProcessRunner.run(Self.ccworker, common + ["--provider-key", dir.file("bad.key").path])
        #expect(bad.status == 2 && bad.stderr.contains("provider identity"), "\(bad.stderr)")

        let worker = Process()
        worker.executableURL = URL(fileURLWithPath: Self.ccworker)
        worker.arguments = common + ["--provider-key", dir.file("provider.key").path]
        let log = dir.file("worker.log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        worker.standardOutput = try FileHandle(forWritingTo: log)
        worker.standardError = try FileHandle(forWritingTo: log)
        try worker.run()
        defer { if worker.isRunning { kill(worker.processIdentifier, SIGKILL) } }

        let short = String(wallet.prefix(8))
        let admitted = try await eventually(90) { try await Self.workers(gateway).contains("cli-staked") }
        #expect(admitted, "not admitted: \((try? String(contentsOf: log, encoding: .utf8)) ?? "")")
        #expect(try await Self.workers(gateway).contains(short), "the provider is listed")

        #expect(try await chain.send(from: wallet, to: TONChain.pool, value: 1_000_000_000, comment: "w").exitCode == 0)
        let evicted = try await eventually(90) { try await !Self.workers(gateway).contains("cli-staked") }
        #expect(evicted, "still admitted after the withdrawal")
        // The gateway told the worker why; a rejection ends ccworker with status 1.
        let ended = await eventually(60) { !worker.isRunning }
        #expect(ended)
        if ended { #expect(worker.terminationStatus == 1) }
        #expect(((try? String(contentsOf: log, encoding: .utf8)) ?? "").contains("stake.below-minimum"))
    }
}

/// Stake is read over https: a network in the middle must not answer for the chain.
@Suite struct ToncenterTransportTests {
    @Test func plainHTTPToncenterIsRefusedExceptOnLoopback() async throws {
        let dir = try TemporaryDirectory("toncenter-http")
        let result = try await ProcessRunner.run(
            EvidenceVerifyCLITests.ccgate,
            [
                "serve", "--port", "0", "--worker-port", "0", "--api-key", "k", "--data-dir", dir.file("data").path,
                "--toncenter", "http://toncenter.example.com", "--toncenter", "https://toncenter.example.net",
            ])
        #expect(result.status == 2, "\(result.stderr)")
        #expect(result.stderr.contains("https only"), "\(result.stderr)")
    }
}
