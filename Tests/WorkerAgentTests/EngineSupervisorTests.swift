import Foundation
import TestSupport
import Testing
@testable import WorkerAgent

/// The engine supervisor with real processes: no engine outlives its worker.
@Suite struct EngineSupervisorTests {
    static func alive(_ pid: pid_t) -> Bool { EngineSupervisor.running(pid) }

    /// Waits up to `limit` for `condition`, with a last look after the deadline (a loaded
    /// machine may not run this task for a long while).
    static func eventually(within limit: Duration = .seconds(180), _ condition: () -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return condition()
    }

    /// Waits up to `limit` for the supervisor to report a running engine.
    /// (A loaded machine may not run this task for a long while: the last look comes after the
    /// deadline, so a starved poll is not mistaken for an engine that never started.)
    static func started(_ supervisor: EngineSupervisor, within limit: Duration = .seconds(180)) async -> pid_t? {
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline {
            if let pid = supervisor.enginePID { return pid }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return supervisor.enginePID
    }

    @Test func cancellingTheSupervisorTearsDownAnEngineThatIgnoresSIGTERM() async throws {
        let marker = FileManager.default.temporaryDirectory.appendingPathComponent("engine-term-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: marker) }
        // The engine notes SIGTERM and carries on: only the SIGKILL that follows ends it.
        let supervisor = EngineSupervisor(command: [
            "sh", "-c", "trap 'echo term >> \(marker.path)' TERM; while true; do sleep 1; done",
        ])
        let task = Task { await supervisor.run() }
        // Whatever happens below, nothing this test started outlives it.
        defer {
            supervisor.stop()
            task.cancel()
        }
        let pid = try #require(await Self.started(supervisor))
        #expect(Self.alive(pid))
        task.cancel()
        await task.value
        #expect(await Self.eventually { !Self.alive(pid) })
        // Staged: it was asked to stop (SIGTERM) before it was killed.
        #expect((try? String(contentsOf: marker, encoding: .utf8))?.contains("term") == true)
        #expect(supervisor.enginePID == nil)
    }

    @Test func stopEndsTheEngineAndItIsNotRestarted() async throws {
        let supervisor = EngineSupervisor(command: ["sleep", "600"])
        let task = Task { await supervisor.run() }
        defer { task.cancel() }
        let pid = try #require(await Self.started(supervisor))
        supervisor.stop()
        #expect(await Self.eventually { !Self.alive(pid) })
        // The supervisor sees the exit, and starts nothing after it.
        #expect(await Self.eventually { supervisor.enginePID == nil })
        try await Task.sleep(for: .seconds(2))
        #expect(supervisor.enginePID == nil, "restarted after stop")
        task.cancel()
        await task.value
    }

    /// Threat (to availability): the check that the engine owns its port misreading a busy
    /// host. /proc/net/tcp with hundreds of sockets is far longer than the first page Foundation
    /// reads; the listener opened last must still be found.
    @Test func listenersFoundInALongSocketTable() throws {
        var descriptors = [Int32]()
        defer { descriptors.forEach { close($0) } }
        for _ in 0..<300 {
            descriptors.append(try #require(LoopbackPort.bind(listening: true)).fd)
        }
        let last = try #require(LoopbackPort.bind(listening: true))
        descriptors.append(last.fd)
        let table = try #require(EngineSupervisor.procFile("/proc/net/tcp"))
        #expect(table.utf8.count > 300 * 100, "the whole table was read (\(table.utf8.count) bytes)")
        let inodes = EngineSupervisor.listeningInodes(port: last.port)
        #expect(inodes.count == 1, "the last listener's line is found")
        let mine = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(last.fd)")
        #expect(inodes.map { "socket:[\($0)]" } == [mine])
    }
}
