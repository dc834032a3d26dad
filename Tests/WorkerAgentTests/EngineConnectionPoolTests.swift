import Foundation
import NIOCore
import Synchronization
import TestSupport
import Testing
import WorkerAgent

/// The worker's kept-alive engine connections: reused, never for another process, replaced when
/// the engine dropped them, closed when a request is cancelled.
@Suite struct EngineConnectionPoolTests {
    /// An HTTP/1.1 engine stand-in on a Unix socket: answers every request on a connection
    /// (keep-alive) with a small JSON body, or streams `events` slowly; counts connections.
    final class KeepAliveServer: @unchecked Sendable {
        enum Mode {
            case keepAlive
            /// Answers as if keeping the connection alive, then closes it (an idle timeout racing
            /// the next request).
            case dropAfterEachAnswer
            /// Streams 6,000 chunks, 10 ms apart; records when the client went away.
            case slowStream
            /// Answers each request after 300 ms, keeping the connection.
            case slowAnswer
            /// Answers the first request on a connection; reads the second and closes unanswered
            /// (an engine that crashed on it).
            case crashOnSecond
        }
        let path: String
        let fd: CInt
        let mode: Mode
        private let state = Mutex<(accepted: Int, requests: Int, clientLeft: Int)>((0, 0, 0))
        var accepted: Int { state.withLock { $0.accepted } }
        var requests: Int { state.withLock { $0.requests } }
        var clientsLeft: Int { state.withLock { $0.clientLeft } }

        init(path: String, mode: Mode) throws {
            self.path = path
            self.mode = mode
            fd = try EngineSocketTests.SocketServer.listen(at: path)
            Thread.detachNewThread { [self] in
                while true {
                    let client = accept(fd, nil, nil)
                    if client < 0 { return }
                    state.withLock { $0.accepted += 1 }
                    Thread.detachNewThread { self.serve(client) }
                }
            }
        }

        func serve(_ client: CInt) {
            defer { close(client) }
            var pending = [UInt8]()
            var buffer = [UInt8](repeating: 0, count: 4096)
            var served = 0
            while true {
                // One request: its head, then Content-Length bytes of body.
                var headEnd: Int?
                while headEnd == nil {
                    if let end = Self.find([13, 10, 13, 10], in: pending) {
                        headEnd = end + 4
                        break
                    }
                    let n = read(client, &buffer, buffer.count)
                    if n <= 0 { return }
                    pending += buffer[0..<n]
                }
                let head = String(decoding: pending[0..<headEnd!], as: UTF8.self).lowercased()
                let length =
                    head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
                    .flatMap { Int($0.dropFirst(15).trimmingCharacters(in: .whitespaces)) } ?? 0
                while pending.count < headEnd! + length {
                    let n = read(client, &buffer, buffer.count)
                    if n <= 0 { return }
                    pending += buffer[0..<n]
                }
                pending.removeFirst(headEnd! + length)
                state.withLock { $0.requests += 1 }
                if mode == .crashOnSecond, served == 1 { return }
                served += 1
                if mode == .slowAnswer { usleep(300_000) }
                switch mode {
                case .keepAlive, .dropAfterEachAnswer, .slowAnswer, .crashOnSecond:
                    let body = #"{"ok":true}"#
                    send(
                        client,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
                    )
                    if mode == .dropAfterEachAnswer { return }
                case .slowStream:
                    guard
                        send(
                            client,
                            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
                    else { return }
                    for _ in 0..<6000 {
                        let event = "data: {}\n\n"
                        guard send(client, String(event.utf8.count, radix: 16) + "\r\n" + event + "\r\n") else {
                            state.withLock { $0.clientLeft += 1 }
                            return
                        }
                        usleep(10_000)
                    }
                    return
                }
            }
        }

        @discardableResult
        func send(_ client: CInt, _ text: String) -> Bool {
            let bytes = Array(text.utf8)
            return bytes.withUnsafeBytes { Glibc.send(client, $0.baseAddress, $0.count, CInt(MSG_NOSIGNAL)) }
                == bytes.count
        }

        static func find(_ needle: [UInt8], in bytes: [UInt8]) -> Int? {
            guard bytes.count >= needle.count else { return nil }
            return (0...(bytes.count - needle.count)).first { bytes[$0..<($0 + needle.count)].elementsEqual(needle) }
        }

        func stop() {
            shutdown(fd, CInt(SHUT_RDWR))
            close(fd)
        }
    }

