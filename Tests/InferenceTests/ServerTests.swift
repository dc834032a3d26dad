import Foundation
@testable import Inference
import TestSupport
import Testing

/// ccinfer's OpenAI API on the real model, through curl and raw sockets: routes, streaming,
/// usage, limits, and hostile input that must get a clean error while the server keeps serving.
@Suite struct ServerTests {
    /// A server with a model of its own (context 2048) on a free port, for the life of the test
    /// process. Its connection threads are its own, not Swift's cooperative ones.
    static let server: Result<Int, any Error> = Result {
        let model = try Transformer(
            url: try References.environment.get().model, device: try Lavapipe.device(), contextLength: 2048)
        let api = OpenAIServer(generator: Generator(model: model), modelName: "smollm2", maxQueue: 4)
        let http = HTTPServer { request, writer in api.handle(request, writer) }
        let port = try http.bind(host: "127.0.0.1", port: 0)
        Thread.detachNewThread { http.serve() }
        return port
    }

    /// The server, started (model load and kernel compilation: many seconds) on a thread of its
    /// own: never on one of the cooperative pool's two threads, which every other test needs.
    static func started() async throws -> Int {
        try await offPool { try server.get() }
    }

    func curl(_ path: String, _ body: String? = nil, method: String? = nil, extra: [String] = []) async throws -> (
        status: Int, body: String
    ) {
        let port = try await Self.started()
        var args = ["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "300", "http://127.0.0.1:\(port)\(path)"]
        if let method { args += ["-X", method] }
        if let body { args += ["-H", "Content-Type: application/json", "--data-binary", body] }
        let result = try await ProcessRunner.run("curl", args + extra)
        let cut = result.stdout.lastIndex(of: "\n")!
        return (Int(result.stdout[result.stdout.index(after: cut)...]) ?? 0, String(result.stdout[..<cut]))
    }

    func object(_ text: String) throws -> [String: Any] {
        try #require(
            try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], "not a JSON object: \(text)")
    }

    func errorCode(_ text: String) -> String? {
        ((try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any]).flatMap {
            ($0["error"] as? [String: Any])?["code"] as? String
        }
    }

    @Test func modelsChatAndCompletions() async throws {
        let models = try await curl("/v1/models")
        #expect(models.status == 200)
        #expect(((try object(models.body))["data"] as? [[String: Any]])?.first?["id"] as? String == "smollm2")

        let chat = try await curl(
            "/v1/chat/completions",
            #"{"model":"smollm2","messages":[{"role":"user","content":"What is 2+2?"}],"max_tokens":8,"temperature":0}"#
        )
        #expect(chat.status == 200, "\(chat.body)")
        let c = try object(chat.body)
        #expect(c["object"] as? String == "chat.completion")
        let choice = (c["choices"] as? [[String: Any]])?.first
        #expect(((choice?["message"] as? [String: Any])?["content"] as? String)?.isEmpty == false)
        let usage = c["usage"] as? [String: Int]
        #expect(usage?["prompt_tokens"] ?? 0 > 10)
        #expect((usage?["completion_tokens"] ?? 0) >= 1 && (usage?["completion_tokens"] ?? 99) <= 8)
        #expect(usage?["total_tokens"] == (usage?["prompt_tokens"] ?? 0) + (usage?["completion_tokens"] ?? 0))

        // The same request, streamed: the pieces join to the same text (greedy).
        let streamed = try await curl(
            "/v1/chat/completions",
            #"{"model":"smollm2","messages":[{"role":"user","content":"What is 2+2?"}],"max_tokens":8,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}"#
        )
        #expect(streamed.status == 200)
        let events = streamed.body.components(separatedBy: "\n\n").filter { $0.hasPrefix("data: ") }.map {
            String($0.dropFirst(6))
        }
        #expect(events.last == "[DONE]")
        var text = ""
        var sawUsage = false
        for e in events.dropLast() {
            let o = try object(e)
            #expect(o["object"] as? String == "chat.completion.chunk")
            if let u = o["usage"] as? [String: Int] { sawUsage = u == usage }
            for ch in (o["choices"] as? [[String: Any]]) ?? [] {
                text += ((ch["delta"] as? [String: Any])?["content"] as? String) ?? ""
            }
        }
        #expect(text == (choice?["message"] as? [String: Any])?["content"] as? String)
        #expect(sawUsage)

        let completion = try await curl(
            "/v1/completions", #"{"prompt":"The capital of France is","max_tokens":4,"temperature":0}"#)
        #expect(completion.status == 200)
        let co = try object(completion.body)
        #expect(co["object"] as? String == "text_completion")
        #expect(((co["choices"] as? [[String: Any]])?.first?["text"] as? String)?.isEmpty == false)

        // Stop sequences cut the text before them.
        let stopped = try await curl(
            "/v1/completions", #"{"prompt":"1, 2, 3, 4,","max_tokens":16,"temperature":0,"stop":[" 7"]}"#)
        let stoppedText = ((try object(stopped.body))["choices"] as? [[String: Any]])?.first?["text"] as? String ?? ""
        #expect(!stoppedText.contains(" 7"))
    }

    @Test func badRequestsGetOpenAIErrors() async throws {
        let cases: [(String, String?, Int, String?)] = [
            ("/v1/chat/completions", "{not json", 400, nil),
            ("/v1/chat/completions", #"[1,2]"#, 400, nil),
            ("/v1/chat/completions", #"{"messages":[]}"#, 400, nil),
            ("/v1/chat/completions", #"{"messages":"hello"}"#, 400, nil),
            ("/v1/chat/completions", #"{"messages":[{"content":"no role"}]}"#, 400, nil),
            ("/v1/chat/completions", #"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#, 400, nil),
            (
                "/v1/chat/completions", #"{"model":"gpt-4","messages":[{"role":"user","content":"x"}]}"#, 404,
                "model_not_found"
            ),
            ("/v1/chat/completions", #"{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#, 400, nil),
            ("/v1/chat/completions", #"{"messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#, 400, nil),
            ("/v1/chat/completions", #"{"messages":[{"role":"user","content":"x"}],"n":3}"#, 400, nil),
            ("/v1/chat/completions", #"{"messages":[{"role":"user","content":"x"}],"stop":[1,2]}"#, 400, nil),
            (
                "/v1/chat/completions", #"{"messages":[{"role":"user","content":"x"}],"max_tokens":5000}"#, 400,
                "context_length_exceeded"
            ),
            ("/v1/completions", #"{"prompt":{"a":1}}"#, 400, nil),
            ("/v1/completions", #"{"prompt":[999999999]}"#, 400, nil),
            (
                "/v1/completions", #"{"prompt":""# + String(repeating: "word ", count: 3000) + #"","max_tokens":1}"#,
                400, "context_length_exceeded"
            ),
            ("/v1/nothing", nil, 404, "not_found"),
        ]
        // Fields the engine does not implement are named, not ignored; their neutral values pass.
        let user = #""messages":[{"role":"user","content":"x"}],"max_tokens":1"#
        for (field, value) in [
            ("response_format", #"{"type":"json_object"}"#), ("logprobs", "true"), ("top_logprobs", "2"),
            ("logit_bias", #"{"42":5}"#), ("presence_penalty", "0.5"), ("frequency_penalty", "1"),
            ("functions", "[]"), ("tool_choice", #""required""#),
        ] {
            let r = try await curl("/v1/chat/completions", "{\(user),\"\(field)\":\(value)}")
            #expect(r.status == 400, "\(field): \(r.body)")
            #expect(errorCode(r.body) == "unsupported_parameter", "\(field): \(r.body)")
            #expect((try object(r.body)["error"] as? [String: Any])?["param"] as? String == field, "\(r.body)")
        }
        let neutral = try await curl(
            "/v1/chat/completions",
            "{\(user),\"response_format\":{\"type\":\"text\"},\"logprobs\":false,\"presence_penalty\":0}")
        #expect(neutral.status == 200, "\(neutral.body)")
        for (path, body, status, code) in cases {
            let r = try await curl(path, body)
            #expect(r.status == status, "\(path) \(body?.prefix(60) ?? ""): \(r.body)")
            let error = try object(r.body)["error"] as? [String: Any]
            #expect(error?["message"] as? String != nil, "\(r.body)")
            if let code { #expect(errorCode(r.body) == code, "\(r.body)") }
        }
        let wrongMethod = try await curl("/v1/chat/completions", method: "GET")
        #expect(wrongMethod.status == 405)
        // Deeply nested JSON is refused, not recursed into.
        let deep = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        #expect(try await curl("/v1/chat/completions", deep).status == 400)
        // Still serving.
        #expect(try await curl("/health").status == 200)
    }

    /// `ccinfer serve --socket`: a Unix socket of mode 0600 that serves the API; a stale socket is
    /// replaced, any other file at the path is refused and left alone.
    @Test func unixSocketIsOwnerOnly() async throws {
        let dir = try TemporaryDirectory("unix-socket")
        let path = dir.file("engine.sock").path
        let http = HTTPServer { _, writer in writer.send(status: 200, body: Data(#"{"status":"ok"}"#.utf8)) }
        try http.bind(unixSocket: path)
        Thread.detachNewThread { http.serve() }
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o600, "mode \(String(mode ?? 0, radix: 8))")
        let r = try await ProcessRunner.run(
            "curl", ["-s", "--max-time", "10", "--unix-socket", path, "http://x/health"])
        #expect(r.stdout.contains("ok"), "\(r.stdout) \(r.stderr)")

        // A live socket is not taken from the server on it; a stale one (its server gone) is replaced.
        let again = HTTPServer { _, writer in writer.send(status: 200, body: Data("{}".utf8)) }
        #expect(throws: InferenceError.self) { try again.bind(unixSocket: path) }
        #expect(
            try await ProcessRunner.run("curl", ["-s", "--unix-socket", path, "http://x/health"]).stdout.contains("ok"))
        http.stop()
        try again.bind(unixSocket: path)
        again.stop()

        // A regular file is not the engine's to delete.
        let file = dir.file("not-a-socket").path
        try Data("keep".utf8).write(to: URL(fileURLWithPath: file))
        #expect(throws: InferenceError.self) { try HTTPServer { _, _ in }.bind(unixSocket: file) }
        #expect(try String(contentsOfFile: file, encoding: .utf8) == "keep")
    }

    /// Bytes that are not HTTP, heads and bodies beyond the caps, truncated bodies, clients that
    /// vanish mid-stream: each is answered or dropped, and the next client is served.
    @Test func hostileConnectionsDoNotStopTheServer() async throws {
        let port = try await Self.started()
        let oversizedBody = "POST /v1/completions HTTP/1.1\r\nContent-Length: \(HTTPServer.maxBody + 1)\r\n\r\n"
        let payloads: [(String, Int?)] = [
            ("\u{0}\u{1}\u{2} garbage \r\n\r\n", 400),
            ("GET / HTTP/9\r\n\r\n", 400),
            (
                "GET /v1/models HTTP/1.1\r\n"
                    + String(repeating: "X-Pad: \(String(repeating: "a", count: 100))\r\n", count: 300) + "\r\n", 431
            ),
            (oversizedBody, 413),
            ("POST /v1/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"prompt\":", nil),
            ("POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
            ("POST /v1/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400),
        ]
        for (payload, status) in payloads {
            let answer = try await RawSocket.exchange(port: port, send: Data(payload.utf8), halfClose: true)
            if let status {
                #expect(
                    answer.hasPrefix("HTTP/1.1 \(status)"),
                    "\(payload.prefix(40).debugDescription) → \(answer.prefix(80).debugDescription)")
            }
        }
        // A streaming client that disconnects after the first event: generation stops, the
        // engine is free for the next request.
        let request = "POST /v1/completions HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n"
        let body = #"{"prompt":"Tell me a long story","max_tokens":400,"stream":true}"#
        _ = try await RawSocket.exchange(
            port: port, send: Data((request + body.padding(toLength: 64, withPad: " ", startingAt: 0)).utf8),
            halfClose: false, readUntil: "data: ")
        let after = try await curl("/v1/completions", #"{"prompt":"Hi","max_tokens":2,"temperature":0}"#)
        #expect(after.status == 200)
    }
}

/// A raw TCP exchange on loopback: send bytes, read the answer (until EOF, a marker, or a
/// read waiting `giveUpAfter` seconds), then close.
enum RawSocket {
    static func exchange(
        port: Int, send data: Data, halfClose: Bool, readUntil marker: String? = nil, giveUpAfter: Int = 60
    ) async throws -> String {
        try await DispatchQueue.global().run {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = in_port_t(UInt16(port).bigEndian)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            let connected = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard connected == 0 else { throw SetupError("connect failed") }
            var timeout = timeval(tv_sec: giveUpAfter, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            _ = data.withUnsafeBytes { Foundation.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if halfClose { shutdown(fd, Int32(SHUT_WR)) }
            var answer = [UInt8]()
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n <= 0 { break }
                answer.append(contentsOf: buffer[0..<n])
                if let marker, String(decoding: answer, as: UTF8.self).contains(marker) { break }
            }
            return String(decoding: answer, as: UTF8.self)
        }
    }
}

final class UncheckedBox<T>: @unchecked Sendable {
    var value: T?
}
