import AttestationCore
import Foundation

/// How a verifier knows that an attestation key lives in the TPM of a certified EK.
///
/// Credential activation is a live exchange with the TPM, so it cannot be re-run from a file. A
/// gateway that ran it adds an `activation` record to the evidence it stores, signed with its
/// Ed25519 key; a verifier given that gateway's public key accepts the record. A record signed
/// by a key the verifier was not given proves nothing.
public enum AKActivation: Sendable, Equatable {
    /// Activation succeeded for the AK with this Name and the EK with this SPKI digest, in this
    /// session or in an earlier one the gateway remembers (admission and re-attestation).
    case live(akName: Data, ekSHA256: String)
    /// Records signed by any of these keys are accepted (audit replay, `ccgate evidence verify`).
    case records(trustedKeys: [Ed25519PublicKey])
}

/// The record a gateway adds to stored `tpm2-quote` evidence after a successful credential
/// activation: envelope field `activation`, an object of strings.
public struct ActivationRecord: Sendable, Equatable {
    public let akName: Data
    public let ekSHA256: String
    public let gatewayID: String
    public let time: Date
    public let key: Ed25519PublicKey
    public let signature: Data

    /// The bytes signed: a fixed context string and the fields, one per line.
    static func message(akName: Data, ekSHA256: String, gatewayID: String, time: Date) -> Data {
        Data("ccgate-activation/v1\n\(akName.hex)\n\(ekSHA256)\n\(gatewayID)\n\(time.rfc3339)".utf8)
    }

    public static func sign(akName: Data, ekSHA256: String, gatewayID: String, time: Date, with key: Ed25519PrivateKey)
        -> ActivationRecord
    {
        let message = message(akName: akName, ekSHA256: ekSHA256, gatewayID: gatewayID, time: time)
        return ActivationRecord(
            akName: akName, ekSHA256: ekSHA256, gatewayID: gatewayID, time: Date.rfc3339(time.rfc3339) ?? time,
            key: key.publicKey, signature: key.signature(for: message))
    }

    public var fields: [String: String] {
        [
            "ak_name": akName.hex, "ek_sha256": ekSHA256, "gateway": gatewayID, "time": time.rfc3339,
            "key": key.base64, "signature": signature.base64EncodedString(),
        ]
    }

    /// Reads a record from the envelope's `activation` object; nil for anything malformed.
    public init?(fields: [String: String]) {
        guard let name = fields["ak_name"].flatMap({ Data(hex: $0) }), let ek = fields["ek_sha256"],
            let gateway = fields["gateway"], let time = fields["time"].flatMap(Date.rfc3339),
            let keyText = fields["key"], let key = try? Ed25519PublicKey(text: keyText),
            let signature = fields["signature"].flatMap({ Data(base64Encoded: $0) })
        else { return nil }
        self.init(akName: name, ekSHA256: ek, gatewayID: gateway, time: time, key: key, signature: signature)
    }

    init(akName: Data, ekSHA256: String, gatewayID: String, time: Date, key: Ed25519PublicKey, signature: Data) {
        self.akName = akName
        self.ekSHA256 = ekSHA256
        self.gatewayID = gatewayID
        self.time = time
        self.key = key
        self.signature = signature
    }

    /// Whether the signature is the record key's over exactly these fields.
    public var isValidlySigned: Bool {
        key.isValidSignature(
            signature, for: Self.message(akName: akName, ekSHA256: ekSHA256, gatewayID: gatewayID, time: time))
    }

    /// `envelope` (a JSON object) with this record as its `activation` member, in place of any
    /// the envelope had; members sorted by name, every other value's text kept byte for byte.
    /// Nil for text that is not a JSON object or names a member twice (which of two copies a
    /// later reader takes is not for the stored evidence to leave open).
    public func adding(to envelope: Data) -> Data? {
        guard let members = try? JSONMembers(envelope), members.duplicates.isEmpty else { return nil }
        let record = CanonicalJSON.encode(.object(fields.mapValues(JSONValue.string)))
        var out: [UInt8] = [UInt8(ascii: "{")]
        out.reserveCapacity(envelope.count + record.count + 16)
        let names = Set(members.members.keys).union(["activation"])
        for (i, name) in names.sorted(by: { $0.utf8.lexicographicallyPrecedes($1.utf8) }).enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            CanonicalJSON.writeString(name, into: &out)
            out.append(UInt8(ascii: ":"))
            if name == "activation" { out += record } else if let text = members.text(of: name) { out += text }
        }
        out.append(UInt8(ascii: "}"))
        return Data(out)
    }
}
