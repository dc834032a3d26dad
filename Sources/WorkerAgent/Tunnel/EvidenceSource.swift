import Foundation
import WorkerProtocol

/// Evidence the worker can present: a TPM quote or a TDX quote, each bound to the gateway's
/// challenge by `binding` (SHA-256 of the nonce and the worker's public keys).
public protocol EvidenceSource: Sendable {
    func evidence(binding: Data) async throws -> Data
    /// Recovers a credential's secret (TPM2_ActivateCredential with the AK and EK); sources
    /// without a TPM refuse.
    func activateCredential(_ challenge: WireMessage.Activate) async throws -> Data
}

/// An evidence source asked for something it cannot do.
public struct EvidenceSourceError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension Attestor: EvidenceSource {}
