import ArgumentParser
import Foundation
import Logging
import Synchronization

/// `--log-format` and `--log-level`, as `ccgate serve` and `ccworker run` take them.
public struct LogOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "text (one readable line per event) or json (one JSON object per line, for a log pipeline).",
            valueName: "FORMAT"))
    public var logFormat = "text"
    @Option(
        help: ArgumentHelp(
            "The least severe level logged: trace, debug, info, notice, warning, error or critical.", valueName: "LEVEL"
        ))
    public var logLevel = "info"

    public init() {}

    public func validate() throws {
        guard ["text", "json"].contains(logFormat) else { throw ValidationError("--log-format is text or json") }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level is trace, debug, info, notice, warning, error or critical")
        }
    }

    /// Sends every logger of the process to standard error in the chosen format, at the chosen
    /// level. Once per process, before any logger is made.
    public func bootstrap() {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        let json = logFormat == "json"
        LoggingSystem.bootstrap { label in
            var handler: any LogHandler =
                json ? JSONLogHandler(label: label) : StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}

/// One JSON object per line on standard error: `time` (RFC 3339, milliseconds, UTC), `level`,
/// `label`, `source`, `message`, and each metadata key as given (nested values as JSON). A line is
/// written with one call under a process-wide lock, so lines from many threads never interleave.
/// Message and metadata are escaped as JSON, so no logged text can start a line of its own.
public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    public let label: String
    static let output = Mutex(FileHandle.standardError)

    public init(label: String) { self.label = label }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var object: [String: Any] = [
            "time": Self.timestamp(Date()), "level": event.level.rawValue, "label": label,
            "source": event.source, "message": "\(event.message)",
        ]
        for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { _, new in new })
        where object[key] == nil {
            object[key] = Self.json(value)
        }
        guard
            var line = try? JSONSerialization.data(
                withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
        else { return }
        line.append(0x0A)
        // A closed or full standard error drops the line; it never stops the process.
        Self.output.withLock { try? $0.write(contentsOf: line) }
    }

    static func json(_ value: Logger.Metadata.Value) -> Any {
        switch value {
        case .string(let s): s
        case .stringConvertible(let c): "\(c)"
        case .array(let a): a.map(json)
        case .dictionary(let d): d.mapValues(json)
        }
    }

    static func timestamp(_ date: Date) -> String {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        let c = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second, .nanosecond], from: date)
        return String(
            format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", c.year ?? 0, c.month ?? 0, c.day ?? 0, c.hour ?? 0,
            c.minute ?? 0, c.second ?? 0, (c.nanosecond ?? 0) / 1_000_000)
    }
}