    static func withServer(_ mode: KeepAliveServer.Mode, _ body: (KeepAliveServer, EngineClient) async throws -> Void)
        async throws
    {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent(
            "engine-pool-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let server = try KeepAliveServer(path: dir.appendingPathComponent("e.sock").path, mode: mode)
        defer { server.stop() }
        var client = try #require(EngineClient(url: "unix:" + server.path))
        let me = getpid()
        client.expectedPeer = { me }
        // Off the cooperative pool: beside the rest of the suite, a test task waiting there for a
        // thread can idle past the pool's idle limit, and what these tests count would change.
        try await onOwnThread { try await body(server, client) }
    }

    /// One request's status and body.
    static func ask(_ client: EngineClient) async throws -> (Int, String) {
        var status = 0
        var body = Data()
        try await client.send(
            method: "POST", path: "/v1/chat/completions", body: Data(#"{"model":"m"}"#.utf8),
            onHead: { code, _ in status = code }, onData: { body.append($0) })
        return (status, String(decoding: body, as: UTF8.self))
    }

    @Test func keptAliveConnectionsCarryOneRequestAfterAnother() async throws {
        try await Self.withServer(.keepAlive) { server, client in
            for _ in 0..<5 {
                let (status, body) = try await Self.ask(client)
                #expect(status == 200 && body == #"{"ok":true}"#)
            }
            #expect(server.requests == 5)
            #expect(server.accepted == 1, "each request opened a connection of its own")
        }
    }

    @Test func aConnectionTheEngineDroppedIsReplacedWithoutFailingTheRequest() async throws {
        try await Self.withServer(.dropAfterEachAnswer) { server, client in
            for _ in 0..<4 {
                let (status, body) = try await Self.ask(client)
                #expect(status == 200 && body == #"{"ok":true}"#)
            }
            #expect(server.requests == 4)
            #expect(server.accepted >= 4)
        }
    }

    /// Threat: the engine's process replaced (it exited and another process took its socket
    /// path) while a connection to the old one sits idle. Kept-alive connections are tied to the
    /// process they were checked against: none is reused for another, and the new one is checked.
    @Test func aKeptConnectionIsNotReusedOnceTheExpectedEngineChanged() async throws {
        try await Self.withServer(.keepAlive) { server, client in
            _ = try await Self.ask(client)
            var moved = client
            let other = getpid() + 1
            moved.expectedPeer = { other }
            await #expect(throws: EngineClient.EngineError.self) { _ = try await Self.ask(moved) }
            #expect(server.requests == 1, "a request went to a connection checked against another process")
            // The connection checked against the old process is gone (and the refused one was
            // connected, checked, and closed with nothing sent); the engine is reached anew.
            _ = try await Self.ask(client)
            #expect(server.requests == 2 && server.accepted == 3)
        }
    }

    /// A client that goes away stops the engine's work for it: its connection is closed, not
    /// returned to the pool with the rest of the answer still coming.
    @Test func aCancelledExchangeClosesItsConnection() async throws {
        try await Self.withServer(.slowStream) { server, client in
            let (events, continuation) = AsyncStream<String>.makeStream()
            let exchange = client.start(
                method: "POST", path: "/v1/chat/completions", body: Data("{}".utf8),
                handler: EngineResponseHandler(
                    head: { _, _ in }, body: { continuation.yield(String(buffer: $0)) },
                    end: { continuation.yield("end") }, failure: { _ in continuation.yield("failed") }))
            var iterator = events.makeAsyncIterator()
            #expect(await iterator.next()?.hasPrefix("data:") == true)
            exchange.cancel()
            var last = ""
            while let event = await iterator.next() {
                last = event
                if event == "failed" || event == "end" { break }
            }
            #expect(last == "failed")
            for _ in 0..<1500 where server.clientsLeft == 0 { try await Task.sleep(for: .milliseconds(20)) }
            #expect(server.clientsLeft == 1, "the engine kept streaming to a cancelled exchange")
        }
    }

    /// Threat: one client's cancellation landing on another's request. An exchange that has
    /// finished gave its connection back; cancelling it then must not close that connection
    /// under the next request.
    @Test func cancellingAFinishedExchangeLeavesTheNextOneAlone() async throws {
        try await Self.withServer(.slowAnswer) { server, client in
            let (first, firstDone) = AsyncStream<Bool>.makeStream()
            let earlier = client.start(
                method: "POST", path: "/v1/chat/completions", body: Data("{}".utf8),
                handler: EngineResponseHandler(
                    head: { _, _ in }, body: { _ in }, end: { firstDone.yield(true) },
                    failure: { _ in firstDone.yield(false) }))
            var iterator = first.makeAsyncIterator()
            #expect(await iterator.next() == true)
            async let later = Self.ask(client)
            try await Task.sleep(for: .milliseconds(100))
            earlier.cancel()
            let (status, body) = try await later
            #expect(status == 200 && body == #"{"ok":true}"#)
            #expect(server.accepted == 1, "the later request did not reuse the connection")
        }
    }

    /// A request the engine read and then failed on (it crashed) is reported, not sent again: a
    /// prompt is never run twice, even on a kept connection.
    @Test func aRequestTheEngineReadIsNeverSentAgain() async throws {
        try await Self.withServer(.crashOnSecond) { server, client in
            _ = try await Self.ask(client)
            await #expect(throws: (any Error).self) { _ = try await Self.ask(client) }
            #expect(server.requests == 2, "the failed request was sent again")
        }
    }

    /// The readiness probe runs before the worker knows who owns the engine's port: its
    /// connection is never kept for prompts.
    @Test func theReadinessProbesConnectionIsNotKept() async throws {
        try await Self.withServer(.keepAlive) { server, client in
            #expect(await client.isReady())
            _ = try await Self.ask(client)
            #expect(server.accepted == 2)
        }
    }
}
