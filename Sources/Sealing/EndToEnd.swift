import Crypto
import Foundation

/// Gateway-blind requests: the client encrypts the request body with HPKE (RFC 9180, base mode,
/// DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305) to the attested worker's key
/// (the key its evidence binds); the worker answers with frames sealed under a key exported from
/// the same HPKE context. The gateway routes ciphertext and holds no key that opens it.
///
/// Threat: the gateway (its operator, its memory, its logs, its database) or anyone between it
/// and the worker reading or altering a prompt or its answer. Only the holder of the worker's
/// private key opens the request; only the client that made the context opens the answer.
/// Routing fields travel in the clear (model, stream, worker and the key's digest) but are bound
/// as associated data, so a gateway that changes them makes the worker refuse the request.
/// Every answer starts with a head frame carrying a fresh salt (its key is its own, even for a
/// replayed request) and the sealed status and content type; frames carry a sequence number and
/// a kind: dropped, reordered, replayed or truncated answers fail to open.
public enum EndToEnd {
    public static let ciphersuite = HPKE.Ciphersuite.Curve25519_SHA256_ChachaPoly
    static let info = Data("ccgate e2e v1".utf8)
    /// The request header that marks a gateway-blind request.
    public static let header = "ccgate-e2e"
    public static let version = "v1"
    /// The SSE event names of a gateway-blind response.
    public static let frameEvent = "ccgate-e2e"
    public static let usageEvent = "ccgate-usage"

    /// The body a client sends the gateway: routing in the clear, the request sealed.
    public struct Request: Codable, Sendable, Equatable {
        public var model: String
        public var stream: Bool
        public var worker: String
        /// SHA-256 (hex) of the worker key the request is sealed to.
        public var keySHA256: String
        public var encapsulatedKey: Data
        public var ciphertext: Data

        enum CodingKeys: String, CodingKey {
            case model, stream, worker
            case keySHA256 = "key_sha256"
            case encapsulatedKey = "enc"
            case ciphertext
        }

        public init(
            model: String, stream: Bool, worker: String, keySHA256: String, encapsulatedKey: Data, ciphertext: Data
        ) {
            self.model = model
            self.stream = stream
            self.worker = worker
            self.keySHA256 = keySHA256
            self.encapsulatedKey = encapsulatedKey
            self.ciphertext = ciphertext
        }

        /// What the seal authenticates beside the body: the path and every routing field.
        func associatedData(path: String) -> Data {
            Data("ccgate-e2e/v1\n\(path)\n\(model)\n\(stream)\n\(worker)\n\(keySHA256)\n".utf8)
        }
    }

    public enum Failure: Error, Equatable, CustomStringConvertible {
        case badKey
        case openFailed
        case outOfOrder
        case truncated

        public var description: String {
            switch self {
            case .badKey: "not an X25519 public key"
            case .openFailed: "a sealed message did not open (altered, or sealed to another key)"
            case .outOfOrder: "a frame arrived after the final one"
            case .truncated: "the answer ended before its final frame"
            }
        }
    }

    /// The client's side: seals a request to `workerKey` and returns it with the opener of the
    /// answer.
    public static func seal(
        _ body: Data, path: String, model: String, stream: Bool, worker: String, workerKey: Data
    ) throws(Failure) -> (Request, ResponseOpener) {
        guard let key = try? Curve25519.KeyAgreement.PublicKey(rawRepresentation: workerKey),
            var sender = try? HPKE.Sender(recipientKey: key, ciphersuite: ciphersuite, info: info)
        else { throw .badKey }
        var request = Request(
            model: model, stream: stream, worker: worker, keySHA256: Data(SHA256.hash(data: workerKey)).hexString,
            encapsulatedKey: sender.encapsulatedKey, ciphertext: Data())
        do {
            request.ciphertext = try sender.seal(body, authenticating: request.associatedData(path: path))
            let exported = try sender.exportSecret(context: Data("response".utf8), outputByteCount: 32)
            return (request, ResponseOpener(exported: exported))
        } catch {
            throw .openFailed
        }
    }

    /// The worker's side: opens a request sealed to `privateKey` for `path`; returns the body and
    /// the sealer of the answer.
    public static func open(_ request: Request, path: String, privateKey: Curve25519.KeyAgreement.PrivateKey)
        throws(Failure) -> (Data, ResponseSealer)
    {
        guard request.keySHA256 == Data(SHA256.hash(data: privateKey.publicKey.rawRepresentation)).hexString else {
            throw .badKey
        }
        do {
            var recipient = try HPKE.Recipient(
                privateKey: privateKey, ciphersuite: ciphersuite, info: info,
                encapsulatedKey: request.encapsulatedKey)
            let body = try recipient.open(request.ciphertext, authenticating: request.associatedData(path: path))
            let exported = try recipient.exportSecret(context: Data("response".utf8), outputByteCount: 32)
            return (body, ResponseSealer(exported: exported))
        } catch {
            throw .openFailed
        }
    }

    static func nonce(_ seq: UInt64) -> ChaChaPoly.Nonce {
        try! ChaChaPoly.Nonce(data: Data(count: 4) + withUnsafeBytes(of: seq.bigEndian) { Data($0) })
    }

    /// The frame kinds: a data frame, the final frame, and the head (the first frame).
    enum Kind: UInt8 {
        case data = 0
        case final = 1
        case head = 2
    }

