import ArgumentParser
import AttestationCore
import CommandLineSupport
import Foundation

struct WorkersCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "workers", abstract: "List and evict the workers a gateway has admitted.",
        subcommands: [List.self, Evict.self])

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "List admitted workers: id, provider, models, evidence format, claims, admitted since, last attested.")
        @Flag(help: "Print the gateway's answer as JSON.") var json = false
        @OptionGroup var admin: AdminOptions

        /// A provider wallet shortened for the table (0:fb924e…e34b); "-" for none.
        static func short(_ provider: String?) -> String {
            guard let provider else { return "-" }
            return provider.count > 13 ? String(provider.prefix(8)) + "…" + String(provider.suffix(4)) : provider
        }

        func run() throws {
            let o = try admin.client().call("GET", "v1/admin/workers")
            let workers = o["workers"] as? [[String: Any]] ?? []
            if json {
                print(
                    String(
                        decoding: (try? JSONSerialization.data(
                            withJSONObject: o, options: [.sortedKeys, .prettyPrinted])) ?? Data(), as: UTF8.self))
                return
            }
            if workers.isEmpty {
                print("no admitted workers")
                return
            }
            print(
                "ID                    PROVIDER      MODELS            FORMAT      POLICY  ADMITTED              LAST ATTESTED         CLAIMS"
            )
            for w in workers {
                let claims = (w["claims"] as? [String: String] ?? [:]).sorted { $0.key < $1.key }
                    .map { "\($0.key)=\($0.value.count > 16 ? String($0.value.prefix(12)) + "…" : $0.value)" }.joined(
                        separator: " ")
                print(
                    "\(pad(w["id"] as? String ?? "", 21)) \(pad(Self.short(w["provider"] as? String), 13)) \(pad((w["models"] as? [String] ?? []).joined(separator: ","), 17)) \(pad(w["format"] as? String ?? "", 11)) \(pad(String(w["policy_version"] as? Int ?? 0), 7)) \(pad(w["admitted_at"] as? String ?? "", 21)) \(pad(w["last_attested"] as? String ?? "", 21)) \(claims)"
                )
            }
        }
    }

    struct Evict: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Evict an admitted worker now (audited); it may attest again.")
        @Argument(help: ArgumentHelp("The worker id.", valueName: "ID")) var id: String
        @OptionGroup var admin: AdminOptions

        func run() throws {
            let path =
                "v1/admin/workers/\(id.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) ?? id)/evict"
            let o = try admin.client().call("POST", path)
            print("evicted \(o["worker"] as? String ?? id) (session \(o["session"] as? String ?? "?"))")
        }
    }
}
