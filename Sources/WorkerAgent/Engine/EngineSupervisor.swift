import Foundation
import Logging
import Subprocess
import SystemPackage
import Synchronization

/// Starts the inference engine and restarts it when it exits, with a growing delay between
/// restarts (1 s doubling to 30 s) so a crashing engine does not spin. Cancelling `run` stops the
/// engine in stages (SIGTERM, then SIGKILL after five seconds) and waits for it; no engine
/// outlives the worker that started it.
public final class EngineSupervisor: Sendable {
    public let command: [String]
    let logger: Logger
    /// Whether the engine may run, whether one is being started, and the running engine's process id.
    private let state = Mutex<(stopped: Bool, starting: Bool, pid: pid_t?)>((false, false, nil))

    /// How long the engine has to exit after SIGTERM before it is killed.
    static let gracePeriod: Duration = .seconds(5)

    /// Variables added to the engine's environment (the measured model digest it must load).
    let environment: [String: String]

    /// The sealed engine copy the command executes, kept open for as long as the engine may
    /// be (re)started.
    let sealed: SealedExecutable?

    public init(
        command: [String], environment: [String: String] = [:], logger: Logger = Logger(label: "ccworker.engine")
    ) {
        precondition(!command.isEmpty)
        self.command = command
        self.environment = environment
        self.logger = logger
        sealed = nil
    }

    /// Threat: a host owner loading unmeasured code into the measured engine through the dynamic
    /// loader or the Vulkan loader. These variables are removed from a sealed engine's
    /// environment. (The system libraries and the Vulkan driver themselves remain host code the
    /// measurement does not cover.)
    static let injectionVariables = [
        "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "VK_INSTANCE_LAYERS", "VK_LAYER_PATH", "VK_ADD_LAYER_PATH",
        "VK_LOADER_LAYERS_ENABLE", "VK_IMPLICIT_LAYER_PATH", "VK_EXPLICIT_LAYER_PATH",
    ]

    /// Supervises the engine executed from its sealed, measured copy with `arguments`.
    public init(
        executable: SealedExecutable, arguments: [String], environment: [String: String] = [:],
        logger: Logger = Logger(label: "ccworker.engine")
    ) {
        command = [executable.executablePath] + arguments
        self.environment = environment
        self.logger = logger
        sealed = executable
    }

    /// Runs until cancelled or stopped.
    public func run() async {
        var delay: Duration = .seconds(1)
        while !Task.isCancelled, !isStopped {
            let started = ContinuousClock.now
            do {
                let status = try await launchAndWait()
                logger.warning("engine exited", metadata: ["ccworker.engine.status": "\(status)"])
            } catch {
                if Task.isCancelled { return }
                logger.error("engine could not start", metadata: ["error": "\(error)"])
            }
            if ContinuousClock.now - started > .seconds(60) { delay = .seconds(1) }
            try? await Task.sleep(for: delay)
            delay = min(delay * 2, .seconds(30))
        }
    }

    var isStopped: Bool { state.withLock { $0.stopped } }

    /// The running engine's process id, if one runs.
    package var enginePID: pid_t? { state.withLock { $0.pid } }

    /// One engine process, from start to exit; cancellation tears it down in stages.
    private func launchAndWait() async throws -> TerminationStatus {
        // Threat: an engine left running after ccworker exits (a stop between spawn and the pid
        // being known). `starting` makes `stop` wait for the pid; a stop before the spawn prevents it.
        let proceed = state.withLock { s -> Bool in
            if s.stopped { return false }
            s.starting = true
            return true
        }
        guard proceed else { throw CancellationError() }
        defer { state.withLock { $0.starting = false } }
        var options = PlatformOptions()
        options.teardownSequence = [.gracefulShutDown(allowedDurationToNextStep: Self.gracePeriod)]
        // A sealed engine is executed directly from its copy (no launcher read from disk), and
        // without the variables that would load other code into it.
        let executable: Executable = sealed.map { .path(FilePath($0.executablePath)) } ?? .path("/usr/bin/env")
        let arguments = sealed == nil ? command : Array(command.dropFirst())
        var variables = [Environment.Key: String?]()
        if sealed != nil {
            for name in Self.injectionVariables { variables[Environment.Key(stringLiteral: name)] = .some(nil) }
        }
        for (name, value) in environment { variables[Environment.Key(stringLiteral: name)] = value }
        let result = try await Subprocess.run(
            executable, arguments: Arguments(arguments), environment: .inherit.updating(variables),
            platformOptions: options, input: .none,
            output: .currentStandardOutput, error: .currentStandardError
        ) { execution in
            let pid = execution.processIdentifier.value
            let stopped = state.withLock { s -> Bool in
                s.pid = pid
                s.starting = false
                return s.stopped
            }
            // A stop that came while the engine was starting: it must not keep running.
            if stopped { try? execution.send(signal: .kill) }
            logger.info("engine started", metadata: ["ccworker.engine.pid": "\(pid)"])
        }
        state.withLock { $0.pid = nil }
        return result.terminationStatus
    }

