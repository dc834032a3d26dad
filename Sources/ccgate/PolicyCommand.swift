import ArgumentParser
import AttestationCore
import Foundation
import Gateway
import CommandLineSupport
import Policy

/// Left-aligns `s` in `width` columns.
func pad(_ s: String, _ width: Int) -> String {
    s.count >= width ? s : s + String(repeating: " ", count: width - s.count)
}

struct PolicyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy", abstract: "Write, sign, apply and inspect admission policies.",
        discussion: """
            Local: lint, measure, diff, sign. Against a running gateway's admin API (--admin-url, --token-file):
            apply, show, history, rollback. A gateway applies only policies signed by one of its pinned admin keys
            (`ccgate serve --admin-key PEM`); each applied policy becomes the next version, and every admitted
            worker is re-evaluated against it at once.

            A typical change:
              ccgate policy diff @active new.yaml           # what changes, against the policy in force
              ccgate policy sign new.yaml --key admin.key    # writes new.yaml.sig
              ccgate policy apply new.yaml --dry-run         # which admitted workers it would evict, and why
              ccgate policy apply new.yaml
              ccgate policy rollback 3                       # version 3 again, as a new version
            """,
        subcommands: [
            Lint.self, Measure.self, Diff.self, Sign.self, Apply.self, Show.self, History.self, Rollback.self,
        ])

    /// A policy's text from a file, or from the gateway (`@N`, `@active`).
    static func source(_ spec: String, admin: AdminOptions) async throws -> (text: String, label: String) {
        if spec.hasPrefix("@") {
            let which = spec.dropFirst()
            var query = [URLQueryItem]()
            if which != "active" {
                guard let n = Int(which), n > 0 else { throw failure("\(spec): use @N for version N or @active") }
                query.append(URLQueryItem(name: "version", value: String(n)))
            }
            let version = try await admin.client().call(
                "GET", "v1/admin/policy", query: query, as: AdminMessage.PolicyVersion.self)
            return (version.text ?? "", "version \(version.version)")
        }
        guard let text = try? String(contentsOfFile: spec, encoding: .utf8) else {
            throw failure("\(spec): cannot read")
        }
        return (text, spec)
    }

    static func document(_ text: String, label: String) throws -> PolicyDocument {
        do throws(PolicyLoadErrors) { return try PolicyDocument.parse(text, file: label) } catch {
            throw failure("\(label) is not a valid policy:\n\(error)")
        }
    }

    struct Diff: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show what changes between two policies: digests added and removed, thresholds changed.",
            discussion: """
                Each line is '+' (added), '-' (removed) or '~' (changed), the setting, and the values. A policy is a
                file, or @N (version N) or @active from the gateway's admin API. Exit status: 0 no changes, 1 changes.

                Examples:
                  ccgate policy diff Policies/default.yaml new.yaml
                  ccgate policy diff @active new.yaml --admin-url http://gw:8445
                """)
        @Argument(help: ArgumentHelp("The old policy.", valueName: "A")) var old: String
        @Argument(help: ArgumentHelp("The new policy.", valueName: "B")) var new: String
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let a = try await PolicyCommand.source(old, admin: admin)
            let b = try await PolicyCommand.source(new, admin: admin)
            let changes = try PolicyCommand.document(a.text, label: a.label).changes(
                to: PolicyCommand.document(b.text, label: b.label))
            if changes.isEmpty { print("no changes") }
            for c in changes { print(c.description) }
            if !changes.isEmpty { throw ExitCode(1) }
        }
    }

    struct Sign: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Sign a policy with an admin key (Ed25519); writes FILE.sig.",
            discussion: """
                The policy is checked first: an invalid document is not signed. The signature covers the file's exact
                bytes; editing the file afterwards (even whitespace) makes the gateway refuse it. Keys: `ccgate keys
                generate`, or `openssl genpkey -algorithm ed25519 -out admin.key`.

                The signature also carries a serial (default: the current time in microseconds), an optional expiry
                and the gateway it is for (default: any). A gateway applies a signature only when its serial is above
                the one in force, so an older signed policy cannot be re-applied without signing it again.

                Examples:
                  ccgate policy sign new.yaml --key admin.key
                  ccgate policy sign new.yaml --key admin.key --not-after 2027-01-31T00:00:00Z --gateway 3f1c…
                """)
        @Argument(help: ArgumentHelp("The policy document.", valueName: "FILE")) var file: String
        @Option(help: ArgumentHelp("The admin private key (PEM, Ed25519).", valueName: "KEY")) var key: String
        @Option(help: ArgumentHelp("Where to write the signature (default FILE.sig).", valueName: "FILE")) var out:
            String?
        @Option(help: ArgumentHelp("The serial (default: now, in microseconds since 1970).", valueName: "N"))
        var serial: Int64?
        @Option(help: ArgumentHelp("The last time the signature may be applied (RFC 3339).", valueName: "TIME"))
        var notAfter: String?
        @Option(
            help: ArgumentHelp(
                "The gateway id the signature is for (the `fingerprint` of `GET /v1/admin/audit/key`, the gateway_key of its gateway-start audit entry); default any.",
                valueName: "ID"))
        var gateway: String?

        func validate() throws {
            if let serial, serial < 1 { throw ValidationError("--serial must be positive") }
            if let notAfter, Date.rfc3339(notAfter) == nil {
                throw ValidationError("--not-after must be an RFC 3339 time, e.g. 2027-01-31T00:00:00Z")
            }
            if let gateway, Data(hex: gateway)?.count != 32 { throw ValidationError("--gateway must be 64 hex digits") }
        }

        func run() throws {
            guard let data = FileManager.default.contents(atPath: file) else { throw failure("\(file): cannot read") }
            _ = try PolicyCommand.document(String(decoding: data, as: UTF8.self), label: file)
            guard let keyText = try? String(contentsOfFile: key, encoding: .utf8) else {
                throw failure("\(key): cannot read")
            }
            let privateKey: Ed25519PrivateKey
            do { privateKey = try Ed25519PrivateKey(pem: keyText) } catch { throw failure("\(key): \(error)") }
            let signature = PolicySignature.sign(
                data, with: privateKey, serial: serial ?? PolicySignature.timeSerial,
                notAfter: notAfter.flatMap(Date.rfc3339), gateway: gateway?.lowercased() ?? "*")
            let target = out ?? file + ".sig"
            do { try signature.json.write(toFile: target, atomically: true, encoding: .utf8) } catch {
                throw failure("\(target): \(error)")
            }
            print("\(target): signed sha256 \(signature.policySHA256) with key \(privateKey.publicKey.fingerprint)")
        }
    }

    struct Apply: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Apply a signed policy on the gateway; --dry-run lists the workers it would evict.",
            discussion: """
                The gateway checks the signature (FILE.sig unless --signature) against its pinned admin keys, records
                the policy as the next version, re-evaluates every admitted worker against it and evicts those that no
                longer meet it, all audited. Exit status: 0 applied (or dry run done), 1 refused, 2 bad usage.

                Examples:
                  ccgate policy apply new.yaml --dry-run
                  ccgate policy apply new.yaml --admin-url http://127.0.0.1:8445 --token-file data/admin.token
                """)
        @Argument(help: ArgumentHelp("The policy document.", valueName: "FILE")) var file: String
        @Option(help: ArgumentHelp("Its signature (default FILE.sig).", valueName: "FILE")) var signature: String?
        @Flag(help: "Check and show the effect without applying.") var dryRun = false
        @Flag(help: "Print the gateway's answer as JSON.") var json = false
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw failure("\(file): cannot read")
            }
            let sigPath = signature ?? file + ".sig"
            let sig = try? String(contentsOfFile: sigPath, encoding: .utf8)
            if sig == nil, signature != nil { throw failure("\(sigPath): cannot read") }
            let answer = try await admin.client().call(
                "POST", "v1/admin/policy/apply",
                body: AdminMessage.ApplyRequest(policy: text, signature: sig, dryRun: dryRun),
                as: ApplyOutcome.self)
            PolicyCommand.printOutcome(answer, json: json)
        }
    }

    static func printOutcome(_ answer: ApplyOutcome, json: Bool) {
        if json {
            AdminClient.printJSON(answer)
            return
        }
        if answer.dryRun {
            print(
                "dry run: policy '\(answer.name)' (sha256 \(answer.sha256)) is valid and signed by \(answer.signer?.prefix(16) ?? "?")…"
            )
        } else {
            print("applied: policy '\(answer.name)' is version \(answer.version ?? 0)")
        }
        print(answer.changes.isEmpty ? "changes: none" : "changes:")
        for c in answer.changes { print("  \(c)") }
        let evictions = answer.evictions
        let verb = answer.dryRun ? "would evict" : "evicted"
        print(
            evictions.isEmpty
                ? "\(verb): no workers" : "\(verb) \(evictions.count) worker\(evictions.count == 1 ? "" : "s"):")
        for e in evictions { print("  \(e.worker): \(e.reasons.joined(separator: ", ")) — \(e.message)") }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the policy in force, or version N, as applied.",
            discussion:
                "The document goes to standard output exactly as signed; its version, digest and signer to standard error."
        )
        @Option(help: ArgumentHelp("The version to show (default: the one in force).", valueName: "N")) var version:
            Int?
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let query = version.map { [URLQueryItem(name: "version", value: String($0))] } ?? []
            let v = try await admin.client().call(
                "GET", "v1/admin/policy", query: query, as: AdminMessage.PolicyVersion.self)
            let header =
                "# version \(v.version)\(v.active ? " (in force)" : ""): '\(v.name)', sha256 \(v.sha256), applied \(v.appliedAt) by \(v.actor), signer \(v.signer ?? "none")\n"
            FileHandle.standardError.write(Data(header.utf8))
            FileHandle.standardOutput.write(Data((v.text ?? "").utf8))
        }
    }

    struct History: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List every policy version the gateway has applied.")
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let history = try await admin.client().call(
                "GET", "v1/admin/policy/history", as: AdminMessage.PolicyHistory.self)
            print("VERSION  APPLIED               ACTOR          NAME                  SHA256            NOTE")
            for v in history.versions {
                print(
                    "\(v.active ? "*" : " ")\(pad(String(v.version), 8)) \(pad(v.appliedAt, 21)) \(pad(v.actor, 14)) \(pad(v.name, 21)) \(pad(String(v.sha256.prefix(16)), 17)) \(v.note)"
                )
            }
        }
    }

    struct Rollback: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Put an earlier policy version in force again (as a new version).",
            discussion: """
                A rollback needs a fresh signature over the old version's text: its original signature has a serial \
                below the policy in force, and a gateway applies only higher serials (so the admin token alone cannot \
                bring back a weaker policy). Workers it no longer admits are evicted.

                Example:
                  ccgate policy show --version 3 > v3.yaml && ccgate policy sign v3.yaml --key admin.key
                  ccgate policy rollback 3 --signature v3.yaml.sig
                """)
        @Argument(help: ArgumentHelp("The version to restore.", valueName: "N")) var version: Int
        @Option(help: ArgumentHelp("A fresh signature over version N's text.", valueName: "FILE")) var signature:
            String?
        @Flag(help: "Show the effect without applying.") var dryRun = false
        @Flag(help: "Print the gateway's answer as JSON.") var json = false
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let answer = try await admin.client().call(
                "POST", "v1/admin/policy/rollback",
                body: AdminMessage.RollbackRequest(
                    version: version, dryRun: dryRun,
                    signature: try signature.map { path in
                        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                            throw failure("\(path): cannot read")
                        }
                        return text
                    }),
                as: ApplyOutcome.self)
            PolicyCommand.printOutcome(answer, json: json)
        }
    }

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
        @Option(help: ArgumentHelp("The entry's name (default: the file name); only with one file.", valueName: "NAME"))
        var name: String?
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
                let fields =
                    ["name: \(Self.yamlScalar(entryName))"]
                    + (version.map { ["version: \(Self.yamlScalar($0))"] } ?? [])
                    + ["sha256: \(hasher.finalize().hex)", "size: \(size)"]
                print("- {\(fields.joined(separator: ", "))}")
            }
        }

        /// A plain scalar when YAML reads it back as the same string, else a quoted one.
        static func yamlScalar(_ s: String) -> String {
            let plain =
                s.range(of: #"^[A-Za-z0-9_][A-Za-z0-9_.+/-]*$"#, options: .regularExpression) != nil
                && !["true", "false", "null", "yes", "no", "on", "off", "~"].contains(s.lowercased())
                && Double(s) == nil
            if plain { return s }
            return "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
                + "\""
        }
    }

    struct Lint: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check a policy document and report every problem with its line and column.",
            discussion: """
                Beyond the schema, a policy must pin what runs in a TEE guest: one that accepts tdx-quote needs \
                evidence.tdx.mrtd and RTMR 0-2 sets (or image_hashes), one that accepts sgx-quote needs \
                evidence.sgx.mrenclaves or signers. Lab settings (ak_trust: as-presented, \
                allow_unmeasured_engine) are warnings. Exit status: 0 valid (warnings on standard error), 2 invalid \
                or unreadable.
                """)

        @Argument(help: ArgumentHelp("The policy document (YAML).", valueName: "FILE"))
        var file: String

        func run() throws {
            try exiting {
                do throws(PolicyLoadErrors) {
                    let doc = try PolicyDocument.load(contentsOf: URL(fileURLWithPath: file))
                    let lint = doc.lint
                    for warning in lint.warnings {
                        FileHandle.standardError.write(Data("\(file): warning: \(warning)\n".utf8))
                    }
                    guard lint.errors.isEmpty else {
                        for error in lint.errors { FileHandle.standardError.write(Data("\(file): \(error)\n".utf8)) }
                        return 2
                    }
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
