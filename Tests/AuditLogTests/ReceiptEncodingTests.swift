import AttestationCore
@testable import AuditLog
import Foundation
import Testing

/// A signed receipt's bytes are spliced from the receipt's canonical JSON (encoded once, for the
/// signature and the wire); they must be exactly the canonical form of the whole, or clients that
/// insist on it (``SignedReceipt/init(text:)``) refuse the gateway's own receipts.
@Suite struct ReceiptEncodingTests {
    static func receipt(usage: JSONValue, model: String, key: Ed25519PrivateKey) -> Receipt {
        Receipt(
            gateway: key.publicKey.fingerprint, path: "/v1/chat/completions",
            requestSHA256: String(repeating: "a", count: 64), responseSHA256: String(repeating: "b", count: 64),
            status: 200, model: model, usage: usage, worker: "gpu-1", session: "s-1",
            evidenceSHA256: String(repeating: "c", count: 64), policyVersion: 3,
            policySHA256: String(repeating: "d", count: 64), admissionSeq: 42, time: 1_790_000_000)
    }

    @Test(arguments: [
        (JSONValue.null, "llama"),
        (
            .object(["prompt_tokens": .int(7), "completion_tokens": .int(3), "total_tokens": .int(10)]),
            "q\"uoted\n\u{1}é"
        ),
    ])
    func theSplicedFormIsTheCanonicalForm(usage: JSONValue, model: String) throws {
        let key = Ed25519PrivateKey.generate()
        let signed = Self.receipt(usage: usage, model: model, key: key).signed(by: key)
        let whole = JSONValue.object([
            "receipt": signed.receipt.json, "signature": .string(signed.signature.base64EncodedString()),
        ])
        #expect(signed.json == CanonicalJSON.encode(whole))
        let parsed = try SignedReceipt(text: signed.headerValue)
        #expect(parsed == signed)
        try parsed.verify(key: key.publicKey)
        // One changed field is another receipt: its signature no longer verifies.
        var other = parsed.receipt
        other.status = 500
        let forged = SignedReceipt(receipt: other, signature: parsed.signature)
        #expect(throws: ReceiptError.self) { try forged.verify(key: key.publicKey) }
    }

    /// Threat: a genuine receipt with no token counts (`"usage":null`) whose `usage` field is
    /// swapped for a field of the attacker's: the 15 fields are the receipt's own, or it is not one.
    @Test func aFieldInPlaceOfUsageIsRefused() throws {
        let key = Ed25519PrivateKey.generate()
        let signed = Self.receipt(usage: .null, model: "m", key: key).signed(by: key)
        var fields = try #require(signed.receipt.json.object)
        fields["usage"] = nil
        fields["verified_by"] = .string("an auditor")
        let swapped = CanonicalJSON.encode(
            .object(["receipt": .object(fields), "signature": .string(signed.signature.base64EncodedString())]))
        #expect(throws: ReceiptError.self) { try SignedReceipt(text: String(decoding: swapped, as: UTF8.self)) }
    }
}
