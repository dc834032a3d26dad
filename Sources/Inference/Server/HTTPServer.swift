import Foundation

/// One parsed HTTP/1.1 request.
public struct HTTPRequest: Sendable {
    public var method: String
    public var path: String
    public var headers: [(String, String)]
    public var body: Data

    public func header(_ name: String) -> String? {
        headers.first { $0.0.caseInsensitiveCompare(name) == .orderedSame }?.1
    }
}

/// Why a request could not even be parsed; answered with this status and closed.
struct HTTPParseError: Error {
    let status: Int
    let message: String
}

/// Writes one response: whole (`send`) or streamed in chunks (`start`, `write`, `finish`).
/// Every write reports whether the client is still there.
public final class HTTPResponseWriter: @unchecked Sendable {
    let fd: Int32
    let keepAlive: Bool
    private(set) var started = false
    private(set) var failed = false
    private var chunked = false

    init(fd: Int32, keepAlive: Bool) {
        self.fd = fd
        self.keepAlive = keepAlive
    }

    static func reason(_ status: Int) -> String {
        switch status {
        case 200: "OK"
        case 400: "Bad Request"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 408: "Request Timeout"
        case 411: "Length Required"
        case 413: "Content Too Large"
        case 429: "Too Many Requests"
        case 431: "Request Header Fields Too Large"
        case 500: "Internal Server Error"
        case 501: "Not Implemented"
        case 503: "Service Unavailable"
        default: "Status"
        }
    }

    @discardableResult
    func raw(_ data: Data) -> Bool {
        guard !failed else { return false }
        var sent = 0
        let ok = data.withUnsafeBytes { (p: UnsafeRawBufferPointer) -> Bool in
            while sent < p.count {
                let n = Foundation.send(fd, p.baseAddress! + sent, p.count - sent, Int32(MSG_NOSIGNAL))
                if n <= 0 {
                    if n < 0, errno == EINTR { continue }
                    return false
                }
                sent += n
            }
            return true
        }
        if !ok { failed = true }
        return ok
    }

    /// A complete response with a body.
    @discardableResult
    public func send(status: Int, contentType: String = "application/json", body: Data) -> Bool {
        started = true
        var head =
            "HTTP/1.1 \(status) \(Self.reason(status))\r\nContent-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n"
        head += keepAlive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n"
        return raw(Data(head.utf8) + body)
    }

    /// Whether the client has closed its side or the connection failed, asked without waiting.
    /// A generation for a client that is gone is stopped, so it does not hold a slot. (A
    /// client that half-closes after its request is taken as gone: HTTP clients do not.)
    public var peerGone: Bool {
        if failed { return true }
        // POLLRDHUP (Linux): the peer shut down its writing side.
        var p = pollfd(fd: fd, events: Int16(POLLIN) | 0x2000, revents: 0)
        guard poll(&p, 1, 0) == 1 else { return false }
        return p.revents & (0x2000 | Int16(POLLHUP) | Int16(POLLERR) | Int16(POLLNVAL)) != 0
    }

    /// Starts a chunked response (server-sent events by default).
    @discardableResult
    public func start(status: Int = 200, contentType: String = "text/event-stream") -> Bool {
        started = true
        chunked = true
        let head =
            "HTTP/1.1 \(status) \(Self.reason(status))\r\nContent-Type: \(contentType)\r\nCache-Control: no-cache\r\n"
            + "Transfer-Encoding: chunked\r\n"
            + (keepAlive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n")
        return raw(Data(head.utf8))
    }

    /// One chunk of a started response.
    @discardableResult
    public func write(_ data: Data) -> Bool {
        guard chunked, !data.isEmpty else { return !failed }
        return raw(Data(String(data.count, radix: 16).utf8) + Data("\r\n".utf8) + data + Data("\r\n".utf8))
    }

    @discardableResult
    public func finish() -> Bool {
        guard chunked else { return !failed }
        chunked = false
        return raw(Data("0\r\n\r\n".utf8))
    }
}

/// A small HTTP/1.1 server on POSIX sockets for the engine's loopback API: keep-alive,
/// Content-Length and chunked request bodies, chunked streaming responses. One thread per
/// connection, a bounded number of connections.
///
/// Caps (the API's bodies are chat histories, tens of KiB): request head 16 KiB, 100 header
/// lines, body 4 MiB, 64 open connections; an idle or slow client is dropped after 60 s.
public final class HTTPServer: @unchecked Sendable {
    public typealias Handler = @Sendable (HTTPRequest, HTTPResponseWriter) -> Void

