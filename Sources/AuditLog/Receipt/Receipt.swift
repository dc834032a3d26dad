import AttestationCore
import Foundation

/// What the gateway signs for each response it relays: which request (its path and digest),
/// which response (its digest), the token counts the engine reported, the worker that served it
/// with the evidence it last attested with, the policy version that worker was last judged under,
/// and the audit entry of its admission.
///
/// Threat: a gateway operator (or anyone between gateway and client) claiming afterwards that
/// another worker, another policy or another answer was involved, and a client that cannot tell
/// what served it. A receipt binds the bytes the client received to those facts under the
/// gateway's key; one changed byte in the response, the request or the receipt fails
/// ``SignedReceipt/verify(key:response:request:)``. It does not prove the worker computed the
/// answer honestly: that is what the worker's evidence and the policy are for.
public struct Receipt: Sendable, Equatable {
    public static let schema = "ccgate.receipt/v1"

    /// The gateway key's fingerprint.
    public var gateway: String
    public var path: String
    public var requestSHA256: String
    /// SHA-256 of the response body exactly as sent, before the receipt itself.
    public var responseSHA256: String
    public var status: Int
    public var model: String
    /// The engine's token counts when it reported them (`prompt_tokens`, `completion_tokens`,
    /// `total_tokens`, integers), else null.
    public var usage: JSONValue
    public var worker: String
    public var session: String
    public var evidenceSHA256: String
    public var policyVersion: Int
    public var policySHA256: String
    /// The audit sequence number of the worker's admission.
    public var admissionSeq: Int
    /// Unix seconds.
    public var time: Int

    public init(
        gateway: String, path: String, requestSHA256: String, responseSHA256: String, status: Int, model: String,
        usage: JSONValue, worker: String, session: String, evidenceSHA256: String, policyVersion: Int,
        policySHA256: String, admissionSeq: Int, time: Int
    ) {
        self.gateway = gateway
        self.path = path
        self.requestSHA256 = requestSHA256
        self.responseSHA256 = responseSHA256
        self.status = status
        self.model = model
        self.usage = usage
        self.worker = worker
        self.session = session
        self.evidenceSHA256 = evidenceSHA256
        self.policyVersion = policyVersion
        self.policySHA256 = policySHA256
        self.admissionSeq = admissionSeq
        self.time = time
    }

    public var json: JSONValue {
        .object([
            "schema": .string(Self.schema), "gateway": .string(gateway), "path": .string(path),
            "request_sha256": .string(requestSHA256),
            "response_sha256": .string(responseSHA256), "status": .int(status), "model": .string(model),
            "usage": usage, "worker": .string(worker), "session": .string(session),
            "evidence_sha256": .string(evidenceSHA256), "policy_version": .int(policyVersion),
            "policy_sha256": .string(policySHA256), "admission_seq": .int(admissionSeq), "time": .int(time),
        ])
    }

    init(json: JSONValue) throws(ReceiptError) {
        guard let o = json.object, o["schema"]?.string == Self.schema else {
            throw .malformed("not a \(Self.schema) receipt")
        }
        func string(_ key: String) throws(ReceiptError) -> String {
            guard let v = o[key]?.string else { throw .malformed("'\(key)' is missing or not a string") }
            return v
        }
        func int(_ key: String) throws(ReceiptError) -> Int {
            guard let v = o[key]?.int else { throw .malformed("'\(key)' is missing or not an integer") }
            return v
        }
        // Exactly the 15 fields, usage included: any other field would ride along unsigned.
        guard o.count == 15, o["usage"] != nil else {
            throw .malformed(
                "a receipt has exactly its 15 fields (\(o.count) here, usage \(o["usage"] == nil ? "missing" : "present"))"
            )
        }
        self.init(
            gateway: try string("gateway"), path: try string("path"), requestSHA256: try string("request_sha256"),
            responseSHA256: try string("response_sha256"), status: try int("status"), model: try string("model"),
            usage: o["usage"]!, worker: try string("worker"), session: try string("session"),
            evidenceSHA256: try string("evidence_sha256"), policyVersion: try int("policy_version"),
            policySHA256: try string("policy_sha256"), admissionSeq: try int("admission_seq"), time: try int("time"))
    }

    /// The bytes the signature covers: a domain line, then the receipt's canonical JSON.
    public var signedBytes: Data { Self.signedBytes(canonical: CanonicalJSON.encode(json)) }

    static func signedBytes(canonical: [UInt8]) -> Data { Data("\(Self.schema)\n".utf8) + Data(canonical) }

    public func signed(by key: Ed25519PrivateKey) -> SignedReceipt {
        let canonical = CanonicalJSON.encode(json)
        return SignedReceipt(
            receipt: self, signature: key.signature(for: Self.signedBytes(canonical: canonical)), canonical: canonical)
    }
}

