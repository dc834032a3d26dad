import ArgumentParser
import AttestationCore
import CommandLineSupport
import Foundation
import Policy
import TDXVerifier
import TPMVerifier

@main
struct CCGate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ccgate",
        abstract: "A confidential-compute gateway: admits GPU workers only on verified hardware attestation.",
        discussion: """
            Exit status: 0 success; 1 refused or failed a check (evidence rejected, policy refused, audit export
            not verifying, replay not matching, differences found by policy diff); 2 unreadable input, bad usage or an
            unreachable gateway.
            """,
        version: projectVersion,
        subcommands: [
            ServeCommand.self, EvidenceCommand.self, PolicyCommand.self, CollateralCommand.self, WorkersCommand.self,
            AuditCommand.self,
            KeysCommand.self, UsageCommand.self, ReceiptCommand.self, ClientCommand.self, DatabaseCommand.self,
        ])

    static func main() async { await runAsyncWithProjectExitCodes() }
}

/// Reports a failure as `ccgate: message` and exits with `status` (2: unreadable input or bad usage).
func failure(_ message: String, status: Int32 = 2) -> ReportedFailure {
    ReportedFailure("ccgate", message, status: status)
}

/// The SHA-256 fingerprints of the DCAP roots given with `--dcap-root` (each file's PEM
/// certificates), or Intel's pinned root when none are given.
func dcapRootFingerprints(_ paths: [String]) throws -> Set<String> {
    guard !paths.isEmpty else { return PinnedRoots.production }
    var out = Set<String>()
    for path in paths {
        let loaded: [TrustRoots.Root]
        do { loaded = try TrustRoots.load(pemFile: path) } catch { throw failure("\(error)") }
        if loaded.isEmpty { throw failure("\(path): no PEM certificate found") }
        for r in loaded { out.insert(r.fingerprint) }
    }
    return out
}

/// The EK roots: the pinned TPM manufacturer roots and those given with `--tpm-ek-root`.
func tpmEKRoots(_ paths: [String]) throws -> [Data] {
    var out = EKRoots.pinnedDER
    for path in paths {
        let loaded: [TrustRoots.Root]
        do { loaded = try TrustRoots.load(pemFile: path) } catch { throw failure("\(error)") }
        if loaded.isEmpty { throw failure("\(path): no PEM certificate found") }
        out += loaded.map(\.der)
    }
    return out
}

/// Ed25519 public keys from PEM files (`--activation-key`).
func publicKeys(_ paths: [String]) throws -> [Ed25519PublicKey] {
    try paths.map { path in
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw failure("\(path): cannot read")
        }
        do { return try Ed25519PublicKey(text: text) } catch { throw failure("\(path): \(error)") }
    }
}

extension ParsableCommand {
    /// Runs `body` and exits with the status it returns.
    func exiting(_ body: () throws -> Int32) throws {
        let status = try body()
        if status != 0 { throw ExitCode(status) }
    }
}
