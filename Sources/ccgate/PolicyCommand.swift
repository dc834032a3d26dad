import ArgumentParser
import AttestationCore
import Foundation
import CommandLineSupport
import Policy

struct PolicyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy", abstract: "Check and inspect policy documents.", subcommands: [Lint.self, Measure.self])

    struct Measure: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the policy entry (name, SHA-256, size) of a binary or model file.",
            discussion: """
                The output is one YAML list item per file, ready for the `binaries` or `models` list of a policy
                (docs/POLICY.md). A worker's measurement of the same file gives the same SHA-256.

                Examples:
                  ccgate policy measure .build/ccinfer-release/ccinfer
                  ccgate policy measure --name smollm2-135m-instruct --version q4_1 SmolLM2-135M-Instruct.Q4_1.gguf
                """)

        @Argument(help: ArgumentHelp("Files to measure.", valueName: "PATH")) var paths: [String]
        @Option(help: ArgumentHelp("The entry's name (default: the file name); only with one file.", valueName: "NAME")) var name: String?
        @Option(help: ArgumentHelp("An optional version label for the entry.", valueName: "TEXT")) var version: String?

        func validate() throws {
            guard !paths.isEmpty else { throw ValidationError("give at least one file") }
            if name != nil, paths.count > 1 { throw ValidationError("--name names one file; give one path") }
        }

        func run() throws {
            for path in paths {
                let url = URL(fileURLWithPath: path)
                var isDirectory: ObjCBool = false
                guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue,
                      let handle = try? FileHandle(forReadingFrom: url)
                else { throw failure("\(path): not a readable file") }
                defer { try? handle.close() }
                let hasher = IncrementalHash(.sha256)
                var size = 0
                while let chunk = try handle.read(upToCount: 4 << 20), !chunk.isEmpty {
                    size += chunk.count
                    chunk.withUnsafeBytes { hasher.update($0) }
                }
                let entryName = name ?? url.lastPathComponent
                let fields = ["name: \(Self.yamlScalar(entryName))"] + (version.map { ["version: \(Self.yamlScalar($0))"] } ?? [])
                    + ["sha256: \(hasher.finalize().hex)", "size: \(size)"]
                print("- {\(fields.joined(separator: ", "))}")
            }
        }

        /// A plain scalar when YAML reads it back as the same string, else a quoted one.
        static func yamlScalar(_ s: String) -> String {
            let plain = s.range(of: #"^[A-Za-z0-9_][A-Za-z0-9_.+/-]*$"#, options: .regularExpression) != nil
                && !["true", "false", "null", "yes", "no", "on", "off", "~"].contains(s.lowercased()) && Double(s) == nil
            if plain { return s }
            return "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
        }
    }

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
