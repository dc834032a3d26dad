import ArgumentParser
import AttestationCore
import CommandLineSupport
import Foundation
import Logging
import ServiceSupport
import Sealing
import TONKit
import TONStake
import WorkerAgent

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the worker: measure the engine and model, dial the gateway, attest, serve sealed requests.",
        discussion: """
            The engine binary and the model file are measured (SHA-256) into an ima-ng log and extended into
            --measure-pcr; every gateway challenge is answered with a fresh quote bound to SHA-256(nonce ‖ the
            worker's key). With --engine-command the engine is started and restarted when it exits; give its
            arguments after --, the first being the --engine file: that file is copied into a sealed memory file,
            measured there and executed from there (so replacing it on disk changes neither the measurement nor
            what runs), and the engine is told the measured model digest (CCINFER_MODEL_SHA256), which ccinfer
            checks as it loads the model. Without --engine-command the engine at --engine-url is one ccworker did
            not start: policies refuse it unless they set measurements.allow_unmeasured_engine.

            With --tee tdx the worker runs in an Intel TDX guest instead: the engine and model digests are \
            measured as application events into RTMR3 (through --rtmr-dir), and each challenge is answered with a \
            DCAP quote from Linux configfs-tsm (--tsm-dir) whose REPORTDATA is SHA-256(nonce ‖ key) followed by zeros, \
            together with the CCEL event log (--ccel) extended by those events.

            The worker talks only to the gateway whose identity key it pins (--gateway-key: the gateway's \
            DATA_DIR/gateway.pub, or the fingerprint `ccgate serve` logs): the gateway signs its challenge over \
            this connection's hello, and every later handshake message; a gateway that cannot is refused before \
            anything is quoted or signed, and after admission only sealed messages are taken.

            Several gateways (behind one load balancer, on one shared database) are given as --gateway / \
            --gateway-key pairs: the worker keeps a connection to each, answers each one's challenges with its own \
            quote, and serves requests from all of them; a gateway that goes away costs only the requests it was \
            relaying, and the worker dials it again with backoff.

            When the gateway's policy requires a TON stake, give the provider's wallet (--provider-wallet) and its \
            Ed25519 private key (--provider-key, PEM as `ccgate keys generate` writes it, or the wallet's 32-byte seed \
            as hex): on admission the worker signs a provider proof over the gateway's id, its own key and the time. \
            For a jetton or Cocoon proxy stake, --stake-account names the provider's jetton wallet or proxy contract.

            Examples:
              ccworker run --gateway 127.0.0.1:8444 --gateway-key ./data/gateway.pub --tpm swtpm:host=127.0.0.1,port=2321 \\
                --engine ./ccinfer --model ./model.gguf --model-name smollm2-135m-instruct \\
                --engine-url http://127.0.0.1:8081 --engine-command -- ./ccinfer serve --model ./model.gguf --port 8081
              ccworker run --gateway gw1:8444 --gateway-key gw1.pub --gateway gw2:8444 --gateway-key gw2.pub \
                --tpm device:/dev/tpmrm0 --engine ./ccinfer --model ./model.gguf --model-name smollm2-135m-instruct \
                --engine-url http://127.0.0.1:8081
              ccworker run --tee tdx --gateway gw.example:8444 --gateway-key 3f9a…(64 hex) --engine ./ccinfer --model ./model.gguf --model-name smollm2-135m-instruct
            """)

    @OptionGroup var tdx: TDXOptions
    @OptionGroup(title: "Logs") var log: LogOptions
    @Option(
        help: ArgumentHelp(
            "A YAML file of settings: run's long option names as keys (gateway: [HOST:PORT, …], engine: PATH, engine-command: true). Flags given here override it.",
            valueName: "FILE"))
    var config: String?

    @Option(
        name: .customLong("gateway"),
        help: ArgumentHelp(
            "A gateway's worker port; repeatable: the worker attests to each gateway on its own connection.",
            valueName: "HOST:PORT"))
    var gateways: [String] = []
    @Option(
        name: .customLong("gateway-key"),
        help: ArgumentHelp(
            "The identity key of the --gateway in the same position: its gateway.pub (PEM), or the key's SHA-256 fingerprint (64 hex digits).",
            valueName: "PEM|FINGERPRINT"))
    var gatewayKeys: [String] = []
    @Option(help: ArgumentHelp("TPM as a TCTI string.", valueName: "TCTI")) var tpm = "device:/dev/tpmrm0"
    @Option(
        help: ArgumentHelp(
            "Intermediate CA certificates (PEM) between the TPM's EK certificate and its manufacturer's root, when the TPM does not hold them.",
            valueName: "PEM"))
    var tpmEKChain: String?
    @Option(help: ArgumentHelp("The engine binary to measure.", valueName: "PATH")) var engine: String
    @Option(help: ArgumentHelp("The model file to measure.", valueName: "PATH")) var model: String
    @Option(help: ArgumentHelp("Model name this worker serves (as clients request it).", valueName: "NAME"))
    var modelName: String
    @Option(
        help: ArgumentHelp(
            "Where the engine's OpenAI API listens: http://127.0.0.1:PORT, or unix:/PATH for the engine's Unix socket (ccinfer serve --socket; mode 0600).",
            valueName: "URL"))
    var engineURL =
        "http://127.0.0.1:8081"
    @Option(help: ArgumentHelp("This worker's id.", valueName: "ID")) var workerID = ProcessInfo.processInfo.hostName
    @Option(help: ArgumentHelp("The PCR measurements are extended into.", valueName: "N")) var measurePCR = 23
    @Option(help: ArgumentHelp("Attestation key algorithm: ecc or rsa.", valueName: "ALG")) var ak = "ecc"
    @Option(
        help: ArgumentHelp(
            "The provider's TON wallet (raw or user-friendly), for a gateway that requires stake.", valueName: "ADDRESS"
        ))
    var providerWallet: String?
    @Option(
        help: ArgumentHelp(
            "The provider wallet's Ed25519 private key (PEM, or the 32-byte seed as hex).", valueName: "FILE"))
    var providerKey: String?
    @Option(help: ArgumentHelp("The provider's jetton wallet or Cocoon proxy holding the stake.", valueName: "ADDRESS"))
    var stakeAccount: String?

    @Flag(help: "Start and supervise the engine with the arguments after --.") var engineCommand = false
    @Argument(parsing: .postTerminator, help: "The engine command (with --engine-command).") var command: [String] = []

    func validate() throws {
        guard !gateways.isEmpty else { throw ValidationError("give --gateway HOST:PORT and its --gateway-key") }
        guard gateways.count == gatewayKeys.count else {
            throw ValidationError(
                "\(gateways.count) --gateway but \(gatewayKeys.count) --gateway-key: give each gateway's key after it")
        }
        for gateway in gateways where Self.hostPort(gateway) == nil {
            throw ValidationError("--gateway \(gateway) must be HOST:PORT")
        }
        _ = try pins()
        guard EngineClient(url: engineURL) != nil else {
            throw ValidationError("--engine-url must be http://HOST:PORT or unix:/ABSOLUTE/PATH")
        }
        guard AttestationKeyAlgorithm(rawValue: ak) != nil else { throw ValidationError("--ak must be ecc or rsa") }
        try tdx.validate()
        for path in [engine, model] where !FileManager.default.isReadableFile(atPath: path) {
            throw ValidationError("\(path): not a readable file")
        }
        if engineCommand, command.isEmpty { throw ValidationError("--engine-command needs the command after --") }
        if engineCommand, let first = command.first, !Self.sameFile(first, engine) {
            throw ValidationError(
                "the engine command must start the measured engine: its first word (\(first)) is not --engine (\(engine))"
            )
        }
        if engineCommand, let url = EngineClient(url: engineURL), url.socketPath == nil,
            !["127.0.0.1", "localhost", "::1"].contains(url.host)
        {
            throw ValidationError("with --engine-command the engine is on loopback: --engine-url must name 127.0.0.1")
        }
        if engineCommand, command.contains(where: { $0.hasPrefix("--model-sha256") }) {
            throw ValidationError("the engine command must not name a model digest: ccworker passes the measured one")
        }
        // Threat: a provider turning on prefix reuse, so a faster first token tells one tenant
        // that its prompt began like another tenant's. The engine's flags are not measured; the
        // worker, which is, refuses the one that would open that channel.
        if engineCommand, command.contains(where: { $0.hasPrefix("--prefix-reuse") }) {
            throw ValidationError(
                "the engine command must not turn on --prefix-reuse: a worker serves many tenants, and reuse reveals shared prompt prefixes by timing"
            )
        }
        guard (providerWallet == nil) == (providerKey == nil) else {
            throw ValidationError("--provider-wallet and --provider-key go together")
        }
        if stakeAccount != nil, providerWallet == nil {
            throw ValidationError("--stake-account needs --provider-wallet and --provider-key")
        }
    }

    /// The pinned gateway keys, one per --gateway.
    func pins() throws -> [GatewayKeyPin] { try gatewayKeys.map(pin) }

    /// A pinned gateway key from --gateway-key: a file (PEM) or the text itself (a fingerprint).
    func pin(_ gatewayKey: String) throws -> GatewayKeyPin {
        let text =
            FileManager.default.fileExists(atPath: gatewayKey)
            ? (try? String(contentsOfFile: gatewayKey, encoding: .utf8)) ?? "" : gatewayKey
        do { return try GatewayKeyPin(text: text) } catch {
            throw ValidationError(
                "--gateway-key: \(error) (give the gateway's gateway.pub or its 64-hex-digit fingerprint)")
        }
    }

    /// The provider identity from --provider-wallet / --provider-key / --stake-account.
    func provider() throws -> GatewayClient.ProviderIdentity? {
        guard let providerWallet, let providerKey else { return nil }
        do {
            let wallet = try TONAddress.parse(providerWallet).address
            let account = try stakeAccount.map { try TONAddress.parse($0).address }
            let text = try String(contentsOfFile: providerKey, encoding: .utf8).trimmingCharacters(
                in: .whitespacesAndNewlines)
            let key: Ed25519PrivateKey
            if let seed = Data(hex: text), seed.count == 32 {
                key = try Ed25519PrivateKey(seed: seed)
            } else {
                key = try Ed25519PrivateKey(pem: text)
            }
            return GatewayClient.ProviderIdentity(wallet: wallet, key: key, stakeAccount: account)
        } catch {
            throw ReportedFailure("ccworker", "provider identity: \(error)", status: 2)
        }
    }

    /// Whether two paths name the same file (after symlinks).
    static func sameFile(_ a: String, _ b: String) -> Bool {
        var sa = stat()
        var sb = stat()
        guard stat(a, &sa) == 0, stat(b, &sb) == 0 else { return false }
        return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino
    }

    static func hostPort(_ gateway: String) -> (String, Int)? {
        guard let colon = gateway.lastIndex(of: ":"), let port = Int(gateway[gateway.index(after: colon)...]) else {
            return nil
        }
        return (String(gateway[..<colon]), port)
    }

    func run() async throws {
        log.bootstrap()
        let logger = Logger(label: "ccworker")
        // Before the TPM is touched: a bad provider identity leaves no measurement behind.
        let provider = try provider()
        var engineClient = EngineClient(url: engineURL)!
        let attestor: any EvidenceSource
        let engineFile = URL(fileURLWithPath: engine).standardizedFileURL
        let modelFile = URL(fileURLWithPath: model).standardizedFileURL
        let supervisor: EngineSupervisor?
        do {
            // The engine ccworker starts is measured as its sealed copy and runs from it; an
            // engine it does not start is measured as a file (and judged as unmeasured).
            let sealed = engineCommand ? try SealedExecutable(copying: engineFile) : nil
            let files = sealed == nil ? [engineFile] : []
            // The model is read once: the digest in the log is the one the engine must load.
            let modelMeasurement = FileMeasurement(path: modelFile.path, sha256: try FileMeasurer.digest(of: modelFile))
            if tdx.tee == "tdx" {
                attestor = try tdx.attestor(files: files, executable: sealed, premeasured: [modelMeasurement])
            } else {
                attestor = try Attestor(
                    tcti: tpm, akAlgorithm: AttestationKeyAlgorithm(rawValue: ak)!, files: files,
                    measurePCR: measurePCR, ekChain: try ekChain(tpmEKChain), executable: sealed,
                    premeasured: [modelMeasurement])
            }
            if let sealed {
                let modelDigest = modelMeasurement.sha256.hex
                supervisor = EngineSupervisor(
                    executable: sealed, arguments: Array(command.dropFirst()),
                    environment: ["CCINFER_MODEL_SHA256": modelDigest], logger: logger)
                logger.info(
                    "engine sealed and measured",
                    metadata: [
                        "ccworker.engine.sha256": "\(sealed.digest.hex)", "ccworker.model.sha256": "\(modelDigest)",
                    ])
            } else {
                supervisor = nil
            }
        } catch let failure as ReportedFailure {
            throw failure
        } catch {
            throw ReportedFailure("ccworker", "\(error)", status: 1)
        }
        if let supervisor, engineClient.socketPath != nil {
            engineClient.expectedPeer = { supervisor.enginePID }
        }
        // Stop the engine with the worker: SIGTERM and SIGINT end both.
        let signalSources = [SIGTERM, SIGINT].map { sig -> any DispatchSourceSignal in
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler {
                logger.notice("stopping", metadata: ["ccworker.signal": "\(sig)"])
                supervisor?.stop()
                Foundation.exit(0)
            }
            source.resume()
            return source
        }
        defer { signalSources.forEach { $0.cancel() } }
        let clients = try zip(gateways, pins()).map { gateway, pinned in
            let (host, port) = Self.hostPort(gateway)!
            var gatewayLogger = logger
            gatewayLogger[metadataKey: "ccworker.gateway"] = "\(gateway)"
            gatewayLogger.info("gateway key pinned", metadata: ["ccworker.gateway.fingerprint": "\(pinned)"])
            return GatewayClient(
                configuration: .init(
                    host: host, port: port, gatewayKey: pinned, workerID: workerID, models: [modelName],
                    provider: provider),
                attestor: attestor, engine: engineClient, logger: gatewayLogger)
        }
        let outcome = await WorkerLoop.run(
            clients: clients, engine: engineClient, supervisor: supervisor, logger: logger)
        supervisor?.stop()
        if let rejected = outcome { throw ReportedFailure("ccworker", rejected.description, status: 1) }
    }
}

