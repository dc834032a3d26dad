import AttestationCore
import EventLog
import Foundation

/// Replays a TDX confidential-computing event log (CCEL: TCG crypto-agile, SHA-384) to RTMR0–3
/// and reads the application measurements recorded in RTMR3.
///
/// CCEL events name a measurement register by index: 0 is MRTD, 1–4 are RTMR0–3. Each RTMR starts
/// at zero and is extended with SHA-384(RTMR ‖ digest). Application events (`CCEL.applicationEventType`,
/// data `ccgate.measure sha256:<hex> <path>`) must carry SHA-384 of their own data as digest, so
/// the text the verifier reports is the text that was measured.
///
/// Threat: a log that lies about what was measured. Only a log whose replay gives exactly the
/// quoted RTMR values (all four) is believed.
public enum CCELReplay {

    public struct Summary: Sendable, Equatable {
        public let events: Int
        public let rtmrs: [[UInt8]]
        public let measuredFiles: [MeasuredFile]
    }

    public static func replay(_ data: Data) -> Result<Summary, Reason> {
        let log: TCGEventLog
        do { log = try TCGEventLog.parse(CCEL.trimmed(data)) } catch {
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
            if rtmr == 3, event.eventType == CCEL.applicationEventType,
                let text = String(data: event.data, encoding: .utf8),
                text.hasPrefix(CCEL.applicationPrefix)
            {
                guard HashAlgorithm.sha384.hash(event.data) == digest else {
                    return .failure(
                        Reason(
                            .eventLogReplayMismatch, "tdx.eventlog",
                            "event \(event.index): digest is not SHA-384 of its data"))
                }
                let parts = text.dropFirst(CCEL.applicationPrefix.count).split(separator: " ", maxSplits: 1)
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
}
