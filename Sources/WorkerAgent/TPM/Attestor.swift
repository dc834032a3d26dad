import AttestationCore
import EventLog
import Foundation
import WorkerProtocol

/// The worker's attestation: one TPM, one attestation key, and the measurement log of the engine
/// binary and model measured at start. Serializes TPM access (one ESYS context, one caller).
///
/// TPM commands block their thread on device I/O (tens of milliseconds for a quote or a
/// credential activation): once made, the actor runs them on a thread of its own (``TPMExecutor``), never on one of the
/// few threads of Swift's cooperative pool that the worker's connection to the gateway and its
/// engine traffic run on.
public actor Attestor {
    private nonisolated let executor = TPMExecutor()
    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }
    let device: TPMDevice
    let key: AttestationKey
    public private(set) var log: IMALog
    let measurePCR: Int
    public let pcrs: [Int]
    /// The TPM's endorsement key and its certificate, presented with every quote.
    public nonisolated let endorsement: Endorsement

    /// What the evidence says about the TPM's identity.
    public struct Endorsement: Sendable {
        /// TPM2B_PUBLIC of the EK.
        public let ekPublic: Data
        /// The RSA EK certificate (DER) from its NV index; nil when the TPM has none.
        public let certificate: Data?
        /// Intermediate CA certificates (concatenated DER) between the EK certificate and the
        /// manufacturer root, when the manufacturer publishes them separately.
        public let chain: Data?

        public init(ekPublic: Data, certificate: Data?, chain: Data?) {
            self.ekPublic = ekPublic
            self.certificate = certificate
            self.chain = chain
        }
    }

    /// Opens the TPM, creates the AK, reads the EK and its certificate, and measures the sealed
    /// engine `executable` (when the worker starts it) and `files` into `measurePCR`. `ekChain`:
    /// intermediate certificates (concatenated DER) to present.
    public init(
        tcti: String, akAlgorithm: AttestationKeyAlgorithm = .eccP256, files: [URL], measurePCR: Int = 23,
        quotedPCRs: [Int] = [0, 1, 2, 3, 4, 5, 6, 7], ekChain: Data? = nil, executable: SealedExecutable? = nil,
        premeasured: [FileMeasurement] = []
    ) throws {
        let device = try TPMDevice(tcti: tcti)
        let key = try device.createAttestationKey(akAlgorithm)
        // A TPM whose certificate index cannot be read is one without a certificate (enrolled
        // EKs need none); the policy decides.
        let certificate = (try? device.readNV(index: TPMDevice.rsaEKCertificateIndex))?.flatMap(Self.derPrefix)
        endorsement = Endorsement(ekPublic: try device.endorsementKeyPublic(), certificate: certificate, chain: ekChain)
        let measurer = FileMeasurer(pcr: measurePCR)
        var entries = [IMALog.Entry]()
        if let executable {
            entries.append(try measurer.measure(digest: executable.digest, path: executable.logPath, into: device))
        }
        for m in premeasured { entries.append(try measurer.measure(digest: m.sha256, path: m.path, into: device)) }
        log = IMALog(entries: entries + (try files.map { try measurer.measure($0, into: device) }))
        self.device = device
        self.key = key
        self.measurePCR = measurePCR
        pcrs = Array(Set(quotedPCRs + [measurePCR])).sorted()
    }

    /// The DER element at the start of `bytes` (NV indices may be larger than the certificate
    /// they hold); nil when the bytes do not start with a well-formed DER length.
    public static func derPrefix(_ bytes: Data) -> Data? {
        let b = [UInt8](bytes.prefix(6))
        guard b.count >= 2, b[0] == 0x30 else { return nil }
        var length = Int(b[1])
        var header = 2
        if b[1] & 0x80 != 0 {
            let count = Int(b[1] & 0x7f)
            guard (1...4).contains(count), b.count >= 2 + count else { return nil }
            length = b[2..<(2 + count)].reduce(0) { $0 << 8 | Int($1) }
            header += count
        }
        guard header + length <= bytes.count else { return nil }
        return bytes.prefix(header + length)
    }

    /// Measures another file (a model loaded later, an engine update) into the log and the PCR;
    /// the next quote reports it, and the gateway's policy decides on it at re-attestation.
    public func measure(_ url: URL) throws {
        let entry = try FileMeasurer(pcr: measurePCR).measure(url, into: device)
        log = IMALog(entries: log.entries + [entry])
    }

    /// A fresh quote bound to `binding` (SHA-256 of the gateway's nonce and this worker's keys).
    public func evidence(binding: Data) throws -> Data {
        try QuoteEnvelopeBuilder(device: device, key: key).envelope(
            qualifyingData: binding, indices: pcrs, imaLog: log, endorsement: endorsement)
    }

    /// Credential activation: the secret of a credential made for this worker's AK and EK.
    public func activateCredential(_ challenge: WireMessage.Activate) throws -> Data {
        try device.activateCredential(
            key: key, credentialBlob: challenge.credentialBlob, encryptedSecret: challenge.encryptedSecret)
    }
}

/// A serial executor on one dispatch queue of its own: dispatch runs such a queue on a thread
/// outside the cooperative pool, so blocking TPM I/O holds no thread that other work waits for.
final class TPMExecutor: SerialExecutor {
    private let queue = DispatchQueue(label: "ccworker.tpm")

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedSerialExecutor()
        queue.async { job.runSynchronously(on: executor) }
    }
}
