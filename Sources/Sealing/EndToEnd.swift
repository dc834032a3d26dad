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
/// Response frames carry a sequence number and a final flag: dropped, reordered, replayed or
/// truncated answers fail to open.
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
            let responseKey = try sender.exportSecret(context: Data("response".utf8), outputByteCount: 32)
            return (request, ResponseOpener(key: responseKey))
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
            let responseKey = try recipient.exportSecret(context: Data("response".utf8), outputByteCount: 32)
            return (body, ResponseSealer(key: responseKey))
        } catch {
            throw .openFailed
        }
    }

    static func nonce(_ seq: UInt64) -> ChaChaPoly.Nonce {
        try! ChaChaPoly.Nonce(data: Data(count: 4) + withUnsafeBytes(of: seq.bigEndian) { Data($0) })
    }

    static func frameData(_ seq: UInt64, final: Bool) -> Data {
        Data("ccgate-e2e-response/v1".utf8) + withUnsafeBytes(of: seq.bigEndian) { Data($0) } + Data([final ? 1 : 0])
    }

    /// Seals the answer's chunks in order; the last one is marked final.
    public final class ResponseSealer: @unchecked Sendable {
        private let key: SymmetricKey
        private var seq: UInt64 = 0
        private let lock = NSLock()
        init(key: SymmetricKey) { self.key = key }

        /// One frame: `final` ends the answer.
        public func seal(_ chunk: Data, final: Bool) -> Data {
            lock.withLock {
                defer { seq += 1 }
                // Sealing bytes in memory under a valid key cannot fail.
                let box = try! ChaChaPoly.seal(
                    chunk, using: key, nonce: EndToEnd.nonce(seq), authenticating: EndToEnd.frameData(seq, final: final)
                )
                return Data([final ? 1 : 0]) + box.ciphertext + box.tag
            }
        }
    }

    /// Opens the answer's frames in order; ``finish()`` checks that the final frame came.
    public final class ResponseOpener: @unchecked Sendable {
        private let key: SymmetricKey
        private var seq: UInt64 = 0
        private var ended = false
        private let lock = NSLock()
        init(key: SymmetricKey) { self.key = key }

        public func open(_ frame: Data) throws(Failure) -> Data {
            lock.lock()
            defer { lock.unlock() }
            guard !ended else { throw .outOfOrder }
            guard frame.count >= 17, frame.first == 0 || frame.first == 1 else { throw .openFailed }
            let final = frame.first == 1
            let body = frame.dropFirst()
            do {
                let box = try ChaChaPoly.SealedBox(
                    nonce: EndToEnd.nonce(seq), ciphertext: body.dropLast(16), tag: body.suffix(16))
                let plain = try ChaChaPoly.open(box, using: key, authenticating: EndToEnd.frameData(seq, final: final))
                seq += 1
                ended = final
                return plain
            } catch {
                throw .openFailed
            }
        }

        /// Throws unless the final frame was opened.
        public func finish() throws(Failure) {
            guard lock.withLock({ ended }) else { throw .truncated }
        }
    }
}

extension Data {
    fileprivate var hexString: String { map { String(format: "%02x", $0) }.joined() }
}
