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
        guard response.status == .ok || response.headers.first(name: "ccgate-e2e-content-type") != nil else {
            // The gateway's own refusal (no worker, bad key): passed on as it came.
            let text = try await response.body.collect(upTo: 1 << 20)
            if response.status.code == 503 { try? await refresh() }
            var headers = HTTPFields()
            headers[.contentType] = response.headers.first(name: "content-type") ?? "application/json"
            return Response(
                status: .init(code: Int(response.status.code)), headers: headers, body: .init(byteBuffer: text))
        }
        var headers = HTTPFields()
        headers[.contentType] = response.headers.first(name: "ccgate-e2e-content-type") ?? "application/json"
        for name in ["ccgate-worker", "ccgate-policy"] {
            if let value = response.headers.first(name: name) { headers[HTTPField.Name(name)!] = value }
        }
        headers[HTTPField.Name("ccgate-e2e-tier")!] = worker.tier
        let reader = SealedAnswer(
            opener: opener, request: sealedBody, key: configuration.gatewayKey, body: response.body, logger: logger)
        let status = HTTPResponse.Status(code: Int(response.status.code))
        if stream {
            return Response(
                status: status, headers: headers,
                body: ResponseBody { writer in
                    let problem = try await reader.read { plain in try await writer.write(ByteBuffer(bytes: plain)) }
                    if let problem {
                        let event = OpenAIError.body(message: problem, type: "server_error", code: "e2e_unverified")
                        try await writer.write(ByteBuffer(bytes: Data("data: ".utf8) + event + Data("\n\n".utf8)))
                    }
                    try await writer.finish(nil)
                })
        }
        var plain = Data()
        if let problem = try await reader.read({ plain.append($0) }) {
            throw OpenAIError(.badGateway, problem, type: "server_error", code: "e2e_unverified")
        }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: plain)))
    }
}

/// Reads a gateway-blind answer: server-sent events of sealed frames, token counts and the
/// receipt. Hands each opened frame to `emit`; returns a problem (unopened frame, missing end,
/// receipt not verifying) or nil.
struct SealedAnswer {
    let opener: EndToEnd.ResponseOpener
    let request: Data
    let key: Ed25519PublicKey
    let body: HTTPClientResponse.Body
    let logger: Logger

    func read(_ emit: (Data) async throws -> Void) async throws -> String? {
        var buffer = Data()
        var covered = Data()
        var receipt: SignedReceipt?
        for try await part in body {
            buffer.append(contentsOf: part.readableBytesView)
            guard buffer.count <= 8 << 20 else { return "an event larger than 8 MiB" }
            while let end = buffer.range(of: Data("\n\n".utf8)) {
                let event = Data(buffer[buffer.startIndex..<end.upperBound])
                buffer = Data(buffer[end.upperBound...])
                let (name, data) = Self.parse(event)
                if name == SignedReceipt.eventName {
                    receipt = try? SignedReceipt(text: String(decoding: data, as: UTF8.self))
                    continue
                }
                covered.append(event)
                switch name {
                case EndToEnd.frameEvent:
                    guard let frame = Data(base64Encoded: data) else { return "a frame that is not base64" }
                    do { try await emit(try opener.open(frame)) } catch { return "the answer: \(error)" }
                case EndToEnd.usageEvent: continue
                default:
                    // The gateway's own error event (the worker failed): passed on as it is.
                    if !data.isEmpty { try await emit(Data("data: ".utf8) + data + Data("\n\n".utf8)) }
                }
            }
        }
        do { try opener.finish() } catch { return "the answer: \(error)" }
        guard let receipt else { return "the answer carries no receipt" }
        do { try receipt.verify(key: key, response: covered, request: request) } catch {
            logger.error("receipt does not verify", metadata: ["error": "\(error)"])
            return "the receipt does not verify: \(error)"
        }
        return nil
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
