import AttestationCore
import AuditLog
import Foundation
import Hummingbird
import Logging
import NIOCore
import Policy
import ServiceLifecycle
import UnixSignals
import Synchronization
import TDXVerifier

/// Everything `ccgate serve` needs.
public struct GatewayConfiguration: Sendable {
    public var host = "127.0.0.1"
    public var port = 8080
    public var workerHost = "127.0.0.1"
    public var workerPort = 8444
    public var apiKeys: [String] = []
    public var policy = PolicyDocument.builtinDefault
    public var auditPath: URL?
    public var timings = WorkerTimings()
    /// SHA-256 fingerprints of the roots TDX/SGX chains must end at; Intel's by default.
    public var dcapRoots = PinnedRoots.production
    /// Collateral for TDX/SGX workers whose evidence carries none (an imported cache).
    public var collateralSource: (any CollateralSource)?
    /// Online collateral: fetch what the cache lacks from a PCCS before verifying.
    public var collateralPrefetcher: CollateralPrefetcher?
    /// The clock admission decides by (certificate and collateral windows).
    public var clock: any AttestationClock = SystemClock()

    public init() {}
}

/// The gateway: the OpenAI front door and the worker port, sharing one registry of admitted
/// workers and one audit log.
public struct GatewayServer: Sendable {
    public let configuration: GatewayConfiguration
    public let registry = WorkerRegistry()
    let logger: Logger

    public init(configuration: GatewayConfiguration, logger: Logger = Logger(label: "ccgate")) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Runs until cancelled (or, with `signals`, until one arrives). `onReady` receives the bound
    /// API and worker ports once both listen.
    public func run(signals: [UnixSignal] = [.sigterm, .sigint], onReady: @escaping @Sendable (Int, Int) -> Void = { _, _ in }) async throws {
        let audit = try configuration.auditPath.map { try AuditFile(url: $0) }
        try audit?.append(AuditEvent(event: "gateway-start", detail: ["policy": configuration.policy.name]))
        let workers = WorkerServer(registry: registry, admission: AdmissionService(
                policy: configuration.policy, clock: configuration.clock, dcapRoots: configuration.dcapRoots,
                collateralSource: configuration.collateralSource, prefetcher: configuration.collateralPrefetcher),
            audit: audit,
                                   timings: configuration.timings, logger: logger)
        let frontDoor = FrontDoor(registry: registry, apiKeys: configuration.apiKeys)
        let ports = PortRendezvous(onReady)
        let app = Application(
            router: frontDoor.router(),
            configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "ccgate"),
            onServerRunning: { channel in ports.api(channel.localAddress?.port ?? 0) },
            logger: logger)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await workers.run(host: configuration.workerHost, port: configuration.workerPort) { ports.worker($0) } }
            group.addTask { try await app.runService(gracefulShutdownSignals: signals) }
            defer { group.cancelAll() }
            // Whichever ends first (a signal ends the HTTP service) ends the gateway.
            try await group.next()
        }
    }
}

/// Calls back once both ports are known.
final class PortRendezvous: Sendable {
    private let state = Mutex<(api: Int?, worker: Int?, fired: Bool)>((nil, nil, false))
    private let callback: @Sendable (Int, Int) -> Void
    init(_ callback: @escaping @Sendable (Int, Int) -> Void) { self.callback = callback }
    func api(_ port: Int) { update { $0.api = port } }
    func worker(_ port: Int) { update { $0.worker = port } }
    private func update(_ change: (inout (api: Int?, worker: Int?, fired: Bool)) -> Void) {
        let ready: (Int, Int)? = state.withLock { s in
            change(&s)
            guard !s.fired, let a = s.api, let w = s.worker else { return nil }
            s.fired = true
            return (a, w)
        }
        if let (a, w) = ready { callback(a, w) }
    }
}
