import AdmissionCore
import AttestationCore
import AuditLog
import GatewayState
import Crypto
import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import Policy
import ServiceLifecycle
import UnixSignals
import Synchronization
import TDXVerifier
import TPMVerifier
import TONKit
import TONStake

/// Everything `ccgate serve` needs.
public struct GatewayConfiguration: Sendable {
    public var host = "127.0.0.1"
    public var port = 8080
    public var workerHost = "127.0.0.1"
    public var workerPort = 8444
    public var apiKeys: [String] = []
    /// The policy a new data directory starts with (later versions come from the admin API).
    public var policy = PolicyDocument.builtinDefault
    /// Its text, as signed; nil: the built-in default's.
    public var policyText: String?
    /// Its detached signature (`FILE.sig`), required when admin keys are pinned.
    public var policySignature: String?
    /// Where durable state lives: `ccgate.db` (SQLite), `gateway.key`, `admin.token`.
    public var dataDirectory = URL(fileURLWithPath: "data")
    /// A PostgreSQL database shared with other gateways, in place of `ccgate.db`; the data
    /// directory still holds this gateway's key and admin token.
    public var database: PostgresLocation?
    /// How often a gateway on a shared database re-reads the policy history, besides being
    /// notified of each new version.
    public var policySyncInterval: Duration = .seconds(5)
    /// The admin API's address; no port: no admin API.
    public var adminHost = "127.0.0.1"
    public var adminPort: Int?
    /// The admin token; nil: the one in `DATA/admin.token`, made on first start.
    public var adminToken: String?
    /// The secret named API keys are hashed and their rows authenticated under (32 bytes as 64 hex
    /// digits); nil: `DATA/api-keys.secret`, made on first start. Gateways sharing a database
    /// need the same one.
    public var apiKeySecretFile: URL?
    /// `/readyz` also requires an admitted worker for every model the policy names.
    public var readyRequiresWorkers = false
    /// How long usage rows may wait before they are written (a crash loses at most this much).
    public var usageFlushInterval: Duration = .milliseconds(100)
    /// Keys whose signatures make a policy applicable.
    public var adminKeys: [Ed25519PublicKey] = []
    /// Longest time between signed audit checkpoints while entries arrive.
    public var checkpointInterval: Duration = .seconds(60)
    public var timings = WorkerTimings()
    /// DER certificates EK certificate chains may end at: the pinned TPM manufacturer roots, plus
    /// any configured (`--tpm-ek-root`, test PKIs such as swtpm's local CA).
    public var tpmEKRoots = EKRoots.pinnedDER
    /// SHA-256 fingerprints of the roots TDX/SGX chains must end at; Intel's by default.
    public var dcapRoots = PinnedRoots.production
    /// Collateral for TDX/SGX workers whose evidence carries none (an imported cache).
    public var collateralSource: (any CollateralSource)?
    /// Online collateral: fetch what the cache lacks from a PCCS before verifying.
    public var collateralPrefetcher: CollateralPrefetcher?
    /// The clock admission decides by (certificate and collateral windows).
    public var clock: any AttestationClock = SystemClock()
    /// How long a front-door or admin connection may sit idle (or take to send a request head)
    /// before it is closed; responses in progress are not cut.
    public var idleTimeout: Duration = .seconds(30)
    /// The front door's and the admin API's TLS certificate and key (PEM); nil: plain HTTP, which
    /// is refused on a non-loopback address unless `allowPlainHTTP`.
    public var tls: TLSIdentity?
    /// Serve plain HTTP on a non-loopback address (logged as a warning at start).
    public var allowPlainHTTP = false
    /// toncenter v2 endpoints stake is read from (at least two for a policy with a stake rule).
    public var toncenter: [ToncenterEndpoint] = []
    /// How often admitted providers' stake is re-checked; nil: a quarter of the policy's refresh time.
    public var stakeMonitorInterval: Duration?

    public init() {}
}

