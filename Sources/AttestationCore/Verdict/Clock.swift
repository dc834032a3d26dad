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

    public var rfc3339: String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        return f.string(from: self)
    }
}
