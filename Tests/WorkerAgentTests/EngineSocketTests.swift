import Foundation
import Testing
import WorkerAgent

/// The worker's connection to an engine on a Unix socket: it goes to the engine's process only.
@Suite struct EngineSocketTests {
    /// A one-shot HTTP server on a Unix socket in this process; counts the bytes it was sent.
    final class SocketServer: @unchecked Sendable {
        let path: String
        let fd: CInt
        private let lock = NSLock()
        private var received = 0
        var bytesReceived: Int { lock.withLock { received } }

        init(path: String) throws {
            self.path = path
            fd = try Self.listen(at: path)
            Thread.detachNewThread { [self] in
                while true {
                    let client = accept(fd, nil, nil)
                    if client < 0 { return }
                    // The whole request head before answering: closing with unread bytes would
                    // reset the connection before the client reads the answer.
                    var request = [UInt8]()
                    var buffer = [UInt8](repeating: 0, count: 4096)
                    while true {
                        let n = read(client, &buffer, buffer.count)
                        if n <= 0 { break }
                        request += buffer[0..<n]
                        lock.withLock { received += n }
                        if request.count >= 4, request.suffix(4) == [13, 10, 13, 10] { break }
                    }
                    let body = #"{"data":[]}"#
                    let response =
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n"
                        + "Connection: close\r\n\r\n\(body)"
                    _ = response.withCString { write(client, $0, strlen($0)) }
                    shutdown(client, CInt(SHUT_WR))
                    while read(client, &buffer, buffer.count) > 0 {}
                    close(client)
                }
            }
        }

        func stop() {
            shutdown(fd, CInt(SHUT_RDWR))
            close(fd)
        }

        /// A listening Unix socket at `path`.
        static func listen(at path: String) throws -> CInt {
            let fd = socket(AF_UNIX, CInt(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &addr.sun_path) { raw in
                for (i, byte) in path.utf8.enumerated() { raw[i] = byte }
            }
            let bound = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            guard bound == 0, Glibc.listen(fd, 8) == 0 else {
                close(fd)
                throw POSIXError(.EADDRINUSE)
            }
            return fd
        }
    }

    @Test func onlyTheExpectedProcessIsSentARequest() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent(
            "engine-socket-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let server = try SocketServer(path: dir.appendingPathComponent("e.sock").path)
        defer { server.stop() }

        var client = try #require(EngineClient(url: "unix:" + server.path))
        #expect(client.socketPath == server.path && client.address == "unix:" + server.path)
        let me = getpid()
        client.expectedPeer = { me }
        // The expected process answers (the error, if any, is reported).
        var status = 0
        do {
            try await client.send(
                method: "GET", path: "/v1/models", body: Data(), onHead: { code, _ in status = code },
                onData: { _ in })
        } catch { Issue.record("the expected process did not answer: \(error)") }
        #expect(status == 200)
        let sent = server.bytesReceived
        #expect(sent > 0)

        // Threat: another process listening at the engine's path. Nothing is written to it.
        client.expectedPeer = { me + 1 }
        await #expect(throws: EngineClient.EngineError.self) {
            try await client.send(
                method: "POST", path: "/v1/chat/completions", body: Data("secret".utf8),
                onHead: { _, _ in }, onData: { _ in })
        }
        #expect(server.bytesReceived == sent, "the prompt went to a process that is not the engine")
        client.expectedPeer = { nil }
        #expect(await client.isReady() == false, "no engine started yet: nothing is sent")

        // A path that is not absolute, or too long for sun_path, is not an engine address.
        #expect(EngineClient(url: "unix:relative.sock") == nil)
        #expect(EngineClient(url: "unix:/" + String(repeating: "a", count: 120)) == nil)
    }
}
