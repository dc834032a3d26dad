import AttestationCore
import AuditLog
import Crypto
import Foundation
import Logging
import Synchronization
import NIOCore
import NIOPosix
import Sealing
import WorkerProtocol

/// Timing of the worker protocol.
public struct WorkerTimings: Sendable {
    /// Time a new connection has to say hello, and a worker has to answer a challenge.
    public var handshakeTimeout: Duration = .seconds(30)
    /// Interval between re-attestations of an admitted worker.
    public var reattestInterval: Duration = .seconds(60)

    public init(handshakeTimeout: Duration = .seconds(30), reattestInterval: Duration = .seconds(60)) {
        self.handshakeTimeout = handshakeTimeout
        self.reattestInterval = reattestInterval
    }
}

/// The worker port: workers dial in, are challenged, attest, and once admitted receive a sealed
/// session key and then sealed requests. Every decision is audited.
public final class WorkerServer: Sendable {
    typealias Connection = NIOAsyncChannel<WireMessage, WireMessage>

    let registry: WorkerRegistry
    let admission: AdmissionService
    let audit: AuditTrail
    let timings: WorkerTimings
    /// Checks providers' TON stake when the policy requires one.
    let stake: StakeGate?
    let logger: Logger

    public init(registry: WorkerRegistry, admission: AdmissionService, audit: AuditTrail, timings: WorkerTimings = .init(),
                stake: StakeGate? = nil, logger: Logger = Logger(label: "ccgate.workers")) {
        self.registry = registry
        self.admission = admission
        self.audit = audit
        self.timings = timings
        self.stake = stake
        self.logger = logger
    }

