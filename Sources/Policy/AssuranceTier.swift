import AttestationCore
import Foundation

/// How much a worker's evidence proves, in the order clients can require it.
///
/// - `tdx`: an Intel TDX guest (DCAP quote): memory encrypted and integrity-protected against
///   the host; the host owner cannot read prompts. `sgx` likewise, for an SGX enclave.
/// - `tpm-measured-boot`: a TPM quote whose PCRs 0–7 (one bank, all eight) replay a firmware
///   event log and whose files were measured into PCR 10 (the kernel IMA's register): a record
///   of the boot chain and of the files, no stronger than the firmware and kernel that wrote it,
///   and the host owner can read memory: integrity, not confidentiality.
/// - `tpm-agent-log`: a TPM quote over what ccworker itself measured (its own PCR): trust in the
///   agent and the host it runs on; root on the host can extend anything.
public enum AssuranceTier: String, Sendable, CaseIterable, Comparable, Codable {
    case tpmAgentLog = "tpm-agent-log"
    case tpmMeasuredBoot = "tpm-measured-boot"
    case sgx
    case tdx

    var rank: Int {
        switch self {
        case .tpmAgentLog: 0
        case .tpmMeasuredBoot: 1
        case .sgx, .tdx: 2
        }
    }

    public static func < (a: AssuranceTier, b: AssuranceTier) -> Bool { a.rank < b.rank }

    /// Whether prompts are hidden from the host owner (a TEE), not only checked for integrity.
    public var isConfidential: Bool { rank >= 2 }

    /// Whether this tier meets `minimum`.
    public func meets(_ minimum: AssuranceTier) -> Bool { rank >= minimum.rank }
}

extension AttestedFacts {
    public var tier: AssuranceTier { AssuranceTier(format: format, claims: claims) }
}

extension AssuranceTier {
    public init(format: String, claims: VerifiedClaims) {
        switch format {
        // A debug guest or enclave can be read by the host: no confidential tier for it.
        case "tdx-quote" where claims.fields["debug"] == "false": self = .tdx
        case "sgx-quote" where claims.fields["debug"] == "false": self = .sgx
        default:
            let kernelIMA = !claims.measuredFiles.isEmpty && claims.measuredFiles.allSatisfy { $0.pcr == 10 }
            self =
                claims.fields[Self.bootReplayedField] == "replayed" && kernelIMA ? .tpmMeasuredBoot : .tpmAgentLog
        }
    }

    /// The claim TPMVerifier sets when PCRs 0–7 of one bank all replayed from the firmware log.
    public static let bootReplayedField = "tpm.boot_pcrs"
}
