import AttestationCore
import Crypto
import Foundation
import WorkerProtocol

/// The digest both sides compute over a worker connection's handshake: the worker's hello
/// (including its fresh per-connection nonce), the gateway's challenge nonce, the gateway id and
/// the gateway's public key. Every handshake message the gateway sends is signed over it.
///
/// Threat: anyone who can redirect a worker's connection posing as the gateway: taking its GPU
/// time, collecting its quotes and provider proofs, or steering its admission. Without the
/// pinned key's private half no challenge, credential, admission or refusal verifies; a recorded
/// one does not either, since each covers the worker's fresh nonce.
///
/// The encoding is fixed binary (every field length-prefixed), not JSON, so that both sides hash
/// the same bytes whatever their JSON encoders do.
public struct HandshakeTranscript: Sendable, Equatable {
    public let digest: Data

    public init(hello: WireMessage.Hello, nonce: Data, gatewayID: String, gatewayKey: Data) {
        var bytes = Data("ccgate/handshake/v2\0".utf8)
        bytes.appendField(Data(String(hello.protocolVersion).utf8))
        bytes.appendField(Data(hello.workerID.utf8))
        bytes.appendField(hello.kemPublicKey)
        bytes.appendField(hello.workerNonce)
        bytes.appendField(Data(String(hello.models.count).utf8))
        for model in hello.models { bytes.appendField(Data(model.utf8)) }
        bytes.appendField(nonce)
        bytes.appendField(Data(gatewayID.utf8))
        bytes.appendField(gatewayKey)
        digest = Data(SHA256.hash(data: bytes))
    }

    /// What a signature of `kind` covers: its domain, this transcript, then the message's fields.
    public func signedBytes(_ kind: HandshakeMessageKind, _ fields: [Data]) -> Data {
        var bytes = Data("ccgate/\(kind.rawValue)/v2\0".utf8)
        bytes.appendField(digest)
        for field in fields { bytes.appendField(field) }
        return bytes
    }
}

/// The gateway messages a handshake signature can be for; each signs in its own domain, so one
/// can never stand in for another.
public enum HandshakeMessageKind: String, Sendable {
    case challenge, activate, admitted, rejected
}

extension WireMessage.Activate {
    public var signedFields: [Data] { [credentialBlob, encryptedSecret] }
}

/// SHA-256 over what the worker sent and the gateway judged: the evidence envelope, the provider
/// proof and the credential activation answer. A decision signed over it is a decision on the
/// worker's own messages; one on messages altered on the way does not match, and the worker
/// takes it for what it is (someone on the path), not for the gateway's verdict.
public func judgedDigest(_ evidence: WireMessage.EvidenceMessage, activation: Data?) -> Data {
    var bytes = Data("ccgate/judged/v2\0".utf8)
    bytes.appendField(evidence.envelope)
    bytes.appendField(evidence.providerProof ?? Data())
    bytes.appendField(activation ?? Data())
    return Data(SHA256.hash(data: bytes))
}

extension WireMessage.Admitted {
    /// The admission's fields and the digest of what was judged (``judgedDigest(_:activation:)``).
    public func signedFields(judged: Data) -> [Data] {
        [Data(sessionID.utf8), encapsulatedKey, sealedSessionKey, Data(String(reattestSeconds).utf8), judged]
    }
}

extension WireMessage.Rejection {
    /// The refusal and the digest of what was judged (``judgedDigest(_:activation:)``).
    public func signedFields(judged: Data) -> [Data] { [Data(code.utf8), Data(message.utf8), judged] }
}

/// The gateway's identity key as the handshake uses it.
public struct GatewayHandshakeKey: Sendable {
    public let key: Ed25519PrivateKey
    public init(_ key: Ed25519PrivateKey) { self.key = key }

    /// The id provider proofs and the worker see: the key's fingerprint.
    public var gatewayID: String { key.publicKey.fingerprint }

    public func transcript(hello: WireMessage.Hello, nonce: Data) -> HandshakeTranscript {
        HandshakeTranscript(hello: hello, nonce: nonce, gatewayID: gatewayID, gatewayKey: key.publicKey.raw)
    }

