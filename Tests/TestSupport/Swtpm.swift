import Foundation

/// A real software TPM (swtpm, TCG TPM 2.0) started for one test and stopped when released.
public final class Swtpm: @unchecked Sendable {
    public let port: Int
    public let stateDirectory: TemporaryDirectory
    private let process: Process

    /// The TCTI configuration for tss2 and tpm2-tools.
    public var tcti: String { "swtpm:host=127.0.0.1,port=\(port)" }

    public enum StartError: Error, CustomStringConvertible {
        case notInstalled
        case didNotStart(String)
        public var description: String {
            switch self {
            case .notInstalled: "swtpm is not installed (scripts/setup installs it)"
            case .didNotStart(let s): "swtpm did not start: \(s)"
            }
        }
    }

    public static func start() throws -> Swtpm {
        guard ProcessRunner.available("swtpm") else { throw StartError.notInstalled }
        var lastError = ""
        // Ports are picked at random from a high range; a clash makes swtpm exit, and we retry.
        for _ in 0..<20 {
            let port = Int.random(in: 20_000..<60_000) & ~1
            // A port something already listens on would answer the connection check below for
            // the other listener (two workers on one TPM): skip it.
            if canConnect(port: port) || canConnect(port: port + 1) { continue }
            let dir = try TemporaryDirectory("swtpm")
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = [
                "swtpm", "socket", "--tpm2", "--server", "type=tcp,port=\(port),bindaddr=127.0.0.1",
                "--ctrl", "type=tcp,port=\(port + 1),bindaddr=127.0.0.1", "--tpmstate", "dir=\(dir.url.path)",
                "--flags", "not-need-init,startup-clear",
            ]
            let err = Pipe()
            process.standardError = err
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            let deadline = Date().addingTimeInterval(10)
            while Date() < deadline, process.isRunning {
                // Still running a moment after the port answers: the listener is this swtpm (one
                // that lost the port to a concurrent start exits at once).
                if canConnect(port: port), stillRunning(process) {
                    Running.add(process.processIdentifier)
                    return Swtpm(port: port, stateDirectory: dir, process: process)
                }
                usleep(20_000)
            }
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
            lastError = String(decoding: err.fileHandleForReading.availableData, as: UTF8.self)
        }
        throw StartError.didNotStart(lastError)
    }

    private init(port: Int, stateDirectory: TemporaryDirectory, process: Process) {
        self.port = port
        self.stateDirectory = stateDirectory
        self.process = process
    }

    /// Stops the TPM: SIGTERM, then SIGKILL if it is still serving a client after two seconds.
    public func stop() {
        defer { Running.remove(process.processIdentifier) }
        guard process.isRunning else { return }
        process.terminate()
        let deadline = Date().addingTimeInterval(2)
        while process.isRunning, Date() < deadline { usleep(10_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    deinit { stop() }

    /// TPMs still running when the test process exits (a test that never released its TPM) are
    /// killed then, so no swtpm outlives the run.
    enum Running {
        nonisolated(unsafe) static var pids = Set<Int32>()
        static let lock = NSLock()
        static let installed: Void = {
            atexit {
                Running.lock.lock()
                for pid in Running.pids { kill(pid, SIGKILL) }
                Running.lock.unlock()
            }
        }()

        static func add(_ pid: Int32) {
            _ = installed
            lock.withLock { _ = pids.insert(pid) }
        }

        static func remove(_ pid: Int32) { lock.withLock { _ = pids.remove(pid) } }
    }

    /// Whether `process` is still running a moment from now.
    static func stillRunning(_ process: Process) -> Bool {
        usleep(50_000)
        return process.isRunning
    }

    static func canConnect(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        return rc == 0
    }

    /// Runs a tpm2-tools command against this TPM, throwing with its stderr on failure.
    @discardableResult
    public func tool(_ name: String, _ arguments: [String], in dir: URL) throws -> ProcessResult {
        let result = try ProcessRunner.run(
            name, arguments, environment: ["TPM2TOOLS_TCTI": tcti], currentDirectory: dir)
        guard result.status == 0 else {
            throw StartError.didNotStart(
                "\(name) \(arguments.joined(separator: " ")) exited \(result.status): \(result.stderr)")
        }
        return result
    }
}
