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

    static let marker = Data(#""usage":{"#.utf8)

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

    /// The counts of one JSON object; nil without them, or when they are not plain integers or
    /// are named twice (an answer read two ways is not counted).
    public static func usage(inJSON body: Data) -> Counts? {
        guard body.range(of: marker) != nil, let document = try? JSONMembers(body),
            !document.duplicates.contains("usage"), let usage = document.object("usage"), usage.duplicates.isEmpty
        else { return nil }
        func count(_ name: String) -> Int?? {
            guard let value = usage.members[name], value.kind != .null else { return .some(nil) }
            return usage.integer(name).map { .some($0) }
        }
        guard let prompt = count("prompt_tokens"), let completion = count("completion_tokens"),
            let total = count("total_tokens"), prompt != nil || completion != nil || total != nil
        else { return nil }
        return Counts(promptTokens: prompt, completionTokens: completion, totalTokens: total)
    }

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
