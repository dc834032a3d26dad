import Foundation

/// Runs a command to completion and captures its output. Used by tests to drive independent
/// tools (tpm2-tools, the built executables).
public struct ProcessResult: Sendable {
    public let status: Int32
    public let stdout: String
    public let stderr: String
    public let stdoutData: Data
}

public enum ProcessRunner {
    /// Runs `executable` (a path, or a name looked up in PATH) with `arguments`, blocking the
    /// calling thread until it exits. For one-time set-up outside Swift concurrency only: tests
    /// call the async `run`, so that no thread of the cooperative pool waits on a process.
    @available(*, noasync, message: "blocks a thread of the cooperative pool: use the async run")
    @discardableResult
    public static func runBlocking(
        _ executable: String, _ arguments: [String], environment: [String: String] = [:],
        stdin: Data? = nil, currentDirectory: URL? = nil
    ) throws -> ProcessResult {
        let process = Process()
        if executable.contains("/") {
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = arguments
        } else {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = [executable] + arguments
        }
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        process.environment = env
        if let currentDirectory { process.currentDirectoryURL = currentDirectory }
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        let input = Pipe()
        process.standardInput = input
        try process.run()
        if let stdin { input.fileHandleForWriting.write(stdin) }
        try input.fileHandleForWriting.close()
        // Drain both pipes concurrently so a chatty child never blocks on a full pipe.
        nonisolated(unsafe) var errData = Data()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async {
            errData = err.fileHandleForReading.readDataToEndOfFile()
            group.leave()
        }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        process.waitUntilExit()
        return ProcessResult(
            status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
            stderr: String(decoding: errData, as: UTF8.self), stdoutData: outData)
    }

    /// The same, for async code: the wait happens on a thread of its own, never on one of the few
    /// threads of Swift's cooperative pool (two on a two-core machine). A blocked pool thread
    /// would starve the in-process servers a test is talking to.
    @discardableResult
    public static func run(
        _ executable: String, _ arguments: [String], environment: [String: String] = [:],
        stdin: Data? = nil, currentDirectory: URL? = nil
    ) async throws -> ProcessResult {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(
                    with: Result {
                        try runBlocking(
                            executable, arguments, environment: environment, stdin: stdin,
                            currentDirectory: currentDirectory)
                    })
            }
        }
    }

    /// True when `name` is on PATH.
    public static func available(_ name: String) -> Bool {
        (try? runBlocking("sh", ["-c", "command -v \(name)"]).status) == 0
    }
}

/// A temporary directory removed when released.
public final class TemporaryDirectory: @unchecked Sendable {
    public let url: URL

    public init(_ prefix: String = "ccgate-test") throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    public func file(_ name: String) -> URL { url.appendingPathComponent(name) }

    deinit { try? FileManager.default.removeItem(at: url) }
}
