import Crypto
import Foundation

/// The value bound into a worker's attestation: `SHA-256(nonce ‖ worker public keys)`.
///
/// Threat: a quote replayed from another session (old nonce) or transplanted onto another worker
/// key. Both change this value, so the quote's `extraData` no longer matches.
public func attestationBinding(nonce: Data, workerPublicKeys: Data) -> Data {
    Data(SHA256.hash(data: nonce + workerPublicKeys))
}