/// Why a gateway could not start.
public struct GatewayStartError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The gateway: the OpenAI front door, the worker port and the admin API, sharing one registry
/// of admitted workers, the policy in force and one audit log in the data directory's store.
public struct GatewayServer: Sendable {
    public let configuration: GatewayConfiguration
    public let registry = WorkerRegistry()
    public let store: any GatewayStore
    public let audit: AuditTrail
    public let policies: PolicyState
    public let administration: GatewayAdministration
    /// The accepted API keys and their limits.
    public let keyring: ClientKeyring
    /// The usage ledger's writer.
    public let ledger: UsageLedger
    public let keys: KeyAdministration
    public let metrics = GatewayMetrics()
    /// The admin API's token (configured, or read from or made in the data directory).
    public let adminToken: String
    /// The id provider proofs name: the fingerprint (SHA-256) of the gateway's public key.
    public var gatewayID: String { audit.key.publicKey.fingerprint }
    /// The gateway's identity key (public half): workers pin it, receipts verify under it.
    public var gatewayKey: Ed25519PublicKey { audit.key.publicKey }
    let logger: Logger

    /// Opens the data directory: the store, the gateway's signing key, the admin token, and the
    /// policy in force — the latest version of the history, or for a new directory the
    /// configured policy as version 1 (signed, when admin keys are pinned).
    public static func open(configuration: GatewayConfiguration, logger: Logger = Logger(label: "ccgate")) async throws
        -> GatewayServer
    {
        _ = try plainHTTPHost(configuration)
        let data = configuration.dataDirectory
        try FileManager.default.createDirectory(
            at: data, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try GatewayKeys.checkDataDirectory(data)
        let key = try GatewayKeys.signingKey(in: data)
        let store = try openStore(configuration, key: key.publicKey)
        let token = try configuration.adminToken ?? GatewayKeys.adminToken(in: data)
        let audit = AuditTrail(store: store, key: key, clock: configuration.clock)
        let active: ActivePolicy
        let latestStored = try store.policies().last
        try StoredPolicyCheck(store: store, configuration: configuration, gatewayID: key.publicKey.fingerprint)
            .check(latestStored)
        if let latest = latestStored {
            do throws(PolicyLoadErrors) {
                active = ActivePolicy(
                    version: latest.version,
                    document: try PolicyDocument.parse(latest.policy.text, file: "policy version \(latest.version)"),
                    text: latest.policy.text,
                    // Verified by StoredPolicyCheck above when admin keys are pinned (none: no
                    // version can be applied, and the serial is never compared).
                    serial: PolicySignature.serial(of: latest.policy.signature))
            } catch {
                throw GatewayStartError("the stored policy version \(latest.version) no longer loads:\n\(error)")
            }
        } else {
            active = try await seedPolicy(configuration, audit: audit, gatewayID: key.publicKey.fingerprint)
        }
        let lint = active.document.lint
        guard lint.errors.isEmpty else {
            throw GatewayStartError(
                "policy version \(active.version) ('\(active.document.name)') pins too little to admit safely:\n  "
                    + lint.errors.joined(separator: "\n  "))
        }
        for warning in lint.warnings {
            logger.warning("policy in force uses a lab setting", metadata: ["ccgate.policy.warning": "\(warning)"])
        }
        let policies = PolicyState(active)
        let secret = try GatewayKeys.apiKeySecret(file: configuration.apiKeySecretFile, in: data)
        let ledger = UsageLedger(
            store: store, clock: configuration.clock, interval: configuration.usageFlushInterval, secret: secret,
            gateway: key.publicKey.fingerprint)
        let keyring: ClientKeyring
        do {
            keyring = try loadKeys(configuration, store: store, secret: secret, ledger: ledger, logger: logger)
        } catch {
            ledger.close()
            throw error
        }
        await ledger.refreshQuotas(keyring.quotaKeys)
        return GatewayServer(
            configuration: configuration, store: store, audit: audit, policies: policies, adminToken: token,
            keyring: keyring, ledger: ledger, logger: logger)
    }

    /// The keyring: the configured keys, and the named keys of the store, which this gateway's
    /// API key secret must authenticate (a store whose every row fails was written under another
    /// secret: the gateway does not start).
    static func loadKeys(
        _ configuration: GatewayConfiguration, store: any GatewayStore, secret: KeyHashingSecret, ledger: UsageLedger,
        logger: Logger
    ) throws -> ClientKeyring {
        let keyring = try ClientKeyring(
            secret: secret, configKeys: configuration.apiKeys, ledger: ledger,
            revisionsFile: configuration.dataDirectory.appendingPathComponent("api-key-revisions.json"),
            clock: configuration.clock)
        let rows = try store.clientKeys()
        let refused = keyring.load(rows)
        if !rows.isEmpty, refused.count == rows.count {
            throw GatewayStartError(
                "none of the \(rows.count) API key rows in the store is authenticated by this gateway's API key secret: gateways on one database need the same --api-key-secret-file"
            )
        }
        for id in refused {
            logger.error("API key row refused: its MAC does not verify", metadata: ["ccgate.key": "\(id)"])
        }
        return keyring
    }

    /// Records the configured policy as version 1 of an empty history.
    static func seedPolicy(_ configuration: GatewayConfiguration, audit: AuditTrail, gatewayID: String) async throws
        -> ActivePolicy
    {
        guard configuration.policyText != nil || configuration.policy == .builtinDefault else {
            throw GatewayStartError(
                "the initial policy's text is needed for the policy history (GatewayConfiguration.policyText)")
        }
        let text = configuration.policyText ?? PolicyDocument.builtinDefaultText
        // Checked before it is recorded: a seed that cannot be used must not become version 1.
        let lint = configuration.policy.lint
        guard lint.errors.isEmpty else {
            throw GatewayStartError(
                "the initial policy '\(configuration.policy.name)' pins too little to admit safely:\n  "
                    + lint.errors.joined(separator: "\n  "))
        }
        var signer: String?
        if !configuration.adminKeys.isEmpty {
            guard let signature = configuration.policySignature else {
                throw GatewayStartError(
                    "admin keys are pinned, so the initial policy must be signed (ccgate policy sign FILE --key KEY)"
                )
            }
            do throws(PolicySignatureError) {
                let parsed = try PolicySignature.parse(signature)
                signer = try parsed.verify(Data(text.utf8), pinned: configuration.adminKeys).fingerprint
                try parsed.checkApplicable(
                    gatewayID: gatewayID, at: configuration.clock.now(), after: 0)
            } catch { throw GatewayStartError("the initial policy's signature is refused: \(error)") }
        }
        var seed = NewPolicy(
            name: configuration.policy.name, text: text, signature: configuration.policySignature ?? "",
            signer: signer, note: "initial policy")
        // Only into an empty history: gateways started together on one empty database seed once.
        seed.after = 0
        let entry: AuditEntry
        do {
            entry = try await audit.recordPolicy(
                AuditEvent(
                    .policyApplied, actor: "config", decision: .applied,
                    detail: [
                        "name": configuration.policy.name, "sha256": HashAlgorithm.sha256.hash(Data(text.utf8)).hex,
                        "note": "initial policy",
                    ]),
                seed)
        } catch is PolicyVersionConflict {
            throw GatewayStartError(
                "another gateway recorded the initial policy at the same moment: start this one again (it will use that policy)"
            )
        }
        return ActivePolicy(
            version: entry.event.policyVersion ?? 1, document: configuration.policy, text: text,
            serial: PolicySignature.serial(of: configuration.policySignature ?? ""))
    }

    /// The data directory's SQLite file, or the shared PostgreSQL database, with this gateway
    /// registered in it before anything is written (its entries and worker rows name it).
    static func openStore(_ configuration: GatewayConfiguration, key: Ed25519PublicKey) throws -> any GatewayStore {
        let store: any GatewayStore =
            try configuration.database.map { try PostgresStore(location: $0) }
            ?? SQLiteStore(url: configuration.dataDirectory.appendingPathComponent("ccgate.db"))
        try store.registerGateway(key, at: configuration.clock.now())
        return store
    }

    init(
        configuration: GatewayConfiguration, store: any GatewayStore, audit: AuditTrail, policies: PolicyState,
        adminToken: String, keyring: ClientKeyring, ledger: UsageLedger,
        logger: Logger
    ) {
        self.configuration = configuration
        self.store = store
        self.audit = audit
        self.policies = policies
        self.adminToken = adminToken
        self.keyring = keyring
        self.ledger = ledger
        self.logger = logger
        keys = KeyAdministration(trail: audit, keyring: keyring, ledger: ledger, clock: configuration.clock)
        administration = GatewayAdministration(
            trail: audit, policies: policies, registry: registry, adminKeys: configuration.adminKeys,
            clock: configuration.clock,
            afterSync: { [logger] in
                // Keys changed on another gateway, and the tokens it has counted since.
                do {
                    for id in keyring.load(try store.clientKeys()) {
                        logger.warning(
                            "API key row refused: its MAC does not verify", metadata: ["ccgate.key": "\(id)"])
                    }
                } catch {
                    logger.error("the API keys could not be re-read", metadata: ["error": "\(error)"])
                }
                await ledger.refreshQuotas(keyring.quotaKeys)
            })
    }

    /// Runs until cancelled (or, with `signals`, until one arrives). `onReady` receives the bound
    /// ports once all listen (the admin port is 0 without an admin API).
    public func run(
        signals: [UnixSignal] = [.sigterm, .sigint], onReady: @escaping @Sendable (GatewayPorts) -> Void = { _ in }
    )
        async throws
    {
        defer {
            ledger.close()
            audit.close()
        }
        // Connections do not survive a restart: workers attest again.
        try store.clearWorkers()
        try store.replaceAPIKeys(
            source: "config", digests: Set(configuration.apiKeys.map { Data(SHA256Digest.of(Data($0.utf8))).hex }),
            at: configuration.clock.now())
        try await audit.record(
            AuditEvent(
                .gatewayStart, decision: .started, policyVersion: policies.current.version,
                detail: ["policy": policies.current.document.name, "gateway_key": audit.key.publicKey.fingerprint]))
        let stake = StakeGate(endpoints: configuration.toncenter, gatewayID: gatewayID, clock: configuration.clock)
        let coordinator = AdmissionCoordinator(
            policies: policies, clock: configuration.clock, dcapRoots: configuration.dcapRoots,
            collateralSource: configuration.collateralSource ?? configuration.collateralPrefetcher?.cache,
            preparer: configuration.collateralPrefetcher, stake: stake,
            tpmIdentity: TPMIdentityTrust(ekRoots: configuration.tpmEKRoots),
            activationSigner: ActivationSigner(key: audit.key, gatewayID: gatewayID))
        let runner = WorkerSessionRunner(
            coordinator: coordinator, registry: registry, trail: audit, timings: configuration.timings, logger: logger)
        let workers = WorkerServer(runner: runner, logger: logger)
        let publisher = AttestationPublisher(
            key: audit.key, policies: policies, registry: registry, trail: audit, clock: configuration.clock)
        var frontDoor = FrontDoor(registry: registry, publisher: publisher, keyring: keyring, ledger: ledger)
        frontDoor.metrics = metrics
        frontDoor.readiness = Readiness(
            store: store, ledger: ledger, policies: policies, registry: registry, clock: configuration.clock,
            requireWorkers: configuration.readyRequiresWorkers, logger: logger)
        let metrics = self.metrics
        audit.observe { metrics.committed($0, in: $1) }
        let ports = PortRendezvous(admin: configuration.adminPort != nil, onReady)
        let server = try Self.httpServer(configuration, logger: logger)
        let app = Application(
            router: frontDoor.router(),
            server: server,
            configuration: .init(
                address: .hostname(configuration.host, port: configuration.port), serverName: "ccgate"),
            onServerRunning: { channel in ports.api(channel.localAddress?.port ?? 0) },
            logger: logger)
        let adminApp = configuration.adminPort.map { port in
            Application(
                router: AdminAPI(
                    administration: administration, trail: audit, registry: registry, policies: policies,
                    keys: keys, metrics: metrics, ledger: ledger, token: adminToken
                ).router(),
                server: server,
                configuration: .init(
                    address: .hostname(configuration.adminHost, port: port), serverName: "ccgate-admin"),
                onServerRunning: { channel in ports.admin(channel.localAddress?.port ?? 0) },
                logger: logger)
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await workers.run(host: configuration.workerHost, port: configuration.workerPort) {
                    ports.worker($0)
                }
            }
            group.addTask { try await app.runService(gracefulShutdownSignals: signals) }
            if let adminApp { group.addTask { try await adminApp.runService(gracefulShutdownSignals: signals) } }
            // Only a gateway that owns its process's signals (ccgate serve) takes SIGHUP.
            if let tls = configuration.tls, !signals.isEmpty {
                group.addTask {
                    // SIGHUP: read the certificate and key again; open connections keep theirs.
                    for await _ in await UnixSignalsSequence(trapping: .sighup) {
                        do {
                            try tls.reload()
                            logger.notice(
                                "TLS certificate reloaded", metadata: ["ccgate.tls.leaf": "\(tls.leafFingerprint)"])
                        } catch {
                            logger.error(
                                "TLS reload failed; the previous certificate stays", metadata: ["error": "\(error)"])
                        }
                    }
                }
            }
            group.addTask {
                await audit.runCheckpoints(every: configuration.checkpointInterval)
                throw CancellationError()
            }
            group.addTask {
                await administration.followStore(every: configuration.policySyncInterval)
                try await Task.sleep(for: .seconds(1 << 40))
            }
            group.addTask {
                await stake.monitor(
                    registry: registry, policies: policies, evictor: runner.evictor, trail: audit,
                    interval: configuration.stakeMonitorInterval, logger: logger)
                throw CancellationError()
            }
            defer { group.cancelAll() }
            // Whichever ends first (a signal ends the HTTP service) ends the gateway.
            try await group.next()
        }
        _ = try? await audit.checkpoint()
    }
}