    /// Binds the worker port; `onBound` receives the actual port (useful with port 0). Runs until
    /// the task is cancelled.
    public func run(host: String, port: Int, onBound: @Sendable (Int) -> Void = { _ in }) async throws {
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // A peer that stops sending still gets the error that explains why it is dropped.
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .bind(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(WireFrameDecoder()))
                    try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(WireFrameEncoder()))
                    return try Connection(wrappingChannelSynchronously: channel,
                                          configuration: .init(isOutboundHalfClosureEnabled: true))
                }
            }
        onBound(server.channel.localAddress?.port ?? port)
        logger.info("worker port listening", metadata: ["ccgate.port": "\(server.channel.localAddress?.port ?? port)"])
        try await withTaskCancellationHandler {
            try await withThrowingDiscardingTaskGroup { group in
                try await server.executeThenClose { inbound in
                    for try await connection in inbound {
                        group.addTask { await self.serve(connection) }
                    }
                }
            }
        } onCancel: {
            server.channel.close(promise: nil)
        }
    }

    /// Records an event that nobody waits on (protocol errors, session ends); a failure is logged.
    func record(_ event: AuditEvent, worker: WorkerChange? = nil) async {
        do { try await audit.record(event, worker: worker) } catch {
            logger.error("audit append failed", metadata: ["error": "\(error)"])
        }
    }

    /// Records a decision before it is acted on. Threat: a decision acted on but lost from the
    /// log (a crash between the two); if the log cannot be written, the decision is not made.
    func recordOrEnd(_ event: AuditEvent, evidence: StoredEvidence? = nil, worker: WorkerChange? = nil) async throws {
        try await recordOrEnd([.event(event, evidence: evidence, worker: worker)])
    }

    func recordOrEnd(_ drafts: [AuditDraft]) async throws {
        do { try await audit.record(drafts) } catch {
            logger.error("audit append failed", metadata: ["error": "\(error)"])
            throw SessionEnd(code: "gateway.audit-unavailable", message: "the gateway cannot record decisions now; try again later")
        }
    }

    /// A failure that ends a worker connection with a coded error message.
    struct SessionEnd: Error {
        let code: String
        let message: String
    }

    func serve(_ connection: Connection) async {
        let peer = connection.channel.remoteAddress?.description ?? "?"
        do {
            try await connection.executeThenClose { inbound, outbound in
                var iterator = inbound.makeAsyncIterator()
                do {
                    try await self.session(connection, &iterator, outbound)
                } catch let end as SessionEnd {
                    try? await outbound.write(.error(.init(code: end.code, message: end.message)))
                } catch let frame as FrameError {
                    logger.notice("bad frame from worker connection", metadata: ["ccgate.peer": "\(peer)", "error": "\(frame)"])
                    await record(AuditEvent(event: "protocol-error", decision: "closed", reasons: [frame.code], detail: ["peer": peer, "message": frame.description]))
                    try? await outbound.write(.error(.init(code: frame.code, message: frame.description)))
                }
            }
        } catch {
            logger.debug("worker connection ended", metadata: ["ccgate.peer": "\(peer)", "error": "\(error)"])
        }
    }

    /// Closes the connection unless `body` finishes within `timeout`.
    func withDeadline<T>(_ connection: Connection, _ timeout: Duration, _ body: () async throws -> T) async throws -> T {
        let watchdog = Task {
            try await Task.sleep(for: timeout)
            connection.channel.close(promise: nil)
        }
        defer { watchdog.cancel() }
        return try await body()
    }

    func session(_ connection: Connection, _ inbound: inout NIOAsyncChannelInboundStream<WireMessage>.AsyncIterator,
                 _ outbound: NIOAsyncChannelOutboundWriter<WireMessage>) async throws {
        // 1. Hello.
        let first = try await withDeadline(connection, timings.handshakeTimeout) { try await inbound.next() }
        guard case .hello(let hello)? = first else {
            throw SessionEnd(code: first == nil ? ProtocolErrorCode.timeout : ProtocolErrorCode.unexpectedMessage,
                             message: "expected hello")
        }
        try validate(hello)

        // 2. Challenge and evidence.
        let nonce = Data(SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) })
        try await outbound.write(.challenge(.init(nonce: nonce, gatewayID: stake?.gatewayID)))
        let answer = try await withDeadline(connection, timings.handshakeTimeout) { try await inbound.next() }
        guard case .evidence(let evidence)? = answer else {
            throw SessionEnd(code: answer == nil ? ProtocolErrorCode.timeout : ProtocolErrorCode.unexpectedMessage,
                             message: "expected evidence")
        }
        if let note = await admission.prepare(envelope: evidence.envelope) { logger.info("\(note)") }
        let decision = admission.evaluate(envelope: evidence.envelope, nonce: nonce, workerPublicKeys: hello.kemPublicKey)
        let verdict = decision.verdict
        guard verdict.isAccepted, let claims = verdict.claims else {
            try await reject(hello, decision, code: verdict.reasons.first?.code.rawValue ?? "evidence.malformed",
                             message: verdict.reasons.first?.message ?? "", reasons: verdict.reasons.map(\.code.rawValue), outbound)
            return
        }
        // The provider's stake, when the policy in force requires one (after the evidence: a
        // worker that cannot attest costs no chain reads).
        var providerStake: ProviderStake?
        var stakeDetail = [String: String]()
        let stakeRules = decision.policy.document.stake
        if stakeRules.minimumNanotons != nil {
            let outcome = await stake?.admit(proofData: evidence.providerProof, workerKey: hello.kemPublicKey, rules: stakeRules)
                ?? StakeGate.refused("stake.unavailable", "this gateway reads no stake")
            if let refusal = outcome.refusal {
                try await reject(hello, decision, code: refusal.code, message: refusal.message, reasons: [refusal.code], outbound,
                                 detail: outcome.auditDetail)
                return
            }
            providerStake = outcome.stake
            stakeDetail = outcome.auditDetail
        }

        // 3. Admit: a fresh session key, sealed to the key the quote is bound to.
        let sessionID = UUID().uuidString.lowercased()
        let sessionKey = SymmetricKey(size: .bits256)
        let sealed = try SessionKeySealing.seal(sessionKey, to: hello.kemPublicKey, context: Data(sessionID.utf8) + nonce)
        let (outbox, outboxContinuation) = AsyncStream<WireMessage>.makeStream()
        let channel = connection.channel
        let link = WorkerLink(
            workerID: hello.workerID, sessionID: sessionID, models: hello.models, kemPublicKey: hello.kemPublicKey,
            sealer: ChannelSealer(sessionKey: sessionKey, sessionID: sessionID, direction: .gatewayToWorker),
            opener: ChannelOpener(sessionKey: sessionKey, sessionID: sessionID, direction: .workerToGateway),
            outbox: outboxContinuation, disconnect: { channel.close(promise: nil) })
        let admittedAt = admission.clock.now()
        let record = WorkerRecord(
            id: hello.workerID, session: sessionID, provider: providerStake?.provider, models: hello.models, format: verdict.format,
            claims: Self.summary(claims, verdict: verdict), admittedAt: admittedAt, lastAttested: admittedAt,
            evidenceSHA256: decision.evidence.sha256, policyVersion: decision.policy.version)
        let admit = AuditEvent(
            event: "admission", worker: hello.workerID, decision: "admit", policyVersion: decision.policy.version,
            collateralSHA256: decision.collateralSHA256,
            detail: [
                "session": sessionID, "policy": decision.policy.document.name, "format": verdict.format,
                "models": hello.models.joined(separator: ","),
                "measurements": claims.measuredFiles.map { "\($0.path)=\($0.digestHex)" }.joined(separator: ";"),
            ].merging(stakeDetail) { a, _ in a })
        let keyIssued = AuditEvent(
            event: "session-key", worker: hello.workerID, decision: "issued", policyVersion: decision.policy.version,
            detail: ["session": sessionID, "kem": "X25519-HKDF-SHA256/ChaCha20Poly1305"])
        // One transaction: the admission, the key issued on it, the worker's row.
        try await recordOrEnd([.event(admit, evidence: decision.evidence, worker: .upsert(record)), .event(keyIssued)])
        let admitted = WorkerRegistry.Admission(
            format: verdict.format, claims: claims, tcbStatus: verdict.tcbStatus, advisoryIDs: verdict.advisoryIDs, stake: providerStake)
        if let previous = registry.add(link, record: record, admission: admitted) {
            previous.end(code: "worker.replaced", message: "replaced by a new session of the same worker", audited: false)
        }
        // A policy applied while this worker was being admitted has not seen it: check it now.
        if decision.policy.version != admission.policies.current.version {
            let now = admission.policies.current
            let reasons = admitted.reasons(under: now.document, at: admission.clock.now())
            if !reasons.isEmpty {
                link.end(code: reasons[0].code.rawValue, message: "policy version \(now.version): \(reasons[0].message)", audited: false)
            }
        }
        try await outbound.write(.admitted(.init(sessionID: sessionID, encapsulatedKey: sealed.encapsulatedKey,
                                                 sealedSessionKey: sealed.ciphertext,
                                                 reattestSeconds: Int(reattestInterval.components.seconds))))
        logger.info("worker admitted", metadata: ["ccgate.worker.id": "\(hello.workerID)", "ccgate.session": "\(sessionID)"])

        // 4. Serve: drain the outbox, re-attest on a schedule, route what the worker sends.
        let reattest = ReattestState()
        var endReason = "worker disconnected"
        var endCode = "worker.disconnected"
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await message in outbox { try await outbound.write(message) }
                }
                group.addTask {
                    while true {
                        try await Task.sleep(for: self.reattestInterval)
                        if let lifetime = self.admission.policy.workers.sessionKeyLifetimeSeconds,
                           self.admission.clock.now().timeIntervalSince(admittedAt) >= TimeInterval(lifetime)
                        {
                            link.end(code: "session.key-expired", message: "the session key reached its lifetime of \(lifetime) s; attest again for a new one", audited: false)
                            return
                        }
                        let fresh = Data(SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) })
                        guard reattest.begin(fresh) else {
                            // The previous challenge is still unanswered: the worker is not answering.
                            link.end(code: ProtocolErrorCode.timeout, message: "re-attestation challenge unanswered", audited: false)
                            return
                        }
                        link.sendControl(.challenge(.init(nonce: fresh)))
                        try await Task.sleep(for: self.timings.handshakeTimeout)
                        if reattest.outstanding != nil {
                            link.end(code: ProtocolErrorCode.timeout, message: "re-attestation challenge unanswered", audited: false)
                        }
                    }
                }
                defer { group.cancelAll() }
                while let message = try await inbound.next() {
                    switch message {
                    case .sealed(let box):
                        let plain: Data
                        do { plain = try link.opener.open(box) } catch {
                            throw SessionEnd(code: ProtocolErrorCode.channelAuthentication, message: "\(error)")
                        }
                        guard let payload = try? JSONDecoder().decode(ChannelPayload.self, from: plain) else {
                            throw SessionEnd(code: ProtocolErrorCode.malformedFrame, message: "sealed payload is not a channel message")
                        }
                        link.deliver(payload)
                    case .evidence(let fresh):
                        guard let expected = reattest.finish() else {
                            throw SessionEnd(code: ProtocolErrorCode.unexpectedMessage, message: "evidence without a challenge")
                        }
                        if let note = await admission.prepare(envelope: fresh.envelope) { logger.info("\(note)") }
                        let again = admission.evaluate(envelope: fresh.envelope, nonce: expected, workerPublicKeys: hello.kemPublicKey)
                        if again.verdict.isAccepted {
                            let updated = registry.attested(
                                workerID: hello.workerID, sessionID: sessionID, at: admission.clock.now(), evidence: again.evidence.sha256)
                            try await recordOrEnd(
                                AuditEvent(
                                    event: "reattestation", worker: hello.workerID, decision: "pass", policyVersion: again.policy.version,
                                    collateralSHA256: again.collateralSHA256, detail: ["session": sessionID]),
                                evidence: again.evidence, worker: updated.map(WorkerChange.upsert))
                        } else {
                            let reason = again.verdict.reasons.first
                            endCode = reason?.code.rawValue ?? "evidence.malformed"
                            endReason = "re-attestation failed: \(reason?.message ?? "")"
                            try await recordOrEnd(
                                AuditEvent(
                                    event: "reattestation", worker: hello.workerID, decision: "fail",
                                    reasons: again.verdict.reasons.map(\.code.rawValue), policyVersion: again.policy.version,
                                    collateralSHA256: again.collateralSHA256, detail: ["message": reason?.message ?? "", "session": sessionID]),
                                evidence: again.evidence)
                            throw SessionEnd(code: endCode, message: endReason)
                        }
                    default:
                        throw SessionEnd(code: ProtocolErrorCode.unexpectedMessage, message: "unexpected \(message.typeName) from an admitted worker")
                    }
                }
            }
        } catch let end as SessionEnd {
            await finish(link, code: end.code, reason: end.message)
            throw end
        } catch {
            await finish(link, code: endCode, reason: "connection error: \(error)")
            throw error
        }
        await finish(link, code: endCode, reason: endReason)
    }

    /// Refuses an admission: audited before the worker hears of it (a decision anyone saw is on disk).
    func reject(_ hello: WireMessage.Hello, _ decision: AdmissionService.Decision, code: String, message: String, reasons: [String],
                _ outbound: NIOAsyncChannelOutboundWriter<WireMessage>, detail: [String: String] = [:]) async throws {
        try await recordOrEnd(
            AuditEvent(
                event: "admission", worker: hello.workerID, decision: "reject", reasons: reasons,
                policyVersion: decision.policy.version, collateralSHA256: decision.collateralSHA256,
                detail: ["message": message, "policy": decision.policy.document.name, "format": decision.verdict.format]
                    .merging(detail) { a, _ in a }),
            evidence: decision.evidence)
        logger.notice("worker rejected", metadata: ["ccgate.worker.id": "\(hello.workerID)", "ccgate.reason": "\(code)"])
        try await outbound.write(.rejected(.init(code: code, message: message)))
    }

    /// The re-attestation interval: the policy's when it sets one, else the gateway's.
    var reattestInterval: Duration {
        admission.policy.workers.reattestIntervalSeconds.map { .seconds($0) } ?? timings.reattestInterval
    }

    /// A few claims worth listing per worker.
    static func summary(_ claims: VerifiedClaims, verdict: Verdict) -> [String: String] {
        var out = [String: String]()
        for key in ["mrtd", "tcb_status", "ak.sha256", "tee", "debug", "cocoon_image_hash"] {
            if let v = claims.fields[key] { out[key] = v }
        }
        if let status = verdict.tcbStatus { out["tcb_status"] = status }
        for file in claims.measuredFiles.prefix(8) { out["measured:" + file.path] = file.digestHex }
        return out
    }

    func finish(_ link: WorkerLink, code: String, reason: String) async {
        let ending = link.ending
        link.close(reason: ending?.message ?? reason)
        registry.remove(workerID: link.workerID, sessionID: link.sessionID)
        let change = WorkerChange.remove(id: link.workerID, session: link.sessionID)
        if ending?.audited == true {
            // The eviction entry is written; only the worker row is left to drop.
            await record(AuditEvent(event: "disconnect", worker: link.workerID, decision: "closed", reasons: [ending!.code],
                                    detail: ["session": link.sessionID]), worker: change)
        } else {
            await record(AuditEvent(event: "eviction", worker: link.workerID, decision: "evicted", reasons: [ending?.code ?? code],
                                    policyVersion: admission.policies.current.version,
                                    detail: ["session": link.sessionID, "message": ending?.message ?? reason]), worker: change)
        }
        logger.notice("worker evicted", metadata: ["ccgate.worker.id": "\(link.workerID)", "ccgate.reason": "\(ending?.message ?? reason)"])
    }

    /// Bounds on hello: ids are names, not payloads; a worker serves a handful of models.
    func validate(_ hello: WireMessage.Hello) throws {
        guard hello.protocolVersion == 1 else {
            throw SessionEnd(code: ProtocolErrorCode.badHello, message: "protocol version \(hello.protocolVersion) is not supported (1)")
        }
        let idOK = (1...128).contains(hello.workerID.utf8.count)
            && hello.workerID.unicodeScalars.allSatisfy { CharacterSet.alphanumerics.contains($0) || "-_.:".unicodeScalars.contains($0) }
        guard idOK else { throw SessionEnd(code: ProtocolErrorCode.badHello, message: "worker id must be 1-128 characters of [A-Za-z0-9-_.:]") }
        guard hello.kemPublicKey.count == 32 else { throw SessionEnd(code: ProtocolErrorCode.badHello, message: "KEM public key must be 32 bytes") }
        guard (1...16).contains(hello.models.count), hello.models.allSatisfy({ (1...256).contains($0.utf8.count) }) else {
            throw SessionEnd(code: ProtocolErrorCode.badHello, message: "a worker serves 1-16 models with names of 1-256 bytes")
        }
    }
}

extension Dictionary where Key == String {
    func mapKeys(_ transform: (String) -> String) -> [String: Value] {
        Dictionary<String, Value>(uniqueKeysWithValues: map { (transform($0.key), $0.value) })
    }
}

/// The outstanding re-attestation challenge of one session.
final class ReattestState: Sendable {
    private let nonce = Mutex<Data?>(nil)
    /// Records a new challenge; false if the previous one is still unanswered.
    func begin(_ fresh: Data) -> Bool {
        nonce.withLock { n in
            guard n == nil else { return false }
            n = fresh
            return true
        }
    }
    func finish() -> Data? { nonce.withLock { n in defer { n = nil }; return n } }
    var outstanding: Data? { nonce.withLock { $0 } }
}
