import AttestationCore
import EventLog
import Foundation

/// Replays a TDX confidential-computing event log (CCEL: TCG crypto-agile, SHA-384) to RTMR0–3
/// and reads the application measurements recorded in RTMR3.
///
/// CCEL events name a measurement register by index: 0 is MRTD, 1–4 are RTMR0–3. Each RTMR starts
/// at zero and is extended with SHA-384(RTMR ‖ digest). Application events (`applicationEventType`,
/// data `ccgate.measure sha256:<hex> <path>`) must carry SHA-384 of their own data as digest, so
/// the text the verifier reports is the text that was measured.
///
/// Threat: a log that lies about what was measured. Only a log whose replay gives exactly the
/// quoted RTMR values (all four) is believed.
public enum CCELReplay {
    /// EV_EVENT_TAG: the TCG type for tagged application events.
    public static let applicationEventType: UInt32 = 0x0000_0006
    public static let applicationPrefix = "ccgate.measure "

    public struct Summary: Sendable, Equatable {
        public let events: Int
        public let rtmrs: [[UInt8]]
        public let measuredFiles: [MeasuredFile]
    }

    public static func replay(_ data: Data) -> Result<Summary, Reason> {
        let log: TCGEventLog
        do { log = try TCGEventLog.parse(trimmed(data)) } catch {
            return .failure(Reason(.evidenceMalformed, "tdx.eventlog", "CCEL: \(error)"))
        }
        guard log.layout == .cryptoAgile, log.banks.contains(.sha384) else {
            return .failure(
                Reason(.evidenceMalformed, "tdx.eventlog", "CCEL must be a crypto-agile log with SHA-384 digests"))
        }
        var rtmrs = [Data](repeating: Data(count: 48), count: 4)
        var files = [MeasuredFile]()
        var count = 0
        for event in log.events where event.eventType != TCGEventLog.evNoAction {
            guard (1...4).contains(event.pcr) else { continue }
            guard let digest = event.digests[.sha384] else {
                return .failure(
                    Reason(.evidenceMalformed, "tdx.eventlog", "event \(event.index) has no SHA-384 digest"))
            }
            let rtmr = Int(event.pcr) - 1
            // Application measurements count only in RTMR3, the register the worker owns.
            if rtmr == 3, event.eventType == applicationEventType, let text = String(data: event.data, encoding: .utf8),
                text.hasPrefix(applicationPrefix)
            {
                guard HashAlgorithm.sha384.hash(event.data) == digest else {
                    return .failure(
                        Reason(
                            .eventLogReplayMismatch, "tdx.eventlog",
                            "event \(event.index): digest is not SHA-384 of its data"))
                }
                let parts = text.dropFirst(applicationPrefix.count).split(separator: " ", maxSplits: 1)
                guard parts.count == 2, parts[0].hasPrefix("sha256:"), let hex = Data(hex: parts[0].dropFirst(7)),
                    hex.count == 32
                else {
                    return .failure(
                        Reason(.evidenceMalformed, "tdx.eventlog", "event \(event.index): bad application measurement"))
                }
                files.append(MeasuredFile(path: String(parts[1]), algorithm: "sha256", digestHex: hex.hex, pcr: rtmr))
            }
            rtmrs[rtmr] = HashAlgorithm.sha384.extend(rtmrs[rtmr], with: digest)
            count += 1
        }
        return .success(Summary(events: count, rtmrs: rtmrs.map { [UInt8]($0) }, measuredFiles: files))
    }

    /// The log without the padding of the ACPI log area after its last event (0xFF or 0x00 bytes
    /// where the next event's register index would be). Logs that do not parse are returned as
    /// they are, for the parser to report.
    public static func trimmed(_ log: Data) -> Data {
        var r = ByteReader(log)
        guard let _ = r.u32le(), let _ = r.u32le(), r.skip(20), let size = r.u32le(), let spec = r.read(Int(size)),
            spec.count >= 32
        else { return log }
        var s = ByteReader(spec)
        guard s.skip(24), let count = s.u32le(), count <= 16 else { return log }
        var sizes = [UInt16: Int]()
        for _ in 0..<count {
            guard let id = s.u16le(), let n = s.u16le() else { return log }
            sizes[id] = Int(n)
        }
        // Where the zero padding starts (found once: the walk below must stay linear).
        let lastNonZero = log.lastIndex { $0 != 0 }.map { $0 - log.startIndex } ?? -1
        while !r.isAtEnd {
            let start = r.offset
            guard let index = r.u32le() else { return log }
            if index == 0xFFFF_FFFF || index == 0 && start > lastNonZero {
                return log.prefix(start)
            }
            guard r.u32le() != nil, let digests = r.u32le(), digests <= 16 else { return log }
            for _ in 0..<digests {
                guard let id = r.u16le(), let n = sizes[id], r.skip(n) else { return log }
            }
            guard let eventSize = r.u32le(), r.skip(Int(eventSize)) else { return log }
        }
        return log
    }

    static func verify(_ data: Data, against td: TDReport) -> Result<Summary, Reason> {
        replay(data).flatMap { summary in
            for i in 0..<4 where summary.rtmrs[i] != td.rtmr(i) {
                return .failure(
                    Reason(
                        .eventLogReplayMismatch, "tdx.eventlog",
                        "replaying the event log does not give the quoted RTMR\(i)"))
            }
            return .success(summary)
        }
    }

    /// The event data and digest an application measurement is extended with.
    public static func applicationEvent(path: String, sha256 digest: Data) -> (data: Data, digest: Data) {
        let data = Data("\(applicationPrefix)sha256:\(digest.hex) \(path)".utf8)
        return (data, HashAlgorithm.sha384.hash(data))
    }
}

/// Writes CCEL-format events (TCG crypto-agile, SHA-384 only): the Spec ID header a log starts
/// with, and events to append to a firmware log (the worker appends its RTMR3 measurements).
public enum CCELEncoder {
    /// The `Spec ID Event03` header event announcing one bank, SHA-384.
    public static func header() -> Data {
        var spec = Data("Spec ID Event03".utf8) + Data([0])
        spec += le32(0) + Data([0, 2, 0, 2])  // platform class, spec 2.0 errata 0, UINTN size 2 (64-bit)
        spec += le32(1) + le16(HashAlgorithm.sha384.tpmAlgorithmID) + le16(48) + Data([0])
        return le32(0) + le32(TCGEventLog.evNoAction) + Data(count: 20) + le32(UInt32(spec.count)) + spec
    }

    /// One event extending register `mrIndex` (1–4: RTMR0–3) with `digest`.
    public static func event(mrIndex: UInt32, type: UInt32, digest: Data, data: Data) -> Data {
        le32(mrIndex) + le32(type) + le32(1) + le16(HashAlgorithm.sha384.tpmAlgorithmID) + digest
            + le32(UInt32(data.count)) + data
    }

    /// An RTMR3 application measurement event (see `CCELReplay.applicationEvent`).
    public static func applicationEvent(path: String, sha256 digest: Data) -> Data {
        let e = CCELReplay.applicationEvent(path: path, sha256: digest)
        return event(mrIndex: 4, type: CCELReplay.applicationEventType, digest: e.digest, data: e.data)
    }

    static func le32(_ v: UInt32) -> Data { withUnsafeBytes(of: v.littleEndian) { Data($0) } }
    static func le16(_ v: UInt16) -> Data { withUnsafeBytes(of: v.littleEndian) { Data($0) } }
}
