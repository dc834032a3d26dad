import Crypto
import Foundation

/// HPKE (RFC 9180, mode base, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305) sealing
/// of a 32-byte session key to a worker's KEM public key.
public enum SessionKeySealing {
    public static let ciphersuite = HPKE.Ciphersuite.Curve25519_SHA256_ChachaPoly
    static let info = Data("ccgate session key v1".utf8)

    public struct Sealed: Sendable, Equatable {
        public let encapsulatedKey: Data
        public let ciphertext: Data
        /// Both fields are stored zero-based, whatever slice they were made from.
        public init(encapsulatedKey: Data, ciphertext: Data) {
            self.encapsulatedKey = Data([UInt8](encapsulatedKey))
            self.ciphertext = Data([UInt8](ciphertext))
        }
    }

    /// Seals `sessionKey` to `recipient`; `context` (session id ‖ nonce) is authenticated, so the
    /// blob cannot be replayed into another session.
    public static func seal(_ sessionKey: SymmetricKey, to recipient: Data, context: Data) throws(SealingError)
        -> Sealed
    {
        do {
            let publicKey = try Curve25519.KeyAgreement.PublicKey(rawRepresentation: recipient)
            var sender = try HPKE.Sender(recipientKey: publicKey, ciphersuite: ciphersuite, info: info)
            let ciphertext = try sessionKey.withUnsafeBytes { try sender.seal(Data($0), authenticating: context) }
            return Sealed(encapsulatedKey: sender.encapsulatedKey, ciphertext: ciphertext)
        } catch {
            throw .badPublicKey
        }
    }

    public static func open(_ sealed: Sealed, with key: WorkerKEMKey, context: Data) throws(SealingError)
        -> SymmetricKey
    {
        do {
            var recipient = try HPKE.Recipient(
                privateKey: key.privateKey, ciphersuite: ciphersuite, info: info,
                encapsulatedKey: sealed.encapsulatedKey)
            let raw = try recipient.open(sealed.ciphertext, authenticating: context)
            guard raw.count == 32 else { throw SealingError.openFailed }
            return SymmetricKey(data: raw)
        } catch {
            throw .openFailed
        }
    }
}
