import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// What an engine exchange reports, on the connection's event loop, in order: `head` once, then
/// `body` for each chunk, then exactly one of `end` or `failure` (nothing after either).
public struct EngineResponseHandler: Sendable {
    public var head: @Sendable (_ status: Int, _ contentType: String) throws -> Void
    public var body: @Sendable (ByteBuffer) throws -> Void
    public var end: @Sendable () -> Void
    public var failure: @Sendable (any Error) -> Void

    public init(
        head: @escaping @Sendable (Int, String) throws -> Void, body: @escaping @Sendable (ByteBuffer) throws -> Void,
        end: @escaping @Sendable () -> Void, failure: @escaping @Sendable (any Error) -> Void
    ) {
        self.head = head
        self.body = body
        self.end = end
        self.failure = failure
    }
}

/// One request in flight on the engine; ``cancel()`` closes its connection (a client that went
/// away stops the engine's work for it).
public final class EngineExchange: Sendable {
    private struct State {
        var channel: (any Channel)?
        var cancelled = false
    }
    private let state = Mutex(State())

    public init() {}

    /// Ends the exchange: its connection is closed, not reused; the handler hears nothing more
    /// than a failure. Once the exchange has finished, its connection is no longer its own (it
    /// may carry another client's request): cancelling then does nothing.
    public func cancel() {
        // The close is asked for under the lock, so that it cannot land on a connection that
        // ``finish(_:)`` has meanwhile handed back to the pool; it is queued on the loop, never
        // run inline, because the close reports the failure, which takes this lock again.
        state.withLock { s in
            s.cancelled = true
            if let channel = s.channel { channel.eventLoop.execute { channel.close(promise: nil) } }
        }
    }

    /// Gives `channel` up at the end of its part of the exchange (a retry may already hold
    /// another); true when the exchange was cancelled first (the connection is then closing,
    /// and must not be reused).
    func finish(_ channel: any Channel) -> Bool {
        state.withLock { s in
            if s.channel === channel { s.channel = nil }
            return s.cancelled
        }
    }

    var isCancelled: Bool { state.withLock { $0.cancelled } }

    /// Attaches the exchange's connection; false when it was cancelled before.
    func attach(_ channel: any Channel) -> Bool {
        state.withLock { s in
            guard !s.cancelled else { return false }
            s.channel = channel
            return true
        }
    }
}

/// Kept-alive connections to the engine, each carrying one exchange at a time.
///
/// A connection to the engine is reused only after a complete success (2xx) that allowed it
/// (HTTP/1.1 keep-alive) and came after the whole request was written, only while it is still
/// open, idle for less than ``maxIdleTime`` (older ones are closed when next looked at) and,
/// for a Unix socket with an expected peer, only while that peer is still the process the
/// connection was checked against when it was made (``EngineClient/expectedPeer``): a restarted
/// engine is reached on fresh, freshly checked connections.
///
/// Threat: a process that held the engine's TCP port before the engine did (a TCP connection
/// names no process, so it has no per-connection check). Connections are pooled only from
/// requests, never from the readiness probe that runs before the worker has checked who owns
/// the port (``EngineClient/isReady()`` asks for `Connection: close`).
final class EngineConnectionPool: Sendable {
    /// Connections kept idle at most; more are closed after their response. Each idle connection
    /// holds one of the engine's connection slots (ccinfer serves 64).
    static let maxIdle = 16
    static let maxIdleTime: Duration = .seconds(20)

    struct Idle {
        let channel: any Channel
        /// The engine process the connection was checked against (Unix socket), if any.
        let peer: pid_t?
        let since: ContinuousClock.Instant
    }
    private let idle = Mutex<[Idle]>([])

    init() {}

    /// An idle connection still fit for `peer` (nil: no peer to match), or nil.
    func take(peer: pid_t?) -> Idle? {
        let now = ContinuousClock.now
        var stale: [any Channel] = []
        defer { for channel in stale { channel.close(promise: nil) } }
        return idle.withLock { list in
            while let candidate = list.popLast() {
                if candidate.channel.isActive, candidate.peer == peer, now - candidate.since < Self.maxIdleTime {
                    return candidate
                }
                stale.append(candidate.channel)
            }
            return nil
        }
    }

