import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

/// A minimal HTTP/1.1 client for the inference engine on loopback or on a Unix socket: kept-alive
/// connections, one request at a time on each, the response streamed to the caller as it
/// arrives.
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
    /// Shared by copies of this client.
    let pool = EngineConnectionPool()

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
    static func connectUnix(_ path: String, expectedPeer: (@Sendable () -> pid_t?)?) throws -> (CInt, pid_t?) {
        // Non-blocking: a process at the path that never accepts (its backlog full) fails the
        // connect at once instead of holding the thread that asked.
        let fd = socket(AF_UNIX, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_NONBLOCK.rawValue), 0)
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
            return (fd, expected)
        }
        return (fd, nil)
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

    /// Starts one request; `handler` hears its response on the connection's event loop, with no
    /// task in between. Connections are kept alive and reused (``EngineConnectionPool``).
    @discardableResult
    public func start(
        method: String, path: String, body: Data, headers extra: [(String, String)] = [],
        on exchange: EngineExchange = EngineExchange(), handler: EngineResponseHandler
    ) -> EngineExchange {
        var fields = HTTPHeaders()
        fields.add(name: "Host", value: socketPath == nil ? "\(host):\(port)" : "localhost")
        fields.add(name: "Content-Type", value: "application/json")
        fields.add(name: "Content-Length", value: String(body.count))
        for (name, value) in extra { fields.add(name: name, value: value) }
        let head = HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: method), uri: path, headers: fields)
        dispatch(EngineRequestParts(head: head, body: body.isEmpty ? nil : ByteBuffer(bytes: body)), exchange, handler)
        return exchange
    }

    /// Puts a request on a kept-alive connection, or on a new one. A kept-alive connection that
    /// fails before the whole request was written and before any answer (the engine's idle
    /// timeout closed it) costs one retry on a new connection. Once written, the engine may have
    /// read it: a request is never sent twice (a prompt that crashes the engine would crash it
    /// again), nor is a new connection retried.
    func dispatch(
        _ parts: EngineRequestParts, _ exchange: EngineExchange, _ handler: EngineResponseHandler, fresh: Bool = false
    ) {
        let pool = self.pool
        let reused = fresh ? nil : pool.take(peer: socketPath == nil ? nil : expectedPeer?())
        let connection = reused.map { $0.channel.eventLoop.makeSucceededFuture($0) } ?? openConnection()
        let accepted = LoopFlag()
        let written = LoopFlag()
        let answered = LoopFlag()
        let relayed = EngineResponseHandler(
            head: { status, type in
                answered.value = true
                try handler.head(status, type)
            },
            body: handler.body, end: handler.end,
            failure: { error in
                if reused != nil, !written.value, !answered.value, !exchange.isCancelled {
                    dispatch(parts, exchange, handler, fresh: true)
                } else {
                    handler.failure(error)
                }
            })
        connection.whenComplete { result in
            switch result {
            case .failure(let error): handler.failure(error)
            case .success(let idle):
                // On the connection's event loop from here: a connection the engine closed since
                // it was taken fails before anything is written (and, reused, is replaced).
                guard idle.channel.isActive else {
                    idle.channel.close(promise: nil)
                    relayed.failure(EngineError(description: "engine closed the connection"))
                    return
                }
                guard exchange.attach(idle.channel) else {
                    // Cancelled meanwhile: a kept connection goes back unused; a new one (it may
                    // be the readiness probe's) is not kept.
                    if reused != nil {
                        pool.put(idle.channel, peer: idle.peer)
                    } else {
                        idle.channel.close(promise: nil)
                    }
                    handler.failure(EngineError(description: "cancelled"))
                    return
                }
                let request = EngineRequest(
                    head: parts.head, body: parts.body, handler: relayed,
                    finished: { reusable in
                        let cancelled = exchange.finish(idle.channel)
                        guard reusable, !cancelled else {
                            idle.channel.close(promise: nil)
                            return
                        }
                        pool.put(idle.channel, peer: idle.peer)
                    }, accepted: accepted, written: written)
                let sent = idle.channel.eventLoop.makePromise(of: Void.self)
                sent.futureResult.whenFailure { error in
                    // A pipeline already torn down by a close never reached the relay: nobody
                    // else reports this request.
                    if !accepted.value { relayed.failure(error) }
                }
                idle.channel.writeAndFlush(request, promise: sent)
            }
        }
    }

    /// A new connection to the engine, its peer checked (``expectedPeer``).
    func openConnection() -> EventLoopFuture<EngineConnectionPool.Idle> {
        let relay = EngineRelay()
        let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connectTimeout(.seconds(5))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(relay)
                }
            }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        do {
            if let socketPath {
                let (fd, peer) = try Self.connectUnix(socketPath, expectedPeer: expectedPeer)
                return bootstrap.withConnectedSocket(fd).map { .init(channel: $0, peer: peer, since: .now) }
            }
            let channel =
                if let address = try? SocketAddress(ipAddress: host, port: port) {
                    bootstrap.connect(to: address)
                } else {
                    bootstrap.connect(host: host, port: port)
                }
            return channel.map { .init(channel: $0, peer: nil, since: .now) }
        } catch {
            return loop.makeFailedFuture(error)
        }
    }

    /// Sends one request; `onHead` receives status and content type, `onData` each body chunk.
    public func send(
        method: String, path: String, body: Data, headers extra: [(String, String)] = [],
        onHead: (Int, String) async throws -> Void, onData: (Data) async throws -> Void
    ) async throws {
        enum Part {
            case head(Int, String)
            case body(ByteBuffer)
        }
        let (parts, continuation) = AsyncThrowingStream<Part, any Error>.makeStream()
        let exchange = start(
            method: method, path: path, body: body, headers: extra,
            handler: EngineResponseHandler(
                head: { continuation.yield(.head($0, $1)) }, body: { continuation.yield(.body($0)) },
                end: { continuation.finish() }, failure: { continuation.finish(throwing: $0) }))
        do {
            try await withTaskCancellationHandler {
                for try await part in parts {
                    switch part {
                    case .head(let status, let type): try await onHead(status, type)
                    case .body(let buffer): try await onData(Data(buffer.readableBytesView))
                    }
                }
                try Task.checkCancellation()
            } onCancel: {
                exchange.cancel()
            }
        } catch {
            exchange.cancel()
            throw error
        }
    }

    /// True when the engine answers `GET /v1/models` with 200.
    /// Its connection is not kept: it runs before the worker checks who owns the engine's port
    /// (``EngineConnectionPool``).
    public func isReady() async -> Bool {
        var status = 0
        do {
            try await send(
                method: "GET", path: "/v1/models", body: Data(), headers: [("Connection", "close")],
                onHead: { code, _ in status = code }, onData: { _ in })
        } catch { return false }
        return status == 200
    }
}
