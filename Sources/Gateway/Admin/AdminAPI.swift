import AdmissionCore
import AttestationCore
import AuditLog
import GatewayState
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Policy
import Synchronization

extension AdminError: HTTPResponseError {
    public var status: HTTPResponse.Status { .init(code: httpStatus) }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        AdminAPI.json(
            AdminMessage.ErrorResponse(code: code, message: message, details: details), status: .init(code: httpStatus))
    }
}

/// The admin API, on its own port: policy history and application, workers, audit export.
/// Every request needs `Authorization: Bearer TOKEN` with the gateway's admin token.
///
/// Threat: anyone who reaches the admin port. Without the token nothing is answered; with it,
/// policies still need a pinned admin key's signature, so a leaked token can evict workers and
/// read the log but cannot change what is admitted. Failed logins are audited (rate-limited, so
/// that guessing cannot flood the log).
public struct AdminAPI: Sendable {
    let administration: GatewayAdministration
    let trail: AuditTrail
    let registry: WorkerRegistry
    let policies: PolicyState
    let keys: KeyAdministration
    let metrics: GatewayMetrics?
    let ledger: UsageLedger?
    let tokenDigest: Data
    let logins = LoginAudit()

    /// The admin's name in audit entries: `admin:` and the first 8 hex digits of the token's SHA-256.
    var actor: String { "admin:" + tokenDigest.prefix(4).hex }

    init(
        administration: GatewayAdministration, trail: AuditTrail, registry: WorkerRegistry, policies: PolicyState,
        keys: KeyAdministration, metrics: GatewayMetrics? = nil, ledger: UsageLedger? = nil, token: String
    ) {
        self.keys = keys
        self.metrics = metrics
        self.ledger = ledger
        self.administration = administration
        self.trail = trail
        self.registry = registry
        self.policies = policies
        self.tokenDigest = Data(SHA256Digest.of(Data(token.utf8)))
    }

