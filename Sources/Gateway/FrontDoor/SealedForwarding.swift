import AdmissionCore
import AttestationCore
import AuditLog
import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Policy
import Sealing
import WorkerProtocol

/// Gateway-blind requests (`ccgate-e2e: v1`): the body is an ``EndToEnd/Request`` sealed by the
/// client to one worker's attested key. The gateway reads only its routing fields, passes the
/// ciphertext to that worker, and streams the worker's sealed frames back as server-sent events
/// (`ccgate-e2e` frames, `ccgate-usage` counts in the clear, then the receipt), never holding a key
/// that opens either.
///
/// Threat: the gateway itself (its memory, logs, database, audit export) reading prompts. It
/// has no key to; nothing of the body but the routing fields is parsed, logged or stored.
extension FrontDoor {
    static let e2eHeader = HTTPField.Name(EndToEnd.header)!
    static let e2eContentTypeHeader = HTTPField.Name("ccgate-e2e-content-type")!

    func forwardSealed(
        _ body: Data, path: String, requestSHA256: String, grant: ClientGrant, asked: AssuranceTier?,
        trace: RequestTrace
    ) async throws -> Response {
        let logger = trace.logger
        guard let sealed = try? JSONDecoder().decode(EndToEnd.Request.self, from: body) else {
            throw OpenAIError(.badRequest, "A gateway-blind request must be a sealed request (ccgate-e2e: v1).")
        }
        let minimumTier = Self.stronger(asked, try keyring.admit(grant, model: sealed.model))
        // Sealed to one worker's key: only that session can serve it; no other worker is tried.
        guard let link = registry.link(sealed.worker), !link.isClosed, link.models.contains(sealed.model),
            HashAlgorithm.sha256.hash(link.kemPublicKey).hex == sealed.keySHA256,
            minimumTier.map({ registry.tier(workerID: sealed.worker)?.meets($0) == true }) ?? true
        else {
            throw OpenAIError(
                .serviceUnavailable,
                "Worker '\(sealed.worker)' does not serve '\(sealed.model)' under the key this request is sealed to (fetch /v1/attestation again).",
                type: "server_error", code: "e2e_worker_unavailable")
        }
        let meter = try meter(grant, model: sealed.model, requestBytes: body.count, trace: trace)
        meter?.worker = link.workerID
        let (id, stream) = try link.startSealedRequest(path: path, envelope: body, requestID: trace.id)
        var iterator = stream.makeAsyncIterator()
        let first: ChannelPayload?
        do { first = try await iterator.next() } catch {
            meter?.finish(status: 502, usage: nil, streamed: true)
            throw OpenAIError(
                .badGateway, "The worker failed before responding: \(error)", type: "server_error",
                code: "worker_failed")
        }
        guard case .head(_, let status, let contentType)? = first, (200...599).contains(status),
            Self.isHeaderValue(contentType), let served = publisher.served(link)
        else {
            link.cancel(id)
            meter?.finish(status: 502, usage: nil, streamed: true)
            throw OpenAIError(
                .badGateway, "The worker serving this request answered with a malformed response.",
                type: "server_error", code: "bad_worker_response")
        }
        meter?.provider = served.provider
        var headers = HTTPFields()
        headers[.contentType] = "text/event-stream"
        headers[.cacheControl] = "no-cache"
        headers[Self.e2eContentTypeHeader] = contentType
        publisher.name(served, in: &headers)
        let exchange = Exchange(
            status: status, contentType: contentType, model: sealed.model, path: path, requestSHA256: requestSHA256,
            served: served, link: link, id: id, meter: meter)
        let rest = IteratorHandOff(iterator)
        let body = ResponseBody { writer in
            try await streamSealed(exchange, rest, writer, logger: logger)
        }
        return Response(status: HTTPResponse.Status(code: status), headers: headers, body: body)
    }

    /// Relays sealed frames as events, hashing what is sent, and ends with the receipt.
    func streamSealed(
        _ exchange: Exchange, _ rest: IteratorHandOff, _ writer: any ResponseBodyWriter, logger: Logger
    ) async throws {
        var writer = writer
        var iterator = rest.iterator
        var hasher = SHA256()
        var usage = JSONValue.null
        var counts: UsageScan.Counts?
        var finished = false
        defer {
            if !finished { exchange.link.cancel(exchange.id) }
            exchange.meter?.finish(status: exchange.status, usage: counts, streamed: true)
        }
        func emit(_ event: String, _ data: Data) async throws {
            let bytes = Data("event: \(event)\ndata: ".utf8) + data + Data("\n\n".utf8)
            hasher.update(data: bytes)
            exchange.meter?.sent(bytes)
            try await writer.write(ByteBuffer(bytes: bytes))
        }
        do {
            loop: while let event = try await iterator.next() {
                switch event {
                case .data(_, let frame): try await emit(EndToEnd.frameEvent, Data(frame.base64EncodedString().utf8))
                case .usage(_, let reported):
                    counts = UsageScan.usage(inJSON: Data(#"{"usage":"#.utf8) + reported + Data("}".utf8))
                    usage = Self.jsonValue(counts)
                    if usage != .null { try await emit(EndToEnd.usageEvent, Data(CanonicalJSON.encode(usage))) }
                case .end: break loop
                default: continue
                }
            }
        } catch let failure as WorkerFailure {
            try await Self.emit(failure, of: exchange, &hasher, &writer, logger: logger)
        }
        finished = true
        try await endStream(exchange, hasher, usage: usage, &writer)
    }
}
