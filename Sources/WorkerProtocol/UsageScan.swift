import AttestationCore
import Foundation

/// Finds the token counts an OpenAI-style engine reports: the `usage` object of a JSON answer, or
/// of the last event of a stream that carries one (engines send it in the final chunk when asked
/// with `stream_options.include_usage`). Only `prompt_tokens`, `completion_tokens` and
/// `total_tokens` are kept, as integers. Text without the marker costs a byte search only.
public struct UsageScan: Sendable {
    /// The counts, once found.
    public private(set) var usage: Counts?
    /// The counts as a JSON object, once found.
    public var found: Data? { usage?.json }

    public init() {}

    /// The member name as it appears in the text, whatever spacing follows (`"usage": {` from
    /// Python's json, `"usage":{` from compact writers); the parse decides the rest.
    static let marker = Data(#""usage""#.utf8)

    /// The three counts an engine reports; at least one is present.
    public struct Counts: Equatable, Sendable {
        public var promptTokens: Int?
        public var completionTokens: Int?
        public var totalTokens: Int?

        /// The present counts by their JSON names, sorted by name.
        public var fields: [(name: String, value: Int)] {
            [("completion_tokens", completionTokens), ("prompt_tokens", promptTokens), ("total_tokens", totalTokens)]
                .compactMap { name, value in value.map { (name, $0) } }
        }

        /// `{"completion_tokens":N,"prompt_tokens":N,"total_tokens":N}`, keys sorted, absent ones left out.
        public var json: Data {
            Data(("{" + fields.map { "\"\($0.name)\":\($0.value)" }.joined(separator: ",") + "}").utf8)
        }
    }

    /// Largest count taken from an engine: far above any request's, and small enough that sums of
    /// billions of rows stay within `Int`.
    public static let maxCount = 1_000_000_000

    /// The counts of one JSON object; nil without them, or when they are not plain integers in
    /// 0…``maxCount`` or are named twice (an answer read two ways is not counted).
    ///
    /// Threat: a worker reporting counts built to overflow the gateway's arithmetic (negative, or
    /// near `Int.max`): such counts are no counts, and the request is estimated instead.
    public static func usage(inJSON body: Data) -> Counts? {
        guard body.range(of: marker) != nil, let document = try? JSONMembers(body),
            !document.duplicates.contains("usage"), let usage = document.object("usage"), usage.duplicates.isEmpty
        else { return nil }
        func count(_ name: String) -> Int?? {
            guard let value = usage.members[name], value.kind != .null else { return .some(nil) }
            guard let n = usage.integer(name), (0...maxCount).contains(n) else { return nil }
            return .some(n)
        }
        guard let prompt = count("prompt_tokens"), let completion = count("completion_tokens"),
            let total = count("total_tokens"), prompt != nil || completion != nil || total != nil
        else { return nil }
        return Counts(promptTokens: prompt, completionTokens: completion, totalTokens: total)
    }

    /// Takes counts found elsewhere (an event taken out of the stream).
    public mutating func take(_ counts: Counts) { usage = counts }

    /// Scans a chunk: a whole JSON answer, or server-sent events (`data: {…}` lines).
    public mutating func scan(_ chunk: Data) {
        guard chunk.range(of: Self.marker) != nil else { return }
        if let whole = Self.usage(inJSON: chunk) {
            usage = whole
            return
        }
        for line in chunk.split(separator: 0x0A) where line.starts(with: Data("data: ".utf8)) {
            if let counts = Self.usage(inJSON: Data(line.dropFirst(6))) { usage = counts }
        }
    }
}

/// Asks an engine for the token counts of a stream its client did not ask them for, and takes
/// that answer back out of the stream, so that the usage ledger holds the engine's counts and the
/// client gets the stream it asked for.
public enum StreamUsage {
    /// Why a request's stream options cannot be read one way only.
    public struct Ambiguous: Error, CustomStringConvertible {
        public let description: String
    }

