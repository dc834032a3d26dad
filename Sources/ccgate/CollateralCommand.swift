import ArgumentParser
import AttestationCore
import Foundation
import Gateway
import TDXVerifier

struct CollateralCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "collateral", abstract: "Manage the Intel collateral cache used to verify TDX and SGX quotes.",
        discussion: """
            Intel collateral (TCB info, QE identity, PCK and root CA CRLs) is what a DCAP quote is judged \
            against. Envelopes may carry it; otherwise verifiers look it up in a cache directory, one file per \
            item, each replaced only by a newer issue. Items are verified (signatures by Intel's TCB signer and \
            CAs, chained to the pinned Intel root) before they are stored, and again, with their validity \
            windows, every time they are used.

            The cache directory defaults to $CCGATE_COLLATERAL_DIR, else ~/.local/share/ccgate/collateral.
            """,
        subcommands: [Import.self, Fetch.self, List.self])

    struct DirectoryOption: ParsableArguments {
        @Option(name: .customLong("dir"), help: ArgumentHelp("The collateral cache directory.", valueName: "DIR"))
        var directory: String?

        func open() throws -> CollateralCache {
            let url = directory.map { URL(fileURLWithPath: $0) } ?? CollateralCache.defaultDirectory
            do { return try CollateralCache(directory: url) } catch { throw failure("\(error)") }
        }
    }

    /// What imported or fetched collateral is checked against before it is stored.
    struct TrustOptions: ParsableArguments {
        @Option(
            name: .customLong("root"),
            help: ArgumentHelp(
                "A PEM root replacing the pinned Intel SGX Root CA; repeatable (test PKIs).", valueName: "PEM"))
        var roots: [String] = []
        @Option(
            help: ArgumentHelp("Check certificates as of this instant (RFC 3339); default: now.", valueName: "RFC3339"))
        var at: String?

        func validate() throws {
            if let at, Date.rfc3339(at) == nil { throw ValidationError("--at must be an RFC 3339 time") }
        }

        var time: Date { at.flatMap(Date.rfc3339) ?? SystemClock().now() }

        func fingerprints() throws -> Set<String> { try dcapRootFingerprints(roots) }
    }

    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Load offline collateral bundles into the cache.",
            discussion: """
                FILE is JSON: one collateral object with Intel's field names (pck_crl_issuer_chain, root_ca_crl, \
                pck_crl, tcb_info_issuer_chain, tcb_info, tcb_info_signature, qe_identity_issuer_chain, \
                qe_identity, qe_identity_signature; binary fields in hex), an array of them, {"collateral": …}, \
                or an evidence envelope that carries collateral. - reads standard input.

                Examples:
                  ccgate collateral import bundle.json
                  ccgate collateral import --dir /var/lib/ccgate/collateral b0c06f.json 90c06f.json
                """)

        @OptionGroup var cache: DirectoryOption
        @OptionGroup var trust: TrustOptions
        @Argument(help: ArgumentHelp("Bundle files, or - for standard input.", valueName: "FILE")) var files: [String]

        func run() throws {
            try exiting {
                let store = try cache.open()
                let roots = try trust.fingerprints()
                var counts = [CollateralCache.Outcome: Int]()
                for file in files {
                    let data = try readInput(file)
                    let sets: [Collateral]
                    do { sets = try CollateralCache.readBundle(data) } catch { throw failure("\(file): \(error)") }
                    let results: [(CollateralItem, CollateralCache.Outcome)]
                    do { results = try store.store(sets, roots: roots, at: trust.time) } catch {
                        throw failure("\(file): \(error)")
                    }
                    for (item, outcome) in results {
                        counts[outcome, default: 0] += 1
                        print(
                            "\(outcome.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0)) \(item.key)  (issued \(item.issueDate.rfc3339), next update \(item.nextUpdate.rfc3339))"
                        )
                    }
                }
                print(
                    "\(counts[.added] ?? 0) added, \(counts[.replaced] ?? 0) replaced, \(counts[.kept] ?? 0) kept (the cache already held an equal or newer issue) in \(store.directory.path)"
                )
                return 0
            }
        }
    }

    struct Fetch: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Fetch the collateral a quote needs from a PCCS into the cache.",
            discussion: """
                ENVELOPE is a tdx-quote or sgx-quote envelope; its PCK certificate names the platform (FMSPC, \
                PCK CA). The TCB info, QE identity, PCK CRL and root CA CRL are fetched (PCCS API v4) and stored \
                like imported items.

                Example:
                  ccgate collateral fetch quote.json --pccs-url https://pccs.example:8081
                """)

        @OptionGroup var cache: DirectoryOption
        @OptionGroup var trust: TrustOptions
        @Argument(help: ArgumentHelp("The evidence envelope.", valueName: "ENVELOPE")) var envelope: String
        @Option(help: ArgumentHelp("The PCCS or Intel PCS base URL.", valueName: "URL")) var pccsURL: String
        @Option(help: ArgumentHelp("Where the root CA CRL is, when the PCCS does not serve it.", valueName: "URL"))
        var rootCRLURL: String?

        func run() async throws {
            guard let base = URL(string: pccsURL), base.scheme == "https" || base.scheme == "http" else {
                throw failure("--pccs-url must be an http(s) URL")
            }
            let store = try cache.open()
            let data = try readInput(envelope)
            guard case .success(let parsed) = EvidenceEnvelope.parse(data),
                TDXQuoteVerifier.formats.contains(parsed.format)
            else { throw failure("\(envelope): not a DCAP quote envelope") }
            let roots = try trust.fingerprints()
            let time = trust.time
            guard let key = CollateralKey.forQuote(in: parsed, roots: roots, at: time) else {
                throw failure("\(envelope): the quote's PCK chain does not verify to a pinned root", status: 1)
            }
            let client = PCCSClient(base: base, rootCRL: rootCRLURL.flatMap(URL.init(string:)))
            do {
                let collateral = try await client.fetch(key)
                let stored = try store.store([collateral], roots: roots, at: time)
                for (item, outcome) in stored {
                    print(
                        "\(outcome.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0)) \(item.key)  (next update \(item.nextUpdate.rfc3339))"
                    )
                }
            } catch {
                throw failure("\(key): \(error)", status: 1)
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the cached collateral items and whether each is current.")

        @OptionGroup var cache: DirectoryOption
        @Option(help: ArgumentHelp("Judge currency as of this instant (RFC 3339); default: now.", valueName: "RFC3339"))
        var at: String?
        @Flag(help: "Print one JSON object per line.") var json = false

        func validate() throws {
            if let at, Date.rfc3339(at) == nil { throw ValidationError("--at must be an RFC 3339 time") }
        }

        func run() throws {
            try exiting {
                let store = try cache.open()
                let time = at.flatMap(Date.rfc3339) ?? SystemClock().now()
                for name in store.skipped {
                    FileHandle.standardError.write(Data("ccgate: skipped unreadable \(name)\n".utf8))
                }
                for item in store.all {
                    let state = time < item.issueDate ? "not-yet-valid" : time > item.nextUpdate ? "expired" : "current"
                    if json {
                        let object: [String: String] = [
                            "key": item.key, "issue_date": item.issueDate.rfc3339,
                            "next_update": item.nextUpdate.rfc3339,
                            "state": state,
                        ]
                        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
                        print(String(decoding: data, as: UTF8.self))
                    } else {
                        print(
                            "\(state.padding(toLength: 14, withPad: " ", startingAt: 0)) \(item.key.padding(toLength: 30, withPad: " ", startingAt: 0)) next update \(item.nextUpdate.rfc3339)"
                        )
                    }
                }
                if store.all.isEmpty, !json { print("(no collateral in \(store.directory.path))") }
                return 0
            }
        }
    }
}
