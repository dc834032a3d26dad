import ArgumentParser
import AttestationCore
import Foundation
import Policy

@main
struct CCGate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ccgate",
        abstract: "A confidential-compute gateway: admits GPU workers only on verified hardware attestation.",
        discussion: """
            Exit status: 0 success (evidence accepted), 1 evidence rejected, 2 unreadable input or bad usage.
            """,
        subcommands: [EvidenceCommand.self, PolicyCommand.self])

    /// Runs the command, mapping usage errors to exit status 2 (not ArgumentParser's 64).
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                print(fullMessage(for: error))
                Foundation.exit(0)
            }
            if let exit = error as? ExitCode { Foundation.exit(exit.rawValue) }
            FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
            Foundation.exit(2)
        }
    }
}

/// An error that has already been reported; exits with the given status.
struct Failure: Error {
    let status: Int32
    init(_ message: String, status: Int32 = 2) {
        FileHandle.standardError.write(Data(("ccgate: " + message + "\n").utf8))
        self.status = status
    }
}

extension ParsableCommand {
    /// Runs `body`, turning a reported `Failure` into its exit status.
    func exiting(_ body: () throws -> Int32) throws {
        let status: Int32
        do { status = try body() } catch let failure as Failure { status = failure.status }
        if status != 0 { throw ExitCode(status) }
    }
}
