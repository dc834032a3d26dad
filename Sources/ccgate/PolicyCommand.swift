import ArgumentParser
import AttestationCore
import Foundation
import CommandLineSupport
import Policy

struct PolicyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy", abstract: "Check and inspect policy documents.", subcommands: [Lint.self])

    struct Lint: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check a policy document and report every problem with its line and column.",
            discussion: "Exit status: 0 valid, 2 invalid or unreadable.")

        @Argument(help: ArgumentHelp("The policy document (YAML).", valueName: "FILE"))
        var file: String

        func run() throws {
            try exiting {
                do throws(PolicyLoadErrors) {
                    let doc = try PolicyDocument.load(contentsOf: URL(fileURLWithPath: file))
                    print(
                        "\(file): ok — policy '\(doc.name)', formats \(doc.formats.joined(separator: ", ")), "
                            + "\(doc.binaries.count) binaries, \(doc.models.count) models")
                    return 0
                } catch {
                    FileHandle.standardError.write(Data((error.description + "\n").utf8))
                    return 2
                }
            }
        }
    }
}
