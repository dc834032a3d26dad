import AdmissionCore
import Foundation
import WorkerProtocol
import HTTPTypes
import Hummingbird
import Logging
import NIOCore

/// The OpenAI-compatible API: `GET /v1/models`, `POST /v1/chat/completions`,
/// `POST /v1/completions`. Requests go only to admitted workers serving the requested model,
/// least-loaded first; a worker that fails before the first response byte is replaced by another.
public struct FrontDoor: Sendable {
    public let registry: WorkerRegistry
    /// SHA-256 of each accepted API key: the keys themselves are kept nowhere.
    public let apiKeyDigests: Set<Data>
    /// Largest accepted request body. Chat requests with long histories are tens of KiB.
    public var maxBodySize = 1 << 20
    /// Workers tried for one request before giving up.
    public var maxAttempts = 3

    public init(registry: WorkerRegistry, apiKeys: [String]) {
        self.init(registry: registry, apiKeyDigests: Set(apiKeys.map { Data(SHA256Digest.of(Data($0.utf8))) }))
    }

    public init(registry: WorkerRegistry, apiKeyDigests: Set<Data>) {
        self.registry = registry
        self.apiKeyDigests = apiKeyDigests
    }

    public func router() -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: OpenAIErrorMiddleware())
        router.get("/healthz") { _, _ in "ok\n" }
        let api = router.group("v1").add(middleware: APIKeyMiddleware(keyDigests: apiKeyDigests))
        api.get("models") { _, _ in try self.modelsResponse() }
        api.post("chat/completions") { request, context in
            try await self.forward(request, context, path: "/v1/chat/completions", required: "messages")
        }
        api.post("completions") { request, context in
            try await self.forward(request, context, path: "/v1/completions", required: "prompt")
        }
        return router
    }

    func modelsResponse() throws -> Response {
        let data: [[String: Any]] = registry.models.map {
            ["id": $0, "object": "model", "created": 0, "owned_by": "ccgate"]
        }
        let body = try JSONSerialization.data(withJSONObject: ["object": "list", "data": data], options: [.sortedKeys])
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }

    func forward(_ request: Request, _ context: BasicRequestContext, path: String, required: String) async throws
        -> Response
    {
        var request = request
        let body = Data(try await request.collectBody(upTo: maxBodySize).readableBytesView)
        guard let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any] else {
            throw OpenAIError(.badRequest, "The request body must be a JSON object.")
        }
        guard let model = object["model"] as? String, !model.isEmpty else {
            throw OpenAIError(.badRequest, "'model' is required and must be a string.", param: "model")
        }
        guard object[required] != nil else {
            throw OpenAIError(.badRequest, "'\(required)' is required.", param: required)
        }
        let streaming = (object["stream"] as? Bool) == true
        guard !registry.models.isEmpty, registry.models.contains(model) else {
            throw OpenAIError(
                .notFound, "The model '\(model)' is not served by any admitted worker.", code: "model_not_found",
                param: "model")
        }

        var tried = Set<String>()
        var lastFailure = "no admitted worker serves this model"
        for _ in 0..<maxAttempts {
            guard let link = registry.pick(model: model, excluding: tried) else { break }
            tried.insert(link.workerID)
            let id: UInt64
            let stream: AsyncThrowingStream<ChannelPayload, any Error>
            do { (id, stream) = try link.startRequest(method: "POST", path: path, body: body) } catch {
                lastFailure = "\(error)"
                continue
            }
            var iterator = stream.makeAsyncIterator()
            let first: ChannelPayload?
            do { first = try await iterator.next() } catch {
                lastFailure = "worker \(link.workerID) failed before responding: \(error)"
                context.logger.notice(
                    "retrying on another worker",
                    metadata: ["ccgate.worker.id": "\(link.workerID)", "error": "\(error)"])
                continue
            }
            guard case .head(_, let status, let contentType)? = first else {
                lastFailure = "worker \(link.workerID) ended the response before its head"
                continue
            }
            // Threat: a worker (root on its host) answering with a status or content type no
            // HTTP response can carry, to crash the gateway for every client. Anything outside
            // 200–599, or a content type that is not a short printable header value, is a
            // malformed answer: the client gets 502 and the request is cancelled on the worker.
            guard (200...599).contains(status), Self.isHeaderValue(contentType) else {
                link.cancel(id)
                context.logger.notice(
                    "worker answered a malformed response head",
                    metadata: ["ccgate.worker.id": "\(link.workerID)", "status": "\(status)"])
                throw OpenAIError(
                    .badGateway, "The worker serving this request answered with a malformed response.",
                    type: "server_error", code: "bad_worker_response")
            }
            return respond(
                status: status, contentType: contentType, streaming: streaming, link: link, id: id,
                rest: IteratorHandOff(iterator), logger: context.logger)
        }
        throw OpenAIError(
            .serviceUnavailable, "No admitted worker could serve the request (\(lastFailure)).", type: "server_error",
            code: "no_worker_available")
    }

    /// A content type a response header can carry: 1–256 printable ASCII characters.
    static func isHeaderValue(_ text: String) -> Bool {
        (1...256).contains(text.utf8.count) && text.utf8.allSatisfy { (0x20...0x7e).contains($0) }
    }

    /// Streams the worker's response through as it arrives. If the worker fails mid-stream, an
    /// event-stream response ends with an OpenAI-shaped `error` event; other responses end short.
    func respond(
        status: Int, contentType: String, streaming: Bool, link: WorkerLink, id: UInt64,
        rest: IteratorHandOff, logger: Logger
    ) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = contentType
        if contentType.hasPrefix("text/event-stream") { headers[.cacheControl] = "no-cache" }
        let body = ResponseBody { writer in
            var iterator = rest.iterator
            var finished = false
            defer { if !finished { link.cancel(id) } }
            do {
                while let event = try await iterator.next() {
                    switch event {
                    case .data(_, let bytes): try await writer.write(ByteBuffer(bytes: bytes))
                    case .end:
                        finished = true
                    default: continue
                    }
                    if finished { break }
                }
                finished = true
            } catch let failure as WorkerFailure {
                finished = true
                logger.notice(
                    "worker failed mid-response",
                    metadata: ["ccgate.worker.id": "\(link.workerID)", "error": "\(failure)"])
                if contentType.hasPrefix("text/event-stream") {
                    let error = OpenAIError.body(
                        message: "The worker serving this request failed: \(failure.message)", type: "server_error",
                        code: "worker_failed")
                    try await writer.write(ByteBuffer(bytes: Data("data: ".utf8) + error + Data("\n\n".utf8)))
                }
            }
            try await writer.finish(nil)
        }
        return Response(status: HTTPResponse.Status(code: status), headers: headers, body: body)
    }
}

/// Hands the response iterator from the request handler to the body writer. The two run one
/// after the other, never at once, so the iterator is never used concurrently.
final class IteratorHandOff: @unchecked Sendable {
    let iterator: AsyncThrowingStream<ChannelPayload, any Error>.AsyncIterator
    init(_ iterator: AsyncThrowingStream<ChannelPayload, any Error>.AsyncIterator) { self.iterator = iterator }
}
