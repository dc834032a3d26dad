import ArgumentParser
import Foundation

/// A failure already explained to the user; the process exits with `status`.
public struct ReportedFailure: Error {
    public let status: Int32

    /// Prints `program: message` to standard error.
    public init(_ program: String, _ message: String, status: Int32) {
        FileHandle.standardError.write(Data("\(program): \(message)\n".utf8))
        self.status = status
    }
}

extension AsyncParsableCommand {
    /// The same as ``ParsableCommand/runWithProjectExitCodes()`` for a root whose subcommands may
    /// be async: an async subcommand runs on the Swift concurrency runtime, with no thread blocked
    /// waiting for it.
    public static func runAsyncWithProjectExitCodes(arguments: [String]? = nil) async -> Never {
        do {
            var command = try parseAsRoot(arguments)
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
            Foundation.exit(0)
        } catch {
            exitWithProjectCode(for: error)
        }
    }
}

extension ParsableCommand {
    /// Exits with the project's status for `error` (see ``runWithProjectExitCodes()``).
    static func exitWithProjectCode(for error: any Error) -> Never {
        switch error {
        case let failure as ReportedFailure: Foundation.exit(failure.status)
        case let code as ExitCode: Foundation.exit(code.rawValue)
        default:
            let code = exitCode(for: error)
            if code == .success {
                print(fullMessage(for: error))
                Foundation.exit(0)
            }
            FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
            Foundation.exit(code == .validationFailure ? 2 : 1)
        }
    }

    /// Parses and runs the command with the project's exit statuses: 0 success (and `--help`),
    /// 2 bad usage, the status of a `ReportedFailure` or `ExitCode`, and 1 for any other error.
    /// (ArgumentParser's own default for bad usage is 64.)
    public static func runWithProjectExitCodes() -> Never {
        do {
            var command = try parseAsRoot()
            try command.run()
            Foundation.exit(0)
        } catch {
            exitWithProjectCode(for: error)
        }
    }
}

/// The release every executable reports with `--version`.
public let projectVersion = "0.1.0"
