import Foundation
import Yams

/// `--config FILE` for a command whose settings are its long options: a YAML mapping of option
/// names to values (`gateway: [a:8444, b:8444]`, `measure-pcr: 23`, `engine-command: true`),
/// turned into the command-line arguments it stands for before the command line is parsed, so
/// that the command checks them exactly as it checks flags. An option given on the command line
/// replaces the file's (a list wholly). Unknown names are refused by the command's own parser,
/// named as options.
public enum ConfigFile {
    public struct Invalid: Error, CustomStringConvertible {
        public let description: String
    }

    /// `arguments` with `--config FILE` (or `--config=FILE`) replaced, where it stands, by the
    /// file's settings that the other arguments do not give. Arguments after `--` are left alone.
    public static func expand(_ arguments: [String], refusing secrets: Set<String> = []) throws -> [String] {
        let end = arguments.firstIndex(of: "--") ?? arguments.endIndex
        var head = Array(arguments[..<end])
        guard let at = head.firstIndex(where: { $0 == "--config" || $0.hasPrefix("--config=") }) else {
            return arguments
        }
        let path: String
        var width = 1
        if head[at] == "--config" {
            guard at + 1 < head.count else { throw Invalid(description: "--config needs a FILE") }
            path = head[at + 1]
            width = 2
        } else {
            path = String(head[at].dropFirst("--config=".count))
        }
        head.removeSubrange(at..<at + width)
        let given = Set(
            head.compactMap { a -> String? in
                a.hasPrefix("--") ? String(a.dropFirst(2).prefix { $0 != "=" }) : nil
            })
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw Invalid(description: "--config \(path): cannot read")
        }
        var tokens = [String]()
        for (name, values) in try settings(text, file: path, refusing: secrets) where !given.contains(name) {
            tokens += values
        }
        head.insert(contentsOf: tokens, at: at)
        return head + arguments[end...]
    }

    /// The file's settings as arguments, by option name, in the file's order.
    static func settings(_ text: String, file: String, refusing secrets: Set<String>) throws -> [(String, [String])] {
        let node: Node?
        do { node = try Yams.compose(yaml: text) } catch {
            throw Invalid(description: "--config \(file): not YAML: \(error)")
        }
        guard let mapping = node?.mapping else {
            throw Invalid(description: "--config \(file): not a mapping of option names")
        }
        var out = [(String, [String])]()
        for (key, value) in mapping {
            guard let name = key.string, name.first?.isLetter == true,
                name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" }), name != "config"
            else { throw Invalid(description: "--config \(file): '\(key.string ?? "?")' is not an option name") }
            guard !secrets.contains(name) || value.sequence?.isEmpty == true || value.null != nil else {
                throw Invalid(description: "--config \(file): \(name) is a secret: give it in a file, not the config")
            }
            if value.null != nil { continue }
            if let flag = value.bool, value.scalar?.style == .plain, ["true", "false"].contains(value.string ?? "") {
                out.append((name, flag ? ["--\(name)"] : []))
            } else if let items = value.sequence {
                var args = [String]()
                for item in items {
                    guard let scalar = item.scalar?.string else {
                        throw Invalid(description: "--config \(file): \(name) is a list of plain values")
                    }
                    args.append("--\(name)=\(scalar)")
                }
                out.append((name, args))
            } else if let scalar = value.scalar?.string {
                out.append((name, ["--\(name)=\(scalar)"]))
            } else {
                throw Invalid(description: "--config \(file): \(name) is a value or a list of values")
            }
        }
        return out
    }
}