    public func router() -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: AdminErrorMiddleware())
        router.add(middleware: AdminTokenMiddleware(api: self))
        if let metrics {
            router.get("metrics") { _, _ in
                var headers = HTTPFields()
                headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
                let text = metrics.scrape(registry: self.registry, ledger: self.ledger)
                return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: text)))
            }
        }
        let admin = router.group("v1/admin")
        admin.get("policy") { request, _ in try self.policy(request) }
        admin.get("policy/history") { _, _ in try self.history() }
        admin.post("policy/apply") { request, context in try await self.apply(request, context) }
        admin.post("policy/rollback") { request, context in try await self.rollback(request, context) }
        admin.get("workers") { _, _ in self.workers() }
        admin.post("workers/:id/evict") { _, context in
            let id = context.parameters.get("id") ?? ""
            let eviction = try await self.administration.evict(workerID: id, actor: self.actor)
            return Self.json(eviction)
        }
        admin.get("keys") { _, _ in Self.json(await self.keys.list()) }
        admin.post("keys") { request, _ in
            let settings = try await Self.body(request, as: AdminMessage.KeySettings.self, limit: 64 << 10)
            return Self.json(try await self.keys.create(settings, actor: self.actor), status: .created)
        }
        admin.get("keys/:id") { _, context in
            Self.json(try await self.keys.show(id: context.parameters.get("id") ?? ""))
        }
        admin.post("keys/:id/revoke") { _, context in
            Self.json(try await self.keys.revoke(id: context.parameters.get("id") ?? "", actor: self.actor))
        }
        admin.post("keys/:id/rotate") { request, context in
            let body = try await Self.body(request, as: AdminMessage.RotateRequest.self, limit: 4096)
            return Self.json(
                try await self.keys.rotate(
                    id: context.parameters.get("id") ?? "", graceSeconds: body.graceSeconds ?? 0, actor: self.actor))
        }
        admin.get("audit/export") { request, _ in try await self.export(request) }
        admin.get("audit/entries/:seq") { _, context in try self.entry(context.parameters.get("seq") ?? "") }
        admin.get("audit/key") { _, _ in
            Self.json(
                AdminMessage.AuditKey(
                    publicKey: self.trail.key.publicKey.pem, fingerprint: self.trail.key.publicKey.fingerprint))
        }
        return router
    }

    // MARK: Policy

    func policy(_ request: Request) throws -> Response {
        let current = policies.current
        var version = current.version
        if let text = request.uri.queryParameters.get("version") {
            guard let v = Int(text), v > 0 else {
                throw AdminError(400, "admin.bad-request", "version must be a positive integer")
            }
            version = v
        }
        guard let record = try storeCall({ try trail.store.policy(version: version) }) else {
            throw AdminError(404, "policy.no-such-version", "there is no policy version \(version)")
        }
        return Self.json(Self.describe(record, active: current.version, withText: true))
    }

    func history() throws -> Response {
        let current = policies.current.version
        let versions = try storeCall { try trail.store.policies() }.map { Self.describe($0, active: current) }
        return Self.json(AdminMessage.PolicyHistory(active: current, versions: versions))
    }

    static func describe(_ r: PolicyRecord, active: Int, withText: Bool = false) -> AdminMessage.PolicyVersion {
        AdminMessage.PolicyVersion(
            version: r.version, name: r.policy.name, sha256: r.sha256, signer: r.policy.signer, note: r.policy.note,
            appliedAt: r.appliedAt.rfc3339, actor: r.actor, active: r.version == active,
            text: withText ? r.policy.text : nil, signature: withText ? r.policy.signature : nil)
    }

    func apply(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let body = try await Self.body(request, as: AdminMessage.ApplyRequest.self, limit: 2 << 20)
        let outcome = try await administration.apply(
            text: body.policy, signature: body.signature, dryRun: body.dryRun ?? false, actor: actor)
        return Self.json(outcome)
    }

    func rollback(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let body = try await Self.body(request, as: AdminMessage.RollbackRequest.self, limit: 4096)
        let outcome = try await administration.rollback(
            to: body.version, signature: body.signature, dryRun: body.dryRun ?? false, actor: actor)
        return Self.json(outcome)
    }

    // MARK: Workers

    func workers() -> Response {
        let list = registry.workers.map { w in
            let r = w.record
            return AdminMessage.Worker(
                id: r.id, session: r.session, provider: r.provider, models: r.models, format: r.format,
                claims: r.claims,
                admittedAt: r.admittedAt.rfc3339, lastAttested: r.lastAttested.rfc3339,
                evidenceSHA256: r.evidenceSHA256,
                policyVersion: r.policyVersion, inFlight: w.inFlight)
        }
        return Self.json(AdminMessage.WorkerList(workers: list))
    }

    // MARK: Audit

    func export(_ request: Request) async throws -> Response {
        let q = request.uri.queryParameters
        let format: AuditExportFormat
        if let f = q.get("format") {
            guard let parsed = AuditExportFormat(rawValue: f) else {
                throw AdminError(400, "admin.bad-request", "format must be jsonl or csv")
            }
            format = parsed
        } else {
            format = .jsonl
        }
        func time(_ name: String) throws -> Date? {
            guard let text = q.get(name) else { return nil }
            guard let d = Date.rfc3339(text) else {
                throw AdminError(400, "admin.bad-request", "\(name) must be an RFC 3339 time")
            }
            return d
        }
        let query = AuditQuery(since: try time("since"), until: try time("until"), worker: q.get("worker"))
        // Sign the chain up to now first, so the export is covered to its last entry.
        do { try await trail.checkpoint() } catch {
            throw AdminError(503, "gateway.audit-unavailable", "cannot sign a checkpoint: \(error)")
        }
        let total = try storeCall { try trail.store.count(query) }
        let store = trail.store
        var headers = HTTPFields()
        headers[.contentType] = format.contentType
        headers[HTTPField.Name("ccgate-audit-entries")!] = String(total)
        let pipe = ChunkPipe()
        Thread.detachNewThread {
            do {
                try AuditExport.write(from: store, query: query, format: format, to: { try pipe.send($0) })
                pipe.finish(nil)
            } catch {
                pipe.finish(error)
            }
        }
        return Response(
            status: .ok, headers: headers,
            body: ResponseBody { writer in
                do {
                    for try await chunk in pipe.stream {
                        try await writer.write(ByteBuffer(bytes: chunk))
                        pipe.consumed()
                    }
                } catch {
                    pipe.cancel()
                    throw error
                }
                try await writer.finish(nil)
            })
    }

    func entry(_ seqText: String) throws -> Response {
        guard let seq = Int(seqText), seq > 0 else {
            throw AdminError(400, "admin.bad-request", "the entry id is its sequence number")
        }
        guard let entry = try storeCall({ try trail.store.entry(seq: seq) }) else {
            throw AdminError(404, "audit.no-such-entry", "there is no audit entry \(seq)")
        }
        let evidence = try entry.event.evidenceSHA256.flatMap { digest in
            try storeCall { try trail.store.evidence(sha256: digest) }
        }
        let policy = try entry.event.policyVersion.flatMap { v in try storeCall { try trail.store.policy(version: v) } }
        return Self.json(
            AdminMessage.AuditEntryRecord(
                line: String(decoding: entry.line, as: UTF8.self),
                evidence: evidence.map {
                    .init(envelope: $0.envelope.base64EncodedString(), binding: $0.binding.base64EncodedString())
                },
                policy: policy.map { .init(version: $0.version, text: $0.policy.text) }))
    }

    // MARK: Helpers

    func storeCall<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch { throw AdminError(500, "gateway.store", "\(error)") }
    }

    static func body<T: Decodable>(_ request: Request, as type: T.Type, limit: Int) async throws -> T {
        var request = request
        let buffer: ByteBuffer
        do { buffer = try await request.collectBody(upTo: limit) } catch {
            throw AdminError(413, "admin.bad-request", "the request body is larger than \(limit) bytes")
        }
        do { return try JSONDecoder().decode(T.self, from: Data(buffer.readableBytesView)) } catch {
            throw AdminError(400, "admin.bad-request", "the request body is not the expected JSON: \(error)")
        }
    }

    static func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(value)) ?? Data("{}".utf8)
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(
            status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data + Data("\n".utf8))))
    }
}

