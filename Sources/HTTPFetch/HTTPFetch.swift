import AsyncHTTPClient
import Foundation
import NIOCore
import NIOSSL
import NIOHTTP1

/// The outbound HTTP the gateway and its tools make (the PCCS, toncenter, the admin API), on
/// AsyncHTTPClient: a deadline on every request, and bodies read with a cap, so that a hostile or
/// broken server can neither stall a caller nor make it buffer without bound.
public enum HTTPFetch {
    /// An answer read whole (up to its cap).
    public struct Response: Sendable {
        public let status: Int
        /// Header names as sent; look-ups with ``header(_:)`` ignore case.
        public let headers: [(name: String, value: String)]
        public let body: Data

        public func header(_ name: String) -> String? {
            headers.first { $0.name.caseInsensitiveCompare(name) == .orderedSame }?.value
        }
    }

    /// A failure to get an answer: no connection, the deadline passed, or a body over the cap.
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        public init(description: String) { self.description = description }
    }

    /// Sends one request and reads the whole answer, refusing a body over `maxBody` bytes as it
    /// arrives (never after buffering it).
    public static func send(
        _ method: String, _ url: URL, headers: [(String, String)] = [], body: Data? = nil,
        timeout: Duration = .seconds(30),
        maxBody: Int, client: HTTPClient = .shared
    ) async throws(Failure) -> Response {
        do {
            let response = try await client.execute(
                request(method, url, headers: headers, body: body), timeout: timeAmount(timeout))
            let buffer: ByteBuffer
            do { buffer = try await response.body.collect(upTo: maxBody) } catch is NIOTooManyBytesError {
                throw Failure(description: "\(url.absoluteString): answer over \(maxBody) bytes")
            }
            return Response(
                status: Int(response.status.code), headers: response.headers.map { ($0.name, $0.value) },
                body: Data(buffer.readableBytesView))
        } catch let failure as Failure {
            throw failure
        } catch {
            throw Failure(description: "\(url.absoluteString): \(error)")
        }
    }

    /// Sends one request and hands the answer's body to `chunk` as it arrives: the next chunk is
    /// read only once `chunk` returns (back-pressure). Returns the status and headers.
    public static func stream(
        _ method: String, _ url: URL, headers: [(String, String)] = [], timeout: Duration, client: HTTPClient = .shared,
        chunk: (Int, [(name: String, value: String)], Data) async throws -> Void
    ) async throws -> (status: Int, headers: [(name: String, value: String)]) {
        let response = try await client.execute(
            request(method, url, headers: headers), timeout: timeAmount(timeout))
        let status = Int(response.status.code)
        let fields = response.headers.map { (name: $0.name, value: $0.value) }
        for try await part in response.body { try await chunk(status, fields, Data(part.readableBytesView)) }
        return (status, fields)
    }

    /// Runs `body` with a client that trusts only the CA certificates in `caFile` (PEM), for a
    /// server whose certificate a private CA issued; nil: the system's trust store. The client is
    /// shut down afterwards.
    public static func withClient<T>(trusting caFile: String?, _ body: (HTTPClient) async throws -> T) async throws -> T
    {
        guard let caFile else { return try await body(.shared) }
        let client = try client(trusting: caFile)
        do {
            let result = try await body(client)
            try? await client.shutdown()
            return result
        } catch {
            try? await client.shutdown()
            throw error
        }
    }

    /// A client that trusts only the CA certificates in `caFile` (PEM); the caller shuts it down.
    public static func client(trusting caFile: String) throws(Failure) -> HTTPClient {
        var tls = TLSConfiguration.makeClientConfiguration()
        do { tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile)) } catch {
            throw Failure(description: "\(caFile): not a PEM CA certificate (\(error))")
        }
        return HTTPClient(configuration: .init(tlsConfiguration: tls))
    }

    static func request(_ method: String, _ url: URL, headers: [(String, String)], body: Data? = nil)
        -> HTTPClientRequest
    {
        var request = HTTPClientRequest(url: url.absoluteString)
        request.method = HTTPMethod(rawValue: method)
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let body { request.body = .bytes(ByteBuffer(bytes: body)) }
        return request
    }

    static func timeAmount(_ duration: Duration) -> TimeAmount {
        let (seconds, attoseconds) = duration.components
        return .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