/// A receipt and the gateway's Ed25519 signature over it. It travels as canonical JSON
/// (`{"receipt":{…},"signature":"base64"}`): base64-encoded in the `ccgate-receipt` header of a
/// plain response, or as the data of a final `ccgate-receipt` event after a stream's `[DONE]`.
public struct SignedReceipt: Sendable, Equatable {
    public let receipt: Receipt
    public let signature: Data

    public static let headerName = "ccgate-receipt"
    public static let eventName = "ccgate-receipt"

    /// Its canonical JSON: `{"receipt":…,"signature":"…"}` ("receipt" sorts first), from the
    /// receipt's canonical bytes, encoded once.
    public let json: [UInt8]

    public var headerValue: String { Data(json).base64EncodedString() }

    /// The SSE event a stream ends with.
    public var event: Data { Data("event: \(Self.eventName)\ndata: ".utf8) + Data(json) + Data("\n\n".utf8) }

    /// From its JSON, or the base64 of it (the header value).
    public init(text: String) throws(ReceiptError) {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        let bytes = trimmed.hasPrefix("{") ? Data(trimmed.utf8) : Data(base64Encoded: trimmed)
        guard let bytes, bytes.count <= 64 * 1024,
            let value = try? JSONDecoder().decode(JSONValue.self, from: bytes), let o = value.object,
            o.count == 2, let receipt = o["receipt"], let sig = o["signature"]?.string,
            let signature = Data(base64Encoded: sig), signature.count == 64
        else {
            throw .malformed("not a signed ccgate receipt (JSON or its base64)")
        }
        // Threat: a receipt that parses differently elsewhere (duplicate keys, other escapes).
        // Only the one canonical byte form is a receipt.
        guard Array(bytes) == CanonicalJSON.encode(value) else {
            throw .malformed("the receipt is not in canonical form")
        }
        self.receipt = try Receipt(json: receipt)
        self.signature = signature
        json = Array(bytes)
    }

    init(receipt: Receipt, signature: Data) {
        self.init(receipt: receipt, signature: signature, canonical: CanonicalJSON.encode(receipt.json))
    }

    /// `canonical` must be `CanonicalJSON.encode(receipt.json)` (``Receipt/signed(by:)``).
    fileprivate init(receipt: Receipt, signature: Data, canonical: [UInt8]) {
        self.receipt = receipt
        self.signature = signature
        var out = Array(#"{"receipt":"#.utf8)
        out.reserveCapacity(canonical.count + 120)
        out += canonical
        out += Array(#","signature":"#.utf8)
        CanonicalJSON.writeString(signature.base64EncodedString(), into: &out)
        out.append(UInt8(ascii: "}"))
        json = out
    }

    /// Checks the signature under `key`, and, when given, that `response` and `request` are the
    /// bytes the receipt names.
    public func verify(key: Ed25519PublicKey, response: Data? = nil, request: Data? = nil) throws(ReceiptError) {
        guard receipt.gateway == key.fingerprint else {
            throw .keyMismatch(
                "the receipt names gateway \(receipt.gateway.prefix(16))…, not key \(key.fingerprint.prefix(16))…")
        }
        guard key.isValidSignature(signature, for: receipt.signedBytes) else {
            throw .signatureInvalid("the signature does not verify under the gateway key")
        }
        if let response, HashAlgorithm.sha256.hash(response).hex != receipt.responseSHA256 {
            throw .responseMismatch("the response is not the one the receipt names")
        }
        if let request, HashAlgorithm.sha256.hash(request).hex != receipt.requestSHA256 {
            throw .requestMismatch("the request is not the one the receipt names")
        }
    }

    /// Splits a saved event stream into the bytes before its receipt event and the receipt.
    /// Nil when the stream carries none.
    public static func split(stream: Data) -> (body: Data, receipt: SignedReceipt)? {
        let marker = Data("event: \(eventName)\ndata: ".utf8)
        guard let range = stream.range(of: marker, options: .backwards) else { return nil }
        let rest = stream[range.upperBound...]
        let line = rest.prefix { $0 != 0x0A }
        guard let text = String(data: Data(line), encoding: .utf8), let receipt = try? SignedReceipt(text: text) else {
            return nil
        }
        return (Data(stream[..<range.lowerBound]), receipt)
    }
}

/// Why a receipt does not verify. The codes are stable (docs/CLIENTS.md).
public enum ReceiptError: Error, Equatable, CustomStringConvertible {
    case malformed(String)
    case keyMismatch(String)
    case signatureInvalid(String)
    case responseMismatch(String)
    case requestMismatch(String)

    public var code: String {
        switch self {
        case .malformed: "receipt.malformed"
        case .keyMismatch: "receipt.key-mismatch"
        case .signatureInvalid: "receipt.signature-invalid"
        case .responseMismatch: "receipt.response-mismatch"
        case .requestMismatch: "receipt.request-mismatch"
        }
    }

    public var description: String {
        switch self {
        case .malformed(let m), .keyMismatch(let m), .signatureInvalid(let m), .responseMismatch(let m),
            .requestMismatch(let m):
            "\(code): \(m)"
        }
    }
}
