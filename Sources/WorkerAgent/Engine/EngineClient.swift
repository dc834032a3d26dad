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
    /// The process that must be serving the Unix socket (the engine ccworker started); nil when
    /// any peer will do (an engine ccworker did not start).
    ///
    /// Threat: whoever can write the socket's directory deleting or renaming over the engine's
    /// socket and listening there in its place; a path names no process. Each connection asks
    /// the kernel who is at the other end (SO_PEERCRED) and goes no further unless it is this
    /// process, so no prompt reaches an impostor, however late it takes the path.
    public var expectedPeer: (@Sendable () -> pid_t?)?

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

    /// A connected Unix socket to `path`, its peer checked against `expectedPeer`.
    static func connectUnix(_ path: String, expectedPeer: (@Sendable () -> pid_t?)?) throws -> CInt {
        let fd = socket(AF_UNIX, CInt(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw EngineError(description: "socket: \(String(cString: strerror(errno)))") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, byte) in path.utf8.prefix(raw.count - 1).enumerated() { raw[i] = byte }
        }
        let connected = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw EngineError(description: "cannot connect to the engine at unix:\(path): \(message)")
        }
        if let expectedPeer {
            // struct ucred { pid_t pid; uid_t uid; gid_t gid; } (Glibc hides the type behind _GNU_SOURCE).
            var credentials: (pid: Int32, uid: UInt32, gid: UInt32) = (0, 0, 0)
            var length = socklen_t(MemoryLayout<(Int32, UInt32, UInt32)>.size)
            let asked = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length)
            guard asked == 0, let expected = expectedPeer(), credentials.pid == expected else {
                close(fd)
                throw EngineError(
                    description:
                        "the process at unix:\(path) (pid \(credentials.pid)) is not the engine ccworker started; not sending it anything"
                )
            }
        }
        return fd
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
                try await bootstrap.withConnectedSocket(
                    try Self.connectUnix(socketPath, expectedPeer: expectedPeer), channelInitializer: wrap)
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
            // The whole request in one write: an engine that answers as soon as it has read the
            // head, and closes, must not find the rest of the request still to come (the close
            // would fail the late write and lose the answer).
            var parts: [HTTPClientRequestPart] = [.head(head)]
            if !body.isEmpty { parts.append(.body(.byteBuffer(ByteBuffer(bytes: body)))) }
            parts.append(.end(nil))
            try await outbound.write(contentsOf: parts)
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
