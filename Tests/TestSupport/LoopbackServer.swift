import Foundation

/// Helpers for the loopback stand-in servers the tests start as child processes (Python scripts
/// that bind port 0 and write their ports to a file, atomically, once listening).
public enum LoopbackServer {
    /// The system interpreter, called directly: a version-manager shim in between would not pass
    /// on the signal that stops the server.
    public static var systemPython: URL {
        URL(
            fileURLWithPath: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3")
                ? "/usr/bin/python3" : "/usr/local/bin/python3")
    }

    /// The space-separated ports `process` writes to `file` (`N` or `name=N`); empty when it exits
    /// or `timeout` passes first.
    public static func ports(in file: URL, of process: Process, timeout: TimeInterval) -> [Int] {
        let deadline = Date() + timeout
        while Date() < deadline, process.isRunning {
            if let text = try? String(contentsOf: file, encoding: .utf8) {
                let ports = text.split(whereSeparator: \.isWhitespace).compactMap {
                    Int($0.split(separator: "=").last ?? "")
                }
                if !ports.isEmpty { return ports }
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        return []
    }
}

/// A stand-in server written in Python, started as a child process: `source` binds 127.0.0.1
/// port 0 and writes its port to the file named by `sys.argv[1]` (write, then rename). Killed
/// when released.
public final class PythonServer: @unchecked Sendable {
    public let process = Process()
    public let port: Int

    /// `pieces` of Python, joined line by line.
    public convenience init(_ pieces: [String], in dir: TemporaryDirectory) throws {
        try self.init(pieces.joined(separator: "\n"), in: dir)
    }

    public init(_ source: String, in dir: TemporaryDirectory) throws {
        let portFile = dir.file("python-server-\(UUID().uuidString)")
        process.executableURL = LoopbackServer.systemPython
        process.arguments = ["-c", source, portFile.path]
        try process.run()
        port = LoopbackServer.ports(in: portFile, of: process, timeout: 30).first ?? 0
    }

    /// The lines that serve the handler class `H` and report the port.
    public static let serveH = """
        s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        open(sys.argv[1] + ".tmp", "w").write(str(s.server_address[1])); os.rename(sys.argv[1] + ".tmp", sys.argv[1])
        s.serve_forever()
        """

    /// `GET /v1/models` answering one model named `fake`, for handlers to inherit.
    public static let modelsHandler = """
        import http.server, json, os, sys, time
        class Models(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def log_message(self, *a): pass
            def do_GET(self):
                body = b'{"object":"list","data":[{"id":"fake","object":"model"}]}'
                self.send_response(200); self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
        """

    deinit { kill(process.processIdentifier, SIGKILL) }
}
