import Crypto
import Foundation
import Logging
import NIOCore
import NIOPosix
import Sealing
import Synchronization
import TONKit
import TONStake
import WorkerFraming
import WorkerProtocol
import AttestationCore

/// The gateway refused this worker (attestation or policy); retrying unchanged will not help.
public struct WorkerRejected: Error, CustomStringConvertible {
    public let code: String
    public let message: String
    /// Whether the pinned gateway said it (a signed refusal, a sealed end). Anything else may
    /// come from anyone on the path and is only ever a reason to retry.
    public let authenticated: Bool
    public var description: String {
        authenticated
            ? "gateway rejected this worker: \(code): \(message)"
            : "connection ended (not said by the pinned gateway): \(code): \(message)"
    }

    public init(code: String, message: String, authenticated: Bool) {
        self.code = code
        self.message = message
        self.authenticated = authenticated
    }

    /// Whether connecting again (with backoff) can succeed unchanged: the connection or protocol
    /// failed, the session key expired, the gateway could not record its decision, or the chain
    /// data for the stake could not be read. A worker with a provider identity also retries a
    /// missing-proof refusal (a gateway that just started to require stake admits it with its
    /// proof on the next connection). Anything else (evidence, policy, stake below the minimum)
    /// needs a change first.
    public func isRetryable(hasProvider: Bool) -> Bool {
        if !authenticated { return true }
        if let known = ProtocolErrorCode(rawValue: code) { return known.isTransient }
        if code.hasPrefix("protocol.") || code == "stake.unknown" { return true }
        return hasProvider && code == "stake.proof-missing"
    }
}

/// The worker's outbound connection to the gateway: hello, attestation on every challenge,
/// the sealed session, and requests forwarded to the engine with responses streamed back.
///
/// The worker dials out (it may sit behind a home NAT); it never listens.
public final class GatewayClient: Sendable {
    public struct Configuration: Sendable {
        public var host: String
        public var port: Int
        public var workerID: String
        public var models: [String]
        /// The provider this worker stakes for; a gateway with a stake rule admits it only with a proof.
        public var provider: ProviderIdentity?
        /// The only gateway this worker talks to: checked on the signed challenge, before any quote
        /// or provider proof leaves the worker.
        public var gatewayKey: GatewayKeyPin
        public init(
            host: String, port: Int, gatewayKey: GatewayKeyPin, workerID: String, models: [String],
            provider: ProviderIdentity? = nil
        ) {
            self.host = host
            self.port = port
            self.gatewayKey = gatewayKey
            self.workerID = workerID
            self.models = models
            self.provider = provider
        }
    }

    /// A provider wallet and its Ed25519 key: the worker signs a provider proof for the gateway
    /// that challenges it (gateway id, this worker's KEM key, now).
    public struct ProviderIdentity: Sendable {
        public let wallet: TONAddress
        public let key: Ed25519PrivateKey
        /// The jetton wallet or Cocoon proxy holding the stake, for those sources.
        public let stakeAccount: TONAddress?
        public init(wallet: TONAddress, key: Ed25519PrivateKey, stakeAccount: TONAddress? = nil) {
            self.wallet = wallet
            self.key = key
            self.stakeAccount = stakeAccount
        }

        public func proof(gatewayID: String, workerKey: Data, at time: Date = Date()) -> Data {
            let proof = ProviderProof.sign(
                wallet: wallet, gatewayID: gatewayID, workerKey: workerKey, time: Int(time.timeIntervalSince1970),
                key: key,
                stakeAccount: stakeAccount)
            return (try? JSONEncoder().encode(proof)) ?? Data()
        }
    }

    public enum Event: Sendable, Equatable {
        case connected
        case admitted(sessionID: String)
        case reattested
    }

    public let configuration: Configuration
    let attestor: any EvidenceSource
    let engine: EngineClient
    let kem: WorkerKEMKey
    let logger: Logger
    let onEvent: @Sendable (Event) -> Void

    public init(
        configuration: Configuration, attestor: any EvidenceSource, engine: EngineClient,
        kem: WorkerKEMKey = WorkerKEMKey(),
        logger: Logger = Logger(label: "ccworker"), onEvent: @escaping @Sendable (Event) -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.attestor = attestor
        self.engine = engine
        self.kem = kem
        self.logger = logger
        self.onEvent = onEvent
    }