    /// `body` with `stream_options.include_usage` set to true, when it streams without asking for
    /// usage; nil when it is left as it is (no stream, or usage already asked for). Only the
    /// bytes of that one member change.
    ///
    /// Threat: a client evading the ledger by asking the engine, in a second spelling, not to
    /// count: a request naming `stream_options` or `include_usage` twice is refused.
    public static func requestingUsage(_ body: Data) throws -> Data? {
        let top: JSONMembers
        do { top = try JSONMembers(body) } catch { return nil }
        guard top.bool("stream") == true else { return nil }
        guard !top.duplicates.contains("stream_options") else {
            throw Ambiguous(description: "'stream_options' may appear only once")
        }
        let bytes = Array(body)
        let asked = Array(#"{"include_usage":true}"#.utf8)
        guard let options = top.members["stream_options"] else {
            // The first member's place: after the opening brace (the object has members: `stream`).
            guard let brace = bytes.firstIndex(of: UInt8(ascii: "{")) else { return nil }
            return Data(
                bytes[...brace] + Array(#""stream_options":"#.utf8) + asked + [UInt8(ascii: ",")]
                    + bytes[(brace + 1)...])
        }
        guard options.kind == .object, let inner = top.object("stream_options") else {
            return Data(bytes[..<options.range.lowerBound] + asked + bytes[options.range.upperBound...])
        }
        guard !inner.duplicates.contains("include_usage") else {
            throw Ambiguous(description: "'stream_options.include_usage' may appear only once")
        }
        if inner.bool("include_usage") == true { return nil }
        if let value = inner.members["include_usage"] {
            let at = options.range.lowerBound
            return Data(
                bytes[..<(at + value.range.lowerBound)] + Array("true".utf8) + bytes[(at + value.range.upperBound)...])
        }
        if inner.members.isEmpty {
            return Data(bytes[..<options.range.lowerBound] + asked + bytes[options.range.upperBound...])
        }
        let brace = options.range.lowerBound
        return Data(bytes[...brace] + Array(#""include_usage":true,"#.utf8) + bytes[(brace + 1)...])
    }
}

/// Takes the usage event out of an event stream whose client did not ask for it: the event whose
/// data carries a `usage` object and no choices (what engines send last when asked with
/// `stream_options.include_usage`). Events pass through as soon as they are whole; only the
/// unfinished last one is held.
public struct UsageEventFilter: Sendable {
    /// The unfinished event so far.
    private var held: [UInt8] = []
    /// How much of `held` has been looked at for an event end.
    private var scanned = 0
    /// The counts of the events taken out.
    public private(set) var scan = UsageScan()

    public init() {}

    /// Longest unfinished event held: a stream that never ends an event passes through as it is.
    static let holdLimit = 64 << 10

    /// What of `chunk` goes to the client now: every whole event but the usage one. Events end
    /// with a blank line (LF LF, or CR LF CR LF); each byte is looked at once (a chunk's bytes are
    /// appended, not the held ones copied), and what is held is cut once per chunk.
    ///
    /// Threat: a worker streaming text that never ends an event, in tiny frames, to make the
    /// gateway copy what it holds again and again: at most 64 KiB is held, and each byte is
    /// scanned once.
    public mutating func pass(_ chunk: Data) -> Data {
        held.append(contentsOf: chunk)
        var out = [UInt8]()
        var start = 0
        var i = max(scanned, 1)
        while i < held.count {
            if held[i] == 0x0A,
                held[i - 1] == 0x0A || (i >= 3 && held[i - 1] == 0x0D && held[i - 2] == 0x0A && held[i - 3] == 0x0D)
            {
                let event = held[start...i]
                if let counts = Self.usageOnly(event) { scan.take(counts) } else { out += event }
                start = i + 1
            }
            i += 1
        }
        if start > 0 { held.removeFirst(start) }
        scanned = held.count
        if held.count > Self.holdLimit { out += finish() }
        return Data(out)
    }

    /// What is still held when the stream ends (an unfinished event goes as it is).
    public mutating func finish() -> Data {
        defer {
            held = []
            scanned = 0
        }
        return Data(held)
    }

    /// The counts of an event that carries usage and no choices; nil for any other event.
    static func usageOnly(_ event: ArraySlice<UInt8>) -> UsageScan.Counts? {
        guard Data(event).range(of: UsageScan.marker) != nil else { return nil }
        let lines = event.split(whereSeparator: { $0 == 0x0A || $0 == 0x0D })
        guard lines.count == 1, let line = lines.first, line.starts(with: Array("data: ".utf8)) else { return nil }
        let json = Data(line.dropFirst(6))
        guard let object = try? JSONMembers(json), let counts = UsageScan.usage(inJSON: json) else { return nil }
        switch object.members["choices"]?.kind {
        case nil, .null?: return counts
        case .array?: return object.text(of: "choices").map { $0.filter { $0 != 0x20 } } == [0x5B, 0x5D] ? counts : nil
        default: return nil
        }
    }
}
