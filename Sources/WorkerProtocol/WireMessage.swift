import Foundation

/// Messages between a worker and the gateway's worker port. Each travels as one frame: a 4-byte
/// big-endian length, then that many bytes: JSON (`{"type": …, …}`) for the handshake messages,
/// and for `sealed` a marker byte and the sealed box (BinaryCoding.swift).
///
/// Sequence: worker `hello` → gateway `challenge` → worker `evidence` → gateway `admitted` (or
/// `rejected`, then close). Then `sealed` messages both ways. From admission on, everything the
/// gateway says travels sealed (``ChannelPayload``): requests, re-attestation challenges (answered
/// by the worker with fresh `evidence` in the clear: evidence is public, and it answers a nonce
/// only the channel carried) and the session's end. `error` ends a connection before admission;
/// it is unsigned, so a worker takes it as a transient failure only.
///
/// The gateway signs every handshake message it sends (`challenge`, `activate`, `admitted`,
/// `rejected`) with its Ed25519 identity key over the handshake transcript (Sealing's
/// `HandshakeTranscript`): a worker that pins the key talks to nobody else.
public enum WireMessage: Sendable, Equatable {
    case hello(Hello)
    case challenge(Challenge)
    case evidence(EvidenceMessage)
    case admitted(Admitted)
    case rejected(Rejection)
    case sealed(Data)
    case error(Rejection)
    /// Gateway → TPM worker, after its admission evidence: a credential to activate.
    case activate(Activate)
    /// TPM worker → gateway: the secret its TPM recovered from the credential.
    case activation(Activation)

    public struct Hello: Codable, Sendable, Equatable {
        public var protocolVersion: Int
        public var workerID: String
        /// The worker's X25519 KEM public key (32 bytes): bound into every quote, and the key the
        /// session key is sealed to.
        public var kemPublicKey: Data
        public var models: [String]
        /// 32 random bytes, fresh per connection: the gateway's signed challenge covers it, so a
        /// recorded challenge cannot be replayed to this worker.
        public var workerNonce: Data

        /// 4: requests carry the gateway's request id (`ChannelPayload.request`, `.sealedRequest`).
        public static let currentVersion = 4

        enum CodingKeys: String, CodingKey { case protocolVersion, workerID, kemPublicKey, models, workerNonce }

        /// A hello of an older version lacks the nonce: it decodes, so the gateway can say which
        /// version it needs instead of calling the frame malformed.
        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            protocolVersion = try c.decode(Int.self, forKey: .protocolVersion)
            workerID = try c.decode(String.self, forKey: .workerID)
            kemPublicKey = try c.decode(Data.self, forKey: .kemPublicKey)
            models = try c.decode([String].self, forKey: .models)
            workerNonce = try c.decodeIfPresent(Data.self, forKey: .workerNonce) ?? Data()
        }