    typealias Connection = NIOAsyncChannel<WireMessage, WireMessage>

    /// Session state once admitted.
    final class Session: Sendable {
        let id: String
        let sealer: ChannelSealer
        let opener: ChannelOpener
        let outbox: AsyncStream<WireMessage>.Continuation
        /// How to stop each request in flight.
        private let inFlight = Mutex<[UInt64: @Sendable () -> Void]>([:])

        init(id: String, key: SymmetricKey, outbox: AsyncStream<WireMessage>.Continuation) {
            self.id = id
            sealer = ChannelSealer(sessionKey: key, sessionID: id, direction: .workerToGateway)
            opener = ChannelOpener(sessionKey: key, sessionID: id, direction: .gatewayToWorker)
            self.outbox = outbox
        }

        func send(_ payload: ChannelPayload) throws {
            try sealer.seal(payload.encoded()) { outbox.yield(.sealed($0)) }
        }

        func track(_ id: UInt64, cancel: @escaping @Sendable () -> Void) { inFlight.withLock { $0[id] = cancel } }

        /// Forgets a finished request; whether it was still in flight (not cancelled).
        @discardableResult func forget(_ id: UInt64) -> Bool { inFlight.withLock { $0.removeValue(forKey: id) } != nil }

        /// Stops a request the gateway no longer wants.
        func cancel(_ id: UInt64) { inFlight.withLock { $0.removeValue(forKey: id) }?() }

        /// Stops every request in flight (the connection to the gateway ended).
        func cancelAll() {
            let all = inFlight.withLock { s in
                defer { s.removeAll() }
                return Array(s.values)
            }
            for cancel in all { cancel() }
        }
    }

