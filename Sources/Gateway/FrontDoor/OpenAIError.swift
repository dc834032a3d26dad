import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, so
/// unchanged OpenAI clients report it properly.
public struct OpenAIError: HTTPResponseError, Sendable {
    public let status: HTTPResponse.Status
    public let message: String
    public let type: String
    public let code: String?
    public let param: String?
    /// Seconds to wait before trying again (sent as `Retry-After`, rounded up).
    public let retryAfter: Double?

    public init(
        _ status: HTTPResponse.Status, _ message: String, type: String = "invalid_request_error", code: String? = nil,
        param: String? = nil, retryAfter: Double? = nil
    ) {
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retryAfter = retryAfter
    }

    public static func body(message: String, type: String, code: String?, param: String? = nil) -> Data {
        let object: [String: Any] = [
            "error": ["message": message, "type": type, "param": param ?? NSNull(), "code": code ?? NSNull()]
                as [String: Any]
        ]
        return (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
    }

    public var json: Data { Self.body(message: message, type: type, code: code, param: param) }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        if let context = context as? FrontDoorContext {
            headers[FrontDoor.requestIDHeader] = context.requestID
            headers[FrontDoor.ledgerIDHeader] = context.ledgerID
        }
        if let retryAfter, retryAfter.isFinite {
            headers[.retryAfter] = String(Int(min(max(retryAfter.rounded(.up), 1), 31 * 86_400)))
        }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: json)))
    }

    static let unauthorized = OpenAIError(
        .unauthorized, "Incorrect or missing API key. Send 'Authorization: Bearer <key>'.",
        code: "invalid_api_key")
}

/// Maps every error escaping the router to an OpenAI-shaped body: unknown routes, oversized
/// bodies, and (as a bare 500 whose details go only to the log) anything unexpected.
struct OpenAIErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        do {
            return try await next(request, context)
        } catch let error as OpenAIError {
            throw error
        } catch let error as any HTTPResponseError {
            let message: String
            switch error.status {
            case .notFound: message = "Unknown endpoint \(request.method) \(request.uri.path)."
            case .contentTooLarge: message = "The request body is too large."
            case .methodNotAllowed: message = "Method \(request.method) is not allowed here."
            default: message = error.status.reasonPhrase
            }
            throw OpenAIError(error.status, message, code: error.status == .notFound ? "unknown_url" : nil)
        } catch is NIOTooManyBytesError {
            throw OpenAIError(.contentTooLarge, "The request body is too large.")
        } catch {
            context.logger.error("unexpected error", metadata: ["error": "\(error)"])
            throw OpenAIError(.internalServerError, "Internal error.", type: "server_error")
        }
    }
}

/// Requires `Authorization: Bearer KEY` with an accepted key (``ClientKeyring``), and hands the
/// request on with the client it came from.
///
/// Threat: unauthenticated use of paid inference.
struct APIKeyMiddleware: RouterMiddleware {
    let keyring: ClientKeyring

    func handle(
        _ request: Request, context: FrontDoorContext,
        next: (Request, FrontDoorContext) async throws -> Response
    ) async throws -> Response {
        var context = context
        let grant = try keyring.authenticate(request.headers[.authorization])
        context.grant = grant
        context.note.keyID = grant.keyID
        return try await next(request, context)
    }
}

/// The front door's request context: the client, once authenticated.
public struct FrontDoorContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public var grant: ClientGrant?
    /// The request's id (``FrontDoorAccess``).
    public var requestID = ""
    /// The usage ledger's id for it: `requestID` when the gateway made that, else a new UUID.
    public var ledgerID = ""
    /// What the access log line of this request needs from the handlers further in.
    public let note = AccessNote()
    public init(source: Source) {
        coreContext = .init(source: source)
        grant = nil
    }
}
