import AttestationCore
import AuditLog
import GatewayState
import Crypto
import Foundation
import Logging
import Policy
import Sealing
import Synchronization
import WorkerProtocol

/// Timing of the worker protocol.
public struct WorkerTimings: Sendable {
    /// Time a new connection has to say hello, and a worker has to answer a challenge.
    public var handshakeTimeout: Duration = .seconds(30)
    /// Interval between re-attestations of an admitted worker (a policy may set its own).
    public var reattestInterval: Duration = .seconds(60)

    public init(handshakeTimeout: Duration = .seconds(30), reattestInterval: Duration = .seconds(60)) {
        self.handshakeTimeout = handshakeTimeout
        self.reattestInterval = reattestInterval
    }
}

/// One worker connection as the session runner sees it: frames out, and a way to close.
/// Frames in arrive as an `AsyncSequence` of messages that throws ``FrameError`` for bad frames.
public protocol WorkerConnection: Sendable {
    /// The peer's address, for logs and audit entries.
    var peer: String { get }
    func send(_ message: WireMessage) async throws
    /// Closes the connection; the inbound sequence then ends.
    func close()
}

/// Runs one worker session: performs the actions of a ``WorkerSession`` state machine against a
/// connection, the admission coordinator, the registry and the audit log. Knows nothing of
/// sockets, so every transition and race can be driven in tests without a network.
///
/// Ordering guarantee: every decision is durable in the audit log before the worker hears of it
/// or is routed to (threat: a decision acted on but lost from the log); a decision that cannot be
/// recorded is not made (`gateway.audit-unavailable`).
public struct WorkerSessionRunner: Sendable {
    public let coordinator: AdmissionCoordinator
    public let registry: WorkerRegistry
    public let evictor: Evictor
    public let trail: AuditTrail
    public let timings: WorkerTimings
    let logger: Logger

    public init(
        coordinator: AdmissionCoordinator, registry: WorkerRegistry, trail: AuditTrail,
        timings: WorkerTimings = .init(),
        logger: Logger = Logger(label: "ccgate.workers")
    ) {
        self.coordinator = coordinator
        self.registry = registry
        self.trail = trail
        self.timings = timings
        self.logger = logger
        evictor = Evictor(registry: registry, trail: trail, policies: coordinator.policies)
    }

    /// The re-attestation interval: the policy's when it sets one, else the gateway's.
    public var reattestInterval: Duration {
        coordinator.policy.workers.reattestIntervalSeconds.map { .seconds($0) } ?? timings.reattestInterval
    }

    /// A failure that ends the session with a coded `error` to the worker.
    struct SessionEnd: Error {
        let code: String
        let message: String
    }

    /// Serves one connection until it ends. The caller closes the connection afterwards (after
    /// its last frame is flushed).
    public func run<Inbound: AsyncSequence & Sendable>(_ inbound: Inbound, on connection: some WorkerConnection) async
    where Inbound.Element == WireMessage {
        let machine = SessionMachine(WorkerSession(identity: GatewayHandshakeKey(trail.key)))
        var iterator = inbound.makeAsyncIterator()
        do {
            try await handshake(&iterator, machine, connection)
        } catch let end as SessionEnd {
            try? await connection.send(.error(.init(code: end.code, message: end.message)))
        } catch let frame as FrameError {
            await protocolError(frame, connection)
        } catch {
            logger.debug(
                "worker connection ended", metadata: ["ccgate.peer": "\(connection.peer)", "error": "\(error)"])
        }
    }

