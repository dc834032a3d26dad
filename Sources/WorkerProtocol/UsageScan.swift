import Foundation

/// Finds the token counts an OpenAI-style engine reports: the `usage` object of a JSON answer, or
/// of the last event of a stream that carries one (engines send it in the final chunk when asked
/// with `stream_options.include_usage`). Only `prompt_tokens`, `completion_tokens` and
/// `total_tokens` are kept, as integers. Text without the marker costs a byte search only.
public struct UsageScan: Sendable {
    /// The counts as a JSON object, once found.
    public private(set) var found: Data?

    public init() {}

    static let marker = Data(#""usage":{"#.utf8)

    struct Counts: Codable, Equatable {
        struct Usage: Codable, Equatable {
            var promptTokens: Int?
            var completionTokens: Int?
            var totalTokens: Int?
            enum CodingKeys: String, CodingKey {
                case promptTokens = "prompt_tokens"
                case completionTokens = "completion_tokens"
                case totalTokens = "total_tokens"
            }
        }
        var usage: Usage?
    }

    /// The counts of one JSON document, re-encoded with the three fields only; nil without them.
    public static func counts(inJSON body: Data) -> Data? {
        guard body.range(of: marker) != nil,
            let usage = (try? JSONDecoder().decode(Counts.self, from: body))?.usage,
            usage.promptTokens != nil || usage.completionTokens != nil || usage.totalTokens != nil
        else { return nil }
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return try? encoder.encode(usage)
    }

    /// Scans a chunk: a whole JSON answer, or server-sent events (`data: {…}` lines).
    public mutating func scan(_ chunk: Data) {
        guard chunk.range(of: Self.marker) != nil else { return }
        if let whole = Self.counts(inJSON: chunk) {
            found = whole
            return
        }
        for line in chunk.split(separator: 0x0A) where line.starts(with: Data("data: ".utf8)) {
            if let counts = Self.counts(inJSON: Data(line.dropFirst(6))) { found = counts }
        }
    }
}
