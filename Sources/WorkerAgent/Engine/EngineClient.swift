import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

/// A minimal HTTP/1.1 client for the inference engine on loopback or on a Unix socket: one
/// request per connection, the response streamed to the caller as it arrives.
public struct EngineClient: Sendable {
    public let host: String
    public let port: Int
    /// The engine's Unix socket (`unix:/path`), instead of host and port.
    public let socketPath: String?

    public init(host: String = "127.0.0.1", port: Int) {
        self.host = host
        self.port = port
        socketPath = nil
    }

    public init(socketPath: String) {
        host = "localhost"
        port = 0
        self.socketPath = socketPath
    }

    /// Parses `http://HOST:PORT` or `unix:/ABSOLUTE/PATH`.
    public init?(url: String) {
        if url.hasPrefix("unix:") {
            let path = String(url.dropFirst(5))
            // sun_path holds 107 bytes and a terminator.
            guard path.hasPrefix("/"), path.utf8.count <= 107, !path.contains("\0") else { return nil }
            self.init(socketPath: path)
            return
        }
        guard let components = URLComponents(string: url), components.scheme == "http", let host = components.host,
            let port = components.port
        else { return nil }
        self.init(host: host, port: port)
    }

    /// Where the engine is, for logs.
    public var address: String { socketPath.map { "unix:\($0)" } ?? "\(host):\(port)" }

    public struct EngineError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Sends one request; `onHead` receives status and content type, `onData` each body chunk.
    public func send(
        method: String, path: String, body: Data, headers extra: [(String, String)] = [],
        onHead: (Int, String) async throws -> Void, onData: (Data) async throws -> Void
    ) async throws {
        let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connectTimeout(.seconds(5))
        let wrap:
            @Sendable (any Channel) -> EventLoopFuture<NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>> =
                {
                    channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
                            wrappingChannelSynchronously: channel)
                    }
                }
        let channel =
            if let socketPath {
                try await bootstrap.connect(unixDomainSocketPath: socketPath, channelInitializer: wrap)
            } else {
                try await bootstrap.connect(host: host, port: port, channelInitializer: wrap)
            }
        try await channel.executeThenClose { inbound, outbound in
            var head = HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: method), uri: path)
            head.headers.add(name: "Host", value: socketPath == nil ? "\(host):\(port)" : "localhost")
            head.headers.add(name: "Content-Type", value: "application/json")
            head.headers.add(name: "Content-Length", value: String(body.count))
            head.headers.add(name: "Connection", value: "close")
            for (name, value) in extra { head.headers.add(name: name, value: value) }
            try await outbound.write(.head(head))
            if !body.isEmpty { try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body)))) }
            try await outbound.write(.end(nil))
            var sawHead = false
            for try await part in inbound {
                switch part {
                case .head(let response):
                    sawHead = true
                    try await onHead(
                        Int(response.status.code),
                        response.headers.first(name: "Content-Type") ?? "application/octet-stream")
                case .body(let buffer):
                    try await onData(Data(buffer.readableBytesView))
                case .end:
                    return
                }
            }
            throw EngineError(
                description: sawHead
                    ? "engine closed the connection mid-response" : "engine closed the connection without a response")
        }
    }

    /// True when the engine answers `GET /v1/models` with 200.
    public func isReady() async -> Bool {
        var status = 0
        do {
            try await send(
                method: "GET", path: "/v1/models", body: Data(), onHead: { code, _ in status = code }, onData: { _ in })
        } catch { return false }
        return status == 200
    }
}
