import AsyncHTTPClient
import AttestationCore
import AuditLog
import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Sealing

/// The proxy's loopback OpenAI API: `GET /v1/models` (the models a verified worker serves) and
/// the two completion routes, each sent end to end.
extension ClientProxy {
    public func router() -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: OpenAIErrorMiddleware())
        router.get("/v1/models") { _, _ in
            let data = self.verified.keys.sorted().map {
                JSONValue.object(["id": .string($0), "object": .string("model"), "owned_by": .string("ccgate")])
            }
            return Self.json(.object(["object": .string("list"), "data": .array(data)]))
        }
        router.post("/v1/chat/completions") { request, _ in
            try await self.forward(request, path: "/v1/chat/completions")
        }
        router.post("/v1/completions") { request, _ in try await self.forward(request, path: "/v1/completions") }
        return router
    }

    static func json(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(
            status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: CanonicalJSON.encode(value))))
    }

    func forward(_ request: Request, path: String) async throws -> Response {
        var request = request
        let body = Data(try await request.collectBody(upTo: 1 << 20).readableBytesView)
        guard let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any],
            let model = object["model"] as? String
        else {
            throw OpenAIError(.badRequest, "The request body must be a JSON object with a 'model'.", param: "model")
        }
        let stream = (object["stream"] as? Bool) == true
        guard let worker = verified[model]?.randomElement() else {
            throw OpenAIError(
                .serviceUnavailable,
                "No worker serving '\(model)' is accepted by this client's policy.", type: "server_error",
                code: "no_verified_worker")
        }
        let (sealed, opener) = try EndToEnd.seal(
            body, path: path, model: model, stream: stream, worker: worker.worker, workerKey: worker.key)
        let sealedBody = try JSONEncoder().encode(sealed)
        var upstream = HTTPClientRequest(url: configuration.gateway.absoluteString + path)
        upstream.method = .POST
        upstream.headers.add(name: "Content-Type", value: "application/json")
        upstream.headers.add(name: EndToEnd.header, value: EndToEnd.version)
        // The proxy's own key when it has one; else the local client's.
        let key = configuration.apiKey ?? request.headers[.authorization].map { String($0.dropFirst("Bearer ".count)) }
        if let key { upstream.headers.add(name: "Authorization", value: "Bearer \(key)") }
        upstream.body = .bytes(ByteBuffer(bytes: sealedBody))
        let response = try await http.execute(upstream, timeout: .seconds(600))
        guard response.status == .ok, response.headers.first(name: "ccgate-e2e-content-type") != nil else {
            throw try await refusal(response)
        }
        let answer = SealedAnswer(
            opener: opener, request: sealedBody, key: configuration.gatewayKey, body: response.body,
            expected: .init(worker: worker.worker, path: path, model: model))
        let head: EndToEnd.Head
        do { head = try await answer.head() } catch {
            throw OpenAIError(.badGateway, "\(error)", type: "server_error", code: "e2e_unverified")
        }
        // What the client is told comes from what it verified and what the worker sealed.
        var headers = HTTPFields()
        headers[.contentType] = head.contentType
        headers[HTTPField.Name("ccgate-worker")!] = worker.worker
        headers[HTTPField.Name("ccgate-e2e-tier")!] = worker.tier
        let status = HTTPResponse.Status(code: head.status)
        if stream {
            return Response(
                status: status, headers: headers,
                body: ResponseBody { writer in
                    try await Self.relay(answer, to: &writer)
                })
        }
        var plain = Data()
        do {
            while let chunk = try await answer.next() {
                plain.append(chunk)
                guard plain.count <= 4 << 20 else { throw ClientProxyError("an answer over 4 MiB") }
            }
            try answer.finish(status: head.status)
        } catch {
            throw OpenAIError(.badGateway, "\(error)", type: "server_error", code: "e2e_unverified")
        }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: plain)))
    }

    /// Writes an opened stream through, one chunk behind: the last chunk (with the engine's
    /// `[DONE]`) goes out only once the answer ended whole and its receipt verified, so that an
    /// SDK that stops at `[DONE]` sees a failure as an error event instead of never.
    static func relay(_ answer: SealedAnswer, to writer: inout any ResponseBodyWriter) async throws {
        var pending: Data?
        do {
            while let chunk = try await answer.next() {
                if let pending { try await writer.write(ByteBuffer(bytes: pending)) }
                pending = chunk
            }
            try answer.finish(status: nil)
            if let pending { try await writer.write(ByteBuffer(bytes: pending)) }
        } catch {
            let event = OpenAIError.body(message: "\(error)", type: "server_error", code: "e2e_unverified")
            try await writer.write(ByteBuffer(bytes: Data("data: ".utf8) + event + Data("\n\n".utf8)))
        }
        try await writer.finish(nil)
    }

    /// A gateway answer that is not a gateway-blind answer: its refusals (4xx, 5xx) are passed on
    /// as this proxy's own error, never as the gateway's bytes; anything else is a 502.
    func refusal(_ response: HTTPClientResponse) async throws -> OpenAIError {
        let code = Int(response.status.code)
        let text = (try? await response.body.collect(upTo: 1 << 16)).map { String(buffer: $0) } ?? ""
        if code == 503 { await refreshSoon() }
        guard (400...599).contains(code) else {
            return OpenAIError(
                .badGateway, "The gateway answered HTTP \(code) without a sealed answer.", type: "server_error",
                code: "e2e_unverified")
        }
        let message = (try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)))?.object?["error"]?.object?[
            "message"]?.string
        return OpenAIError(
            .init(code: code), "The gateway refused the request: \(message ?? "HTTP \(code)")", type: "server_error",
            code: "gateway_refused")
    }
}

