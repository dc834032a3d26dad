import ArgumentParser
import AttestationCore
import CommandLineSupport
import Foundation
import GatewayState

struct UsageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "usage", abstract: "Report the usage ledger; sign and verify providers' statements.",
        discussion: """
            Every request a gateway serves is a row in its usage ledger: the key, the model, the worker and its
            provider, the prompt and completion tokens the engine reported, time to first token, duration and
            status. The ledger is read from a data directory (--data-dir, default data) or the shared database
            (--database); it is only read.

            Examples:
              ccgate usage report --by key --since 2026-12-01T00:00:00Z
              ccgate usage report --by provider --hourly --format csv > hours.csv
              ccgate usage statement --provider 0:fb92…e34b --period 2026-12 --out december.json
              ccgate usage verify december.json --key data/gateway.pub
            """,
        subcommands: [Report.self, Statement.self, Verify.self])

    struct Source: ParsableArguments {
        @Option(help: ArgumentHelp("The gateway's data directory.", valueName: "DIR")) var dataDir = "data"
        @OptionGroup var db: DatabaseOptions

        func store() throws -> any GatewayStore {
            do {
                if let location = try db.location() { return try PostgresStore(location: location, inspect: true) }
                return try SQLiteStore(
                    url: URL(fileURLWithPath: dataDir).appendingPathComponent("ccgate.db"), readOnly: true)
            } catch let error as ReportedFailure { throw error } catch { throw failure("\(error)") }
        }
    }

    static func time(_ text: String?, _ name: String) throws -> Date? {
        guard let text else { return nil }
        guard let date = Date.rfc3339(text) else {
            throw ValidationError("\(name) must be an RFC 3339 time such as 2026-12-01T00:00:00Z")
        }
        return date
    }

    struct Report: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Requests and tokens per key, provider or model, in total or per hour.")
        @Option(help: ArgumentHelp("key, provider or model.", valueName: "GROUP")) var by = "key"
        @Flag(help: "One line per group and hour (UTC).") var hourly = false
        @Option(help: ArgumentHelp("Rows at or after this time (RFC 3339).", valueName: "T")) var since: String?
        @Option(help: ArgumentHelp("Rows before this time (RFC 3339).", valueName: "T")) var until: String?
        @Option(help: ArgumentHelp("table, csv or json.", valueName: "FORMAT")) var format = "table"
        @OptionGroup var source: Source

        func validate() throws {
            guard UsageTotals.Grouping(rawValue: by) != nil else {
                throw ValidationError("--by is key, provider or model")
            }
            guard ["table", "csv", "json"].contains(format) else {
                throw ValidationError("--format is table, csv or json")
            }
            _ = try UsageCommand.time(since, "--since")
            _ = try UsageCommand.time(until, "--until")
        }

        func run() throws {
            let query = UsageQuery(
                since: try UsageCommand.time(since, "--since"), until: try UsageCommand.time(until, "--until"))
            let totals: UsageTotals
            do {
                totals = try UsageTotals(
                    store: try source.store(), query: query, by: UsageTotals.Grouping(rawValue: by)!, hourly: hourly)
            } catch let error as ReportedFailure { throw error } catch { throw failure("\(error)") }
            switch format {
            case "json":
                let lines: [JSONValue] = totals.lines.map { line in
                    var o = line.json.object ?? [:]
                    o[by] = .string(line.group)
                    return .object(o)
                }
                print(String(decoding: CanonicalJSON.encode(.array(lines)), as: UTF8.self))
            case "csv":
                print("\(by)\(hourly ? ",hour" : ""),requests,prompt_tokens,completion_tokens,total_tokens")
                for l in totals.lines {
                    let hour = hourly ? "," + (l.hour?.rfc3339 ?? "") : ""
                    print(
                        "\(Self.csvField(l.group))\(hour),\(l.requests),\(l.promptTokens),\(l.completionTokens),\(l.totalTokens)"
                    )
                }
            default:
                if totals.lines.isEmpty {
                    print("no requests in the ledger for this period")
                    return
                }
                print(
                    "\(pad(by.uppercased(), 30))\(hourly ? " HOUR                " : "") REQUESTS     PROMPT   COMPLETION        TOTAL"
                )
                for l in totals.lines {
                    let hour = hourly ? " " + pad(l.hour?.rfc3339 ?? "", 20) : ""
                    print(
                        "\(pad(l.group, 30))\(hour) \(Self.right(l.requests, 8)) \(Self.right(l.promptTokens, 10)) \(Self.right(l.completionTokens, 12)) \(Self.right(l.totalTokens, 12))"
                    )
                }
            }
        }

        static func right(_ n: Int, _ width: Int) -> String {
            let s = String(n)
            return String(repeating: " ", count: max(0, width - s.count)) + s
        }

        /// A CSV field, quoted when it holds a comma, quote or line break (and a leading `=+-@`
        /// defused, so that a spreadsheet does not run it).
        static func csvField(_ s: String) -> String {
            var s = s
            if let first = s.first, "=+-@".contains(first) { s = "'" + s }
            guard s.contains(where: { ",\"\n\r".contains($0) }) else { return s }
            return "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\""
        }
    }

    struct Statement: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a provider's statement of tokens served in a period, signed by the gateway key.",
            discussion: """
                The statement adds up the ledger rows of the provider's workers in the period (totals, per model, per
                hour) and is signed with DATA/gateway.key. Check it with `ccgate usage verify FILE --key gateway.pub`.
                """)
        @Option(help: ArgumentHelp("The provider's TON wallet, as its workers proved it.", valueName: "ADDR"))
        var provider: String
        @Option(help: ArgumentHelp("A UTC month (2026-12) or day (2026-12-03).", valueName: "PERIOD")) var period:
            String
        @Option(help: ArgumentHelp("Write here instead of standard output.", valueName: "FILE")) var out: String?
        @Option(
            help: ArgumentHelp(
                "The API key secret the ledger rows' MACs are checked under (default DIR/api-keys.secret).",
                valueName: "FILE"))
        var apiKeySecretFile: String?
        @Flag(help: "Sign a period that has not ended yet (the statement says final: false).") var partial = false
        @OptionGroup var source: Source

        /// The period's bounds: a whole UTC month (YYYY-MM) or day (YYYY-MM-DD).
        static func bounds(_ text: String) -> (Date, Date)? {
            guard text.wholeMatch(of: /[0-9]{4}-[0-9]{2}(-[0-9]{2})?/) != nil,
                let start = Date.rfc3339(text + (text.count == 7 ? "-01" : "") + "T00:00:00Z")
            else { return nil }
            let period: QuotaPeriod = text.count == 10 ? .day : .month
            return period.start(of: start) == start ? (start, period.end(of: start)) : nil
        }

        func validate() throws {
            guard Self.bounds(period) != nil else {
                throw ValidationError("--period is a month (2026-12) or a day (2026-12-03)")
            }
        }

        func run() throws {
            let (since, until) = Self.bounds(period)!
            // A row is stamped with its request's start and written when the request ends (and
            // later after a store outage): a period is final an hour after it ends.
            guard partial || until.addingTimeInterval(3600) <= Date() else {
                throw failure(
                    "the period \(period) ended less than an hour ago or has not ended (until \(until.rfc3339)): its rows are still coming; sign it later, or give --partial"
                )
            }
            let secretPath = apiKeySecretFile ?? source.dataDir + "/api-keys.secret"
            let secret: KeyHashingSecret
            do { secret = try KeyHashingSecret.read(URL(fileURLWithPath: secretPath)) } catch {
                throw failure("\(error) (the ledger rows' MACs are checked under it)")
            }
            let keyPath = source.dataDir + "/gateway.key"
            guard let text = try? String(contentsOfFile: keyPath, encoding: .utf8) else {
                throw failure("\(keyPath): cannot read the gateway key that signs statements")
            }
            let key: Ed25519PrivateKey
            do { key = try Ed25519PrivateKey(pem: text) } catch { throw failure("\(keyPath): \(error)") }
            let statement: Data
            do {
                statement = try UsageStatement.make(
                    store: try source.store(), provider: provider, since: since, until: until, key: key, at: Date(),
                    secret: secret)
            } catch let error as ReportedFailure { throw error } catch let error as UsageStatement.UnauthenticRows {
                throw failure("\(error)", status: 1)
            } catch { throw failure("\(error)") }
            if let out {
                do { try statement.write(to: URL(fileURLWithPath: out)) } catch { throw failure("\(out): \(error)") }
                print("\(out): statement for \(provider), \(since.rfc3339) to \(until.rfc3339)")
            } else {
                FileHandle.standardOutput.write(statement)
            }
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check a statement's signature under a gateway key, and that its parts add up.")
        @Argument(help: ArgumentHelp("The statement.", valueName: "FILE")) var file: String
        @Option(help: ArgumentHelp("The gateway's public key (its gateway.pub).", valueName: "PEM")) var key: String

        func run() throws {
            guard let data = FileManager.default.contents(atPath: file) else { throw failure("\(file): cannot read") }
            guard let text = try? String(contentsOfFile: key, encoding: .utf8) else {
                throw failure("\(key): cannot read")
            }
            let publicKey: Ed25519PublicKey
            do { publicKey = try Ed25519PublicKey(text: text) } catch { throw failure("\(key): \(error)") }
            do {
                let s = try UsageStatement.verify(data, key: publicKey)
                print(
                    "ok: \(s.provider) served \(s.requests) requests, \(s.promptTokens) prompt and \(s.completionTokens) completion tokens from \(s.since) to \(s.until) (signed by \(s.signer.prefix(16))…)"
                )
            } catch { throw failure("\(file): \(error)", status: 1) }
        }
    }
}
