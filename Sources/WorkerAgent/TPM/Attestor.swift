import AttestationCore
import EventLog
import Foundation

/// The worker's attestation: one TPM, one attestation key, and the measurement log of the engine
/// binary and model measured at start. Serializes TPM access (one ESYS context, one caller).
public actor Attestor {
    let device: TPMDevice
    let key: AttestationKey
    public let log: IMALog
    public let pcrs: [Int]

    /// Opens the TPM, creates the AK, and measures `files` into `measurePCR`.
    public init(tcti: String, akAlgorithm: AttestationKeyAlgorithm = .eccP256, files: [URL], measurePCR: Int = 23,
                quotedPCRs: [Int] = [0, 1, 2, 3, 4, 5, 6, 7]) throws {
        let device = try TPMDevice(tcti: tcti)
        let key = try device.createAttestationKey(akAlgorithm)
        let measurer = FileMeasurer(pcr: measurePCR)
        log = IMALog(entries: try files.map { try measurer.measure($0, into: device) })
        self.device = device
        self.key = key
        pcrs = Array(Set(quotedPCRs + [measurePCR])).sorted()
    }

    /// A fresh quote bound to `binding` (SHA-256 of the gateway's nonce and this worker's keys).
    public func evidence(binding: Data) throws -> Data {
        try QuoteEnvelopeBuilder(device: device, key: key).envelope(qualifyingData: binding, indices: pcrs, imaLog: log)
    }
}