/// Admin errors as JSON, unknown routes as `admin.not-found`, anything else as a bare 500.
struct AdminErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        do {
            return try await next(request, context)
        } catch let error as AdminError {
            throw error
        } catch let error as any HTTPResponseError {
            throw AdminError(
                Int(error.status.code), error.status == .notFound ? "admin.not-found" : "admin.bad-request",
                "\(request.method) \(request.uri.path): \(error.status.reasonPhrase)")
        } catch {
            context.logger.error("admin API error", metadata: ["error": "\(error)"])
            throw AdminError(500, "gateway.internal", "internal error")
        }
    }
}

/// Requires the admin token; audits the first login of each process and failed ones.
struct AdminTokenMiddleware<Context: RequestContext>: RouterMiddleware {
    let api: AdminAPI

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        let header = request.headers[.authorization] ?? ""
        // Compared as SHA-256 digests: the time taken does not depend on how much of a guess is right.
        let presented = header.hasPrefix("Bearer ") ? Data(SHA256Digest.of(Data(header.dropFirst(7).utf8))) : Data()
        guard presented == api.tokenDigest else {
            if let suppressed = api.logins.failure(at: Date()) {
                _ = try? await api.trail.record(
                    AuditEvent(
                        .adminLogin, actor: "unknown", decision: .reject, reasons: ["admin.unauthorized"],
                        detail: ["path": request.uri.path, "suppressed_before": String(suppressed)]))
            }
            throw AdminError(401, "admin.unauthorized", "missing or wrong admin token (Authorization: Bearer TOKEN)")
        }
        if api.logins.firstSuccess() {
            _ = try? await api.trail.record(AuditEvent(.adminLogin, actor: api.actor, decision: .accept))
        }
        return try await next(request, context)
    }
}

/// Rate limit for audited login failures: at most 10 entries a minute; the rest are counted and
/// the count goes into the next entry.
final class LoginAudit: Sendable {
    private struct State {
        var windowStart = Date.distantPast
        var inWindow = 0
        var suppressed = 0
        var loggedIn = false
    }
    private let state = Mutex(State())

    /// The number of failures suppressed before this one, or nil if this one is suppressed too.
    func failure(at now: Date) -> Int? {
        state.withLock { s in
            if now.timeIntervalSince(s.windowStart) >= 60 {
                s.windowStart = now
                s.inWindow = 0
            }
            guard s.inWindow < 10 else {
                s.suppressed += 1
                return nil
            }
            s.inWindow += 1
            defer { s.suppressed = 0 }
            return s.suppressed
        }
    }

    func firstSuccess() -> Bool {
        state.withLock { s in
            defer { s.loggedIn = true }
            return !s.loggedIn
        }
    }
}

/// A bounded hand-over of export chunks from the thread reading the database to the response
/// writer: the reader waits while four chunks are unsent, so a slow client never makes the
/// gateway hold a whole export in memory.
final class ChunkPipe: Sendable {
    let stream: AsyncThrowingStream<[UInt8], any Error>
    private let continuation: AsyncThrowingStream<[UInt8], any Error>.Continuation
    private let slots = DispatchSemaphore(value: 4)
    private let cancelled = Atomic<Bool>(false)

    init() {
        let (s, c) = AsyncThrowingStream<[UInt8], any Error>.makeStream()
        stream = s
        continuation = c
    }

    struct Cancelled: Error {}

    /// A reader that takes nothing for this long has gone (or its response never started):
    /// the database reader stops rather than wait forever.
    static let stallLimit = 120

    func send(_ data: Data) throws {
        var waited = 0
        while slots.wait(timeout: .now() + 1) == .timedOut {
            waited += 1
            if cancelled.load(ordering: .relaxed) || waited >= Self.stallLimit { throw Cancelled() }
        }
        if cancelled.load(ordering: .relaxed) { throw Cancelled() }
        continuation.yield([UInt8](data))
    }

    func finish(_ error: (any Error)?) { continuation.finish(throwing: error) }

    func cancel() {
        cancelled.store(true, ordering: .relaxed)
        slots.signal()
    }

    /// The consumer wrote a chunk: a slot is free.
    func consumed() { slots.signal() }
}