    /// Stops the engine now and does not restart it: SIGTERM, then SIGKILL after the grace
    /// period. Synchronous, for signal handlers that exit right after.
    public func stop() {
        var (pid, starting): (pid_t?, Bool) = state.withLock { s in
            s.stopped = true
            return (s.pid, s.starting)
        }
        // An engine being spawned: wait (briefly) for its pid rather than leave it behind.
        let spawnDeadline = ContinuousClock.now + Self.gracePeriod
        while pid == nil, starting, ContinuousClock.now < spawnDeadline {
            usleep(10_000)
            (pid, starting) = state.withLock { ($0.pid, $0.starting) }
        }
        guard let pid, kill(pid, SIGTERM) == 0 else { return }
        let deadline = ContinuousClock.now + Self.gracePeriod
        while Self.running(pid), ContinuousClock.now < deadline { usleep(50_000) }
        if Self.running(pid) { kill(pid, SIGKILL) }
    }

    /// Whether `pid` is a live process: one that exited but is not yet reaped (a zombie, which
    /// `kill(pid, 0)` still reaches) has stopped.
    package static func running(_ pid: pid_t) -> Bool {
        guard kill(pid, 0) == 0 else { return false }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return true }
        return stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).first != "Z"
    }
}

extension EngineSupervisor {
    /// Whether the process listening at the engine's address (loopback TCP port or Unix socket
    /// path) is the supervised engine (read from /proc: the listening socket's inode among the
    /// engine's descriptors). For a Unix socket this is checked again on every connection by the
    /// peer's process id (EngineClient.expectedPeer), since /proc/net/unix names the path a
    /// socket was bound at even after that path is taken over.
    ///
    /// Threat: requests sealed for the measured engine served by another process that holds the
    /// engine's port (started first, or named by a mistaken `--engine-url`).
    public func ownsListener(_ engine: EngineClient) -> Bool {
        ownsListener(
            inodes: engine.socketPath.map(Self.listeningInodes(unixPath:)) ?? Self.listeningInodes(port: engine.port))
    }

    public func ownsListener(port: Int) -> Bool { ownsListener(inodes: Self.listeningInodes(port: port)) }

    func ownsListener(inodes: Set<String>) -> Bool {
        guard let pid = enginePID else { return false }
        guard !inodes.isEmpty else { return false }
        let fdDirectory = "/proc/\(pid)/fd"
        let descriptors = (try? FileManager.default.contentsOfDirectory(atPath: fdDirectory)) ?? []
        return descriptors.contains { fd in
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "\(fdDirectory)/\(fd)"),
                target.hasPrefix("socket:["), target.hasSuffix("]")
            else { return false }
            return inodes.contains(String(target.dropFirst(8).dropLast()))
        }
    }

    /// Inodes of the Unix stream sockets listening at `path` (/proc/net/unix: flags
    /// __SO_ACCEPTCON, type SOCK_STREAM; the path is the rest of the line after the inode).
    static func listeningInodes(unixPath path: String) -> Set<String> {
        guard let text = procFile("/proc/net/unix") else { return [] }
        var inodes = Set<String>()
        for line in text.split(separator: "\n").dropFirst() {
            var rest = line[...]
            var fields = [Substring]()
            while fields.count < 7, let end = rest.firstIndex(of: " ") ?? (rest.isEmpty ? nil : rest.endIndex) {
                let field = rest[..<end]
                if !field.isEmpty { fields.append(field) }
                rest = end == rest.endIndex ? "" : rest[rest.index(after: end)...]
            }
            guard fields.count == 7, fields[3] == "00010000", fields[4] == "0001", rest == path[...] else { continue }
            inodes.insert(String(fields[6]))
        }
        return inodes
    }

    /// A /proc file read to its end. Procfs reports a size of zero and Foundation's file readers
    /// stop after the first page (about 4 KiB): on a host with a few dozen sockets the listener's
    /// line in /proc/net/tcp lay beyond it, and the engine was taken for a stranger.
    static func procFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            guard n >= 0 else { return nil }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[..<n])
            guard bytes.count <= 64 << 20 else { return nil }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Inodes of the TCP sockets listening on `port` (IPv4 and IPv6).
    static func listeningInodes(port: Int) -> Set<String> {
        var inodes = Set<String>()
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            guard let text = procFile(table) else { continue }
            for line in text.split(separator: "\n").dropFirst() {
                let fields = line.split(separator: " ", omittingEmptySubsequences: true)
                guard fields.count > 9, fields[3] == "0A", let colon = fields[1].lastIndex(of: ":"),
                    Int(fields[1][fields[1].index(after: colon)...], radix: 16) == port
                else { continue }
                inodes.insert(String(fields[9]))
            }
        }
        return inodes
    }
}