    /// Keeps a connection whose exchange ended cleanly (idle from now), or closes it when the
    /// pool is full.
    func put(_ channel: any Channel, peer: pid_t?) {
        let kept = idle.withLock { list -> Bool in
            list.removeAll { !$0.channel.isActive }
            guard list.count < Self.maxIdle else { return false }
            list.append(Idle(channel: channel, peer: peer, since: .now))
            return true
        }
        if !kept { channel.close(promise: nil) }
    }

    deinit {
        for connection in idle.withLock({ $0 }) { connection.channel.close(promise: nil) }
    }
}

/// A request's head and body, as sent (again, on a retry).
struct EngineRequestParts: Sendable {
    let head: HTTPRequestHead
    let body: ByteBuffer?
}

/// A flag set and read only on one connection's event loop (its handler's calls).
final class LoopFlag: @unchecked Sendable {
    var value = false
}

/// The request an ``EngineRelay`` writes, and where its response goes.
struct EngineRequest: Sendable {
    let head: HTTPRequestHead
    let body: ByteBuffer?
    let handler: EngineResponseHandler
    /// Called once the response ended, with whether the connection may carry another exchange.
    let finished: @Sendable (_ reusable: Bool) -> Void
    /// Set once the relay owns the request (it then reports its end or failure).
    let accepted: LoopFlag
    /// Set once the whole request is on the wire.
    let written: LoopFlag
}

/// Writes one request at a time and hands its response parts to that request's handler.
final class EngineRelay: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = EngineRequest
    typealias OutboundOut = HTTPClientRequestPart

    private var current: EngineRequest?
    /// Counts exchanges, so that a late write failure fails only its own.
    private var exchanges = 0
    private var sawHead = false
    private var keepAlive = false

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = unwrapOutboundIn(data)
        guard current == nil else {
            // The pool hands a connection to one exchange at a time: this would be a bug.
            // The request is reported once, by the writer of the failed promise.
            promise?.fail(EngineClient.EngineError(description: "a second exchange on a busy engine connection"))
            return
        }
        current = request
        request.accepted.value = true
        exchanges += 1
        let number = exchanges
        sawHead = false
        keepAlive = request.head.isKeepAlive
        // The whole request in one flush: an engine that answers as soon as it has read the head,
        // and closes, must not find the rest of the request still to come.
        let written = context.eventLoop.makePromise(of: Void.self)
        let channel = context.channel
        written.futureResult.whenComplete { result in
            switch result {
            case .success: request.written.value = true
            case .failure(let error) where self.exchanges == number:
                self.fail(error)
                channel.close(promise: nil)
            case .failure: break
            }
            promise?.completeWith(result)
        }
        context.write(wrapOutboundOut(.head(request.head)), promise: nil)
        if let body = request.body { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: written)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let request = current else {
            // Bytes from an engine no exchange asked for: the connection is not trusted again.
            context.close(promise: nil)
            return
        }
        do {
            switch unwrapInboundIn(data) {
            case .head(let response):
                sawHead = true
                // Only after a success: an engine refusing a request early (4xx) may not have
                // read all of it.
                keepAlive = keepAlive && response.isKeepAlive && (200..<300).contains(response.status.code)
                try request.handler.head(
                    Int(response.status.code),
                    response.headers.first(name: "Content-Type") ?? "application/octet-stream")
            case .body(let buffer):
                try request.handler.body(buffer)
            case .end:
                current = nil
                // Threat: an engine answering before it read the whole request, and keeping the
                // connection: the rest of the request would be read as the next one, and its
                // answer go to the next client. Only a connection whose request was all written
                // before the answer ended is reused. It is back in the pool before the end is
                // reported, so that the request that follows finds it.
                request.finished(keepAlive && request.written.value && context.channel.isActive)
                request.handler.end()
            }
        } catch {
            fail(error)
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(
            EngineClient.EngineError(
                description: sawHead
                    ? "engine closed the connection mid-response" : "engine closed the connection without a response"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(error)
        context.close(promise: nil)
    }

    /// Fails the exchange in flight, if any, once.
    func fail(_ error: any Error) {
        guard let request = current else { return }
        current = nil
        // The connection is given up before the failure is reported (which may retry elsewhere).
        request.finished(false)
        request.handler.failure(error)
    }
}
