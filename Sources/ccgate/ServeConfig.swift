import ArgumentParser
import CommandLineSupport
import Foundation
import Yams

/// `ccgate serve --config FILE`: a YAML mapping whose keys are `serve`'s long option names
/// (`port: 8443`, `toncenter: [URL, URL]`, `allow-plain-http: true`). Flags on the command line
/// override it: an option given there replaces the file's value (a list wholly). Secrets stay in
/// files the config names (`api-key-file`, `database-password-file`, `admin-token-file`, …) or in
/// the environment (`CCGATE_DATABASE_PASSWORD`); `api-key` itself is refused in a file, which is
/// often readable by more people than the secrets.
///
/// `--print-config` prints the settings in force, every option with its value (defaults
/// included, API keys redacted), as a config file would hold them, and exits: the same file
/// gives the same output whether its settings come from `--config` or from flags.
extension ServeCommand {
    /// Every option `serve` takes, by long name, with its value as `--print-config` shows it.
    /// `nil`: a flag; a list: a repeatable option.
    enum Setting {
        case value(String?)
        case list([String])
        case flag(Bool)
    }

    var settings: [(String, Setting)] {
        [
            ("host", .value(host)), ("port", .value(String(port))), ("tls-cert", .value(tlsCert)),
            ("tls-key", .value(tlsKey)), ("allow-plain-http", .flag(allowPlainHttp)),
            ("worker-host", .value(workerHost)), ("worker-port", .value(String(workerPort))),
            ("api-key", .list(apiKeys.map { _ in "(redacted)" })), ("api-key-file", .value(apiKeyFile)),
            ("api-key-secret-file", .value(apiKeySecretFile)), ("policy", .value(policy)),
            ("data-dir", .value(dataDir)), ("database", .value(Self.redacted(db.database))),
            ("database-password-file", .value(db.databasePasswordFile)), ("log-format", .value(log.logFormat)),
            ("log-level", .value(log.logLevel)), ("admin-host", .value(adminHost)),
            ("admin-port", .value(String(adminPort))), ("admin-token-file", .value(adminTokenFile)),
            ("admin-key", .list(adminKeys)), ("checkpoint-seconds", .value(String(checkpointSeconds))),
            ("idle-timeout", .value(String(idleTimeout))), ("reattest-seconds", .value(String(reattestSeconds))),
            ("ports-file", .value(portsFile)), ("collateral-dir", .value(collateralDir)),
            ("pccs-url", .value(pccsURL)), ("root-crl-url", .value(rootCRLURL)), ("dcap-root", .list(dcapRoots)),
            ("tpm-ek-root", .list(tpmEKRootFiles)), ("toncenter", .list(toncenter.map { Self.redacted($0) ?? $0 })),
            ("toncenter-key-file", .list(toncenterKeyFiles)), ("toncenter-rps", .value(String(toncenterRps))),
            ("ready-requires-workers", .flag(readyRequiresWorkers)),
        ]
    }

    /// The settings as YAML, keys in the order above.
    var printedConfig: String {
        var out = "# ccgate serve: the settings in force (--print-config)\n"
        for (name, setting) in settings {
            switch setting {
            case .value(let v): out += "\(name): \(v.map(Self.yamlScalar) ?? "null")\n"
            case .flag(let on): out += "\(name): \(on)\n"
            case .list(let items):
                out +=
                    items.isEmpty
                    ? "\(name): []\n" : "\(name):\n" + items.map { "  - \(Self.yamlScalar($0))\n" }.joined()
            }
        }
        return out
    }

    /// A scalar quoted when YAML would read it as something else.
    static func yamlScalar(_ s: String) -> String {
        // Numbers stay plain; everything else is a double-quoted string (`::`, `@x`, `-1`…).
        if Int(s) != nil || (Double(s) != nil && s.allSatisfy { $0.isNumber || $0 == "." }) { return s }
        return "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }

    /// A setting shown without what it may hide: a URL's password and query (an API key).
    static func redacted(_ url: String?) -> String? {
        guard let url, var parts = URLComponents(string: url) else { return url }
        if parts.password != nil { parts.password = "(redacted)" }
        if parts.query != nil, parts.scheme != "postgres", parts.scheme != "postgresql" { parts.query = "(redacted)" }
        return parts.string ?? url
    }

    /// The command as the file and the command line give it together (flags win), or this one
    /// when there is no file.
    func merged(arguments: [String]) throws -> ServeCommand {
        guard let config else { return self }
        guard let text = try? String(contentsOfFile: config, encoding: .utf8) else {
            throw failure("--config \(config): cannot read")
        }
        let tokens = try Self.tokens(fromConfig: text, file: config, known: Dictionary(uniqueKeysWithValues: settings))
        let given = Set(
            arguments.compactMap { a -> String? in
                guard a.hasPrefix("--") else { return nil }
                return String(a.dropFirst(2).prefix { $0 != "=" })
            })
        // Options that go by position together are overridden together: a URL given here never
        // takes the file's key for another URL.
        let pairs = [["toncenter", "toncenter-key-file"], ["tls-cert", "tls-key"]]
        let overridden = pairs.reduce(into: given) { set, pair in
            if !set.isDisjoint(with: pair) { set.formUnion(pair) }
        }
        var fromFile = [String]()
        for (name, values) in tokens where !overridden.contains(name) { fromFile += values }
        var rest = [String]()
        var skip = false
        for a in arguments {
            if skip {
                skip = false
            } else if a == "--config" {
                skip = true
            } else if !a.hasPrefix("--config=") {
                rest.append(a)
            }
        }
        do { return try ServeCommand.parse(fromFile + rest) } catch {
            throw failure("--config \(config): \(ServeCommand.message(for: error))")
        }
    }

    /// The file's settings as command-line tokens, by option name, in the file's order.
    static func tokens(fromConfig text: String, file: String, known: [String: Setting]) throws -> [(String, [String])] {
        let node: Node?
        do { node = try Yams.compose(yaml: text) } catch { throw failure("--config \(file): not YAML: \(error)") }
        guard let mapping = node?.mapping else { throw failure("--config \(file): not a mapping of option names") }
        var out = [(String, [String])]()
        for (keyNode, valueNode) in mapping {
            guard let name = keyNode.string else { throw failure("--config \(file): a key is not a name") }
            guard let setting = known[name], !["config", "print-config"].contains(name) else {
                throw failure("--config \(file): unknown setting '\(name)' (the settings are serve's long options)")
            }
            guard name != "api-key" || valueNode.sequence?.isEmpty == true else {
                throw failure("--config \(file): API keys go in a file named by api-key-file, not in the config")
            }
            switch setting {
            case .flag:
                guard let on = valueNode.bool else { throw failure("--config \(file): \(name) is true or false") }
                out.append((name, on ? ["--\(name)"] : []))
            case .list:
                let items = valueNode.sequence.map { Array($0) } ?? [valueNode]
                var values = [String]()
                for item in items {
                    guard let scalar = item.scalar?.string else {
                        throw failure("--config \(file): \(name) is a list of plain values")
                    }
                    values.append("--\(name)=\(scalar)")
                }
                out.append((name, values))
            case .value:
                if valueNode.null != nil { continue }
                guard let scalar = valueNode.scalar?.string else {
                    throw failure("--config \(file): \(name) is a single plain value")
                }
                out.append((name, ["--\(name)=\(scalar)"]))
            }
        }
        return out
    }
}