extension GatewayServer {
    /// HTTP/1.1 settings of the front door and the admin API.
    ///
    /// Threat: slowloris — connections opened and left idle, or fed a request head a byte at a
    /// time, until the gateway runs out of descriptors. Idle connections, and ones whose request
    /// head does not complete, are closed after the idle timeout; a response being streamed is
    /// never cut by it.
    /// Threat: prompts and keys in plain text on a network. HTTP without TLS is served only on
    /// loopback, or where the operator said so (`allowPlainHTTP`, logged as a warning).
    static func httpServer(_ configuration: GatewayConfiguration, logger: Logger) throws -> HTTPServerBuilder {
        if let tls = configuration.tls { return tls.server(http1(configuration)) }
        let plain = HTTPServerBuilder.http1(configuration: http1(configuration))
        if let host = try plainHTTPHost(configuration) {
            logger.warning(
                "serving plain HTTP on a non-loopback address: prompts and API keys cross the network unencrypted",
                metadata: ["ccgate.host": "\(host)"])
        }
        return plain
    }

    /// The non-loopback address plain HTTP would be served on (nil: none); throws unless the
    /// configuration allows it. Checked when the gateway opens, before anything is recorded.
    static func plainHTTPHost(_ configuration: GatewayConfiguration) throws -> String? {
        guard configuration.tls == nil else { return nil }
        let exposed = [configuration.host] + (configuration.adminPort == nil ? [] : [configuration.adminHost])
        guard let host = exposed.first(where: { !isLoopback($0) }) else { return nil }
        guard configuration.allowPlainHTTP else {
            throw GatewayStartError(
                "refusing plain HTTP on \(host): prompts and API keys would cross the network unencrypted. Give --tls-cert and --tls-key, or --allow-plain-http to serve it anyway"
            )
        }
        return host
    }

