import Foundation
import Logging
import Subprocess
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
        let result = try await Subprocess.run(
            .path("/usr/bin/env"), arguments: Arguments(command),
            environment: .inherit.updating(
                Dictionary(uniqueKeysWithValues: environment.map { (Environment.Key(stringLiteral: $0.key), $0.value) })
            ),
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
