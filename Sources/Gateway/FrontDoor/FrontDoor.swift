import AdmissionCore
import AttestationCore
import AuditLog
import Crypto
import Foundation
import GatewayState
import WorkerProtocol
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Policy

/// The OpenAI-compatible API: `GET /v1/models`, `POST /v1/chat/completions`,
/// `POST /v1/completions`. Requests go only to admitted workers serving the requested model,
/// least-loaded first; a worker that fails before the first response byte is replaced by another.
/// `GET /v1/attestation` tells clients who serves them; every relayed response names its worker
/// and policy and carries a signed receipt (``AttestationPublisher``).
public struct FrontDoor: Sendable {
    public let registry: WorkerRegistry
    public let publisher: AttestationPublisher
    /// The accepted API keys and their limits.
    public let keyring: ClientKeyring
    /// Where each served request's counts go.
    public let ledger: UsageLedger?
    public var metrics: GatewayMetrics?
    /// `/readyz`; nil: not served.
    public var readiness: Readiness?
    /// Largest accepted request body. Chat requests with long histories are tens of KiB.
    public var maxBodySize = 1 << 20
    /// Workers tried for one request before giving up.
    public var maxAttempts = 3
    /// Largest non-streamed response: it is held whole so that its receipt can go in a header.
    public var maxResponseSize = 4 << 20

    public init(registry: WorkerRegistry, publisher: AttestationPublisher, keyring: ClientKeyring, ledger: UsageLedger?)
    {
        self.registry = registry
        self.publisher = publisher
        self.keyring = keyring
        self.ledger = ledger
    }

