import AttestationCore
import Foundation

/// The TDX confidential-computing event log (CCEL: TCG crypto-agile, SHA-384) as both sides use
/// it: the application events ccgate records in RTMR3, and the firmware log's trimming. The
/// replay against a quote is the TDX verifier's; writing events is the worker's.
public enum CCEL {
    /// EV_EVENT_TAG: the TCG type for tagged application events.
    public static let applicationEventType: UInt32 = 0x0000_0006
    public static let applicationPrefix = "ccgate.measure "

    /// The event data and digest an application measurement is extended with.
    public static func applicationEvent(path: String, sha256 digest: Data) -> (data: Data, digest: Data) {
        let data = Data("\(applicationPrefix)sha256:\(digest.hex) \(path)".utf8)
        return (data, HashAlgorithm.sha384.hash(data))
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

    /// An RTMR3 application measurement event (see `CCEL.applicationEvent`).
    public static func applicationEvent(path: String, sha256 digest: Data) -> Data {
        let e = CCEL.applicationEvent(path: path, sha256: digest)
        return event(mrIndex: 4, type: CCEL.applicationEventType, digest: e.digest, data: e.data)
    }

    static func le32(_ v: UInt32) -> Data { withUnsafeBytes(of: v.littleEndian) { Data($0) } }
    static func le16(_ v: UInt16) -> Data { withUnsafeBytes(of: v.littleEndian) { Data($0) } }
}