        /// 32 bytes from the system's secure generator (getrandom on Linux).
        public static func freshNonce() -> Data {
            var generator = SystemRandomNumberGenerator()
            return Data((0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) })
        }

        public init(
            protocolVersion: Int = Hello.currentVersion, workerID: String, kemPublicKey: Data, models: [String],
            workerNonce: Data = Hello.freshNonce()
        ) {
            self.protocolVersion = protocolVersion
            self.workerID = workerID
            self.kemPublicKey = kemPublicKey
            self.models = models
            self.workerNonce = workerNonce
        }
    }

    public struct Challenge: Codable, Sendable, Equatable {
        public var nonce: Data
        /// The gateway's id (its key's fingerprint), which a provider proof names.
        public var gatewayID: String
        /// The gateway's Ed25519 identity key (32 bytes).
        public var gatewayKey: Data
        /// The gateway's signature over the handshake transcript (hello, nonce, id, key).
        public var signature: Data
        public init(nonce: Data, gatewayID: String, gatewayKey: Data, signature: Data) {
            self.nonce = nonce
            self.gatewayID = gatewayID
            self.gatewayKey = gatewayKey
            self.signature = signature
        }
    }

    public struct EvidenceMessage: Codable, Sendable, Equatable {
        /// The evidence envelope's JSON bytes.
        public var envelope: Data
        /// The provider proof's JSON bytes (TONKit `ProviderProof`), when the worker's provider
        /// stakes on TON; sent with the admission evidence.
        public var providerProof: Data?
        public init(envelope: Data, providerProof: Data? = nil) {
            self.envelope = envelope
            self.providerProof = providerProof
        }
    }

    public struct Admitted: Codable, Sendable, Equatable {
        public var sessionID: String
        public var encapsulatedKey: Data
        public var sealedSessionKey: Data
        public var reattestSeconds: Int
        /// The gateway's signature over the transcript, these fields and the evidence it judged.
        public var signature: Data
        public init(
            sessionID: String, encapsulatedKey: Data, sealedSessionKey: Data, reattestSeconds: Int,
            signature: Data = Data()
        ) {
            self.sessionID = sessionID
            self.encapsulatedKey = encapsulatedKey
            self.sealedSessionKey = sealedSessionKey
            self.reattestSeconds = reattestSeconds
            self.signature = signature
        }
    }

    /// A TPM2_MakeCredential challenge for the worker's AK, wrapped to its EK. Only a TPM that
    /// holds both keys can recover the secret (credential activation).
    public struct Activate: Codable, Sendable, Equatable {
        /// TPM2B_ID_OBJECT bytes.
        public var credentialBlob: Data
        /// TPM2B_ENCRYPTED_SECRET bytes.
        public var encryptedSecret: Data
        /// The gateway's signature over the transcript and both fields.
        public var signature: Data
        public init(credentialBlob: Data, encryptedSecret: Data, signature: Data = Data()) {
            self.credentialBlob = credentialBlob
            self.encryptedSecret = encryptedSecret
            self.signature = signature
        }
    }

    public struct Activation: Codable, Sendable, Equatable {
        public var secret: Data
        public init(secret: Data) { self.secret = secret }
    }

    public struct Rejection: Codable, Sendable, Equatable {
        public var code: String
        public var message: String
        /// On `rejected`: the gateway's signature over the transcript, code and message. `error`
        /// messages carry none.
        public var signature: Data?
        public init(code: String, message: String, signature: Data? = nil) {
            self.code = code
            self.message = message
            self.signature = signature
        }
    }

    public var typeName: String {
        switch self {
        case .hello: "hello"
        case .challenge: "challenge"
        case .evidence: "evidence"
        case .admitted: "admitted"
        case .rejected: "rejected"
        case .sealed: "sealed"
        case .error: "error"
        case .activate: "activate"
        case .activation: "activation"
        }
    }
}

extension WireMessage: Codable {
    private enum Keys: String, CodingKey { case type, body }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Keys.self)
        switch try c.decode(String.self, forKey: .type) {
        case "hello": self = .hello(try c.decode(Hello.self, forKey: .body))
        case "challenge": self = .challenge(try c.decode(Challenge.self, forKey: .body))
        case "evidence": self = .evidence(try c.decode(EvidenceMessage.self, forKey: .body))
        case "admitted": self = .admitted(try c.decode(Admitted.self, forKey: .body))
        case "rejected": self = .rejected(try c.decode(Rejection.self, forKey: .body))
        case "sealed":
            throw DecodingError.dataCorruptedError(
                forKey: .type, in: c, debugDescription: "a sealed message must travel as a binary frame")
        case "error": self = .error(try c.decode(Rejection.self, forKey: .body))
        case "activate": self = .activate(try c.decode(Activate.self, forKey: .body))
        case "activation": self = .activation(try c.decode(Activation.self, forKey: .body))
        case let other:
            throw DecodingError.dataCorruptedError(
                forKey: .type, in: c, debugDescription: "unknown message type \(other)")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Keys.self)
        try c.encode(typeName, forKey: .type)
        switch self {
        case .hello(let v): try c.encode(v, forKey: .body)
        case .challenge(let v): try c.encode(v, forKey: .body)
        case .evidence(let v): try c.encode(v, forKey: .body)
        case .admitted(let v): try c.encode(v, forKey: .body)
        case .rejected(let v), .error(let v): try c.encode(v, forKey: .body)
        case .sealed:
            throw EncodingError.invalidValue(
                self, .init(codingPath: [], debugDescription: "a sealed message travels as a binary frame (frameBody)"))
        case .activate(let v): try c.encode(v, forKey: .body)
        case .activation(let v): try c.encode(v, forKey: .body)
        }
    }
}

