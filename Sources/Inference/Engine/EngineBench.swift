import Foundation

/// Prompt-processing and generation speed of a loaded model, as `ccinfer bench` and
/// `make bench` measure it: medians of several rounds after a warm-up.
public enum EngineBench {
    /// The benchmark prompt's text (repeated where a longer prompt is asked for).
    public static let text =
        "Benchmarks compare like with like: the same model, the same prompt, the same machine, measured in the same "
        + "run, so that the ratio means something even on a noisy shared computer. This prompt is long enough to measure "
        + "prompt processing and short enough to leave room for generation in a small context window."

    /// The prompt's tokens: the text once, or repeated and cut to `length` tokens.
    public static func prompt(for model: Transformer, length: Int? = nil) -> [Int] {
        let once = model.tokenizer.encode(text, addSpecial: true)
        guard let length, length > 0 else { return once }
        let more = model.tokenizer.encode(" " + text, addSpecial: false)
        var tokens = once
        while tokens.count < length { tokens += more }
        return Array(tokens.prefix(length))
    }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }

    /// Prompt and generation tokens per second for one sequence in slot 0, medians of `rounds`.
    public static func single(
        model: Transformer, prompt: [Int], generate: Int, rounds: Int
    ) throws(InferenceError) -> (prompt: Double, generate: Double) {
        let clock = ContinuousClock()
        model.truncate(to: 0)
        _ = try model.evaluate(prompt)  // warm-up: pipelines compiled, caches filled
        var pp = [Double]()
        var tg = [Double]()
        for _ in 0..<max(rounds, 1) {
            model.truncate(to: 0)
            var t = clock.now
            var logits = try model.evaluate(prompt)
            pp.append(Double(prompt.count) / seconds(clock.now - t))
            var token = Sampler.argmax(logits)
            t = clock.now
            for _ in 0..<generate {
                logits = try model.evaluate([token])
                token = Sampler.argmax(logits)
            }
            tg.append(Double(generate) / seconds(clock.now - t))
        }
        return (pp.sorted()[pp.count / 2], tg.sorted()[tg.count / 2])
    }

    /// Aggregate generation tokens per second with `n` sequences stepping together, for each
    /// `n` in `streams` (at most the model's slots): each reads `prompt` first, untimed, then
    /// all generate `generate` tokens, one step per token for all of them; medians of `rounds`
    /// after a two-token warm-up round.
    public static func streams(
        model: Transformer, prompt: [Int], streams: [Int], generate: Int, rounds: Int
    ) throws(InferenceError) -> [Int: Double] {
        let clock = ContinuousClock()
        var rates = [Int: Double]()
        for n in streams where n >= 1 && n <= model.slots {
            var measured = [Double]()
            for round in 0...max(rounds, 1) {
                let steps = round == 0 ? 2 : generate
                var tokens = [Int]()
                for slot in 0..<n {
                    model.truncate(slot: slot, to: 0)
                    tokens.append(Sampler.argmax(try model.evaluate(prompt, slot: slot)))
                }
                let start = clock.now
                for _ in 0..<steps {
                    tokens = try model.evaluateNext(tokens.enumerated().map { ($0.offset, $0.element) }).map(
                        Sampler.argmax)
                }
                if round > 0 { measured.append(Double(n * steps) / seconds(clock.now - start)) }
            }
            rates[n] = measured.sorted()[measured.count / 2]
        }
        return rates
    }

    /// Writes token ids as a JSON array of integers: the prompt another engine is given, so that
    /// both engines process the same tokens.
    public static func writeTokenIDs(_ tokens: [Int], to url: URL) throws {
        try Data("[\(tokens.map(String.init).joined(separator: ","))]".utf8).write(to: url)
    }
}