    /// Connects once and serves until the connection ends. Throws `WorkerRejected` when the
    /// gateway refuses the evidence.
    public func runOnce() async throws {
        let connection = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(10))
            .connect(host: configuration.host, port: configuration.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(WireFrameDecoder()))
                    try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(WireFrameEncoder()))
                    return try Connection(wrappingChannelSynchronously: channel)
                }
            }
        onEvent(.connected)
        let (outbox, outboxContinuation) = AsyncStream<WireMessage>.makeStream()
        try await connection.executeThenClose { inbound, outbound in
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await message in outbox { try await outbound.write(message) }
                }
                defer {
                    outboxContinuation.finish()
                    group.cancelAll()
                }
                let hello = WireMessage.Hello(
                    workerID: configuration.workerID, kemPublicKey: kem.publicKeyBytes, models: configuration.models,
                    workerNonce: WireMessage.Hello.freshNonce())
                outboxContinuation.yield(.hello(hello))
                var machine = GatewaySession(hello: hello, pin: configuration.gatewayKey)
                var session: Session?
                for try await message in inbound {
                    let action = machine.received(message)
                    session = try await perform(action, session, &machine, outbox: outboxContinuation) ?? session
                }
                session?.cancelAll()
            }
        }
    }

    /// Performs one action of the session state machine; returns the session once admitted.
    func perform(
        _ action: GatewaySession.Action, _ session: Session?, _ machine: inout GatewaySession,
        outbox: AsyncStream<WireMessage>.Continuation
    )
        async throws
        -> Session?
    {
        switch action {
        case .attest(let nonce, let gatewayID, let reattestation):
            try await attest(nonce: nonce, proofFor: gatewayID, reattestation: reattestation, &machine, outbox: outbox)
            return nil
        case .activateCredential(let challenge):
            // A TPM that cannot recover the secret answers with none: the gateway records the
            // refusal (`tpm.activation-failed`) instead of seeing a dropped connection.
            var secret = Data()
            do { secret = try await attestor.activateCredential(challenge) } catch {
                logger.error("credential activation failed", metadata: ["error": "\(error)"])
            }
            machine.sending(activation: secret)
            outbox.yield(.activation(.init(secret: secret)))
            return nil
        case .openSessionKey(let admitted, let nonce):
            let key = try SessionKeySealing.open(
                .init(encapsulatedKey: admitted.encapsulatedKey, ciphertext: admitted.sealedSessionKey), with: kem,
                context: Data(admitted.sessionID.utf8) + nonce)
            logger.info("admitted", metadata: ["ccworker.session": "\(admitted.sessionID)"])
            onEvent(.admitted(sessionID: admitted.sessionID))
            return Session(id: admitted.sessionID, key: key, outbox: outbox)
        case .open(let box):
            guard let session else { return nil }
            let plain: Data
            do { plain = try session.opener.open(box) } catch {
                throw WorkerRejected(
                    code: ProtocolErrorCode.channelAuthentication.rawValue, message: "a sealed message did not open",
                    authenticated: false)
            }
            switch try ChannelPayload(decoding: plain) {
            case .challenge(let nonce):
                try await attest(nonce: nonce, proofFor: nil, reattestation: true, &machine, outbox: outbox)
            case .ended(let code, let message, let judged):
                if case .fail(let code, let message, let authenticated) = machine.ended(
                    code: code, message: message, judged: judged)
                {
                    throw WorkerRejected(code: code, message: message, authenticated: authenticated)
                }
            case let payload:
                handle(payload, in: session)
            }
            return nil
        case .fail(let code, let message, let authenticated):
            throw WorkerRejected(code: code, message: message, authenticated: authenticated)
        }
    }

    /// Quotes `nonce` (bound to this worker's KEM key) and sends the evidence; on the admission
    /// challenge also a provider proof for the gateway that signed it.
    func attest(
        nonce: Data, proofFor gatewayID: String?, reattestation: Bool, _ machine: inout GatewaySession,
        outbox: AsyncStream<WireMessage>.Continuation
    ) async throws {
        let binding = attestationBinding(nonce: nonce, workerPublicKeys: kem.publicKeyBytes)
        let envelope = try await attestor.evidence(binding: binding)
        let proof = gatewayID.flatMap {
            configuration.provider?.proof(gatewayID: $0, workerKey: kem.publicKeyBytes)
        }
        let evidence = WireMessage.EvidenceMessage(envelope: envelope, providerProof: proof)
        machine.sending(evidence: evidence)
        outbox.yield(.evidence(evidence))
        if reattestation { onEvent(.reattested) }
    }

    func handle(_ payload: ChannelPayload, in session: Session) {
        switch payload {
        case .sealedRequest(let id, let path, let envelope, let requestID):
            guard ["/v1/chat/completions", "/v1/completions"].contains(path) else {
                try? session.send(.failure(id: id, message: "path not forwarded: POST \(path)"))
                return
            }
            let headers = requestIDHeader(requestID, path: path, sealed: true)
            let handle = TaskHandle()
            session.track(id) { handle.cancel() }
            handle.run {
                await self.serveSealed(id: id, path: path, envelope: envelope, headers: headers, in: session)
                session.forget(id)
            }
        case .request(let id, let method, let path, let body, let requestID):
            // Only the API the gateway fronts is forwarded; nothing else on the engine is reachable.
            guard method == "POST", ["/v1/chat/completions", "/v1/completions"].contains(path) else {
                try? session.send(.failure(id: id, message: "path not forwarded: \(method) \(path)"))
                return
            }
            let headers = requestIDHeader(requestID, path: path, sealed: false)
            // Answered from the engine connection's event loop as the parts arrive: no task
            // between the engine and the sealed channel.
            let exchange = EngineExchange()
            session.track(id) { exchange.cancel() }
            engine.start(
                method: method, path: path, body: body, headers: headers, on: exchange,
                handler: EngineResponseHandler(
                    head: { status, type in try session.send(.head(id: id, status: status, contentType: type)) },
                    body: { buffer in
                        var buffer = buffer
                        while buffer.readableBytes > 0 {
                            let chunk = buffer.readSlice(length: min(256 * 1024, buffer.readableBytes))!
                            try session.send(.data(id: id, bytes: Data(chunk.readableBytesView)))
                        }
                    },
                    end: {
                        if session.forget(id) { try? session.send(.end(id: id)) }
                    },
                    failure: { error in
                        if session.forget(id) { try? session.send(.failure(id: id, message: "engine: \(error)")) }
                    }))
        case .cancel(let id):
            session.cancel(id)
        default:
            break
        }
    }

    /// The request's id as the engine's `x-request-id` header, logged with the request (never its
    /// body); none when the gateway sent none or one that is not a short token (1–128 letters,
    /// digits and `-_.:`), which could not travel in a header.
    func requestIDHeader(_ requestID: String, path: String, sealed: Bool) -> [(String, String)] {
        guard RequestID.isValid(requestID)
        else { return [] }
        logger.info(
            "request",
            metadata: ["ccgate.request_id": "\(requestID)", "ccgate.path": "\(path)", "ccgate.sealed": "\(sealed)"])
        return [("x-request-id", requestID)]
    }

    /// Whether a sealed request's body asks what its routing fields (seen by the gateway) say.
    ///
    /// Threat: a client routing (and billing) under one model while the body asks another, or
    /// names it twice for the engine to read the other.
    static func bodyMatchesRouting(_ body: Data, model: String, stream: Bool) -> Bool {
        guard let object = try? JSONMembers(body), object.duplicates.isDisjoint(with: ["model", "stream"]),
            let named = object.string("model"), named.utf8.elementsEqual(model.utf8)
        else { return false }
        // `stream` absent or a boolean: an engine that coerces `1` or `"true"` must not stream
        // an answer routed as a plain one.
        switch object.members["stream"]?.kind {
        case nil: return !stream
        case .bool?: return object.bool("stream") == stream
        default: return false
        }
    }

    /// A gateway-blind request: opened with this worker's key, checked against its authenticated
    /// routing fields, forwarded to the engine, and answered in frames sealed for the client (the
    /// gateway sees the status, the content type, the token counts and ciphertext; the client
    /// takes status and content type from the sealed head).
    func serveSealed(
        id: UInt64, path: String, envelope: Data, headers: [(String, String)] = [], in session: Session
    ) async {
        let body: Data
        let sealer: EndToEnd.ResponseSealer
        do {
            let request = try JSONDecoder().decode(EndToEnd.Request.self, from: envelope)
            (body, sealer) = try EndToEnd.open(request, path: path, privateKey: kem.privateKey)
            guard Self.bodyMatchesRouting(body, model: request.model, stream: request.stream),
                configuration.models.contains(request.model)
            else {
                try? session.send(.failure(id: id, message: "e2e: the sealed body does not match its routing fields"))
                return
            }
        } catch {
            try? session.send(.failure(id: id, message: "e2e: the sealed request does not open"))
            return
        }
        // The engine is asked for a stream's counts even when the client did not ask; the event
        // carrying them is then taken out of what the client gets (the gateway still gets them).
        var forwarded = body
        var filter: UsageEventFilter?
        do {
            if let asked = try StreamUsage.requestingUsage(body) {
                forwarded = asked
                filter = UsageEventFilter()
            }
        } catch {
            try? session.send(.failure(id: id, message: "e2e: \(error)"))
            return
        }
        var counts = UsageScan()
        var headSent = false
        func relay(_ data: Data) throws {
            var offset = 0
            while offset < data.count {
                let end = min(offset + 128 * 1024, data.count)
                try session.send(.data(id: id, bytes: sealer.seal(data.subdata(in: offset..<end), final: false)))
                offset = end
            }
        }
        do {
            try await engine.send(
                method: "POST", path: path, body: forwarded, headers: headers,
                onHead: { status, type in
                    headSent = true
                    try session.send(.head(id: id, status: status, contentType: type))
                    try session.send(.data(id: id, bytes: sealer.head(status: status, contentType: type)))
                },
                onData: { data in
                    counts.scan(data)
                    try relay(filter?.pass(data) ?? data)
                })
            guard headSent else {
                try session.send(.failure(id: id, message: "engine: no response head"))
                return
            }
            if var rest = filter {
                try relay(rest.finish())
                if let taken = rest.scan.usage { counts.take(taken) }
            }
            try session.send(.data(id: id, bytes: sealer.seal(Data(), final: true)))
            if let usage = counts.found { try session.send(.usage(id: id, counts: usage)) }
            try session.send(.end(id: id))
        } catch {
            try? session.send(.failure(id: id, message: "engine: \(error)"))
        }
    }
}

/// A task that may be cancelled before it exists: one that is started after being cancelled
/// starts cancelled.
final class TaskHandle: Sendable {
    private let state = Mutex<(task: Task<Void, Never>?, cancelled: Bool)>((nil, false))

    func run(_ body: @escaping @Sendable () async -> Void) {
        let task = Task { await body() }
        let cancelled = state.withLock { s -> Bool in
            s.task = task
            return s.cancelled
        }
        if cancelled { task.cancel() }
    }

    func cancel() {
        let task = state.withLock { s -> Task<Void, Never>? in
            s.cancelled = true
            return s.task
        }
        task?.cancel()
    }
}
