import ArgumentParser
import AttestationCore
import CommandLineSupport
import Foundation
import Gateway
import Hummingbird
import Logging
import Policy

struct ClientCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "client", abstract: "Use a gateway as a developer who verifies what serves them.",
        subcommands: [Proxy.self])

    struct Proxy: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "A verifying, end-to-end encrypting OpenAI API on loopback in front of a gateway.",
            discussion: """
                Point any OpenAI client at it (base URL http://127.0.0.1:PORT/v1). It fetches the gateway's \
                /v1/attestation with every worker's evidence, verifies each worker here with ccgate's own verifiers \
                under YOUR policy (--policy, which may be stricter than the gateway's: workers it refuses are never \
                used), and sends each request sealed with HPKE to the chosen worker's attested key: the gateway \
                routes ciphertext and never holds the prompt or the answer. Each answer must open in order, end with \
                its final frame, and carry a receipt signed by the pinned gateway key (--gateway-key) over exactly \
                the bytes received; otherwise a plain answer is refused (502) and a stream ends with an error event. \
                The worker list is verified again every --refresh-seconds. TPM workers are used only with \
                --trust-gateway-activation: their AK is anchored by a credential activation the gateway ran and \
                signed, so a gateway that lies about it could have prompts sealed to itself; TDX evidence needs no \
                such statement.

                The listening address must be loopback: what travels between the local client and this proxy is \
                plaintext.

                Examples:
                  ccgate client proxy --gateway https://gw.example:8080 --gateway-key gateway.pub \\
                    --policy client-policy.yaml --api-key-file key.txt --listen 127.0.0.1:8090
                  OPENAI_BASE_URL=http://127.0.0.1:8090/v1 OPENAI_API_KEY=unused python3 app.py
                """)

        @Option(help: ArgumentHelp("The gateway's API base URL.", valueName: "URL")) var gateway: String
        @Option(help: ArgumentHelp("The gateway's identity key (its gateway.pub).", valueName: "PEM"))
        var gatewayKey: String
        @Option(help: ArgumentHelp("The client's policy (YAML) workers must meet.", valueName: "FILE")) var policy:
            String
        @Option(help: ArgumentHelp("Where to listen (loopback only).", valueName: "HOST:PORT")) var listen =
            "127.0.0.1:8090"
        @Option(help: ArgumentHelp("A file holding the gateway API key.", valueName: "FILE")) var apiKeyFile: String?
        @Option(help: ArgumentHelp("A private CA the gateway's TLS certificate chains to.", valueName: "PEM"))
        var ca: String?
        @Option(
            name: .customLong("tpm-ek-root"),
            help: ArgumentHelp("An EK CA beside the pinned TPM manufacturer roots; repeatable.", valueName: "PEM"))
        var tpmEKRootFiles: [String] = []
        @Option(name: .customLong("dcap-root"), help: ArgumentHelp("A DCAP root replacing Intel's.", valueName: "PEM"))
        var dcapRoots: [String] = []
        @Option(
            help: ArgumentHelp(
                "Use only workers whose evidence proves at least this: tdx, sgx, tpm-measured-boot or tpm-agent-log.",
                valueName: "TIER"))
        var minTier: String?
        @Option(help: ArgumentHelp("Seconds between verifications of the worker list.", valueName: "S"))
        var refreshSeconds = 30
        @Option(help: ArgumentHelp("Write `port=N` here once listening.", valueName: "FILE")) var portsFile: String?
        @Flag(
            help:
                "Believe the gateway's credential-activation records for TPM workers (otherwise only evidence that needs no gateway statement, e.g. TDX, is used)."
        )
        var trustGatewayActivation = false
        @Flag(
            help: "Talk to a non-loopback gateway over plain HTTP (its API key and answers cross the network in clear)."
        )
        var allowPlainHttp = false

        func run() async throws {
            guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]) else {
                throw failure("--listen must be HOST:PORT")
            }
            let host = String(listen[..<colon])
            guard ["127.0.0.1", "::1", "localhost"].contains(host) else {
                throw failure("--listen must be a loopback address: the local side is plaintext")
            }
            guard let base = URL(string: gateway.hasSuffix("/") ? String(gateway.dropLast()) : gateway),
                base.scheme == "https" || base.scheme == "http"
            else { throw failure("--gateway must be an http(s) URL") }
            if base.scheme == "http", !["127.0.0.1", "localhost", "::1", "[::1]"].contains(base.host ?? ""),
                !allowPlainHttp
            {
                throw failure("--gateway \(gateway): plain HTTP to another machine (use https, or --allow-plain-http)")
            }
            let document: PolicyDocument
            do { document = try PolicyDocument.load(contentsOf: URL(fileURLWithPath: policy)) } catch {
                throw failure("policy \(policy) is invalid:\n\(error)")
            }
            var configuration = ClientProxy.Configuration(
                gateway: base, gatewayKey: try publicKeys([gatewayKey])[0], policy: document)
            if let apiKeyFile {
                guard let key = try? String(contentsOfFile: apiKeyFile, encoding: .utf8) else {
                    throw failure("\(apiKeyFile): cannot read")
                }
                configuration.apiKey = key.trimmingCharacters(in: .whitespacesAndNewlines)
            }
            configuration.caFile = ca
            configuration.tpmEKRoots = try tpmEKRoots(tpmEKRootFiles)
            if !dcapRoots.isEmpty { configuration.dcapRoots = try dcapRootFingerprints(dcapRoots) }
            configuration.refresh = .seconds(max(refreshSeconds, 1))
            configuration.trustGatewayActivation = trustGatewayActivation
            if let minTier {
                guard let tier = AssuranceTier(rawValue: minTier) else {
                    throw failure("--min-tier must be tdx, sgx, tpm-measured-boot or tpm-agent-log")
                }
                configuration.minimumTier = tier
            }
            var logger = Logger(label: "ccgate.client")
            logger.logLevel = .info
            let proxy: ClientProxy
            do { proxy = try ClientProxy(configuration: configuration, logger: logger) } catch {
                throw failure("\(error)")
            }
            do { try await proxy.refresh() } catch {
                await proxy.shutdown()
                throw failure("the gateway: \(error)", status: 1)
            }
            report(proxy)
            let portsFile = self.portsFile
            let app = Application(
                router: proxy.router(), configuration: .init(address: .hostname(host, port: port)),
                onServerRunning: { channel in
                    let bound = channel.localAddress?.port ?? port
                    FileHandle.standardError.write(Data("ccgate: client proxy on http://\(host):\(bound)/v1\n".utf8))
                    if let portsFile {
                        try? Data("port=\(bound)\n".utf8).write(to: URL(fileURLWithPath: portsFile), options: .atomic)
                    }
                }, logger: logger)
            let (interval, log) = (configuration.refresh, logger)
            defer { Task { await proxy.shutdown() } }
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await app.runService() }
                group.addTask {
                    while true {
                        try await Task.sleep(for: interval)
                        do { try await proxy.refresh() } catch {
                            log.error("refresh failed; the last verified list stays", metadata: ["error": "\(error)"])
                        }
                    }
                }
                defer { group.cancelAll() }
                try await group.next()
            }
        }

        func report(_ proxy: ClientProxy) {
            var lines = [String]()
            for (model, workers) in proxy.verified.sorted(by: { $0.key < $1.key }) {
                lines.append("  \(model): " + workers.map { "\($0.worker) (\($0.tier))" }.joined(separator: ", "))
            }
            for (worker, reason) in proxy.refused.sorted(by: { $0.key < $1.key }) {
                lines.append("  refused \(worker): \(reason)")
            }
            FileHandle.standardError.write(
                Data(("ccgate: verified under \(policy):\n" + lines.joined(separator: "\n") + "\n").utf8))
        }
    }
}