    static func http1(_ configuration: GatewayConfiguration) -> HTTP1Channel.Configuration {
        let seconds = configuration.idleTimeout.components
        return HTTP1Channel.Configuration(
            idleTimeout: TimeAmount.nanoseconds(seconds.seconds * 1_000_000_000 + seconds.attoseconds / 1_000_000_000))
    }
}

/// The ports a running gateway listens on.
public struct GatewayPorts: Sendable, Equatable {
    public let api: Int
    public let worker: Int
    /// 0 without an admin API.
    public let admin: Int
}

/// The gateway's own secrets in its data directory.
enum GatewayKeys {
    /// The Ed25519 key that signs audit checkpoints (`gateway.key`, made on first start, with
    /// `gateway.pub` beside it for whoever verifies exports).
    static func signingKey(in data: URL) throws -> Ed25519PrivateKey {
        let keyURL = data.appendingPathComponent("gateway.key")
        if let text = try? String(contentsOf: keyURL, encoding: .utf8) {
            do throws(Ed25519KeyError) { return try Ed25519PrivateKey(pem: text) } catch {
                throw GatewayStartError("\(keyURL.path): \(error)")
            }
        }
        let key = Ed25519PrivateKey.generate()
        try writeSecret(key.pem, to: keyURL)
        try key.publicKey.pem.write(to: data.appendingPathComponent("gateway.pub"), atomically: true, encoding: .utf8)
        return key
    }