/// Reads a gateway-blind answer: server-sent events of sealed frames, token counts and the
/// receipt, and nothing else. The head first (``head()``), then the opened chunks (``next()``),
/// then ``finish(status:)``: the final frame came, and the receipt verifies under the pinned key
/// over exactly the bytes received, naming the worker, path and model this request was sealed for.
///
/// Threat: a gateway (or a network over plain HTTP) inventing events, e.g. a fake answer and its
/// `[DONE]` ahead of the real frames. Any event other than the three kinds ends the answer.
package final class SealedAnswer: @unchecked Sendable {
    package struct Expected {
        let worker: String
        let path: String
        let model: String
        package init(worker: String, path: String, model: String) {
            self.worker = worker
            self.path = path
            self.model = model
        }
    }
    let opener: EndToEnd.ResponseOpener
    let request: Data
    let key: Ed25519PublicKey
    let expected: Expected
    private let pull: () async throws -> ByteBuffer?
    private var buffer = Data()
    private var hasher = SHA256()
    private var receipt: SignedReceipt?
    private var sealedStatus: Int?

    package init<Body: AsyncSequence & Sendable>(
        opener: EndToEnd.ResponseOpener, request: Data, key: Ed25519PublicKey, body: Body, expected: Expected
    ) where Body.Element == ByteBuffer {
        self.opener = opener
        self.request = request
        self.key = key
        self.expected = expected
        let box = IteratorBox(body.makeAsyncIterator())
        pull = { try await box.next() }
    }

    /// The body's iterator, advanced by one reader at a time.
    final class IteratorBox<I: AsyncIteratorProtocol>: @unchecked Sendable {
        var iterator: I
        init(_ iterator: I) { self.iterator = iterator }
        func next() async throws -> I.Element? { try await iterator.next() }
    }

    /// The next event: its name and data; nil at the end of the body.
    private func event() async throws -> (name: String?, data: Data, raw: Data)? {
        while true {
            if let end = buffer.range(of: Data("\n\n".utf8)) {
                let raw = Data(buffer[buffer.startIndex..<end.upperBound])
                buffer = Data(buffer[end.upperBound...])
                let (name, data) = Self.parse(raw)
                return (name, data, raw)
            }
            guard let part = try await pull() else { return nil }
            buffer.append(contentsOf: part.readableBytesView)
            guard buffer.count <= 8 << 20 else { throw ClientProxyError("an event larger than 8 MiB") }
        }
    }

    /// The next frame's bytes, hashing what the receipt must cover; nil once the receipt came.
    private func frame() async throws -> Data? {
        while let (name, data, raw) = try await event() {
            switch name {
            case SignedReceipt.eventName?:
                receipt = try? SignedReceipt(text: String(decoding: data, as: UTF8.self))
                guard receipt != nil else { throw ClientProxyError("the receipt is malformed") }
                return nil
            case EndToEnd.frameEvent?:
                hasher.update(data: raw)
                guard receipt == nil, let frame = Data(base64Encoded: data) else {
                    throw ClientProxyError("a frame that is not base64, or after the receipt")
                }
                return frame
            case EndToEnd.usageEvent?:
                hasher.update(data: raw)
            default:
                throw ClientProxyError("the gateway sent an event that is not part of a sealed answer")
            }
        }
        return nil
    }

    package func head() async throws -> EndToEnd.Head {
        guard let frame = try await frame() else { throw ClientProxyError("the answer has no head") }
        let head = try opener.openHead(frame)
        sealedStatus = head.status
        return head
    }

    package func next() async throws -> Data? {
        guard let frame = try await frame() else { return nil }
        return try opener.open(frame)
    }

    package func finish(status: Int?) throws {
        try opener.finish()
        guard let receipt else { throw ClientProxyError("the answer carries no receipt") }
        do { try receipt.verify(key: key, request: request) } catch {
            throw ClientProxyError("the receipt does not verify: \(error)")
        }
        let r = receipt.receipt
        guard r.responseSHA256 == Data(hasher.finalize()).hex else {
            throw ClientProxyError("the receipt does not cover the answer received")
        }
        guard r.worker == expected.worker, r.path == expected.path, r.model == expected.model,
            r.status == sealedStatus
        else {
            throw ClientProxyError("the receipt names another worker, path, model or status than this answer's")
        }
    }

    /// The event's name and its data (one `data:` line per event here).
    static func parse(_ event: Data) -> (String?, Data) {
        var name: String?
        var data = Data()
        for line in event.split(separator: 0x0A) {
            if line.starts(with: Data("event: ".utf8)) {
                name = String(decoding: line.dropFirst(7), as: UTF8.self)
            } else if line.starts(with: Data("data: ".utf8)) {
                data = Data(line.dropFirst(6))
            }
        }
        return (name, data)
    }
}