    static let maxHead = 16 << 10
    static let maxHeaders = 100
    public static let maxBody = 4 << 20
    static let maxConnections = 64
    static let idleSeconds = 60

    let handler: Handler
    private var listener: Int32 = -1
    private let lock = NSLock()
    private var open = 0
    private var stopping = false
    public private(set) var port = 0

    public init(handler: @escaping Handler) { self.handler = handler }

    /// Binds and listens; returns the bound port (useful with port 0).
    public func bind(host: String, port: Int) throws(InferenceError) -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw InferenceError(.invalidRequest, "socket: \(String(cString: strerror(errno)))") }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        guard inet_pton(AF_INET, host, &addr.sin_addr) == 1 else {
            close(fd)
            throw InferenceError(.invalidRequest, "\(host) is not an IPv4 address")
        }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Foundation.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0, listen(fd, 128) == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw InferenceError(.invalidRequest, "cannot listen on \(host):\(port): \(message)")
        }
        var actual = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &actual) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        listener = fd
        self.port = Int(UInt16(bigEndian: actual.sin_port))
        return self.port
    }

    /// Binds and listens on a Unix socket at `path`, created with mode 0600 (owner only).
    ///
    /// Threat: another local user connecting to the engine, which holds prompts in plaintext, and
    /// an engine started twice taking the path from the one serving. The socket's mode is set on
    /// the socket before it is bound (Linux gives the file the socket inode's mode), so the file
    /// is never reachable by others, even for a moment, and no umask (process-wide) or path-based
    /// chmod (which follows links) is involved. A socket at the path that refuses connections (a
    /// stale one) is replaced; a live one, or anything that is not a socket, is refused and left.
    public func bind(unixSocket path: String) throws(InferenceError) {
        guard path.hasPrefix("/"), path.utf8.count <= 107, !path.utf8.contains(0) else {
            throw InferenceError(.invalidRequest, "the socket path must be absolute and at most 107 bytes: \(path)")
        }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, byte) in path.utf8.enumerated() { raw[i] = byte }
        }
        func withAddress<T>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
            withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    body($0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
        }
        var existing = stat()
        if lstat(path, &existing) == 0 {
            guard existing.st_mode & S_IFMT == S_IFSOCK else {
                throw InferenceError(.invalidRequest, "\(path) exists and is not a socket; refusing to replace it")
            }
            let probe = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            let answered = withAddress { connect(probe, $0, $1) } == 0
            let refused = errno == ECONNREFUSED
            close(probe)
            guard !answered, refused else {
                throw InferenceError(.invalidRequest, "\(path): another server is listening there; refusing to take it")
            }
            unlink(path)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw InferenceError(.invalidRequest, "socket: \(String(cString: strerror(errno)))") }
        guard fchmod(fd, 0o600) == 0, withAddress({ Foundation.bind(fd, $0, $1) }) == 0, listen(fd, 128) == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw InferenceError(.invalidRequest, "cannot listen on \(path): \(message)")
        }
        var created = stat()
        guard lstat(path, &created) == 0, created.st_mode & 0o077 == 0 else {
            close(fd)
            unlink(path)
            throw InferenceError(.invalidRequest, "\(path) was not created owner-only; refusing to serve on it")
        }
        listener = fd
        port = 0
    }

    /// Accepts connections until `stop()`.
    public func serve() {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                if lock.withLock({ stopping }) { return }
                usleep(10_000)
                continue
            }
            let admitted = lock.withLock { () -> Bool in
                guard open < Self.maxConnections else { return false }
                open += 1
                return true
            }
            guard admitted else {
                let writer = HTTPResponseWriter(fd: client, keepAlive: false)
                writer.send(
                    status: 503,
                    body: OpenAIErrorBody.data("too many connections", type: "server_error", code: "server_busy"))
                close(client)
                continue
            }
            Thread.detachNewThread { [self] in
                connection(client)
                close(client)
                lock.withLock { open -= 1 }
            }
        }
    }

    public func stop() {
        lock.withLock { stopping = true }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    func connection(_ fd: Int32) {
        var timeout = timeval(tv_sec: Self.idleSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var reader = SocketReader(fd: fd)
        while true {
            let request: HTTPRequest
            do {
                guard let r = try reader.readRequest() else { return }
                request = r
            } catch let error as HTTPParseError {
                let writer = HTTPResponseWriter(fd: fd, keepAlive: false)
                writer.send(
                    status: error.status,
                    body: OpenAIErrorBody.data(error.message, type: "invalid_request_error", code: nil))
                return
            } catch {
                return
            }
            let keepAlive = request.header("Connection")?.lowercased() != "close"
            let writer = HTTPResponseWriter(fd: fd, keepAlive: keepAlive)
            handler(request, writer)
            if !writer.started {
                writer.send(status: 500, body: OpenAIErrorBody.data("no response", type: "server_error", code: nil))
            }
            if !keepAlive || writer.failed { return }
        }
    }
}

/// Buffered reads of requests from a socket (or, with `fd` -1, from `buffer` alone).
///
/// Strict where leniency would let two readers on the path disagree about a request (RFC 9112
/// §5, §6): one Content-Length of digits only or one Transfer-Encoding of exactly `chunked`,
/// never both; no whitespace before a header's colon; no folded header lines; chunk sizes of
/// hex digits only, each chunk followed by CRLF. Consumed bytes are skipped with a cursor, so a
/// body in many small chunks costs time linear in its size.
struct SocketReader {
    let fd: Int32
    var buffer = [UInt8]()
    /// Bytes of `buffer` before this index are consumed.
    var start = 0

    init(fd: Int32, buffer: [UInt8] = []) {
        self.fd = fd
        self.buffer = buffer
    }

    var available: Int { buffer.count - start }

    /// Reads more bytes; false at end of stream or error.
    mutating func fill() -> Bool {
        if start > 0, start >= buffer.count / 2 {
            buffer.removeFirst(start)
            start = 0
        }
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { return false }
        buffer.append(contentsOf: chunk[0..<n])
        return true
    }

    /// Offset (from `start`) of the first `needle` among the unconsumed bytes.
    func find(_ needle: [UInt8]) -> Int? {
        guard available >= needle.count else { return nil }
        for i in start...(buffer.count - needle.count) where buffer[i] == needle[0] {
            if buffer[i..<(i + needle.count)].elementsEqual(needle) { return i - start }
        }
        return nil
    }

    /// Takes `count` unconsumed bytes.
    mutating func take(_ count: Int) -> ArraySlice<UInt8> {
        defer { start += count }
        return buffer[start..<(start + count)]
    }

    static let crlfcrlf: [UInt8] = [13, 10, 13, 10]

    /// The next request, or nil when the client closed cleanly between requests.
    mutating func readRequest() throws -> HTTPRequest? {
        var headEnd: Int?
        while headEnd == nil {
            if let r = find(Self.crlfcrlf) { headEnd = r; break }
            guard available <= HTTPServer.maxHead else {
                throw HTTPParseError(status: 431, message: "request head exceeds 16 KiB")
            }
            guard fill() else {
                if available == 0 { return nil }
                throw HTTPParseError(status: 400, message: "incomplete request head")
            }
        }
        guard headEnd! <= HTTPServer.maxHead else {
            throw HTTPParseError(status: 431, message: "request head exceeds 16 KiB")
        }
        guard let head = String(validating: take(headEnd!), as: UTF8.self) else {
            throw HTTPParseError(status: 400, message: "request head is not UTF-8")
        }
        start += 4
        var request = try Self.parseHead(head)
        let lengths = request.headers.filter { $0.0.caseInsensitiveCompare("Content-Length") == .orderedSame }
        let codings = request.headers.filter { $0.0.caseInsensitiveCompare("Transfer-Encoding") == .orderedSame }
        // Threat: a body whose length two parsers on the path read differently (request
        // smuggling).
        guard lengths.count <= 1, codings.count <= 1, lengths.isEmpty || codings.isEmpty else {
            throw HTTPParseError(status: 400, message: "ambiguous framing: repeated or combined length headers")
        }
        if let coding = codings.first?.1 {
            guard coding.utf8.count == 7, coding.lowercased() == "chunked" else {
                throw HTTPParseError(status: 501, message: "unsupported Transfer-Encoding '\(coding)'")
            }
            request.body = try readChunked()
        } else if let lengthText = lengths.first?.1 {
            guard !lengthText.isEmpty, lengthText.utf8.count <= 18,
                lengthText.utf8.allSatisfy({ (48...57).contains($0) }),
                let length = Int(lengthText)
            else {
                throw HTTPParseError(status: 400, message: "bad Content-Length")
            }
            guard length <= HTTPServer.maxBody else {
                throw HTTPParseError(status: 413, message: "request body exceeds 4 MiB")
            }
            while available < length {
                guard fill() else {
                    throw HTTPParseError(status: 400, message: "request body is shorter than its Content-Length")
                }
            }
            request.body = Data(take(length))
        }
        return request
    }

    /// The request line and header fields of `head`.
    static func parseHead(_ head: String) throws -> HTTPRequest {
        var lines = head.components(separatedBy: "\r\n")
        let requestLine = lines.removeFirst().split(separator: " ", omittingEmptySubsequences: false)
        guard requestLine.count == 3, requestLine[2].hasPrefix("HTTP/1.") else {
            throw HTTPParseError(status: 400, message: "malformed request line")
        }
        guard lines.count <= HTTPServer.maxHeaders else {
            throw HTTPParseError(status: 431, message: "more than 100 header lines")
        }
        // Control bytes (a lone CR or LF among them) end no line here, but might in another
        // reader; they are refused anywhere in the head.
        guard head.utf8.allSatisfy({ ($0 >= 0x20 && $0 != 0x7F) || $0 == 0x09 || $0 == 0x0D || $0 == 0x0A }),
            !lines.contains(where: { $0.utf8.contains(0x0D) || $0.utf8.contains(0x0A) })
        else {
            throw HTTPParseError(status: 400, message: "control characters in the request head")
        }
        var headers = [(String, String)]()
        for line in lines {
            let bytes = Array(line.utf8)
            // A field name of token characters (RFC 9110 §5.6.2), directly followed by ':'.
            guard let colon = bytes.firstIndex(of: UInt8(ascii: ":")), colon > 0,
                bytes[..<colon].allSatisfy(Self.isTokenCharacter)
            else {
                throw HTTPParseError(status: 400, message: "malformed header line")
            }
            // Optional whitespace is SP and HTAB only.
            let value = bytes[(colon + 1)...].drop { $0 == 0x20 || $0 == 0x09 }
            let trimmed = value.reversed().drop { $0 == 0x20 || $0 == 0x09 }.reversed()
            headers.append(
                (String(decoding: bytes[..<colon], as: UTF8.self), String(decoding: Array(trimmed), as: UTF8.self)))
        }
        return HTTPRequest(method: String(requestLine[0]), path: String(requestLine[1]), headers: headers, body: Data())
    }

    static func isTokenCharacter(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"):
            true
        default: Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
        }
    }

    mutating func readChunked() throws -> Data {
        var body = Data()
        while true {
            var lineEnd = find([13, 10])
            while lineEnd == nil {
                guard available < 1024, fill() else {
                    throw HTTPParseError(status: 400, message: "malformed chunked body")
                }
                lineEnd = find([13, 10])
            }
            // The size in hex digits, then optional extensions after ';'.
            guard lineEnd! <= 1024 else { throw HTTPParseError(status: 400, message: "chunk-size line over 1 KiB") }
            let line = take(lineEnd!)
            start += 2
            // Extensions after ';' are ignored, but only visible ASCII and tabs are accepted.
            guard line.allSatisfy({ ($0 >= 0x20 && $0 < 0x7F) || $0 == 0x09 }) else {
                throw HTTPParseError(status: 400, message: "control characters in a chunk-size line")
            }
            let digits = line.prefix { $0 != UInt8(ascii: ";") }
            guard !digits.isEmpty, digits.count <= 8,
                digits.allSatisfy({ (48...57).contains($0) || (65...70).contains($0) || (97...102).contains($0) }),
                let size = Int(String(decoding: digits, as: UTF8.self), radix: 16)
            else {
                throw HTTPParseError(status: 400, message: "malformed chunk size")
            }
            guard size <= HTTPServer.maxBody - body.count else {
                throw HTTPParseError(status: 413, message: "request body exceeds 4 MiB")
            }
            while available < size + 2 {
                guard fill() else { throw HTTPParseError(status: 400, message: "truncated chunk") }
            }
            body.append(contentsOf: take(size))
            guard take(2).elementsEqual([13, 10]) else {
                throw HTTPParseError(status: 400, message: "chunk not followed by CRLF")
            }
            if size == 0 { return body }
        }
    }
}

/// OpenAI-shaped error bodies: `{"error": {"message", "type", "param", "code"}}`.
public enum OpenAIErrorBody {
    public static func data(_ message: String, type: String, code: String?, param: String? = nil) -> Data {
        let value: JSONValue = .object([
            (
                "error",
                .object([
                    ("message", .string(message)), ("type", .string(type)),
                    ("param", param.map(JSONValue.string) ?? .null), ("code", code.map(JSONValue.string) ?? .null),
                ])
            )
        ])
        return Data(value.serialized.utf8)
    }
}
