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

    /// One GPU's evidence as the envelope carries it (an absent manifest is empty).
    public struct Piece: Sendable, Equatable {
        public var report: Data
        public var chain: Data
        public var driverManifest: Data
        public var vbiosManifest: Data

        public init(report: Data, chain: Data, driverManifest: Data = Data(), vbiosManifest: Data = Data()) {
            self.report = report
            self.chain = chain
            self.driverManifest = driverManifest
            self.vbiosManifest = vbiosManifest
        }
    }

    /// What the second half of REPORTDATA holds: SHA-256("ccgate-gpu-evidence/v1" ‖ for each GPU
    /// in index order: SHA-256(report) ‖ SHA-256(certificate chain text) ‖ SHA-256(driver
    /// manifest) ‖ SHA-256(VBIOS manifest)), an absent manifest hashed as no bytes. The manifests
    /// are committed to as well, so nobody between the TD and the gateway swaps one for another
    /// NVIDIA-signed manifest of the same version.
    public static func digest(_ gpus: [Piece]) -> Data {
        var input = Data("ccgate-gpu-evidence/v1".utf8)
        for gpu in gpus {
            for part in [gpu.report, gpu.chain, gpu.driverManifest, gpu.vbiosManifest] {
                input += HashAlgorithm.sha256.hash(part)
            }
        }
        return HashAlgorithm.sha256.hash(input)
    }

    /// REPORTDATA for a binding (32 bytes; a shorter one zero-padded) and the GPUs' evidence: the
    /// binding, then the GPU digest (or zeros when there are no GPUs, as for a TD without GPUs).
    public static func reportData(binding: Data, gpus: [Piece]) -> Data {
        precondition(binding.count <= 32, "a binding is at most 32 bytes")
        let second = gpus.isEmpty ? Data(count: 32) : digest(gpus)
        return binding + Data(count: 32 - binding.count) + second
    }

    /// Most GPUs one worker reports (an HGX board has eight).
    public static let maxGPUs = 8
}