    public func router() -> Router<FrontDoorContext> {
        let router = Router(context: FrontDoorContext.self)
        router.add(middleware: FrontDoorAccess(metrics: metrics))
        router.add(middleware: OpenAIErrorMiddleware())
        router.get("/healthz") { _, _ in "ok\n" }
        if let readiness { router.get("/readyz") { _, _ in await readiness.response() } }
        let api = router.group("v1").add(middleware: APIKeyMiddleware(keyring: keyring))
        api.get("models") { _, context in try self.modelsResponse(allowed: context.grant?.key?.models) }
        api.get("attestation") { request, _ in
            let full = request.uri.queryParameters.get("evidence") == "full"
            let worker: String? = request.uri.queryParameters.get("worker").map { String($0) }
            let document: Data
            do { document = try self.publisher.document(full: full, worker: worker) } catch {
                throw OpenAIError(.badRequest, "\(error)", param: "worker")
            }
            var headers = HTTPFields()
            headers[.contentType] = "application/json"
            headers[.cacheControl] = "no-store"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: document)))
        }
        api.post("chat/completions") { request, context in
            try await self.forward(request, context, path: "/v1/chat/completions", required: "messages")
        }
        api.post("completions") { request, context in
            try await self.forward(request, context, path: "/v1/completions", required: "prompt")
        }
        return router
    }

    /// The models admitted workers serve (those the key may use), each with the time the first
    /// worker serving it now was admitted (`created`), and `owned_by` the providers of those
    /// workers that proved one (else `ccgate`).
    func modelsResponse(allowed: [String]?) throws -> Response {
        var created = [String: Date]()
        var owners = [String: Set<String>]()
        for worker in registry.workers {
            for model in worker.models where allowed?.contains(model) ?? true {
                created[model] = min(created[model] ?? worker.admittedAt, worker.admittedAt)
                if let provider = worker.record.provider { owners[model, default: []].insert(provider) }
            }
        }
        let data: [[String: Any]] = created.keys.sorted().map { model in
            [
                "id": model, "object": "model", "created": Int(created[model]!.timeIntervalSince1970),
                "owned_by": owners[model].map { $0.sorted().joined(separator: ",") } ?? "ccgate",
            ]
        }
        let body = try JSONSerialization.data(withJSONObject: ["object": "list", "data": data], options: [.sortedKeys])
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }

    func forward(_ request: Request, _ context: FrontDoorContext, path: String, required: String) async throws
        -> Response
    {
        var request = request
        let body = Data(try await request.collectBody(upTo: maxBodySize).readableBytesView)
        let requestSHA256 = HashAlgorithm.sha256.hash(body).hex
        let asked = try Self.minimumTier(request)
        guard let grant = context.grant else { throw OpenAIError.unauthorized }
        let trace = RequestTrace(
            id: context.requestID, ledgerID: context.ledgerID, note: context.note, logger: context.logger)
        if request.headers[Self.e2eHeader] != nil {
            return try await forwardSealed(
                body, path: path, requestSHA256: requestSHA256, grant: grant, asked: asked, trace: trace)
        }
        return try await forwardPlain(
            body, path: path, required: required, requestSHA256: requestSHA256, grant: grant, asked: asked,
            trace: trace)
    }

    /// The stronger of the tier a request asks for and the one its key requires.
    static func stronger(_ a: AssuranceTier?, _ b: AssuranceTier?) -> AssuranceTier? {
        guard let a, let b else { return a ?? b }
        return a < b ? b : a
    }

    /// A meter for a request the key was admitted for; nil without a ledger.
    func meter(_ grant: ClientGrant, model: String, requestBytes: Int, trace: RequestTrace) throws -> UsageMeter? {
        guard let ledger else { return nil }
        // Threat: serving requests that cannot be recorded (the store refuses writes): the
        // provider would go unpaid and quotas uncounted. Past the backlog limit, refuse.
        guard !ledger.isBacklogged else {
            throw OpenAIError(
                .serviceUnavailable, "The usage ledger cannot be written; try again later.", type: "server_error",
                code: "ledger_unavailable")
        }
        let (keyring, metrics) = (self.keyring, self.metrics)
        trace.note.metered()
        return UsageMeter(
            requestID: trace.ledgerID, keyID: grant.keyID, model: model, requestBytes: requestBytes,
            time: publisher.clock.now()
        ) { row in
            ledger.record(row)
            keyring.charge(keyID: row.keyID, tokens: row.totalTokens)
            metrics?.request(row)
            trace.access(row)
        }
    }

    /// The body the engine gets: a stream is always asked for its counts; `strip` when the client
    /// did not ask, so the event carrying them is taken back out.
    static func askingForUsage(_ body: Data) throws -> (body: Data, strip: Bool) {
        do {
            if let withUsage = try StreamUsage.requestingUsage(body) { return (withUsage, true) }
            return (body, false)
        } catch {
            throw OpenAIError(.badRequest, "\(error).", code: "invalid_stream_options", param: "stream_options")
        }
    }

    func forwardPlain(
        _ body: Data, path: String, required: String, requestSHA256: String, grant: ClientGrant,
        asked: AssuranceTier?, trace: RequestTrace
    ) async throws -> Response {
        let logger = trace.logger
        let model = try servedModel(body, required: required)
        let minimumTier = Self.stronger(asked, try keyring.admit(grant, model: model))
        let (engineBody, stripUsage) = try Self.askingForUsage(body)
        let meter = try meter(grant, model: model, requestBytes: body.count, trace: trace)
        var tried = Set<String>()
        var lastFailure = "no admitted worker serves this model"
        for round in 0..<maxAttempts {
            guard let link = registry.pick(model: model, excluding: tried, minimumTier: minimumTier) else {
                if tried.isEmpty, let minimumTier {
                    lastFailure = "no admitted worker serving this model meets the tier \(minimumTier.rawValue)"
                }
                break
            }
            tried.insert(link.workerID)
            let id: UInt64
            let status: Int
            let contentType: String
            var iterator: AsyncThrowingStream<ChannelPayload, any Error>.AsyncIterator
            switch await attempt(link, path: path, body: engineBody, requestID: trace.id, logger: logger) {
            case .failed(let why):
                lastFailure = why
                continue
            case .head(let i, let s, let t, let rest): (id, status, contentType, iterator) = (i, s, t, rest)
            }
            // Threat: a worker (root on its host) answering with a status or content type no
            // HTTP response can carry, to crash the gateway for every client. Anything outside
            // 200–599, or a content type that is not a short printable header value, is a
            // malformed answer: the client gets 502 and the request is cancelled on the worker.
            guard (200...599).contains(status), Self.isHeaderValue(contentType) else {
                link.cancel(id)
                logger.notice(
                    "worker answered a malformed response head",
                    metadata: ["ccgate.worker.id": "\(link.workerID)", "status": "\(status)"])
                meter?.finish(status: 502, usage: nil, streamed: false)
                throw OpenAIError(
                    .badGateway, "The worker serving this request answered with a malformed response.",
                    type: "server_error", code: "bad_worker_response")
            }
            // A worker that is busy (429) or unavailable (503) before any byte: another serves
            // the request if one can; else its answer is the client's.
            if [429, 503].contains(status), round < maxAttempts - 1,
                registry.pick(model: model, excluding: tried, minimumTier: minimumTier) != nil
            {
                link.cancel(id)
                lastFailure = "worker \(link.workerID) answered \(status)"
                continue
            }
            guard let served = publisher.served(link) else {
                link.cancel(id)
                lastFailure = "worker \(link.workerID) left before responding"
                continue
            }
            meter?.worker = link.workerID
            meter?.provider = served.provider
            let exchange = Exchange(
                status: status, contentType: contentType, model: model, path: path, requestSHA256: requestSHA256,
                served: served, link: link, id: id, meter: meter, stripUsage: stripUsage)
            if contentType.hasPrefix("text/event-stream") {
                return respond(exchange, rest: IteratorHandOff(iterator), logger: logger)
            }
            return try await respondWhole(exchange, &iterator, logger: logger)
        }
        meter?.finish(status: 503, usage: nil, streamed: false)
        throw OpenAIError(
            .serviceUnavailable, "No admitted worker could serve the request (\(lastFailure)).", type: "server_error",
            code: "no_worker_available")
    }

    /// A request started on one worker, up to its response head.
    enum Attempt {
        case head(
            id: UInt64, status: Int, contentType: String, AsyncThrowingStream<ChannelPayload, any Error>.AsyncIterator)
        /// Why this worker could not be used (another may be tried).
        case failed(String)
    }

    func attempt(_ link: WorkerLink, path: String, body: Data, requestID: String, logger: Logger) async -> Attempt {
        let id: UInt64
        let stream: AsyncThrowingStream<ChannelPayload, any Error>
        do { (id, stream) = try link.startRequest(method: "POST", path: path, body: body, requestID: requestID) } catch
        {
            return .failed("\(error)")
        }
        var iterator = stream.makeAsyncIterator()
        let first: ChannelPayload?
        do { first = try await iterator.next() } catch {
            logger.notice(
                "retrying on another worker", metadata: ["ccgate.worker.id": "\(link.workerID)", "error": "\(error)"])
            return .failed("worker \(link.workerID) failed before responding: \(error)")
        }
        guard case .head(_, let status, let contentType)? = first else {
            return .failed("worker \(link.workerID) ended the response before its head")
        }
        return .head(id: id, status: status, contentType: contentType, iterator)
    }

    /// The model a plain request names, checked to be served; its other required field present.
    ///
    /// Threat: a request naming its model twice, routed (and receipted) under one while the
    /// engine reads the other: refused.
    func servedModel(_ body: Data, required: String) throws -> String {
        let object: JSONMembers
        do { object = try JSONMembers(body) } catch {
            throw OpenAIError(.badRequest, "The request body must be a JSON object (\(error)).")
        }
        guard let model = object.string("model"), !model.isEmpty else {
            throw OpenAIError(.badRequest, "'model' is required and must be a string.", param: "model")
        }
        guard object.duplicates.isDisjoint(with: ["model", "stream"]) else {
            throw OpenAIError(.badRequest, "'model' and 'stream' may each appear only once.", param: "model")
        }
        // Threat: a stream the gateway does not see as one (`"stream": 1` or `"true"`, which
        // engines coerce), so that it is not asked for its counts: only a boolean is a stream flag.
        guard [nil, .bool, .null].contains(object.members["stream"]?.kind) else {
            throw OpenAIError(
                .badRequest, "'stream' must be true or false.", code: "invalid_stream", param: "stream")
        }
        guard object.members[required] != nil else {
            throw OpenAIError(.badRequest, "'\(required)' is required.", param: required)
        }
        guard !registry.models.isEmpty, registry.models.contains(model) else {
            throw OpenAIError(
                .notFound, "The model '\(model)' is not served by any admitted worker.", code: "model_not_found",
                param: "model")
        }
        return model
    }

    static let minimumTierHeader = HTTPField.Name("ccgate-min-tier")!

    /// The request's `ccgate-min-tier` (tdx, sgx, tpm-measured-boot, tpm-agent-log), if any.
    static func minimumTier(_ request: Request) throws -> AssuranceTier? {
        guard let text = request.headers[minimumTierHeader] else { return nil }
        guard let tier = AssuranceTier(rawValue: text.trimmingCharacters(in: .whitespaces)) else {
            throw OpenAIError(
                .badRequest,
                "ccgate-min-tier must be one of \(AssuranceTier.allCases.map(\.rawValue).joined(separator: ", ")).",
                param: "ccgate-min-tier")
        }
        return tier
    }

    /// A content type a response header can carry: 1–256 printable ASCII characters.
    static func isHeaderValue(_ text: String) -> Bool {
        (1...256).contains(text.utf8.count) && text.utf8.allSatisfy { (0x20...0x7e).contains($0) }
    }

    /// One relayed response: what the receipt is signed over, and the request on the worker.
    struct Exchange {
        let status: Int
        let contentType: String
        let model: String
        let path: String
        let requestSHA256: String
        let served: AttestationPublisher.Served
        let link: WorkerLink
        let id: UInt64
        /// Where the request's counts go; nil without a ledger.
        var meter: UsageMeter?
        /// Whether the engine's usage event is taken out of the stream (the client did not ask for it).
        var stripUsage = false
    }

    /// Streams an event stream through as it arrives, hashing it, and ends it with the signed
    /// receipt as a last `ccgate-receipt` event after `[DONE]` (OpenAI clients stop reading at
    /// `[DONE]`). If the worker fails mid-stream, the stream ends with an OpenAI-shaped `error`
    /// event, and the receipt covers that too.
    ///
    /// Threat: a worker writing a receipt event of its own (replaying an earlier stream and its
    /// genuine receipt) so that a client takes it for this one. A worker's bytes that name the
    /// receipt event end the stream with an error instead; and the gateway's receipt always starts
    /// an event of its own.
    func respond(_ exchange: Exchange, rest: IteratorHandOff, logger: Logger) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = exchange.contentType
        headers[.cacheControl] = "no-cache"
        publisher.name(exchange.served, in: &headers)
        let (link, id) = (exchange.link, exchange.id)
        let body = ResponseBody { writer in
            var iterator = rest.iterator
            var finished = false
            var hasher = SHA256()
            var counts = UsageScan()
            var filter = exchange.stripUsage ? UsageEventFilter() : nil
            var watch = ReceiptEventGuard()
            defer {
                if !finished { link.cancel(id) }
                // A client gone mid-stream: the request is recorded with what was sent.
                exchange.meter?.finish(
                    status: exchange.status, usage: filter?.scan.usage ?? counts.usage, streamed: true)
            }
            func pass(_ received: Data) async throws {
                let bytes = filter?.pass(received) ?? received
                guard !watch.namesReceipt(in: bytes) else {
                    throw WorkerFailure(message: "the worker's stream carries a receipt event of its own")
                }
                hasher.update(data: bytes)
                counts.scan(bytes)
                exchange.meter?.sent(bytes)
                try await writer.write(ByteBuffer(bytes: bytes))
            }
            do {
                while let event = try await iterator.next() {
                    switch event {
                    case .data(_, let bytes): try await pass(bytes)
                    case .end:
                        finished = true
                    default: continue
                    }
                    if finished { break }
                }
                finished = true
                if var rest = filter {
                    filter = nil
                    try await pass(rest.finish())
                    if let taken = rest.scan.usage { counts.take(taken) }
                }
                if watch.unterminatedLineNamesReceipt {
                    throw WorkerFailure(message: "the worker's stream carries a receipt event of its own")
                }
            } catch let failure as WorkerFailure {
                finished = true
                try await Self.emit(failure, of: exchange, &hasher, &writer, logger: logger)
            }
            // The receipt starts an event of its own, whatever the worker's last bytes were.
            if !watch.endsAnEvent {
                let separator = Data("\n\n".utf8)
                hasher.update(data: separator)
                try await writer.write(ByteBuffer(bytes: separator))
            }
            try await endStream(exchange, hasher, usage: Self.jsonValue(filter?.scan.usage ?? counts.usage), &writer)
        }
        return Response(status: HTTPResponse.Status(code: exchange.status), headers: headers, body: body)
    }

    /// A worker that failed mid-stream: logged, and an OpenAI-shaped `error` event the receipt covers.
    static func emit(
        _ failure: WorkerFailure, of exchange: Exchange, _ hasher: inout SHA256,
        _ writer: inout any ResponseBodyWriter, logger: Logger
    ) async throws {
        logger.notice(
            "worker failed mid-response",
            metadata: ["ccgate.worker.id": "\(exchange.link.workerID)", "error": "\(failure)"])
        let error = OpenAIError.body(
            message: "The worker serving this request failed: \(failure.message)", type: "server_error",
            code: "worker_failed")
        let bytes = Data("data: ".utf8) + error + Data("\n\n".utf8)
        hasher.update(data: bytes)
        try await writer.write(ByteBuffer(bytes: bytes))
    }

    /// Ends a stream with its receipt over every byte sent before it.
    func endStream(
        _ exchange: Exchange, _ hasher: SHA256, usage: JSONValue, _ writer: inout any ResponseBodyWriter
    ) async throws {
        let receipt = publisher.receipt(
            exchange.served, path: exchange.path, request: exchange.requestSHA256,
            response: Data(hasher.finalize()).hex, status: exchange.status, model: exchange.model, usage: usage)
        try await writer.write(ByteBuffer(bytes: receipt.event))
        try await writer.finish(nil)
    }

    /// Collects a plain response whole (up to ``maxResponseSize``) so that its receipt, over its
    /// exact bytes, can travel in the `ccgate-receipt` header. A worker that fails before the
    /// end, or answers too much, gets the client a 502 instead of a truncated body.
    func respondWhole(
        _ exchange: Exchange, _ iterator: inout AsyncThrowingStream<ChannelPayload, any Error>.AsyncIterator,
        logger: Logger
    ) async throws -> Response {
        var body = Data()
        do {
            loop: while let event = try await iterator.next() {
                switch event {
                case .data(_, let bytes):
                    body.append(bytes)
                    guard body.count <= maxResponseSize else {
                        exchange.link.cancel(exchange.id)
                        // Recorded (the worker is named) but not billed: the client got no answer.
                        exchange.meter?.finish(status: 502, usage: nil, streamed: false)
                        throw OpenAIError(
                            .badGateway, "The worker's response exceeds \(maxResponseSize) bytes.",
                            type: "server_error", code: "bad_worker_response")
                    }
                case .end: break loop
                default: continue
                }
            }
        } catch let failure as WorkerFailure {
            logger.notice(
                "worker failed mid-response",
                metadata: ["ccgate.worker.id": "\(exchange.link.workerID)", "error": "\(failure)"])
            exchange.meter?.finish(status: 502, usage: nil, streamed: false)
            throw OpenAIError(
                .badGateway, "The worker serving this request failed: \(failure.message)", type: "server_error",
                code: "worker_failed")
        }
        let counts = UsageScan.usage(inJSON: body)
        exchange.meter?.sent(body)
        exchange.meter?.finish(status: exchange.status, usage: counts, streamed: false)
        let receipt = publisher.receipt(
            exchange.served, path: exchange.path, request: exchange.requestSHA256,
            response: HashAlgorithm.sha256.hash(body).hex, status: exchange.status, model: exchange.model,
            usage: Self.jsonValue(counts))
        var headers = HTTPFields()
        headers[.contentType] = exchange.contentType
        publisher.name(exchange.served, in: &headers)
        headers[AttestationPublisher.receiptHeader] = receipt.headerValue
        return Response(
            status: HTTPResponse.Status(code: exchange.status), headers: headers,
            body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }

    /// The token counts of a JSON response, as the receipt carries them (``UsageScan``).
    static func usage(inObject body: Data) -> JSONValue { jsonValue(UsageScan.usage(inJSON: body)) }

    static func jsonValue(_ counts: UsageScan.Counts?) -> JSONValue {
        guard let counts else { return .null }
        return .object(Dictionary(uniqueKeysWithValues: counts.fields.map { ($0.name, JSONValue.int($0.value)) }))
    }

}

