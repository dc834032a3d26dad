import AttestationCore
import Foundation

/// A TCG PC Client platform firmware event log (TCG PC Client Platform Firmware Profile §10),
/// in either the SHA-1 format or the crypto-agile format announced by a `Spec ID Event03`.
public struct TCGEventLog: Sendable {
    public enum Layout: String, Sendable { case sha1, cryptoAgile = "crypto-agile" }

    public struct Event: Sendable {
        public let index: Int
        public let pcr: UInt32
        public let eventType: UInt32
        /// Digests by algorithm; algorithms this code does not know are kept out (they are still
        /// skipped correctly by their size from the Spec ID header).
        public let digests: [HashAlgorithm: Data]
        public let data: Data
    }

    public let layout: Layout
    public let events: [Event]
    /// Banks the log declares digests for.
    public let banks: [HashAlgorithm]

    public static let evNoAction: UInt32 = 0x0000_0003

    /// Bounds on hostile input: real firmware logs hold a few hundred events of at most a few
    /// KiB (large ones are EFI variable dumps); a log with more is refused, not truncated.
    public static let maxEvents = 20_000
    public static let maxEventDataSize = 1 << 20
    public static let maxAlgorithms = 16

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case truncated(event: Int)
        case tooLarge(String)
        case invalid(String)

        public var description: String {
            switch self {
            case .truncated(let i): "event log truncated in event \(i)"
            case .tooLarge(let s): "event log too large: \(s)"
            case .invalid(let s): "event log invalid: \(s)"
            }
        }
    }

    public static func parse(_ data: Data) throws(ParseError) -> TCGEventLog {
        var r = ByteReader(data)
        // The first event is always in SHA-1 layout.
        guard let pcr0 = r.u32le(), let type0 = r.u32le(), let digest0 = r.read(20), let size0 = r.u32le()
        else { throw .truncated(event: 0) }
        guard size0 <= maxEventDataSize else { throw .tooLarge("event 0 data is \(size0) bytes") }
        guard let data0 = r.read(Int(size0)) else { throw .truncated(event: 0) }

        let signature = Array("Spec ID Event03".utf8) + [0]
        if type0 == evNoAction, data0.count >= 16, Array(data0[0..<16]) == signature {
            let sizes = try parseSpecID(data0)
            var events = [Event]()
            var index = 1
            while !r.isAtEnd {
                guard events.count < maxEvents else { throw .tooLarge("more than \(maxEvents) events") }
                guard let pcr = r.u32le(), let type = r.u32le(), let count = r.u32le() else {
                    throw .truncated(event: index)
                }
                guard count <= UInt32(maxAlgorithms) else { throw .invalid("event \(index) has \(count) digests") }
                var digests = [HashAlgorithm: Data]()
                for _ in 0..<count {
                    guard let alg = r.u16le() else { throw .truncated(event: index) }
                    guard let size = sizes[alg] else {
                        throw .invalid(
                            "event \(index) uses algorithm 0x\(String(alg, radix: 16)) not in the Spec ID header")
                    }
                    guard let digest = r.read(size) else { throw .truncated(event: index) }
                    if let known = HashAlgorithm(tpmAlgorithmID: alg) { digests[known] = Data(digest) }
                }
                guard let size = r.u32le() else { throw .truncated(event: index) }
                guard size <= maxEventDataSize else { throw .tooLarge("event \(index) data is \(size) bytes") }
                guard let eventData = r.read(Int(size)) else { throw .truncated(event: index) }
                events.append(Event(index: index, pcr: pcr, eventType: type, digests: digests, data: Data(eventData)))
                index += 1
            }
            let banks = sizes.keys.compactMap(HashAlgorithm.init(tpmAlgorithmID:)).sorted {
                $0.digestSize < $1.digestSize
            }
            return TCGEventLog(layout: .cryptoAgile, events: events, banks: banks)
        }

        var events = [Event(index: 0, pcr: pcr0, eventType: type0, digests: [.sha1: Data(digest0)], data: Data(data0))]
        var index = 1
        while !r.isAtEnd {
            guard events.count < maxEvents else { throw .tooLarge("more than \(maxEvents) events") }
            guard let pcr = r.u32le(), let type = r.u32le(), let digest = r.read(20), let size = r.u32le() else {
                throw .truncated(event: index)
            }
            guard size <= maxEventDataSize else { throw .tooLarge("event \(index) data is \(size) bytes") }
            guard let eventData = r.read(Int(size)) else { throw .truncated(event: index) }
            events.append(
                Event(index: index, pcr: pcr, eventType: type, digests: [.sha1: Data(digest)], data: Data(eventData)))
            index += 1
        }
        return TCGEventLog(layout: .sha1, events: events, banks: [.sha1])
    }

    /// TCG_EfiSpecIDEvent: algorithm identifiers and digest sizes for the rest of the log.
    private static func parseSpecID(_ data: [UInt8]) throws(ParseError) -> [UInt16: Int] {
        var r = ByteReader(data)
        // signature[16], platformClass u32, specVersionMinor, specVersionMajor, specErrata, uintnSize
        guard r.skip(16 + 4 + 4), let count = r.u32le() else { throw .invalid("short Spec ID event") }
        guard count >= 1, count <= UInt32(maxAlgorithms) else { throw .invalid("Spec ID lists \(count) algorithms") }
        var sizes = [UInt16: Int]()
        for _ in 0..<count {
            guard let alg = r.u16le(), let size = r.u16le() else { throw .invalid("short Spec ID algorithm list") }
            if let known = HashAlgorithm(tpmAlgorithmID: alg), known.digestSize != Int(size) {
                throw .invalid("Spec ID gives \(known.rawValue) a digest size of \(size)")
            }
            guard size > 0, size <= 128 else { throw .invalid("Spec ID digest size \(size)") }
            sizes[alg] = Int(size)
        }
        return sizes
    }

    /// Replays the log: every PCR it extends, per bank, starting from zero (or from the locality
    /// a PCR 0 `StartupLocality` event names). `EV_NO_ACTION` events are never extended.
    public func replay() -> [HashAlgorithm: [Int: Data]] {
        var result = [HashAlgorithm: [Int: Data]]()
        let startupSignature = Array("StartupLocality".utf8) + [0]
        for bank in banks {
            var pcrs = [Int: Data]()
            for event in events {
                if event.eventType == Self.evNoAction {
                    if event.pcr == 0, event.data.count >= 17, Array(event.data.prefix(16)) == startupSignature {
                        var initial = Data(count: bank.digestSize)
                        initial[bank.digestSize - 1] = event.data[event.data.startIndex + 16]
                        pcrs[0] = initial
                    }
                    continue
                }
                guard let digest = event.digests[bank] else { continue }
                let pcr = Int(event.pcr)
                pcrs[pcr] = bank.extend(pcrs[pcr] ?? Data(count: bank.digestSize), with: digest)
            }
            result[bank] = pcrs
        }
        return result
    }
}
