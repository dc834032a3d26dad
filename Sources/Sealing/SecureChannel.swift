import Crypto
import Foundation
import Synchronization

/// One direction of an authenticated, encrypted, replay-protected message stream under a session
/// key (ChaCha20-Poly1305). Keys are derived per direction with HKDF, the nonce is the message's
/// sequence number, and the additional data binds session id, direction and sequence.
///
/// Threat: an on-path attacker reading, altering, replaying, reordering or reflecting messages
/// between gateway and worker. Reading and altering fail authentication; a replayed, reordered
/// or dropped message breaks the strict sequence; a reflected one was sealed under the other
/// direction's key.
public enum ChannelDirection: String, Sendable {
    case gatewayToWorker = "g2w"
    case workerToGateway = "w2g"
}

public final class ChannelSealer: Sendable {
    private let key: SymmetricKey
    private let header: Data
    private let next = Mutex<UInt64>(0)
    /// Largest plaintext sealed in one message.
    public static let maxMessageSize = 1 << 20

    public init(sessionKey: SymmetricKey, sessionID: String, direction: ChannelDirection) {
        key = ChannelKeys.derive(sessionKey, sessionID: sessionID, direction: direction)
        header = ChannelKeys.header(sessionID: sessionID, direction: direction)
    }

    /// Seals the next message. `emit` runs while the sequence is held, so messages reach the wire
    /// in sequence order even when many tasks send at once.
    public func seal(_ plaintext: Data, emit: (Data) throws -> Void) throws {
        guard plaintext.count <= Self.maxMessageSize else { throw SealingError.tooLarge(plaintext.count) }
        try next.withLock { seq in
            let box = try ChaChaPoly.seal(
                plaintext, using: key, nonce: ChannelKeys.nonce(seq),
                authenticating: header + ChannelKeys.seqBytes(seq))
            seq += 1
            try emit(box.ciphertext + box.tag)
        }
    }
}

public final class ChannelOpener: Sendable {
    private let key: SymmetricKey
    private let header: Data
    private let expected = Mutex<UInt64>(0)

    public init(sessionKey: SymmetricKey, sessionID: String, direction: ChannelDirection) {
        key = ChannelKeys.derive(sessionKey, sessionID: sessionID, direction: direction)
        header = ChannelKeys.header(sessionID: sessionID, direction: direction)
    }

    /// Opens the next message in sequence. A message that fails authentication does not advance
    /// the sequence; the caller should close the channel.
    public func open(_ message: Data) throws(SealingError) -> Data {
        guard message.count >= 16, message.count <= ChannelSealer.maxMessageSize + 16 else { throw .openFailed }
        return try expected.withLock { (seq: inout UInt64) throws(SealingError) -> Data in
            do {
                let box = try ChaChaPoly.SealedBox(
                    nonce: ChannelKeys.nonce(seq), ciphertext: message.dropLast(16), tag: message.suffix(16))
                let plain = try ChaChaPoly.open(box, using: key, authenticating: header + ChannelKeys.seqBytes(seq))
                seq += 1
                return plain
            } catch {
                throw .openFailed
            }
        }
    }
}

enum ChannelKeys {
    static func derive(_ sessionKey: SymmetricKey, sessionID: String, direction: ChannelDirection) -> SymmetricKey {
        HKDF<SHA256>.deriveKey(
            inputKeyMaterial: sessionKey, salt: Data(sessionID.utf8),
            info: Data("ccgate channel v1 \(direction.rawValue)".utf8), outputByteCount: 32)
    }

    static func header(sessionID: String, direction: ChannelDirection) -> Data {
        Data("ccgate/\(direction.rawValue)/\(sessionID)/".utf8)
    }

    static func seqBytes(_ seq: UInt64) -> Data { withUnsafeBytes(of: seq.bigEndian) { Data($0) } }

    static func nonce(_ seq: UInt64) -> ChaChaPoly.Nonce {
        try! ChaChaPoly.Nonce(data: Data(count: 4) + seqBytes(seq))
    }
}
