import ArgumentParser
import AttestationCore
import CommandLineSupport
import Foundation
import Gateway

struct KeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys", abstract: "Issue, list, rotate and revoke clients' API keys; make policy signing keys.",
        discussion: """
            API keys are named, and each may carry limits: the models it may use, requests and tokens per minute,
            a token quota per day or month, the weakest worker tier its requests may go to, an expiry. Changes take
            effect at once on the gateway asked (the other gateways on a shared database within seconds) and each is
            an entry in the audit log. A key's secret is shown once, when it is created or rotated; the gateway
            keeps only a keyed hash of it.

            Examples:
              ccgate keys create --name team-a --models llama-3.2-1b --rpm 60 --tpm 100000 --quota 5000000/month
              ccgate keys list
              ccgate keys rotate key_4f2a9c1e0b7d3a65 --grace 3600
              ccgate keys revoke key_4f2a9c1e0b7d3a65
              ccgate keys generate --out admin          (an Ed25519 key pair for signing policies)
            """,
        subcommands: [Create.self, List.self, Show.self, Rotate.self, Revoke.self, Generate.self])

    static func path(_ id: String, _ action: String = "") -> String {
        "v1/admin/keys/\(id.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(["/"])) ?? id)"
            + action
    }

    static func printIssued(_ issued: AdminMessage.KeyIssued, json: Bool) {
        if json {
            AdminClient.printJSON(issued)
            return
        }
        print("key:    \(issued.key.id) (\(issued.key.settings.name ?? ""))")
        print("secret: \(issued.secret)")
        print("The secret is shown only now: give it to the client (Authorization: Bearer SECRET).")
    }

    static func describe(_ k: AdminMessage.KeyView) -> [String] {
        let s = k.settings
        var lines = ["\(k.id)  \(s.name ?? "")  [\(k.status)]", "  created     \(k.createdAt)"]
        if let r = k.revokedAt { lines.append("  revoked     \(r)") }
        lines.append("  models      \(s.models?.joined(separator: ", ") ?? "any")")
        lines.append(
            "  rpm / tpm   \(s.requestsPerMinute.map(String.init) ?? "-") / \(s.tokensPerMinute.map(String.init) ?? "-")"
        )
        if let q = s.quotaTokens {
            lines.append("  quota       \(k.quotaUsed ?? 0) of \(q) tokens this \(s.quotaPeriod ?? "month")")
        }
        if let t = s.minimumTier { lines.append("  min tier    \(t)") }
        if let e = s.expiresAt { lines.append("  expires     \(e)") }
        for secret in k.secrets {
            lines.append(
                "  secret …\(secret.hint)  since \(secret.createdAt)\(secret.validUntil.map { "  valid until \($0)" } ?? "")"
            )
        }
        return lines
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue a named API key; its secret is printed once.")
        @Option(help: "A name for whom the key is for (1–100 characters).") var name: String
        @Option(
            parsing: .upToNextOption,
            help: ArgumentHelp("Models the key may use (default: every model).", valueName: "MODEL"))
        var models: [String] = []
        @Option(help: ArgumentHelp("Requests per minute at most (per gateway).", valueName: "N")) var rpm: Int?
        @Option(help: ArgumentHelp("Tokens per minute at most (per gateway).", valueName: "N")) var tpm: Int?
        @Option(
            help: ArgumentHelp(
                "Tokens per calendar period (UTC), counted across gateways: N/day or N/month.", valueName: "N/PERIOD"))
        var quota: String?
        @Option(
            help: ArgumentHelp(
                "The weakest worker tier its requests may go to: tpm-agent-log, tpm-measured-boot, sgx or tdx.",
                valueName: "TIER"))
        var minTier: String?
        @Option(help: ArgumentHelp("When the key stops working (RFC 3339).", valueName: "T")) var expires: String?
        @Flag(help: "Print the gateway's answer as JSON.") var json = false
        @OptionGroup var admin: AdminOptions

        func settings() throws -> AdminMessage.KeySettings {
            var s = AdminMessage.KeySettings()
            s.name = name
            s.models = models.isEmpty ? nil : models
            s.requestsPerMinute = rpm
            s.tokensPerMinute = tpm
            if let quota {
                let parts = quota.split(separator: "/")
                guard let tokens = Int(parts.first ?? ""), parts.count <= 2 else {
                    throw ValidationError("--quota is N/day or N/month, e.g. 5000000/month")
                }
                s.quotaTokens = tokens
                s.quotaPeriod = parts.count == 2 ? String(parts[1]) : "month"
            }
            s.minimumTier = minTier
            s.expiresAt = expires
            return s
        }

        func validate() throws { _ = try settings() }

        func run() async throws {
            let issued = try await admin.client().call(
                "POST", "v1/admin/keys", body: try settings(), as: AdminMessage.KeyIssued.self)
            KeysCommand.printIssued(issued, json: json)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the named API keys, revoked ones included.")
        @Flag(help: "Print the gateway's answer as JSON.") var json = false
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let list = try await admin.client().call("GET", "v1/admin/keys", as: AdminMessage.KeyList.self)
            if json {
                AdminClient.printJSON(list)
                return
            }
            if list.keys.isEmpty {
                print("no named API keys (create one with: ccgate keys create --name NAME)")
                return
            }
            print("ID                    NAME                  STATUS   MODELS            RPM     TPM       QUOTA")
            for k in list.keys {
                let s = k.settings
                let quota = s.quotaTokens.map { "\(k.quotaUsed ?? 0)/\($0) per \(s.quotaPeriod ?? "month")" } ?? "-"
                print(
                    "\(pad(k.id, 21)) \(pad(s.name ?? "", 21)) \(pad(k.status, 8)) \(pad(s.models?.joined(separator: ",") ?? "any", 17)) \(pad(s.requestsPerMinute.map(String.init) ?? "-", 7)) \(pad(s.tokensPerMinute.map(String.init) ?? "-", 9)) \(quota)"
                )
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one key: its limits, quota used, secrets.")
        @Argument(help: ArgumentHelp("The key id.", valueName: "ID")) var id: String
        @Flag(help: "Print the gateway's answer as JSON.") var json = false
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let key = try await admin.client().call("GET", KeysCommand.path(id), as: AdminMessage.KeyView.self)
            if json { AdminClient.printJSON(key) } else { KeysCommand.describe(key).forEach { print($0) } }
        }
    }

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Give a key a new secret (printed once); the old one works for --grace seconds more.")
        @Argument(help: ArgumentHelp("The key id.", valueName: "ID")) var id: String
        @Option(help: ArgumentHelp("Seconds the old secret stays valid (0–2592000).", valueName: "SECONDS"))
        var grace = 0
        @Flag(help: "Print the gateway's answer as JSON.") var json = false
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let issued = try await admin.client().call(
                "POST", KeysCommand.path(id, "/rotate"), body: AdminMessage.RotateRequest(graceSeconds: grace),
                as: AdminMessage.KeyIssued.self)
            KeysCommand.printIssued(issued, json: json)
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke a key: refused at once on this gateway, within seconds on the others.")
        @Argument(help: ArgumentHelp("The key id.", valueName: "ID")) var id: String
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let key = try await admin.client().call(
                "POST", KeysCommand.path(id, "/revoke"), as: AdminMessage.KeyView.self)
            print("revoked \(key.id) (\(key.settings.name ?? "")) at \(key.revokedAt ?? "?")")
        }
    }

    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a new Ed25519 key pair for signing policies: NAME.key (private, mode 600) and NAME.pub.",
            discussion: """
                The files are standard PEM (PKCS #8 and SubjectPublicKeyInfo), interchangeable with openssl's. Give
                NAME.pub to gateways (`ccgate serve --admin-key NAME.pub`) and sign policies with NAME.key.

                Example:
                  ccgate keys generate --out admin
                """)
        @Option(help: ArgumentHelp("The key files' name without extension.", valueName: "NAME")) var out: String

        func run() throws {
            let key = Ed25519PrivateKey.generate()
            let keyPath = out + ".key", pubPath = out + ".pub"
            guard !FileManager.default.fileExists(atPath: keyPath) else {
                throw failure("\(keyPath) exists; not overwriting a key")
            }
            guard
                FileManager.default.createFile(
                    atPath: keyPath, contents: Data(key.pem.utf8), attributes: [.posixPermissions: 0o600])
            else {
                throw failure("\(keyPath): cannot write")
            }
            do { try key.publicKey.pem.write(toFile: pubPath, atomically: true, encoding: .utf8) } catch {
                throw failure("\(pubPath): \(error)")
            }
            print("\(keyPath), \(pubPath): Ed25519 key \(key.publicKey.fingerprint)")
        }
    }
}