    public func challenge(hello: WireMessage.Hello, nonce: Data) -> WireMessage.Challenge {
        let t = transcript(hello: hello, nonce: nonce)
        return .init(
            nonce: nonce, gatewayID: gatewayID, gatewayKey: key.publicKey.raw,
            signature: key.signature(for: t.signedBytes(.challenge, [])))
    }

    public func sign(_ kind: HandshakeMessageKind, _ transcript: HandshakeTranscript, _ fields: [Data]) -> Data {
        key.signature(for: transcript.signedBytes(kind, fields))
    }
}

/// The gateway key a worker accepts: the key itself, or its SHA-256 fingerprint.
public struct GatewayKeyPin: Sendable, Equatable, CustomStringConvertible {
    /// The pinned key's fingerprint (lowercase hex SHA-256 of the raw key).
    public let fingerprint: String

    public init(key: Ed25519PublicKey) { fingerprint = key.fingerprint }

    /// A fingerprint (64 hex digits), a PEM public key, or the key's 32 bytes in base64.
    public init(text: String) throws(Ed25519KeyError) {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines).lowercased()
        if trimmed.count == 64, trimmed.allSatisfy(\.isHexDigit) {
            fingerprint = trimmed
        } else {
            fingerprint = try Ed25519PublicKey(text: text).fingerprint
        }
    }

    public var description: String { fingerprint }

    /// Checks a challenge: its key is the pinned one, its id is that key's fingerprint, and its
    /// signature covers this hello. Returns the transcript the rest of the handshake is signed over.
    public func verify(_ challenge: WireMessage.Challenge, hello: WireMessage.Hello) throws(GatewayAuthenticationError)
        -> HandshakeTranscript
    {
        guard let key = try? Ed25519PublicKey(raw: challenge.gatewayKey) else {
            throw .unauthenticated("the challenge carries no valid gateway key")
        }
        let t = HandshakeTranscript(
            hello: hello, nonce: challenge.nonce, gatewayID: challenge.gatewayID, gatewayKey: challenge.gatewayKey)
        guard key.isValidSignature(challenge.signature, for: t.signedBytes(.challenge, [])) else {
            throw .unauthenticated("the challenge's signature does not verify")
        }
        guard key.fingerprint == fingerprint else {
            throw .keyMismatch(presented: key.fingerprint, pinned: fingerprint)
        }
        guard challenge.gatewayID == key.fingerprint else {
            throw .unauthenticated("the challenge's gateway id is not its key's fingerprint")
        }
        return t
    }

    /// Checks a signature by the pinned key (already matched by ``verify(_:hello:)``).
    public func verify(
        _ signature: Data?, _ kind: HandshakeMessageKind, _ transcript: HandshakeTranscript, gatewayKey: Data,
        _ fields: [Data]
    ) throws(GatewayAuthenticationError) {
        guard let signature, let key = try? Ed25519PublicKey(raw: gatewayKey), key.fingerprint == fingerprint,
            key.isValidSignature(signature, for: transcript.signedBytes(kind, fields))
        else {
            throw .unauthenticated("the gateway's \(kind.rawValue) message is not signed by the pinned key")
        }
    }
}

public enum GatewayAuthenticationError: Error, Equatable, CustomStringConvertible {
    /// A well-signed handshake under another key: the wrong gateway, a stale pin, or someone on
    /// the path with a key of their own.
    case keyMismatch(presented: String, pinned: String)
    /// A signature that does not verify, or a field that contradicts the key: a forgery.
    case unauthenticated(String)

    public var code: ProtocolErrorCode {
        switch self {
        case .keyMismatch: .gatewayKeyMismatch
        case .unauthenticated: .gatewayUnauthenticated
        }
    }

    public var description: String {
        switch self {
        case .keyMismatch(let presented, let pinned):
            "the gateway's key \(presented.prefix(16))… is not the pinned key \(pinned.prefix(16))…"
        case .unauthenticated(let why): why
        }
    }
}

extension Data {
    /// A 4-byte big-endian length, then the bytes.
    mutating func appendField(_ field: Data) {
        var length = UInt32(field.count).bigEndian
        append(Data(bytes: &length, count: 4))
        append(field)
    }
}
