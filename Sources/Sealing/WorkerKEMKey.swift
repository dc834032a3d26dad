import Crypto
import Foundation

/// A worker's key-encapsulation key pair (X25519). The public half is what the worker binds into
/// its quote; the gateway seals the session key to it, so only the attested worker can open it.
public struct WorkerKEMKey: Sendable {
    public let privateKey: Curve25519.KeyAgreement.PrivateKey
    public var publicKeyBytes: Data { privateKey.publicKey.rawRepresentation }

    public init() { privateKey = Curve25519.KeyAgreement.PrivateKey() }
    public init(rawRepresentation: Data) throws { privateKey = try .init(rawRepresentation: rawRepresentation) }
}