/// Waits for the engine, then keeps a connection up to each gateway, reconnecting with backoff,
/// until every gateway has rejected this worker (the first rejection is returned) or the process
/// is stopped. Each gateway challenges and admits on its own: a gateway that goes away costs the
/// requests it was relaying, and the others go on.
enum WorkerLoop {
    static func run(clients: [GatewayClient], engine: EngineClient, supervisor: EngineSupervisor?, logger: Logger)
        async -> WorkerRejected?
    {
        await withTaskGroup(of: WorkerRejected?.self) { group in
            if let supervisor {
                group.addTask {
                    await supervisor.run()
                    return nil
                }
            }
            group.addTask {
                await waitForEngine(engine, supervisor: supervisor, logger: logger)
                return await connectAll(clients, logger: logger)
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }

    /// Waits until the engine answers, and, when ccworker started it, until the process answering
    /// on its port is that engine (not another process holding the port).
    static func waitForEngine(_ engine: EngineClient, supervisor: EngineSupervisor?, logger: Logger) async {
        var waited = 0
        while !Task.isCancelled {
            if await engine.isReady() {
                guard let supervisor, !supervisor.ownsListener(engine) else { return }
                if waited % 10 == 0 {
                    logger.error(
                        "another process than the started engine listens on the engine's address; not attesting",
                        metadata: ["ccworker.engine": "\(engine.address)"])
                }
            }
            if waited % 10 == 0 {
                logger.info("waiting for the engine", metadata: ["ccworker.engine": "\(engine.address)"])
            }
            waited += 1
            try? await Task.sleep(for: .seconds(1))
        }
    }

    /// Every gateway's connection at once; ends when each has ended (the first refusal is returned).
    static func connectAll(_ clients: [GatewayClient], logger: Logger) async -> WorkerRejected? {
        await withTaskGroup(of: WorkerRejected?.self) { group in
            for client in clients {
                var gatewayLogger = logger
                gatewayLogger[metadataKey: "ccworker.gateway"] =
                    "\(client.configuration.host):\(client.configuration.port)"
                group.addTask { await connect(client, logger: gatewayLogger) }
            }
            var first: WorkerRejected?
            for await outcome in group { first = first ?? outcome }
            return first
        }
    }

    /// Keeps a gateway connection up, reconnecting with backoff, until a refusal that cannot pass
    /// unchanged (returned) or cancellation (nil).
    static func connect(_ client: GatewayClient, logger: Logger) async -> WorkerRejected? {
        var delay: Duration = .seconds(1)
        while !Task.isCancelled {
            do {
                try await client.runOnce()
                logger.notice("gateway connection closed; reconnecting")
            } catch let rejected as WorkerRejected {
                logger.error(
                    "rejected", metadata: ["ccworker.reason": "\(rejected.code)", "message": "\(rejected.message)"])
                if !rejected.isRetryable(hasProvider: client.configuration.provider != nil) { return rejected }
            } catch {
                logger.warning("gateway connection failed", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(for: delay)
            delay = min(delay * 2, .seconds(30))
        }
        return nil
    }
}
