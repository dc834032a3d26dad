import AttestationCore
import EventLog
import Foundation

/// Builds `tpm2-quote` envelopes (the evidence a worker presents) from a live TPM.
public struct QuoteEnvelopeBuilder {
    public let device: TPMDevice
    public let key: AttestationKey

    public init(device: TPMDevice, key: AttestationKey) {
        self.device = device
        self.key = key
    }

    /// Quotes `indices` of `bank` bound to `qualifyingData`, reads the same PCRs, and returns the
    /// envelope JSON. The IMA log, when given, is carried as `ima_log`.
    public func envelope(
        qualifyingData: Data, bank: HashAlgorithm = .sha256, indices: [Int],
        imaLog: IMALog? = nil, endorsement: Attestor.Endorsement? = nil
    ) throws -> Data {
        let quote = try device.quote(key: key, qualifyingData: qualifyingData, bank: bank, indices: indices)
        let values = try device.readPCRs(bank: bank, indices: indices)
        var object: [String: JSONValue] = [
            "format": .string("tpm2-quote"),
            "version": .int(1),
            "ak_tpm2b_public": .string(key.tpm2bPublic.base64EncodedString()),
            "quote": .string(quote.attest.base64EncodedString()),
            "signature": .string(quote.signature.base64EncodedString()),
            "pcrs": .object([
                bank.rawValue: .object(values.reduce(into: [:]) { $0[String($1.key)] = .string($1.value.hex) })
            ]),
        ]
        if let imaLog { object["ima_log"] = .string(Data(imaLog.text.utf8).base64EncodedString()) }
        if let endorsement {
            object["ek_public"] = .string(endorsement.ekPublic.base64EncodedString())
            if let certificate = endorsement.certificate {
                object["ek_certificate"] = .string(certificate.base64EncodedString())
            }
            if let chain = endorsement.chain { object["ek_chain"] = .string(chain.base64EncodedString()) }
        }
        return Data(CanonicalJSON.encode(.object(object)))
    }
}
