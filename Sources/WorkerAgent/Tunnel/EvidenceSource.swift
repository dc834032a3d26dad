import Foundation

/// Evidence the worker can present: a TPM quote or a TDX quote, each bound to the gateway's
/// challenge by `binding` (SHA-256 of the nonce and the worker's public keys).
public protocol EvidenceSource: Sendable {
    func evidence(binding: Data) async throws -> Data
}

extension Attestor: EvidenceSource {}