    /// The secret API keys are hashed under: `file` when given, else `api-keys.secret` in the
    /// data directory (32 random bytes as hex, made on first start).
    static func apiKeySecret(file: URL?, in data: URL) throws -> KeyHashingSecret {
        let url = file ?? data.appendingPathComponent("api-keys.secret")
        guard file == nil, !FileManager.default.fileExists(atPath: url.path) else {
            do { return try KeyHashingSecret.read(url) } catch { throw GatewayStartError("\(error)") }
        }
        let bytes = SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) }
        try writeSecret(bytes.hex + "\n", to: url)
        return KeyHashingSecret(SymmetricKey(data: bytes))
    }

    /// The admin token (`admin.token`, 32 random bytes as hex, made on first start).
    static func adminToken(in data: URL) throws -> String {
        let url = data.appendingPathComponent("admin.token")
        if let text = try? String(contentsOf: url, encoding: .utf8) {
            let token = text.trimmingCharacters(in: .whitespacesAndNewlines)
            guard token.count >= 16 else {
                throw GatewayStartError("\(url.path): the admin token is shorter than 16 characters")
            }
            return token
        }
        let token = SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) }.hex
        try writeSecret(token + "\n", to: url)
        return token
    }

    /// Threat: a secret readable by others for the moment between writing and chmod. The file
    /// is created with mode 0600 by `open` itself (never over an existing file), written and
    /// synced.
    static func writeSecret(_ text: String, to url: URL) throws {
        let fd = open(url.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw GatewayStartError("\(url.path): cannot create: \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { break }
            offset += n
        }
        guard offset == bytes.count, fsync(fd) == 0 else {
            let reason = String(cString: strerror(errno))
            // A partial secret must not be found (and trusted) by the next start.
            unlink(url.path)
            throw GatewayStartError("\(url.path): cannot write: \(reason)")
        }
    }

    /// Threat: a data directory others can read (the gateway key, the admin token) or write (the
    /// state). It must be owned by this user with no group or other access; checked at every start.
    static func checkDataDirectory(_ url: URL) throws {
        var info = stat()
        guard stat(url.path, &info) == 0 else { throw GatewayStartError("\(url.path): cannot stat") }
        guard info.st_uid == getuid() else {
            throw GatewayStartError("\(url.path) is owned by uid \(info.st_uid), not by this user (\(getuid()))")
        }
        guard info.st_mode & 0o077 == 0 else {
            throw GatewayStartError(
                "\(url.path) has mode \(String(info.st_mode & 0o777, radix: 8)): the data directory must not be open to group or others (chmod 700 \(url.path))"
            )
        }
    }
}

