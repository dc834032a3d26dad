import AdmissionCore
import ArgumentParser
import AttestationCore
import Foundation
import CommandLineSupport
import Gateway
import Policy
import TDXVerifier

struct EvidenceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "evidence", abstract: "Work with attestation evidence by hand.",
        subcommands: [Verify.self, EvidenceWrapCommand.self])

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Verify an evidence envelope and print the verdict.",
            discussion: """
                ENVELOPE is a JSON evidence envelope (format tpm2-quote, tdx-quote, sgx-quote or nvgpu-report), or -
                for standard input. Without --policy the built-in default applies (UpToDate TDX only, no debug TDs,
                no SHA-1 TPM quotes); with --policy the file's evidence rules and its measurement allowlists apply.

                Examples:
                  ccgate evidence verify quote.json --nonce 4169354d35536a59
                  ccgate evidence verify quote.json --at 2026-03-01T00:00:00Z --json
                  ccgate evidence verify quote.json --policy Policies/default.yaml
                  ccgate evidence verify tdx.json --root test-root.pem --collateral-dir ./collateral

                An NVIDIA GPU report (nvgpu-report, made by `ccgate evidence wrap nvgpu`) is verified against \
                NVIDIA's pinned device and manifest roots and the manifests it carries; --nonce is the nonce the \
                report answers; with --policy it is refused (evidence.unsupported): a GPU report alone admits no worker, \
                it is judged inside a TDX worker's evidence (`gpus`).

                TDX and SGX quotes are verified against Intel collateral: the envelope's own `collateral`, or, \
                with --collateral-dir, items imported by `ccgate collateral import` (the verdict names which).

                Exit status: 0 accept, 1 reject, 2 unreadable input or bad usage.
                """)

        @Argument(help: ArgumentHelp("The evidence envelope file, or - for standard input.", valueName: "ENVELOPE"))
        var envelope: String

        @Option(
            help: ArgumentHelp(
                "The expected freshness value in hex (TPM extraData, TDX report_data).", valueName: "HEX"))
        var nonce: String?

        @Option(help: ArgumentHelp("Verify as of this instant (RFC 3339); default: now.", valueName: "RFC3339"))
        var at: String?

        @Option(
            name: .customLong("root"),
            help: ArgumentHelp(
                "A PEM trust root replacing the pinned production roots for this run; repeatable.", valueName: "PEM"))
        var roots: [String] = []

        @Option(
            name: .customLong("tpm-ek-root"),
            help: ArgumentHelp(
                "A PEM CA certificate EK certificates may chain to, beside the pinned TPM manufacturer roots; repeatable.",
                valueName: "PEM"))
        var tpmEKRootFiles: [String] = []

        @Option(
            name: .customLong("activation-key"),
            help: ArgumentHelp(
                "A gateway's public key (PEM, e.g. DATA/gateway.pub) whose credential-activation records to believe; repeatable.",
                valueName: "PEM"))
        var activationKeys: [String] = []

        @Option(help: ArgumentHelp("A policy document (YAML) to apply.", valueName: "FILE"))
        var policy: String?

        @Option(
            help: ArgumentHelp(
                "Look up Intel collateral missing from a TDX/SGX envelope in this cache directory.", valueName: "DIR"))
        var collateralDir: String?

        @Flag(help: "Print exactly one JSON object instead of the readable report.")
        var json = false

        func validate() throws {
            if let nonce, Data(hex: nonce) == nil { throw ValidationError("--nonce must be hexadecimal") }
            if let at, Date.rfc3339(at) == nil {
                throw ValidationError("--at must be an RFC 3339 time, e.g. 2026-03-01T00:00:00Z")
            }
        }

        func run() throws {
            try exiting {
                let data = try readInput(envelope)
                let dcapRoots = try dcapRootFingerprints(roots)
                var cache: CollateralCache?
                if let collateralDir {
                    do { cache = try CollateralCache(directory: URL(fileURLWithPath: collateralDir)) } catch {
                        throw failure("\(error)")
                    }
                }
                var document = PolicyDocument.handVerification
                if let policy {
                    do { document = try PolicyDocument.load(contentsOf: URL(fileURLWithPath: policy)) } catch {
                        throw failure("policy \(policy) is invalid:\n\(error)")
                    }
                }
                let time = at.flatMap(Date.rfc3339) ?? SystemClock().now()
                let verification = EvidenceVerification(
                    policy: document, applyMeasurementRules: policy != nil, dcapRoots: dcapRoots,
                    collateralSource: cache,
                    tpmIdentity: TPMIdentityTrust(
                        ekRoots: try tpmEKRoots(tpmEKRootFiles),
                        activation: .records(trustedKeys: try publicKeys(activationKeys))))
                let verdict = verification.verify(
                    envelopeData: data, expectedNonce: nonce.flatMap { Data(hex: $0) }, at: time)
                if json {
                    print(VerdictRendering.json(verdict))
                } else {
                    let color = isatty(STDOUT_FILENO) == 1 && ProcessInfo.processInfo.environment["NO_COLOR"] == nil
                    print(VerdictRendering.human(verdict, source: envelope == "-" ? "(stdin)" : envelope, color: color))
                }
                return verdict.isAccepted ? 0 : 1
            }
        }
    }
}

/// Reads a file, or standard input for `-`, refusing anything larger than an envelope may be.
func readInput(_ path: String) throws -> Data {
    let limit = EvidenceEnvelope.maxSize + 1
    if path == "-" {
        let data = FileHandle.standardInput.readData(ofLength: limit)
        if data.count >= limit { throw failure("standard input is larger than \(EvidenceEnvelope.maxSize) bytes") }
        return data
    }
    guard let handle = FileHandle(forReadingAtPath: path) else { throw failure("\(path): cannot open") }
    defer { try? handle.close() }
    let data: Data
    do { data = try handle.read(upToCount: limit) ?? Data() } catch {
        throw failure("\(path): \(error.localizedDescription)")
    }
    if data.count >= limit { throw failure("\(path) is larger than \(EvidenceEnvelope.maxSize) bytes") }
    return data
}
