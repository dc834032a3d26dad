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
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}