    /// Hello, challenge, evidence, decision; then the admitted session.
    func handshake<I: AsyncIteratorProtocol>(
        _ inbound: inout I, _ machine: SessionMachine, _ connection: some WorkerConnection
    )
        async throws where I.Element == WireMessage
    {
        while true {
            let message = try await withDeadline(connection, timings.handshakeTimeout) { try await inbound.next() }
            guard let message else {
                let waiting = machine.withLock { $0.waitingFor }
                throw SessionEnd(code: ProtocolErrorCode.timeout.rawValue, message: "expected \(waiting)")
            }
            let action = machine.withLock { $0.received(message, nonce: Self.nonce) }
            switch action {
            case .send(let reply):
                try await connection.send(reply)
            case .verifyAdmission(let hello, let nonce, let evidence, let activation):
                var outcome = activation
                if activation == nil {
                    switch coordinator.activationStep(
                        for: evidence.envelope, nonce: nonce, workerKey: hello.kemPublicKey)
                    {
                    case .challenge(let pending):
                        let next = machine.withLock { $0.activationNeeded(hello, nonce: nonce, evidence, pending) }
                        guard case .send(let challenge) = next else { return }
                        try await connection.send(challenge)
                        continue
                    case .known(let proven): outcome = .proven(proven)
                    case .impossible(let why): outcome = .failed(why)
                    case .notNeeded: break
                    }
                }
                var decision = await coordinator.admit(
                    hello: hello, nonce: nonce, evidence: evidence, activation: outcome)
                // Threat: an admitted worker's id claimed by another machine to end its session.
                if let grant = decision.grant,
                    registry.isHeldByAnother(hello.workerID, identity: grant.admitted.identity)
                {
                    decision = coordinator.refusal(
                        hello, decision.judgement, code: ProtocolErrorCode.idInUse.rawValue,
                        message: "worker id '\(hello.workerID)' is held by another attested identity")
                }
                if let note = decision.judgement.note { logger.info("\(note)") }
                guard case .commitAdmission = machine.withLock({ $0.admissionDecided(decision) }) else { return }
                guard let grant = decision.grant else {
                    try await record(decision.drafts)
                    logger.notice(
                        "worker rejected",
                        metadata: [
                            "ccgate.worker.id": "\(hello.workerID)", "ccgate.reason": "\(decision.refusal?.code ?? "")",
                        ])
                    let refusal = decision.refusal ?? .init(code: "evidence.malformed", message: "")
                    try await connection.send(.rejected(machine.withLock { $0.signed(refusal) }))
                    return
                }
                try await serve(grant, decision, nonce: nonce, &inbound, machine, connection)
                return
            case .end(let code, let message, _):
                throw SessionEnd(code: code, message: message)
            default:
                throw SessionEnd(
                    code: ProtocolErrorCode.unexpectedMessage.rawValue, message: "unexpected \(message.typeName)")
            }
        }
    }

    /// Why an admitted session ended: the code and message audited and, when `notify`, told to the
    /// worker (sealed), with the digest of the evidence whose judgement ended it.
    struct Ending {
        let code: String
        let message: String
        let notify: Bool
        var judged: Data? = nil
    }

    /// Records an admission, registers the worker, tells it, then serves it until it goes.
    func serve<I: AsyncIteratorProtocol>(
        _ grant: AdmissionDecision.Grant, _ decision: AdmissionDecision, nonce: Data, _ inbound: inout I,
        _ machine: SessionMachine, _ connection: some WorkerConnection
    ) async throws where I.Element == WireMessage {
        let session = grant.session
        let (outbox, outboxContinuation) = AsyncStream<ChannelPayload>.makeStream()
        let link = Self.link(for: grant, outbox: outboxContinuation, connection)
        let entries = try await record(decision.drafts)
        guard let admissionSeq = entries.first(where: { $0.event.kind == .admission })?.seq else {
            throw SessionEnd(code: ProtocolErrorCode.auditUnavailable.rawValue, message: "no admission entry recorded")
        }
        var heldByAnother = false
        switch registry.add(
            link, record: grant.record, admission: grant.admitted, admissionSeq: admissionSeq, nonce: nonce)
        {
        case .added(let previous?):
            previous.end(
                code: ProtocolErrorCode.replaced.rawValue, message: "replaced by a new session of the same worker")
        case .added(nil): break
        case .heldByAnotherIdentity: heldByAnother = true
        }
        if !heldByAnother, let activation = session.activation { coordinator.activations.remember(activation) }
        // From here on the worker is registered: every way out goes through `sessionEnded`, so a
        // connection that fails before or while it hears `admitted` never leaves a routable
        // worker behind, and its end is audited.
        let end: Ending
        let writer = Self.writer(link, outbox, connection)
        if heldByAnother {
            // Lost a race with another identity's admission under the same id after the check in
            // the handshake: this session ends before admission, with a signed refusal.
            let refusal = WireMessage.Rejection(
                code: ProtocolErrorCode.idInUse.rawValue, message: "another attested identity holds this worker id")
            try? await connection.send(.rejected(machine.withLock { $0.signed(refusal) }))
            end = Ending(code: refusal.code, message: refusal.message, notify: false)
        } else {
            do {
                // A policy applied while this worker was being admitted has not seen it: check it now.
                if decision.judgement.policy.version != coordinator.policies.current.version {
                    recheck(link, grant.admitted)
                }
                let admitted = grant.message(reattestSeconds: Int(reattestInterval.components.seconds))
                try await connection.send(.admitted(machine.withLock { $0.signed(admitted) }))
                logger.info(
                    "worker admitted",
                    metadata: ["ccgate.worker.id": "\(session.workerID)", "ccgate.session": "\(session.sessionID)"])
                end = await serving(link, session, &inbound, machine, connection)
            } catch {
                end = Ending(
                    code: ProtocolErrorCode.disconnected.rawValue, message: "connection error: \(error)", notify: false)
            }
        }
        // The end is said inside the channel, as the outbox's last message: nobody but this
        // gateway can end a worker's session.
        if end.notify { link.farewell(code: end.code, message: end.message, judged: end.judged) }
        do { try await evictor.sessionEnded(link, code: end.code, message: end.message) } catch {
            logger.error("audit append failed", metadata: ["error": "\(error)"])
        }
        logger.notice(
            "worker evicted",
            metadata: [
                "ccgate.worker.id": "\(session.workerID)", "ccgate.reason": "\(link.ending?.message ?? end.message)",
            ])
        // The outbox is closed now: let the writer send what is left, for a bounded time.
        try? await withDeadline(connection, .seconds(2)) { await writer.value }
    }

