import Foundation
import Logging

/// Starts the inference engine and restarts it when it exits, with a growing delay between
/// restarts (1 s doubling to 30 s) so a crashing engine does not spin.
public final class EngineSupervisor: @unchecked Sendable {
    // Mutable state is touched only from `run`'s task and `stop`, guarded by `lock`.
    private let lock = NSLock()
    private var process: Process?
    private var stopped = false
    public let command: [String]
    let logger: Logger

    public init(command: [String], logger: Logger = Logger(label: "ccworker.engine")) {
        precondition(!command.isEmpty)
        self.command = command
        self.logger = logger
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
                logger.error("engine could not start", metadata: ["error": "\(error)"])
            }
            if ContinuousClock.now - started > .seconds(60) { delay = .seconds(1) }
            try? await Task.sleep(for: delay)
            delay = min(delay * 2, .seconds(30))
        }
    }

    var isStopped: Bool { lock.withLock { stopped } }

    private func launchAndWait() async throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = command
        p.standardInput = FileHandle.nullDevice
        try await withTaskCancellationHandler {
            try lock.withLock {
                if stopped { throw CancellationError() }
                try p.run()
                process = p
            }
            logger.info("engine started", metadata: ["ccworker.engine.pid": "\(p.processIdentifier)"])
            while p.isRunning {
                try? await Task.sleep(for: .milliseconds(200))
                if Task.isCancelled { break }
            }
        } onCancel: {
            self.stop()
        }
        if p.isRunning { p.waitUntilExit() }
        return p.terminationStatus
    }

    /// Stops the engine (SIGTERM, then SIGKILL after five seconds) and does not restart it.
    public func stop() {
        let p: Process? = lock.withLock {
            stopped = true
            return process
        }
        guard let p, p.isRunning else { return }
        p.terminate()
        let deadline = Date().addingTimeInterval(5)
        while p.isRunning, Date() < deadline { usleep(50_000) }
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
    }
}
