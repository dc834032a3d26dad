import Foundation

/// The source of "now" for anything that decides on time. Verifiers never read the wall clock:
/// they take an explicit instant, and callers get it from a clock they were given.
public protocol AttestationClock: Sendable {
    func now() -> Date
}

/// The wall clock, for production callers.
public struct SystemClock: AttestationClock {
    public init() {}
    public func now() -> Date { Date() }
}

/// A clock stopped at one instant, for tests and for re-verifying at a recorded time.
public struct FixedClock: AttestationClock {
    public let instant: Date
    public init(_ instant: Date) { self.instant = instant }
    public func now() -> Date { instant }
}

extension Date {
    /// Parses an RFC 3339 timestamp (`2026-03-01T00:00:00Z`, fractional seconds and offsets allowed).
    public static func rfc3339(_ text: String) -> Date? {
        if let d = wholeSecondsUTC(text) { return d }
        let plain = ISO8601DateFormatter()
        plain.formatOptions = [.withInternetDateTime]
        if let d = plain.date(from: text) { return d }
        let fractional = ISO8601DateFormatter()
        fractional.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return fractional.date(from: text)
    }

    /// The common form `2026-03-01T00:00:00Z`, read by hand: a date formatter costs tens of
    /// microseconds to create, and audit verification reads one time per entry.
    static func wholeSecondsUTC(_ text: String) -> Date? {
        let b = Array(text.utf8)
        guard b.count == 20, b[4] == 0x2D, b[7] == 0x2D, b[10] == 0x54, b[13] == 0x3A, b[16] == 0x3A, b[19] == 0x5A
        else { return nil }
        func number(_ range: Range<Int>) -> Int32? {
            var v: Int32 = 0
            for i in range {
                guard (0x30...0x39).contains(b[i]) else { return nil }
                v = v * 10 + Int32(b[i] - 0x30)
            }
            return v
        }
        guard let year = number(0..<4), let month = number(5..<7), let day = number(8..<10), let hour = number(11..<13),
            let minute = number(14..<16), let second = number(17..<19),
            (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 61
        else { return nil }
        var parts = tm()
        parts.tm_year = year - 1900
        parts.tm_mon = month - 1
        parts.tm_mday = day
        parts.tm_hour = hour
        parts.tm_min = minute
        parts.tm_sec = second
        let t = timegm(&parts)
        // timegm normalizes 31 February into March: such a date is not one.
        guard parts.tm_mday == day, parts.tm_mon == month - 1 else { return nil }
        return Date(timeIntervalSince1970: TimeInterval(t))
    }

    /// `2026-03-01T00:00:00Z` (UTC, whole seconds). Formatted by hand: a date formatter costs
    /// more to create than a signature check, and verdicts print several dates.
    public var rfc3339: String {
        var seconds = time_t(timeIntervalSince1970.rounded(.down))
        var parts = tm()
        guard gmtime_r(&seconds, &parts) != nil else { return "invalid-date" }
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let year = Int(parts.tm_year) + 1900
        let y = year < 0 ? "\(year)" : String(repeating: "0", count: max(0, 4 - String(year).count)) + String(year)
        return
            "\(y)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))Z"
    }
}