    /// The gateway's side of an admitted session's channel.
    static func link(
        for grant: AdmissionDecision.Grant, outbox: AsyncStream<ChannelPayload>.Continuation,
        _ connection: some WorkerConnection
    ) -> WorkerLink {
        let session = grant.session
        return WorkerLink(
            workerID: session.workerID, sessionID: session.sessionID, models: grant.models,
            kemPublicKey: session.kemPublicKey,
            sealer: ChannelSealer(
                sessionKey: grant.sessionKey, sessionID: session.sessionID, direction: .gatewayToWorker),
            opener: ChannelOpener(
                sessionKey: grant.sessionKey, sessionID: session.sessionID, direction: .workerToGateway),
            outbox: outbox,
            // The writer closes the connection once it has sent the farewell; this is the fallback
            // for a worker that stops reading.
            disconnect: {
                Task {
                    try? await Task.sleep(for: .seconds(2))
                    connection.close()
                }
            })
    }

    /// Writes the outbox in order, sealing each payload as it goes (so sequence numbers follow the
    /// wire); closes the connection when the link closes its outbox, after the farewell.
    package static func writer(
        _ link: WorkerLink, _ outbox: AsyncStream<ChannelPayload>, _ connection: some WorkerConnection
    ) -> Task<Void, Never> {
        Task {
            for await payload in outbox where link.mayStillSend(payload) {
                guard let box = try? link.seal(payload) else { continue }
                do { try await connection.send(.sealed(box)) } catch { break }
            }
            connection.close()
        }
    }

