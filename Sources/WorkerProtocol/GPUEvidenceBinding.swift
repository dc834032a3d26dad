import AttestationCore
import Foundation

/// How a TDX worker's GPUs are bound into its attestation (composite `tdx-quote` evidence with a
/// `gpus` member, docs/EVIDENCE.md).
///
/// Threat: a GPU report from another machine, or an old one, presented beside a genuine TD quote
/// (the provider has root on the host and can replay any report it ever collected). Each GPU
/// answers a nonce derived from this admission's binding (nonce ‖ worker key) and its index, and
/// the TD's REPORTDATA commits to the digest of every GPU's report and chain, so neither a GPU
/// report nor the set of GPUs can be swapped after the quote is made.
public enum GPUEvidenceBinding {
    /// The nonce GPU `index` must answer: SHA-256("ccgate-gpu-nonce/v1" ‖ binding ‖ u32be(index)),
    /// where `binding` is the 32 bytes the TD quote's REPORTDATA starts with.
    public static func nonce(binding: Data, index: Int) -> Data {
        var input = Data("ccgate-gpu-nonce/v1".utf8)
        input += binding
        input += Data([
            UInt8(truncatingIfNeeded: index >> 24), UInt8(truncatingIfNeeded: index >> 16),
            UInt8(truncatingIfNeeded: index >> 8), UInt8(truncatingIfNeeded: index),
        ])
        return HashAlgorithm.sha256.hash(input)
    }

    /// What the second half of REPORTDATA holds: SHA-256("ccgate-gpu-evidence/v1" ‖ for each GPU
    /// in index order: SHA-256(report) ‖ SHA-256(certificate chain text)).
    public static func digest(_ gpus: [(report: Data, chain: Data)]) -> Data {
        var input = Data("ccgate-gpu-evidence/v1".utf8)
        for gpu in gpus {
            input += HashAlgorithm.sha256.hash(gpu.report)
            input += HashAlgorithm.sha256.hash(gpu.chain)
        }
        return HashAlgorithm.sha256.hash(input)
    }

    /// REPORTDATA for a binding and the GPUs' evidence: the binding, then the GPU digest (or zeros
    /// when there are no GPUs, as for a TD without GPUs).
    public static func reportData(binding: Data, gpus: [(report: Data, chain: Data)]) -> Data {
        let second = gpus.isEmpty ? Data(count: 32) : digest(gpus)
        return binding.prefix(32) + Data(count: max(0, 32 - binding.count)) + second
    }

    /// Most GPUs one worker reports (an HGX board has eight).
    public static let maxGPUs = 8
}