/// Contents of `sealed` messages, after opening (in the binary form of BinaryCoding.swift).
public enum ChannelPayload: Sendable, Equatable {
    /// Gateway → worker: an API request to forward to the engine. `requestID` is the gateway's
    /// request id (the client's `x-request-id`, or one the gateway made), passed to the engine
    /// as `x-request-id` and named in the worker's logs.
    case request(id: UInt64, method: String, path: String, body: Data, requestID: String)
    /// Worker → gateway: the engine's response status and content type.
    case head(id: UInt64, status: Int, contentType: String)
    /// Worker → gateway: response bytes, forwarded as they arrive.
    case data(id: UInt64, bytes: Data)
    /// Worker → gateway: the response is complete.
    case end(id: UInt64)
    /// Worker → gateway: the request failed (before or after the head).
    case failure(id: UInt64, message: String)
    /// Gateway → worker: the client went away; stop generating.
    case cancel(id: UInt64)
    /// Gateway → worker: a gateway-blind request: `envelope` is the client's sealed request (Sealing's
    /// `EndToEnd.Request` as JSON), which only the worker's key opens. Answered with `head`,
    /// `data` frames sealed for the client, `usage` and `end`.
    case sealedRequest(id: UInt64, path: String, envelope: Data, requestID: String)
    /// Worker → gateway: the token counts of a gateway-blind answer (JSON `usage` object), in the
    /// clear beside its ciphertext so that quotas and billing work.
    case usage(id: UInt64, counts: Data)
    /// Gateway → worker: attest again to `nonce` (answered with an `evidence` message).
    case challenge(nonce: Data)
    /// Gateway → worker: the session ends (eviction, failed re-attestation, key lifetime, …).
    /// `judged`: the SHA-256 of the evidence whose judgement ended it, so the worker can tell a
    /// verdict on what it sent from one on evidence altered on the way.
    case ended(code: String, message: String, judged: Data?)

    /// The request a payload belongs to; 0 for control payloads (request ids start at 1).
    public var id: UInt64 {
        switch self {
        case .request(let id, _, _, _, _), .head(let id, _, _), .data(let id, _), .end(let id), .failure(let id, _),
            .cancel(let id), .sealedRequest(let id, _, _, _), .usage(let id, _):
            id
        case .challenge, .ended: 0
        }
    }
}

/// The codes the worker protocol itself ends a session with (attestation failures use the
/// evidence reason codes of docs/EVIDENCE.md, stake failures those of docs/STAKE.md). The raw
/// strings travel in `error` and `rejected` messages and are written to the audit log; they never
/// change.
public enum ProtocolErrorCode: String, Sendable, CaseIterable {
    case malformedFrame = "protocol.malformed-frame"
    case frameTooLarge = "protocol.frame-too-large"
    case unexpectedMessage = "protocol.unexpected-message"
    case badHello = "protocol.bad-hello"
    case timeout = "protocol.timeout"
    case channelAuthentication = "protocol.channel-authentication"
    /// The connection closed (either side).
    case disconnected = "worker.disconnected"
    /// A newer session of the same worker took this one's place.
    case replaced = "worker.replaced"
    /// Another attested identity holds a session under this worker id; an admission never ends
    /// a session of another identity.
    case idInUse = "worker.id-in-use"
    /// The session key reached the policy's lifetime; the worker attests again for a new one.
    case keyExpired = "session.key-expired"
    /// The gateway could not record a decision durably, so it did not make it.
    case auditUnavailable = "gateway.audit-unavailable"
    /// An operator evicted the worker through the admin API.
    case adminEvicted = "admin.evicted"
    /// The gateway presented a validly signed handshake under a key this worker does not pin.
    case gatewayKeyMismatch = "protocol.gateway-key-mismatch"
    /// A gateway message failed its signature or arrived outside the sealed channel after
    /// admission: someone other than the pinned gateway is speaking.
    case gatewayUnauthenticated = "protocol.gateway-unauthenticated"

    /// Whether a worker that hears this code may connect again unchanged and expect a different
    /// outcome: connection and protocol trouble, an expired key, a gateway that could not write
    /// its log. Evidence, policy and stake refusals need a change first.
    public var isTransient: Bool {
        switch self {
        // A key mismatch stays transient: anyone on the path can present a key of their own, and
        // a worker that gave up on it would hand them a way to stop it for good.
        case .adminEvicted: false
        default: true
        }
    }
}

/// A request id as the gateway passes it on (`x-request-id`): 1–128 ASCII letters, digits and
/// `-_.:`, so that it travels in a header and a log line as it is.
public enum RequestID {
    public static func isValid(_ id: String) -> Bool {
        (1...128).contains(id.utf8.count)
            && id.utf8.allSatisfy { b in
                (0x30...0x39).contains(b) || (0x41...0x5A).contains(b) || (0x61...0x7A).contains(b)
                    || [0x2D, 0x5F, 0x2E, 0x3A].contains(b)
            }
    }
}