    /// The admitted session: re-attests on a schedule and routes what the worker sends (the
    /// outbox has its own writer). Returns why it ended.
    func serving<I: AsyncIteratorProtocol>(
        _ link: WorkerLink, _ session: AdmittedSession, _ inbound: inout I, _ machine: SessionMachine,
        _ connection: some WorkerConnection
    ) async -> Ending where I.Element == WireMessage {
        do {
            return try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await self.reattestLoop(link, session, machine) }
                defer { group.cancelAll() }
                while let message = try await inbound.next() {
                    if let end = try await handle(message, link, machine) { return end }
                }
                return Ending(
                    code: ProtocolErrorCode.disconnected.rawValue, message: "worker disconnected", notify: false)
            }
        } catch let frame as FrameError {
            // Audited here; the worker hears it sealed, as the session's farewell.
            await protocolError(frame, connection, answer: false)
            return Ending(code: frame.code.rawValue, message: frame.description, notify: true)
        } catch {
            return Ending(
                code: ProtocolErrorCode.disconnected.rawValue, message: "connection error: \(error)", notify: false)
        }
    }

    /// Ends `link` when the policy in force no longer admits what `admitted` proved.
    func recheck(_ link: WorkerLink, _ admitted: AdmittedWorker) {
        let (now, reasons) = coordinator.recheck(admitted)
        guard let first = reasons.first else { return }
        link.end(code: first.code.rawValue, message: "policy version \(now.version): \(first.message)")
    }

    /// One message from an admitted worker; returns the session's end when it ends it.
    func handle(_ message: WireMessage, _ link: WorkerLink, _ machine: SessionMachine) async throws -> Ending? {
        switch machine.withLock({ $0.received(message, nonce: Self.nonce) }) {
        case .route(let box):
            let plain: Data
            do { plain = try link.opener.open(box) } catch {
                return endSession(machine, .channelAuthentication, "\(error)")
            }
            let payload: ChannelPayload
            do { payload = try ChannelPayload(decoding: plain) } catch {
                return endSession(machine, .malformedFrame, "sealed payload is not a channel message: \(error)")
            }
            link.deliver(payload)
            return nil
        case .verifyReattestation(let session, let nonce, let evidence):
            let decision = await coordinator.reattest(session, nonce: nonce, evidence: evidence)
            if let note = decision.judgement.note { logger.info("\(note)") }
            // An eviction that won meanwhile ends the session; its verdict is not recorded.
            guard link.ending == nil,
                case .commitReattestation = machine.withLock({ $0.reattestationDecided(decision) })
            else {
                return nil
            }
            let facts = AttestedFacts(decision.judgement.verdict)
            var updated: WorkerRecord?
            if decision.passed, let facts {
                // A session removed meanwhile gets no pass recorded.
                guard var record = registry.record(workerID: session.workerID, sessionID: session.sessionID) else {
                    return nil
                }
                record.lastAttested = decision.at
                record.evidenceSHA256 = decision.judgement.evidence.sha256
                record.claims = WorkerRecord.summary(facts)
                updated = record
            }
            do { try await trail.record([decision.draft(updated: updated)]) } catch {
                logger.error("audit append failed", metadata: ["error": "\(error)"])
                return Ending(
                    code: ProtocolErrorCode.auditUnavailable.rawValue,
                    message: "the gateway cannot record decisions now; try again later", notify: true)
            }
            if let failure = decision.failure {
                return Ending(
                    code: failure.code, message: failure.message, notify: true,
                    judged: HashAlgorithm.sha256.hash(evidence.envelope))
            }
            // Only now, with the pass durable, does the registry judge later policies by what it proved.
            if let updated, let facts { registry.attested(updated, facts: facts, nonce: nonce) }
            // A policy applied while this re-attestation was judged has not seen its facts.
            if decision.judgement.policy.version != coordinator.policies.current.version,
                let admitted = registry.admission(workerID: session.workerID, sessionID: session.sessionID)
            {
                recheck(link, admitted)
            }
            return nil
        case .end(let code, let message, let notify):
            return Ending(code: code, message: message, notify: notify)
        default:
            return nil
        }
    }

    func endSession(_ machine: SessionMachine, _ code: ProtocolErrorCode, _ message: String) -> Ending {
        _ = machine.withLock { $0.end(code: code.rawValue, message: message, notifyPeer: true) }
        return Ending(code: code.rawValue, message: message, notify: true)
    }

    /// Challenges the worker every interval; ends the link when a challenge goes unanswered or
    /// the session key reaches its lifetime.
    func reattestLoop(_ link: WorkerLink, _ session: AdmittedSession, _ machine: SessionMachine) async throws {
        while true {
            try await Task.sleep(for: reattestInterval)
            let fresh = Self.nonce()
            let age = coordinator.clock.now().timeIntervalSince(session.admittedAt)
            let lifetime = coordinator.policy.workers.sessionKeyLifetimeSeconds
            switch machine.withLock({ $0.reattestDue(nonce: fresh, keyAge: age, keyLifetime: lifetime) }) {
            case .seal(let challenge): try link.send(challenge)
            case .end(let code, let message, _):
                link.end(code: code, message: message)
                return
            default: continue
            }
            try await Task.sleep(for: timings.handshakeTimeout)
            if case .end(let code, let message, _) = machine.withLock({ $0.reattestDeadline(nonce: fresh) }) {
                link.end(code: code, message: message)
                return
            }
        }
    }

    /// Records decisions before they are acted on; a decision that cannot be recorded is not made.
    @discardableResult
    func record(_ drafts: [AuditDraft]) async throws -> [AuditEntry] {
        do { return try await trail.record(drafts) } catch {
            logger.error("audit append failed", metadata: ["error": "\(error)"])
            throw SessionEnd(
                code: ProtocolErrorCode.auditUnavailable.rawValue,
                message: "the gateway cannot record decisions now; try again later")
        }
    }

    /// A bad frame: audited (never the frame's bytes), answered with its code in the clear before
    /// admission (`answer`); after admission the session's sealed farewell carries it.
    func protocolError(_ frame: FrameError, _ connection: some WorkerConnection, answer: Bool = true) async {
        logger.notice(
            "bad frame from worker connection", metadata: ["ccgate.peer": "\(connection.peer)", "error": "\(frame)"])
        do {
            try await trail.record(
                AuditEvent(
                    .protocolError, decision: .closed, reasons: [frame.code.rawValue],
                    detail: ["peer": connection.peer, "message": frame.description]))
        } catch {
            logger.error("audit append failed", metadata: ["error": "\(error)"])
        }
        if answer { try? await connection.send(.error(.init(code: frame.code.rawValue, message: frame.description))) }
    }

    /// Closes the connection unless `body` finishes within `timeout`.
    func withDeadline<T>(_ connection: some WorkerConnection, _ timeout: Duration, _ body: () async throws -> T)
        async throws -> T
    {
        let watchdog = Task {
            try await Task.sleep(for: timeout)
            connection.close()
        }
        defer { watchdog.cancel() }
        return try await body()
    }

    /// 32 random bytes: a challenge nonce.
    static func nonce() -> Data { SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) } }
}

/// A session's state machine, shared by its inbound loop and its re-attestation timer.
final class SessionMachine: Sendable {
    private let machine: Mutex<WorkerSession>
    init(_ initial: WorkerSession) { machine = Mutex(initial) }
    func withLock<T>(_ body: (inout WorkerSession) -> T) -> T { machine.withLock { body(&$0) } }
}
