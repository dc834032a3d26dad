import Foundation
import Synchronization

/// Clean-up that runs after a test returns (stopping gateways, workers, engines), tracked so
/// that the test process does not exit while it is still running: the process waits for every
/// clean-up started this way (up to a minute) before its exit handlers tear down the runtime
/// that the clean-up still uses (event loops, sockets).
public enum Teardown {
    private static let pending = Mutex<[Task<Void, Never>]>([])
    private static let installed: Void = { atexit { Teardown.waitForAll() } }()

    /// Starts `body` now, without waiting for it.
    public static func after(_ body: @escaping @Sendable () async -> Void) {
        _ = installed
        let task = Task { await body() }
        pending.withLock { $0.append(task) }
    }

    /// Blocks until every clean-up started so far has finished, or 60 s have passed.
    static func waitForAll() {
        let tasks = pending.withLock { $0 }
        let done = DispatchSemaphore(value: 0)
        Task.detached {
            for task in tasks { await task.value }
            done.signal()
        }
        _ = done.wait(timeout: .now() + 60)
    }
}

/// Waits up to `limit` seconds for `condition`, sleeping between looks without holding a thread
/// of the shared pool (a blocking wait there starves every other test on a 2-core machine).
public func eventually(_ limit: TimeInterval, _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = Date() + limit
    while Date() < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(100))
    }
    return try await condition()
}

/// Runs blocking work (a process start that polls, a wait) on a thread of its own, not on the
/// shared pool that async tests run on.
public func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await onOwnThread { try body() }
}

/// Runs `body` as part of the calling task (its test, its task-locals: `#expect` inside records
/// against the running test) but on a thread of its own, not on Swift's cooperative pool: for
/// seconds of CPU work or blocking calls in a test, which on a two-core machine would hold one of
/// the pool's two threads and stall every other test's servers and timeouts.
public func onOwnThread<T, Failure: Error>(
    isolation: isolated (any Actor)? = #isolation, _ body: () async throws(Failure) -> T
) async throws(Failure) -> T {
    try await withTaskExecutorPreference(OwnThreadExecutor(), isolation: isolation, operation: body)
}

/// A task executor running its jobs on one serial dispatch queue of its own (dispatch gives such
/// a queue a thread outside the cooperative pool).
final class OwnThreadExecutor: TaskExecutor {
    private let queue = DispatchQueue(label: "ccgate.tests.own-thread")

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        queue.async { job.runSynchronously(on: executor) }
    }
}

/// ``onOwnThread(isolation:_:)`` for seconds of CPU work (mutation loops, model files written and
/// parsed): such work from every test takes turns on one shared thread outside the pool. Given a
/// thread each, a dozen of them at once would share two cores with the servers under test and
/// starve those instead.
public func onCPULane<T, Failure: Error>(
    isolation: isolated (any Actor)? = #isolation, _ body: () async throws(Failure) -> T
) async throws(Failure) -> T {
    try await withTaskExecutorPreference(OwnThreadExecutor.cpuLane, isolation: isolation, operation: body)
}

extension OwnThreadExecutor {
    static let cpuLane = OwnThreadExecutor()
}
