import AttestationCore
import Foundation

extension PolicyDocument {
    /// What `ccgate policy lint` reports beyond the schema: `errors` make a policy unusable for
    /// admission (the gateway refuses to start with it or apply it), `warnings` are accepted
    /// but named.
    public struct Lint: Sendable, Equatable {
        public var errors: [String] = []
        public var warnings: [String] = []
        public init(errors: [String] = [], warnings: [String] = []) {
            self.errors = errors
            self.warnings = warnings
        }
    }

    /// Threat: a policy that accepts confidential-VM or enclave evidence while pinning nothing
    /// about what runs inside, so that any guest on genuine Intel hardware passes. A policy that
    /// accepts `tdx-quote` must pin MRTD and RTMR0–2 (or Cocoon image hashes, which cover them);
    /// one that accepts `sgx-quote` must pin MRENCLAVE, or MRSIGNER with ISVPRODID and a minimum
    /// ISVSVN.
    public var lint: Lint {
        var lint = Lint()
        if formats.contains(EvidenceFormat.tdxQuote.rawValue), tdx.imageHashes.isEmpty {
            let pinsRTMRs =
                !tdx.rtmrSets.isEmpty && tdx.rtmrSets.allSatisfy { set in (0...2).allSatisfy { set[$0] != nil } }
            if tdx.mrtds.isEmpty || !pinsRTMRs {
                lint.errors.append(
                    "evidence.formats accepts tdx-quote but the policy pins no guest image: give evidence.tdx.mrtd and evidence.tdx.rtmrs sets with RTMR 0, 1 and 2 (or evidence.tdx.image_hashes)"
                )
            }
        }
        if formats.contains(EvidenceFormat.sgxQuote.rawValue), sgx.mrenclaves.isEmpty, sgx.signers.isEmpty {
            lint.errors.append(
                "evidence.formats accepts sgx-quote but the policy pins no enclave: give evidence.sgx.mrenclaves or evidence.sgx.signers (mrsigner, isvprodid, min_isvsvn)"
            )
        }
        if formats.contains(EvidenceFormat.tpm2Quote.rawValue), tpm.akTrust == .asPresented {
            lint.warnings.append(
                "evidence.tpm.ak_trust: as-presented believes any attestation key a worker names, including one made in software (labs only)"
            )
        }
        if !models.isEmpty, models.allSatisfy({ $0.names.isEmpty }) {
            lint.warnings.append(
                "measurements.models list no names: workers may advertise any model name for the models they measured (give each model its client names with `names: [...]`)"
            )
        }
        if allowUnmeasuredEngine {
            lint.warnings.append(
                "measurements.allow_unmeasured_engine: true admits workers whose engine was not started from the measured binary (labs and benchmarks only)"
            )
        }
        return lint
    }
}
