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
        let plain = ISO8601DateFormatter()
        plain.formatOptions = [.withInternetDateTime]
        if let d = plain.date(from: text) { return d }
        let fractional = ISO8601DateFormatter()
        fractional.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return fractional.date(from: text)
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
        return "\(y)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))Z"
    }
}
