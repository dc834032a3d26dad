import Foundation

/// One finished generation.
public struct Generation: Sendable, Equatable {
    public enum FinishReason: String, Sendable {
        /// An end-of-generation token or a stop sequence.
        case stop
        /// `max_tokens`, or the context is full.
        case length
        /// The consumer stopped listening.
        case cancelled
    }

    public var text: String
    public var tokens: [Int]
    public var promptTokens: Int
    public var finishReason: FinishReason
}

/// Turns prompts into text on one `Transformer`: reuses the cached prefix of the previous
/// prompt, samples, stops on end-of-generation tokens, stop sequences and limits, and hands
/// out text in pieces that never split a UTF-8 character or reveal the start of a stop sequence.
public final class Generator: @unchecked Sendable {
    public let model: Transformer
    private let lock = NSLock()

    public init(model: Transformer) { self.model = model }

    /// Generates after `prompt`. `onText` receives each new piece of text and returns false to
    /// stop. Throws `request.context-exceeded` when the prompt (plus `maxTokens`) cannot fit.
    public func generate(prompt: [Int], parameters: SamplingParameters, onText: (String) -> Bool = { _ in true })
        throws(InferenceError) -> Generation
    {
        lock.lock()
        defer { lock.unlock() }
        let context = model.contextLength
        guard !prompt.isEmpty else { throw InferenceError(.invalidRequest, "the prompt is empty") }
        guard prompt.count < context else {
            throw InferenceError(.contextExceeded, "the prompt is \(prompt.count) tokens; the context holds \(context)")
        }
        if let maxTokens = parameters.maxTokens {
            guard maxTokens >= 0 else { throw InferenceError(.invalidRequest, "max_tokens must not be negative") }
            guard prompt.count + maxTokens <= context else {
                throw InferenceError(
                    .contextExceeded,
                    "the prompt (\(prompt.count) tokens) plus max_tokens (\(maxTokens)) exceed the context of \(context)"
                )
            }
        }
        let limit = parameters.maxTokens ?? (context - prompt.count)
        var logits = try prefill(prompt)
        var sampler = Sampler(parameters)
        var tokens = [Int]()
        var bytes = [UInt8]()
        var emitted = 0
        let stops = parameters.stop.filter { !$0.isEmpty }.map { Array($0.utf8) }
        var finish = Generation.FinishReason.length

        func flush(upTo end: Int) -> Bool {
            guard end > emitted else { return true }
            let piece = String(decoding: bytes[emitted..<end], as: UTF8.self)
            emitted = end
            return onText(piece)
        }

        while tokens.count < limit {
            let token = sampler.sample(logits)
            if model.tokenizer.endOfGeneration.contains(token) {
                finish = .stop
                break
            }
            tokens.append(token)
            bytes.append(contentsOf: model.tokenizer.bytes(of: token))
            let complete = Self.completeUTF8Prefix(bytes)
            if let (at, _) = Self.firstStop(
                in: bytes[..<complete], stops: stops, from: max(0, emitted - (stops.map(\.count).max() ?? 0)))
            {
                bytes.removeLast(bytes.count - at)
                _ = flush(upTo: at)
                finish = .stop
                break
            }
            // Hold back a tail that could still become a stop sequence.
            let held = Self.partialStopSuffix(bytes[..<complete], stops: stops)
            if !flush(upTo: complete - held) {
                finish = .cancelled
                break
            }
            if tokens.count == limit || model.cached.count >= context { break }
            logits = try model.evaluate([token])
        }
        if finish != .cancelled { _ = flush(upTo: bytes.count) }
        return Generation(
            text: String(decoding: bytes, as: UTF8.self), tokens: tokens, promptTokens: prompt.count,
            finishReason: finish)
    }

    /// Logits after `prompt`, evaluating only what the cache does not already hold.
    func prefill(_ prompt: [Int]) throws(InferenceError) -> [Float] {
        var common = 0
        let cached = model.cached
        while common < min(cached.count, prompt.count), cached[common] == prompt[common] { common += 1 }
        if common == prompt.count { common -= 1 }
        model.truncate(to: common)
        do {
            return try model.evaluate(Array(prompt[common...]))
        } catch {
            model.truncate(to: 0)
            throw error
        }
    }

    /// Length of the longest prefix of `bytes` that ends on a UTF-8 character boundary.
    static func completeUTF8Prefix(_ bytes: [UInt8]) -> Int {
        var i = bytes.count
        var back = 0
        while i > 0, back < 4 {
            let b = bytes[i - 1]
            if b & 0xC0 != 0x80 {
                let need = b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1
                return back + 1 >= need ? bytes.count : i - 1
            }
            i -= 1
            back += 1
        }
        return bytes.count
    }

    static func firstStop(in bytes: ArraySlice<UInt8>, stops: [[UInt8]], from: Int) -> (Int, Int)? {
        var best: (Int, Int)?
        for (index, stop) in stops.enumerated() where stop.count <= bytes.count {
            var i = max(bytes.startIndex, from)
            while i + stop.count <= bytes.endIndex {
                if bytes[i..<(i + stop.count)].elementsEqual(stop) {
                    if best == nil || i < best!.0 { best = (i, index) }
                    break
                }
                i += 1
            }
        }
        return best
    }

    static func partialStopSuffix(_ bytes: ArraySlice<UInt8>, stops: [[UInt8]]) -> Int {
        var held = 0
        for stop in stops {
            for n in stride(from: min(stop.count - 1, bytes.count), to: 0, by: -1) where n > held {
                if bytes.suffix(n).elementsEqual(stop.prefix(n)) {
                    held = n
                    break
                }
            }
        }
        return held
    }
}