/// Calls back once both ports are known.
final class PortRendezvous: Sendable {
    private struct State {
        var api: Int?
        var worker: Int?
        var admin: Int?
        var fired = false
    }
    private let state: Mutex<State>
    private let callback: @Sendable (GatewayPorts) -> Void
    init(admin: Bool, _ callback: @escaping @Sendable (GatewayPorts) -> Void) {
        self.callback = callback
        state = Mutex(State(admin: admin ? nil : 0))
    }
    func api(_ port: Int) { update { $0.api = port } }
    func worker(_ port: Int) { update { $0.worker = port } }
    func admin(_ port: Int) { update { $0.admin = port } }
    private func update(_ change: (inout State) -> Void) {
        let ready: GatewayPorts? = state.withLock { s in
            change(&s)
            guard !s.fired, let a = s.api, let w = s.worker, let m = s.admin else { return nil }
            s.fired = true
            return GatewayPorts(api: a, worker: w, admin: m)
        }
        if let ready { callback(ready) }
    }
}

/// Re-checks, at every start, the policy the data directory says is in force.
///
/// Threat: a writer of the data directory who edits the `policies` table to put a weaker policy
/// in force at the next start — by editing the latest row, or by deleting the newest rows so
/// that an older one becomes the latest. The latest row must be the latest version the audit
/// chain recorded, its text must hash to the digest recorded there, and, when admin keys are
/// pinned, its signature must verify under them. Fails closed: the gateway does not start.
/// Only admin keys kept outside the data directory protect against a writer who also rewrites
/// the audit chain (the gateway's own key lives in that directory).
struct StoredPolicyCheck {
    let store: any GatewayStore
    let configuration: GatewayConfiguration
    let gatewayID: String

