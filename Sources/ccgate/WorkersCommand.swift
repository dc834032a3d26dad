import ArgumentParser
import AttestationCore
import CommandLineSupport
import Foundation
import Gateway

struct WorkersCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "workers", abstract: "List and evict the workers a gateway has admitted.",
        subcommands: [List.self, Evict.self])

    struct List: AsyncParsableCommand {
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

        func run() async throws {
            let list = try await admin.client().call("GET", "v1/admin/workers", as: AdminMessage.WorkerList.self)
            if json {
                AdminClient.printJSON(list)
                return
            }
            if list.workers.isEmpty {
                print("no admitted workers")
                return
            }
            print(
                "ID                    PROVIDER      MODELS            FORMAT      POLICY  ADMITTED              LAST ATTESTED         CLAIMS"
            )
            for w in list.workers {
                let claims = w.claims.sorted { $0.key < $1.key }
                    .map { "\($0.key)=\($0.value.count > 16 ? String($0.value.prefix(12)) + "…" : $0.value)" }
                    .joined(separator: " ")
                print(
                    "\(pad(w.id, 21)) \(pad(Self.short(w.provider), 13)) \(pad(w.models.joined(separator: ","), 17)) \(pad(w.format, 11)) \(pad(String(w.policyVersion), 7)) \(pad(w.admittedAt, 21)) \(pad(w.lastAttested, 21)) \(claims)"
                )
            }
        }
    }

    struct Evict: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Evict an admitted worker now (audited); it may attest again.")
        @Argument(help: ArgumentHelp("The worker id.", valueName: "ID")) var id: String
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let path =
                "v1/admin/workers/\(id.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) ?? id)/evict"
            let eviction = try await admin.client().call("POST", path, as: ApplyOutcome.Eviction.self)
            print("evicted \(eviction.worker) (session \(eviction.session))")
        }
    }
}
