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

    /// The space-separated ports `process` writes to `file`; empty when it exits or `timeout` passes first.
    public static func ports(in file: URL, of process: Process, timeout: TimeInterval) -> [Int] {
        let deadline = Date() + timeout
        while Date() < deadline, process.isRunning {
            if let text = try? String(contentsOf: file, encoding: .utf8) {
                let ports = text.split(whereSeparator: \.isWhitespace).compactMap { Int($0) }
                if !ports.isEmpty { return ports }
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        return []
    }
}
