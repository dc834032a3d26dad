import AttestationCore
import EventLog
import Foundation
import Synchronization
import WorkerProtocol

/// The worker's attestation on an Intel TDX guest: the engine binary and model are measured
/// (SHA-256) as application events into RTMR3 before serving, and every challenge is answered
/// with a fresh TDX quote (through configfs-tsm) whose REPORTDATA is the binding followed by
/// zeros, with the CCEL event log (firmware events plus ours) for the verifier to replay.
public final class TDXAttestor: EvidenceSource, Sendable {
    let tsm: ConfigfsTSM
    let rtmr: RTMRExtender
    let firmwareLog: Data
    private let events = Mutex(Data())
    public var applicationEvents: Data { events.withLock { $0 } }
    /// Offline collateral to carry in every envelope (nil: the gateway supplies it).
    let collateral: [String: String]?

    public static let defaultCCEL = URL(fileURLWithPath: "/sys/firmware/acpi/tables/data/CCEL")

    /// A TD has no TPM credential to activate: its quote is anchored in Intel's PCK chain.
    public func activateCredential(_ challenge: WireMessage.Activate) async throws -> Data {
        throw EvidenceSourceError("a TDX worker has no TPM to activate a credential with")
    }

    /// Reads the firmware's CCEL (a header-only log when there is none), then measures `files`
    /// into RTMR3.
    public init(
        tsm: ConfigfsTSM = ConfigfsTSM(), rtmr: RTMRExtender = RTMRExtender(), ccel: URL = defaultCCEL,
        files: [URL], executable: SealedExecutable? = nil, premeasured: [FileMeasurement] = [],
        collateral: [String: String]? = nil
    ) throws {
        self.tsm = tsm
        self.rtmr = rtmr
        self.collateral = collateral
        if let log = FileManager.default.contents(atPath: ccel.path), !log.isEmpty {
            // The ACPI log area is padded past the last event.
            firmwareLog = CCEL.trimmed(log)
        } else {
            firmwareLog = CCELEncoder.header()
        }
        if let executable { try record(path: executable.logPath, sha256: executable.digest) }
        for m in premeasured { try record(path: m.path, sha256: m.sha256) }
        for file in files { try measure(file) }
    }

    /// Measures a file into RTMR3 (and the application log); the next quote reports it.
    public func measure(_ url: URL) throws {
        try record(path: url.path, sha256: try FileMeasurer.digest(of: url))
    }

    func record(path: String, sha256 digest: Data) throws {
        try events.withLock { log in
            try rtmr.extendRTMR3(with: CCEL.applicationEvent(path: path, sha256: digest).digest)
            log += CCELEncoder.applicationEvent(path: path, sha256: digest)
        }
    }

    public func evidence(binding: Data) async throws -> Data { try envelope(binding: binding) }

    /// A `tdx-quote` envelope whose REPORTDATA is `binding` followed by zeros.
    public func envelope(binding: Data) throws -> Data {
        guard binding.count <= 64 else { throw TDXError("binding of \(binding.count) bytes does not fit REPORTDATA") }
        let reportData = binding + Data(count: 64 - binding.count)
        // The quote and the log it is sent with are taken under one lock, so a measurement made
        // meanwhile cannot leave a log that does not replay to the quoted RTMR3.
        let (quote, log) = try events.withLock { log in (try tsm.quote(reportData: reportData), firmwareLog + log) }
        // A sanity check, not verification (the gateway verifies): the quote the driver returned
        // carries the report data written, not another writer's (configfs-tsm reports are per
        // process, but a misbehaving driver or a concurrent writer must not go unnoticed).
        guard quote.range(of: reportData) != nil else {
            throw TDXError("configfs-tsm returned a quote that is not over the report data written")
        }
        var object: [String: JSONValue] = [
            "format": .string("tdx-quote"), "version": .int(1), "quote": .string(quote.base64EncodedString()),
            "event_log": .string(log.base64EncodedString()),
        ]
        if let collateral { object["collateral"] = .object(collateral.mapValues(JSONValue.string)) }
        return Data(CanonicalJSON.encode(.object(object)))
    }
}
