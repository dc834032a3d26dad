import AttestationCore
import Foundation

/// A signed checkpoint: the gateway's Ed25519 signature over (entry count, head hash, time),
/// appended to the chain as an entry of its own (`event: checkpoint`), at least every minute
/// while entries arrive and whenever an export is taken.
///
/// Threat: a chain alone proves only that its entries link; whoever holds the database can
/// rewrite it from any point and rehash the rest, or cut its tail. A checkpoint signed by a key
/// only the gateway holds fixes the chain up to that point: a rewrite no longer matches the
/// signed head, and a cut loses the checkpoint that said how long the chain was.
public enum Checkpoint {
    static let domain = "ccgate.audit.checkpoint/v1"

    /// The bytes signed: the domain, count, head and time, one per line.
    public static func message(count: Int, head: String, time: Date) -> Data {
        Data("\(domain)\n\(count)\n\(head)\n\(time.rfc3339)\n".utf8)
    }

    /// The checkpoint event for the chain state `head`, signed at `time`.
    public static func event(head: ChainHead, time: Date, key: Ed25519PrivateKey) -> AuditEvent {
        let signature = key.signature(for: message(count: head.count, head: head.hash, time: time))
        return AuditEvent(
            .checkpoint, actor: "gateway", decision: .signed,
            detail: [
                "count": String(head.count), "head": head.hash, "key": key.publicKey.fingerprint,
                "signature": signature.base64EncodedString(),
            ])
    }

    /// Why `entry` is not a valid checkpoint of `head` under `key`, or nil when it is.
    public static func problem(with entry: AuditEntry, head: ChainHead, key: Ed25519PublicKey) -> String? {
        let d = entry.event.detail
        guard let countText = d["count"], let count = Int(countText), let claimed = d["head"],
            let sigText = d["signature"], let signature = Data(base64Encoded: sigText)
        else { return "the checkpoint lacks count, head or signature" }
        guard count == head.count, claimed == head.hash else {
            return
                "the checkpoint covers \(count) entries with head \(claimed.prefix(16))…, but the chain before it has \(head.count) with head \(head.hash.prefix(16))…"
        }
        guard key.isValidSignature(signature, for: message(count: count, head: claimed, time: entry.time)) else {
            return d["key"] == key.fingerprint
                ? "the checkpoint signature is invalid"
                : "the checkpoint is signed by key \(d["key"]?.prefix(16) ?? "?")…, not by the given gateway key"
        }
        return nil
    }
}