    /// `record`: the latest `policies` row (nil: the table is empty).
    func check(_ record: PolicyRecord?) throws {
        let recorded = try recordedPolicies()
        guard let record else {
            if let newest = recorded.keys.max() {
                throw GatewayStartError(
                    "the audit log records policy version \(newest) but the policies table is empty: the data directory was edited; restore it from a backup"
                )
            }
            return
        }
        if let newest = recorded.keys.max(), newest > record.version {
            throw GatewayStartError(
                "the audit log records policy version \(newest) but the newest stored policy is version \(record.version): policy versions were removed from the data directory; restore it from a backup"
            )
        }
        guard let digest = recorded[record.version] else {
            throw GatewayStartError(
                "no audit entry records policy version \(record.version): the data directory was edited or is incomplete; restore it from a backup"
            )
        }
        guard digest == record.sha256 else {
            throw GatewayStartError(
                "policy version \(record.version) in the data directory (sha256 \(record.sha256.prefix(16))…) is not the policy its audit entry records (sha256 \(digest.prefix(16))…): the policies table was edited; restore the data directory from a backup"
            )
        }
        try checkSignature(record)
        try checkSerialOrder(record)
    }

    /// Threat: a writer of the store who re-inserts an older signed version as the newest (with
    /// its audit entry, which needs no key): its signature is genuine, but its serial is below a
    /// version applied after it. The newest version must carry the highest serial of the
    /// history's signatures that verify under the pinned admin keys.
    func checkSerialOrder(_ record: PolicyRecord) throws {
        guard !configuration.adminKeys.isEmpty else { return }
        func verifiedSerial(_ r: PolicyRecord) -> Int64? {
            guard !r.policy.signature.isEmpty, let signature = try? PolicySignature.parse(r.policy.signature),
                (try? signature.verify(Data(r.policy.text.utf8), pinned: configuration.adminKeys)) != nil
            else { return nil }
            return signature.serial
        }
        let newest = verifiedSerial(record) ?? 0
        for earlier in try store.policies() where earlier.version < record.version {
            if let serial = verifiedSerial(earlier), serial > newest {
                throw GatewayStartError(
                    "policy version \(record.version) in force carries signature serial \(newest), below version \(earlier.version)'s \(serial): an older policy was put back in the store; restore it from a backup"
                )
            }
        }
    }

    func checkSignature(_ record: PolicyRecord) throws {
        guard !configuration.adminKeys.isEmpty else { return }
        guard !record.policy.signature.isEmpty else {
            // The initial policy seeded from the configuration may be unsigned only while the
            // configuration still names exactly that text.
            let seeded = configuration.policyText ?? PolicyDocument.builtinDefaultText
            guard record.actor == "config", record.policy.text == seeded else {
                throw GatewayStartError(
                    "policy version \(record.version) in force is unsigned, and admin keys are pinned: the data directory was edited"
                )
            }
            return
        }
        do throws(PolicySignatureError) {
            let signature = try PolicySignature.parse(record.policy.signature)
            _ = try signature.verify(Data(record.policy.text.utf8), pinned: configuration.adminKeys)
            if signature.gateway != "*", signature.gateway != gatewayID {
                throw .invalid("the signature is for another gateway")
            }
        } catch {
            throw GatewayStartError(
                "policy version \(record.version) in force fails its signature check under the pinned admin keys: \(error)"
            )
        }
    }

    /// Version → recorded digest, from every `policy-applied` entry of the chain.
    func recordedPolicies() throws -> [Int: String] {
        var found = [Int: String]()
        try store.entries(AuditQuery()) { entry in
            if entry.event.event == AuditEventKind.policyApplied.rawValue, let version = entry.event.policyVersion {
                found[version] = entry.event.detail["sha256"] ?? ""
            }
            return true
        }
        return found
    }
}
