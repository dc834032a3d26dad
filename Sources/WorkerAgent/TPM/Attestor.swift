import AttestationCore
import EventLog
import Foundation

/// The worker's attestation: one TPM, one attestation key, and the measurement log of the engine
/// binary and model measured at start. Serializes TPM access (one ESYS context, one caller).
public actor Attestor {
    let device: TPMDevice
    let key: AttestationKey
    public private(set) var log: IMALog
    let measurePCR: Int
    public let pcrs: [Int]

    /// Opens the TPM, creates the AK, and measures `files` into `measurePCR`.
    public init(
        tcti: String, akAlgorithm: AttestationKeyAlgorithm = .eccP256, files: [URL], measurePCR: Int = 23,
        quotedPCRs: [Int] = [0, 1, 2, 3, 4, 5, 6, 7]
    ) throws {
        let device = try TPMDevice(tcti: tcti)
        let key = try device.createAttestationKey(akAlgorithm)
        let measurer = FileMeasurer(pcr: measurePCR)
        log = IMALog(entries: try files.map { try measurer.measure($0, into: device) })
        self.device = device
        self.key = key
        self.measurePCR = measurePCR
        pcrs = Array(Set(quotedPCRs + [measurePCR])).sorted()
    }

    /// Measures another file (a model loaded later, an engine update) into the log and the PCR;
    /// the next quote reports it, and the gateway's policy decides on it at re-attestation.
    public func measure(_ url: URL) throws {
        let entry = try FileMeasurer(pcr: measurePCR).measure(url, into: device)
        log = IMALog(entries: log.entries + [entry])
    }

    /// A fresh quote bound to `binding` (SHA-256 of the gateway's nonce and this worker's keys).
    public func evidence(binding: Data) throws -> Data {
        try QuoteEnvelopeBuilder(device: device, key: key).envelope(qualifyingData: binding, indices: pcrs, imaLog: log)
    }
}
