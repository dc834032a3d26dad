import Foundation

/// Locates the project root and the shared test vectors (`../shared/testdata`, read in place).
public enum SharedTestData {
    /// The package root, derived from this file's location.
    public static let packageRoot: URL = {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
    }()

    /// `../shared/testdata`, or `$CCGATE_SHARED_TESTDATA` when set.
    public static let root: URL = {
        if let override = ProcessInfo.processInfo.environment["CCGATE_SHARED_TESTDATA"] {
            return URL(fileURLWithPath: override)
        }
        return packageRoot.deletingLastPathComponent().appendingPathComponent("shared/testdata")
    }()

    public static func url(_ relative: String) -> URL { root.appendingPathComponent(relative) }

    public static func data(_ relative: String) throws -> Data { try Data(contentsOf: url(relative)) }

    /// One entry of `cases.json`.
    public struct Case: Decodable, Sendable, CustomStringConvertible {
        public struct Expect: Decodable, Sendable {
            public let verdict: String
            public let reason: String?
            public let tcb_status: String?
            public let advisory_ids: [String]?
            public let claims: Claims?
        }
        public struct Claims: Decodable, Sendable {
            public let pcrs: [String: [String: String]]?
            public let mrtd: String?
            public let rtmr0: String?
            public let rtmr1: String?
            public let rtmr2: String?
            public let rtmr3: String?
            public let report_data: String?
        }
        public let id: String
        public let kind: String
        public let envelope: String
        public let nonce_hex: String?
        public let verify_at: String
        public let roots: [String]?
        public let expect: Expect
        public var description: String { id }
    }

    public static func cases(kind: String? = nil) throws -> [Case] {
        let all = try JSONDecoder().decode([Case].self, from: data("cases.json"))
        return all.filter { kind == nil || $0.kind == kind }
    }

    /// One entry of `eventlog/cases.json`.
    public struct EventLogCase: Decodable, Sendable, CustomStringConvertible {
        public struct Expect: Decodable, Sendable { public let pcrs: [String: [String: String]] }
        public let id: String
        public let log: String
        public let expect: Expect
        public var description: String { id }
    }

    public static func eventLogCases() throws -> [EventLogCase] {
        try JSONDecoder().decode([EventLogCase].self, from: data("eventlog/cases.json"))
    }
}
