import AdmissionCore
import ArgumentParser
import AttestationCore
import CommandLineSupport
import Foundation
import Gateway
import GatewayState
import Logging
import ServiceSupport
import Policy
import TONKit
import TONStake

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the gateway: the OpenAI-compatible API and the worker port.",
        discussion: """
            Workers dial the worker port, are challenged, attest, and are admitted under the policy in force;
            developers call the API with one of the API keys. Every admission, rejection, re-attestation, eviction,
            key issuance, policy change and admin login is appended to the audit log in the data directory
            (SQLite, hash-chained, with a checkpoint signed by the gateway key at least every minute).

            The data directory holds ccgate.db (policies, audit log, workers, API keys), gateway.key and gateway.pub
            (the checkpoint signing key, made on first start) and admin.token (the admin API token, likewise).
            With --database, the state that ccgate.db would hold is in PostgreSQL instead, shared with every gateway \
            that names the same database: one audit chain (each entry names the gateway that wrote it, each gateway \
            signs its own checkpoints), one policy history. Its schema is created on an empty database; an older one \
            is migrated by `ccgate db migrate` (README, "Several gateways").
            --policy seeds a new data directory as policy version 1; after that the stored history is in force and
            changes go through `ccgate policy apply`, which needs a signature by a key given with --admin-key.

            A policy with a `stake` section admits a worker only with a provider proof (ccworker --provider-wallet, \
            --provider-key) and while the provider's stake, read from every --toncenter endpoint (at least two), covers \
            the minimum; the stake is re-read every stake.refresh_seconds and a withdrawal evicts the provider's workers \
            (docs/STAKE.md).

            With --tls-cert and --tls-key the API and the admin API speak TLS 1.2 or 1.3; `kill -HUP` reads both \
            files again (connections already open keep their certificate, so streams in progress finish). Without \
            them, plain HTTP is served only on a loopback address unless --allow-plain-http is given. Workers \
            authenticate the gateway by its identity key (DATA_DIR/gateway.pub, `ccworker run --gateway-key`), \
            whatever the transport.

            Examples:
              ccgate serve --api-key-file keys.txt --policy Policies/default.yaml --admin-key admin.pub
              ccgate serve --api-key-file keys.txt --policy staked.yaml --admin-key admin.pub \
                --toncenter https://toncenter.com --toncenter-key-file toncenter.key --toncenter https://ton.example.net
              ccgate serve --host 0.0.0.0 --tls-cert gw.crt --tls-key gw.key --api-key-file keys.txt
              ccgate serve --port 0 --worker-port 0 --admin-port 0 --api-key demo-key --data-dir /tmp/ccgate
              CCGATE_DATABASE_PASSWORD=… ccgate serve --database postgres://ccgate@db.internal/ccgate?sslmode=verify-full \
                --data-dir gw1 --api-key-file keys.txt
            """)

    @Option(help: ArgumentHelp("Address the API listens on.", valueName: "HOST")) var host = "127.0.0.1"
    @Option(
        help: ArgumentHelp(
            "TLS certificate chain (PEM) for the API and the admin API; read again on SIGHUP.", valueName: "PEM"))
    var tlsCert: String?
    @Option(help: ArgumentHelp("The TLS certificate's private key (PEM).", valueName: "PEM")) var tlsKey: String?
    @Flag(help: "Serve plain HTTP on a non-loopback address (prompts and API keys cross the network unencrypted).")
    var allowPlainHttp = false
    @Option(help: ArgumentHelp("API port (0: any free port).", valueName: "N")) var port = 8080
    @Option(help: ArgumentHelp("Address the worker port listens on.", valueName: "HOST")) var workerHost = "127.0.0.1"
    @Option(help: ArgumentHelp("Worker port (0: any free port).", valueName: "N")) var workerPort = 8444
    @Option(name: .customLong("api-key"), help: ArgumentHelp("An accepted API key; repeatable.", valueName: "KEY"))
    var apiKeys: [String] = []
    @Option(help: ArgumentHelp("A file with one API key per line.", valueName: "FILE")) var apiKeyFile: String?
    @Option(
        help: ArgumentHelp(
            "The secret named API keys are hashed under (64 hex digits; default DIR/api-keys.secret, made on first start). Gateways sharing a --database need the same one.",
            valueName: "FILE"))
    var apiKeySecretFile: String?
    @Option(
        help: ArgumentHelp(
            "The policy a new data directory starts with (YAML; FILE.sig beside it is its signature).",
            valueName: "FILE"))
    var policy = "Policies/default.yaml"
    @Option(help: ArgumentHelp("Durable state: ccgate.db, gateway.key, admin.token.", valueName: "DIR")) var dataDir =
        "data"
    @OptionGroup(title: "Shared state (several gateways; in place of DIR/ccgate.db)") var db: DatabaseOptions
    @OptionGroup(title: "Logs") var log: LogOptions
    @Option(
        help: ArgumentHelp(
            "A YAML file of settings: serve's long option names as keys (port: 8443, toncenter: [URL, URL], allow-plain-http: true). Flags given here override it.",
            valueName: "FILE"))
    var config: String?
    @Flag(help: "Print the settings in force (file and flags together, defaults included) as YAML, and exit.")
    var printConfig = false
    @Flag(help: "/readyz also requires an admitted worker for every model the policy names.")
    var readyRequiresWorkers = false
    @Option(help: ArgumentHelp("Address the admin API listens on.", valueName: "HOST")) var adminHost = "127.0.0.1"
    @Option(help: ArgumentHelp("Admin API port (0: any free port; -1: no admin API).", valueName: "N")) var adminPort =
        8445
    @Option(help: ArgumentHelp("The admin token file (default DIR/admin.token, made if missing).", valueName: "FILE"))
    var adminTokenFile: String?
    @Option(
        name: .customLong("admin-key"),
        help: ArgumentHelp(
            "An admin public key (PEM, Ed25519) whose signature makes a policy applicable; repeatable.",
            valueName: "PEM"))
    var adminKeys: [String] = []
    @Option(help: ArgumentHelp("Longest time between signed audit checkpoints.", valueName: "S"))
    var checkpointSeconds = 60
    @Option(
        help: ArgumentHelp(
            "Seconds a front-door or admin connection may stay idle, or take to send a request head, before it is closed.",
            valueName: "S"))
    var idleTimeout = 30
    @Option(help: ArgumentHelp("Seconds between re-attestations of each worker.", valueName: "S")) var reattestSeconds =
        60
    @Option(help: ArgumentHelp("Write 'api=PORT worker=PORT' here once listening.", valueName: "FILE")) var portsFile:
        String?
    @Option(
        help: ArgumentHelp(
            "Intel collateral cache for TDX/SGX workers whose evidence carries none (see `ccgate collateral import`).",
            valueName: "DIR"))
    var collateralDir: String?
    @Option(
        help: ArgumentHelp(
            "Online collateral: a PCCS (or Intel PCS) base URL, e.g. https://pccs.example:8081; missing items are fetched into the collateral cache.",
            valueName: "URL"))
    var pccsURL: String?
    @Option(help: ArgumentHelp("Where the root CA CRL is, when the PCCS does not serve it.", valueName: "URL"))
    var rootCRLURL: String?
    @Option(
        name: .customLong("dcap-root"),
        help: ArgumentHelp(
            "A PEM root replacing the pinned Intel SGX Root CA for DCAP chains; repeatable (test PKIs).",
            valueName: "PEM"))
    var dcapRoots: [String] = []
    @Option(
        name: .customLong("tpm-ek-root"),
        help: ArgumentHelp(
            "A PEM CA certificate EK certificate chains may end at, beside the pinned TPM manufacturer roots; repeatable (swtpm's local CA in tests).",
            valueName: "PEM"))
    var tpmEKRootFiles: [String] = []

    @Option(
        name: .customLong("toncenter"),
        help: ArgumentHelp(
            "A toncenter v2 endpoint stake is read from (base URL); repeatable, two or more for a stake rule.",
            valueName: "URL"))
    var toncenter: [String] = []
    @Option(
        name: .customLong("toncenter-key-file"),
        help: ArgumentHelp(
            "The API key of the --toncenter endpoint in the same position ('-': none); repeatable.", valueName: "FILE"))
    var toncenterKeyFiles: [String] = []
    @Option(help: ArgumentHelp("Requests per second each toncenter endpoint allows.", valueName: "N"))
    var toncenterRps = 1.0

    func validate() throws {
        guard toncenterKeyFiles.count <= toncenter.count else {
            throw ValidationError("more --toncenter-key-file than --toncenter")
        }
        guard toncenterRps > 0, toncenterRps <= 1000 else {
            throw ValidationError("--toncenter-rps must be more than 0 and at most 1000")
        }
        guard (0...65535).contains(port), (0...65535).contains(workerPort) else {
            throw ValidationError("ports are 0-65535")
        }
        guard (1...86400).contains(reattestSeconds) else { throw ValidationError("--reattest-seconds must be 1-86400") }
        guard (1...3600).contains(idleTimeout) else { throw ValidationError("--idle-timeout must be 1-3600") }
        guard (-1...65535).contains(adminPort) else { throw ValidationError("--admin-port is -1 (none) or 0-65535") }
        guard (1...3600).contains(checkpointSeconds) else {
            throw ValidationError("--checkpoint-seconds must be 1-3600")
        }
    }

    func run() async throws {
        let arguments = Array(CommandLine.arguments.drop { $0 != "serve" }.dropFirst())
        let command = try merged(arguments: arguments)
        if command.printConfig {
            print(command.printedConfig, terminator: "")
            return
        }
        try await command.serve()
    }

    func serve() async throws {
        log.bootstrap()
        var keys = apiKeys
        if let apiKeyFile {
            guard let text = try? String(contentsOfFile: apiKeyFile, encoding: .utf8) else {
                throw failure("\(apiKeyFile): cannot read")
            }
            keys += text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter {
                !$0.isEmpty && !$0.hasPrefix("#")
            }
        }
        guard !keys.isEmpty || adminPort >= 0 else {
            throw failure(
                "no API keys and no admin API to issue named ones: give --api-key KEY, --api-key-file FILE, or an --admin-port for `ccgate keys create`"
            )
        }
        var configuration = GatewayConfiguration()
        configuration.host = host
        configuration.port = port
        configuration.workerHost = workerHost
        configuration.workerPort = workerPort
        configuration.apiKeys = keys
        configuration.apiKeySecretFile = apiKeySecretFile.map { URL(fileURLWithPath: $0) }
        configuration.readyRequiresWorkers = readyRequiresWorkers
        do {
            configuration.policy = try PolicyDocument.load(contentsOf: URL(fileURLWithPath: policy))
            configuration.policyText = try String(contentsOfFile: policy, encoding: .utf8)
        } catch {
            throw failure("policy \(policy) is invalid:\n\(error)")
        }
        configuration.policySignature = try? String(contentsOfFile: policy + ".sig", encoding: .utf8)
        configuration.dataDirectory = URL(fileURLWithPath: dataDir)
        configuration.database = try db.location()
        configuration.adminHost = adminHost
        configuration.adminPort = adminPort < 0 ? nil : adminPort
        if let adminTokenFile {
            guard
                let token = try? String(contentsOfFile: adminTokenFile, encoding: .utf8).trimmingCharacters(
                    in: .whitespacesAndNewlines),
                token.count >= 16
            else { throw failure("\(adminTokenFile): cannot read an admin token of at least 16 characters") }
            configuration.adminToken = token
        }
        for path in adminKeys {
            do {
                configuration.adminKeys.append(
                    try Ed25519PublicKey(text: try String(contentsOfFile: path, encoding: .utf8)))
            } catch {
                throw failure("--admin-key \(path): \(error)")
            }
        }
        for (index, text) in toncenter.enumerated() {
            guard let base = URL(string: text), base.scheme == "https" || base.scheme == "http", let host = base.host
            else {
                throw failure("--toncenter \(text) is not an http(s) URL")
            }
            // Threat: a network in the middle answering stake reads for a plain-HTTP endpoint.
            guard base.scheme == "https" || ["127.0.0.1", "localhost", "::1", "[::1]"].contains(host) else {
                throw failure("--toncenter \(text): stake is read over https only (plain http only on loopback)")
            }
            var key: String?
            if index < toncenterKeyFiles.count, toncenterKeyFiles[index] != "-" {
                guard
                    let k = try? String(contentsOfFile: toncenterKeyFiles[index], encoding: .utf8).trimmingCharacters(
                        in: .whitespacesAndNewlines),
                    !k.isEmpty
                else { throw failure("--toncenter-key-file \(toncenterKeyFiles[index]): cannot read an API key") }
                key = k
            }
            configuration.toncenter.append(ToncenterEndpoint(base: base, apiKey: key, requestsPerSecond: toncenterRps))
        }
        // Everything the gateway says from here on is a log event (`--log-format`).
        let logger = Logger(label: "ccgate")
        if configuration.policy.stake.minimumNanotons != nil, configuration.toncenter.count < 2 {
            logger.warning(
                "the policy requires a TON stake but fewer than two --toncenter endpoints are given: every worker will be refused (stake.unknown)"
            )
        }
        configuration.checkpointInterval = .seconds(checkpointSeconds)
        configuration.timings = WorkerTimings(reattestInterval: .seconds(reattestSeconds))
        configuration.idleTimeout = .seconds(idleTimeout)
        configuration.allowPlainHTTP = allowPlainHttp
        switch (tlsCert, tlsKey) {
        case (let cert?, let key?):
            do { configuration.tls = try TLSIdentity(certificatePath: cert, keyPath: key) } catch {
                throw failure("\(error)")
            }
        case (nil, nil): break
        default: throw failure("--tls-cert and --tls-key go together")
        }
        if !dcapRoots.isEmpty { configuration.dcapRoots = try dcapRootFingerprints(dcapRoots) }
        configuration.tpmEKRoots = try tpmEKRoots(tpmEKRootFiles)
        if let pccsURL {
            guard let base = URL(string: pccsURL), base.scheme == "https" || base.scheme == "http" else {
                throw failure("--pccs-url must be an http(s) URL")
            }
            let directory = collateralDir.map { URL(fileURLWithPath: $0) } ?? CollateralCache.defaultDirectory
            do {
                let cache = try CollateralCache(directory: directory, mode: "online")
                configuration.collateralPrefetcher = CollateralPrefetcher(
                    cache: cache, client: PCCSClient(base: base, rootCRL: rootCRLURL.flatMap(URL.init(string:))))
            } catch { throw failure("\(error)") }
        } else if let collateralDir {
            do {
                configuration.collateralSource = try CollateralCache(
                    directory: URL(fileURLWithPath: collateralDir), mode: "offline")
            } catch {
                throw failure("\(error)")
            }
        }
        let settings = configuration
        let portsFile = self.portsFile
        do {
            let server: GatewayServer
            do { server = try await GatewayServer.open(configuration: settings) } catch {
                throw ReportedFailure("ccgate", "\(error)", status: 2)
            }
            let active = server.policies.current
            if active.text != settings.policyText {
                logger.notice(
                    "policy version \(active.version) ('\(active.document.name)') from \(dataDir) is in force; --policy seeds only a new data directory (change policy with `ccgate policy apply`)"
                )
            }
            let scheme = settings.tls == nil ? "http" : "https"
            logger.notice(
                "gateway key \(server.gatewayKey.fingerprint) (\(dataDir)/gateway.pub)",
                metadata: ["ccgate.gateway_key": "\(server.gatewayKey.fingerprint)"])
            try await server.run { ports in
                let admin = ports.admin > 0 ? ", admin API \(scheme)://\(settings.adminHost):\(ports.admin)" : ""
                logger.notice(
                    "API on \(scheme)://\(settings.host):\(ports.api), worker port \(settings.workerHost):\(ports.worker)\(admin), policy version \(active.version) '\(active.document.name)'"
                )
                if let portsFile {
                    try? Data("api=\(ports.api) worker=\(ports.worker) admin=\(ports.admin)\n".utf8).write(
                        to: URL(fileURLWithPath: portsFile), options: .atomic)
                }
            }
        } catch let reported as ReportedFailure {
            throw reported
        } catch {
            throw failure("\(error)", status: 1)
        }
    }
}