/// Watches a worker's event stream, line by line across chunks, for an `event:` line naming the
/// gateway's receipt event (`event:ccgate-receipt` or `event: ccgate-receipt`, lines ended by LF,
/// CR or CRLF). Only lines that start an event line can name it: text inside a JSON data line
/// cannot (JSON escapes line breaks).
package struct ReceiptEventGuard {
    package init() {}
    static let names: Set<Data> = [
        Data("event:\(SignedReceipt.eventName)".utf8), Data("event: \(SignedReceipt.eventName)".utf8),
    ]
    /// The current line so far, while it is short enough to be such a line.
    private var line = Data()
    private var tooLong = false
    private var lastTwo = Data()

    /// Whether `chunk` completes a line naming the receipt event.
    package mutating func namesReceipt(in chunk: Data) -> Bool {
        lastTwo = Data((lastTwo + chunk.suffix(2)).suffix(2))
        var start = chunk.startIndex
        while let end = chunk[start...].firstIndex(where: { $0 == 0x0A || $0 == 0x0D }) {
            extend(chunk[start..<end])
            if !tooLong, Self.names.contains(line) { return true }
            line.removeAll()
            tooLong = false
            start = chunk.index(after: end)
        }
        extend(chunk[start...])
        return false
    }

    private mutating func extend(_ part: Data.SubSequence) {
        guard !tooLong else { return }
        if line.count + part.count > 32 {
            tooLong = true
            line.removeAll()
        } else {
            line.append(contentsOf: part)
        }
    }

    /// Whether the stream's last, unterminated line would name the receipt once ended.
    package var unterminatedLineNamesReceipt: Bool { !tooLong && Self.names.contains(line) }
    /// Whether the stream so far ends an event (a blank line), so the next bytes start one.
    package var endsAnEvent: Bool { lastTwo.isEmpty || lastTwo == Data("\n\n".utf8) }
}

/// Hands the response iterator from the request handler to the body writer. The two run one
/// after the other, never at once, so the iterator is never used concurrently.
final class IteratorHandOff: @unchecked Sendable {
    let iterator: AsyncThrowingStream<ChannelPayload, any Error>.AsyncIterator
    init(_ iterator: AsyncThrowingStream<ChannelPayload, any Error>.AsyncIterator) { self.iterator = iterator }
}