    static func frameData(_ seq: UInt64, _ kind: Kind) -> Data {
        Data("ccgate-e2e-response/v1".utf8) + withUnsafeBytes(of: seq.bigEndian) { Data($0) } + Data([kind.rawValue])
    }

    /// The answer's key: the HPKE-exported secret and the worker's fresh salt for this answer.
    ///
    /// Threat: a gateway replaying a sealed request so that the worker answers twice under one
    /// key and the same nonces (two plaintexts under one keystream, a reusable Poly1305 key). The
    /// salt the worker draws for every answer makes each answer's key its own.
    static func responseKey(_ exported: SymmetricKey, salt: Data) -> SymmetricKey {
        HKDF<SHA256>.deriveKey(
            inputKeyMaterial: exported, salt: salt, info: Data("ccgate e2e response v1".utf8), outputByteCount: 32)
    }

    /// The status and content type of an answer, sealed in its head frame: the client takes them
    /// from here, not from the gateway's clear copy.
    public struct Head: Codable, Sendable, Equatable {
        public let status: Int
        public let contentType: String
        public init(status: Int, contentType: String) {
            self.status = status
            self.contentType = contentType
        }
    }

    /// Seals the answer: first its head (with the fresh salt in the clear), then its chunks in
    /// order; the last one is marked final.
    public final class ResponseSealer: @unchecked Sendable {
        private let exported: SymmetricKey
        private var key: SymmetricKey?
        private var seq: UInt64 = 0
        private let lock = NSLock()
        init(exported: SymmetricKey) { self.exported = exported }

        /// The head frame: `2 ‖ salt ‖ sealed {status, contentType}`. Once per answer, first.
        public func head(status: Int, contentType: String) -> Data {
            lock.withLock {
                precondition(key == nil, "one head per answer")
                let salt = SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) }
                let key = EndToEnd.responseKey(exported, salt: salt)
                self.key = key
                let head = (try? JSONEncoder().encode(Head(status: status, contentType: contentType))) ?? Data()
                let box = try! ChaChaPoly.seal(
                    head, using: key, nonce: EndToEnd.nonce(0), authenticating: EndToEnd.frameData(0, .head))
                seq = 1
                return Data([Kind.head.rawValue]) + salt + box.ciphertext + box.tag
            }
        }

        /// One frame after the head: `final` ends the answer.
        public func seal(_ chunk: Data, final: Bool) -> Data {
            lock.withLock {
                guard let key else { preconditionFailure("a frame before the head") }
                defer { seq += 1 }
                let kind: Kind = final ? .final : .data
                // Sealing bytes in memory under a valid key cannot fail.
                let box = try! ChaChaPoly.seal(
                    chunk, using: key, nonce: EndToEnd.nonce(seq), authenticating: EndToEnd.frameData(seq, kind))
                return Data([kind.rawValue]) + box.ciphertext + box.tag
            }
        }
    }

    /// Opens the answer's frames in order: the head first, then data frames up to the final one;
    /// ``finish()`` checks that the final frame came.
    public final class ResponseOpener: @unchecked Sendable {
        private let exported: SymmetricKey
        private var key: SymmetricKey?
        private var seq: UInt64 = 0
        private var ended = false
        private let lock = NSLock()
        init(exported: SymmetricKey) { self.exported = exported }

        public func openHead(_ frame: Data) throws(Failure) -> Head {
            lock.lock()
            defer { lock.unlock() }
            guard key == nil, frame.count >= 1 + 32 + 16, frame.first == Kind.head.rawValue else {
                throw .openFailed
            }
            let salt = frame.dropFirst().prefix(32)
            let key = EndToEnd.responseKey(exported, salt: Data(salt))
            let body = frame.dropFirst(33)
            guard
                let box = try? ChaChaPoly.SealedBox(
                    nonce: EndToEnd.nonce(0), ciphertext: body.dropLast(16), tag: body.suffix(16)),
                let plain = try? ChaChaPoly.open(box, using: key, authenticating: EndToEnd.frameData(0, .head)),
                let head = try? JSONDecoder().decode(Head.self, from: plain)
            else { throw .openFailed }
            self.key = key
            seq = 1
            return head
        }

        public func open(_ frame: Data) throws(Failure) -> Data {
            lock.lock()
            defer { lock.unlock() }
            guard !ended else { throw .outOfOrder }
            guard let key, frame.count >= 17, let kind = frame.first.flatMap(Kind.init(rawValue:)), kind != .head
            else { throw .openFailed }
            let body = frame.dropFirst()
            do {
                let box = try ChaChaPoly.SealedBox(
                    nonce: EndToEnd.nonce(seq), ciphertext: body.dropLast(16), tag: body.suffix(16))
                let plain = try ChaChaPoly.open(box, using: key, authenticating: EndToEnd.frameData(seq, kind))
                seq += 1
                ended = kind == .final
                return plain
            } catch {
                throw .openFailed
            }
        }

        /// Throws unless the final frame was opened.
        public func finish() throws(Failure) {
            lock.lock()
            defer { lock.unlock() }
            guard ended else { throw .truncated }
        }
    }
}

extension Data {
    fileprivate var hexString: String { map { String(format: "%02x", $0) }.joined() }
}
