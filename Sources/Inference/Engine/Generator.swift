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

/// Runs generations on one `Transformer`, up to one per slot at once (continuous batching):
/// every step evaluates the next token of each generating sequence together, and between
/// those steps one chunk of one waiting prompt (prompts take turns), so a long prompt never
/// stalls running streams for more than a chunk. New requests join at the next step; a
/// cancelled one leaves its slot at the next step.
///
/// Each sequence's arithmetic is that of the sequence evaluated alone: every row of a step is
/// computed independently, decode rows in the one-token order, prompt rows in the order fixed by
/// their position, and (with `prefixReuse`) a slot reuses a cached prefix only where the new
/// prompt would compute it the same way. So a request's tokens do not depend on what else is running, nor on what
/// the slot held before.
///
/// The model is driven by one thread, started when work arrives and ended when there is none;
/// callers wait for their own pieces of text.
public final class Generator: @unchecked Sendable {
    public let model: Transformer
    /// Sequences generated at once.
    public var slots: Int { model.slots }

    private let condition = NSCondition()
    /// Requests in arrival order, waiting or running (guarded by `condition`).
    private var requests: [Request] = []
    private var driving = false
    /// Which prompt reads its next chunk (rotates).
    private var prefillTurn = 0
    private var counters = Stats()

    /// What the generator is doing and has done.
    public struct Stats: Sendable, Equatable {
        /// Requests holding a slot.
        public var running = 0
        /// Requests waiting for one.
        public var waiting = 0
        /// The most sequences one step has evaluated together.
        public var peakBatch = 0
        /// Requests stopped because their consumer went away.
        public var cancelled = 0
        /// Prompt tokens not evaluated because their slot already held them (`prefixReuse`).
        public var reusedPromptTokens = 0
        /// Steps run: next-token steps and prompt chunks.
        public var decodeSteps = 0
        public var prefillSteps = 0
    }

    public var stats: Stats {
        condition.lock()
        defer { condition.unlock() }
        var s = counters
        s.running = requests.filter { $0.slot != nil && $0.outcome == nil }.count
        s.waiting = requests.filter { $0.slot == nil && $0.outcome == nil }.count
        return s
    }

    /// Whether a request may start from what its slot holds of an earlier request's prompt.
    ///
    /// Threat: another tenant's prompt read through timing. A request that reuses a cached
    /// prefix gets its first token sooner, so a client that can send prompts could test guesses
    /// about a prompt an earlier request left in a slot, token by token. Off unless every
    /// request comes from one trust domain (one tenant, or a test).
    public let prefixReuse: Bool

    public init(model: Transformer, prefixReuse: Bool = false) {
        self.model = model
        self.prefixReuse = prefixReuse
    }

    /// Generates after `prompt`. `onText` receives each new piece of text on the calling thread
    /// and returns false to stop; `isCancelled`, asked while waiting, stops it too (a client
    /// gone). Throws `request.context-exceeded` when the prompt (plus `maxTokens`) cannot fit.
    public func generate(
        prompt: [Int], parameters: SamplingParameters, onText: (String) -> Bool = { _ in true },
        isCancelled: () -> Bool = { false }
    ) throws(InferenceError) -> Generation {
        let request = try Request(prompt: prompt, parameters: parameters, model: model)
        if request.limit == 0 {
            return Generation(text: "", tokens: [], promptTokens: prompt.count, finishReason: .length)
        }
        condition.lock()
        requests.append(request)
        if !driving {
            driving = true
            Thread.detachNewThread { [self] in drive() }
        }
        condition.broadcast()
        while true {
            if request.cancelled { request.pieces.removeAll() }
            if !request.pieces.isEmpty {
                let pieces = request.pieces
                request.pieces.removeAll()
                condition.unlock()
                var listening = true
                for piece in pieces where listening { listening = onText(piece) }
                condition.lock()
                if !listening { request.cancelled = true }
                continue
            }
            if let outcome = request.outcome {
                condition.unlock()
                return try outcome.get()
            }
            if !request.cancelled {
                condition.unlock()
                let gone = isCancelled()
                condition.lock()
                if gone { request.cancelled = true }
            }
            if request.pieces.isEmpty, request.outcome == nil {
                _ = condition.wait(until: Date(timeIntervalSinceNow: 0.05))
            }
        }
    }

    // MARK: Driving the model

    /// The engine thread: steps until no request is left.
    private func drive() {
        while true {
            condition.lock()
            let (decoding, prefilling) = schedule()
            if decoding.isEmpty, prefilling == nil {
                driving = false
                condition.unlock()
                return
            }
            condition.unlock()
            if !decoding.isEmpty { decodeStep(decoding) }
            if let prefilling { prefillStep(prefilling) }
        }
    }

    /// Under the lock: ends cancelled requests, gives waiting ones free slots, and picks this
    /// iteration's work: every generating sequence, and the prompt whose turn it is.
    private func schedule() -> (decoding: [Request], prefilling: Request?) {
        for request in requests where request.cancelled && request.outcome == nil {
            finish(request, .cancelled)
            counters.cancelled += 1
        }
        requests.removeAll { $0.outcome != nil }
        var free = Set(0..<model.slots).subtracting(requests.compactMap(\.slot))
        for request in requests where request.slot == nil && !free.isEmpty {
            // The free slot that already holds the longest usable prefix of this prompt, where
            // reuse is allowed; else the lowest.
            let slot =
                prefixReuse
                ? free.max { a, b in
                    let (pa, pb) = (
                        model.reusablePrefix(slot: a, prompt: request.prompt),
                        model.reusablePrefix(slot: b, prompt: request.prompt)
                    )
                    return pa != pb ? pa < pb : a > b
                }! : free.min()!
            free.remove(slot)
            counters.reusedPromptTokens += request.start(slot: slot, model: model, reuse: prefixReuse)
        }
        let decoding = requests.filter { $0.next != nil }
        if !decoding.isEmpty {
            counters.decodeSteps += 1
            counters.peakBatch = max(counters.peakBatch, decoding.count)
        }
        let waiting = requests.filter { $0.slot != nil && $0.next == nil && $0.outcome == nil }
        guard !waiting.isEmpty else { return (decoding, nil) }
        counters.prefillSteps += 1
        prefillTurn = (prefillTurn + 1) % waiting.count
        return (decoding, waiting[prefillTurn])
    }

    /// The next token of every generating sequence, in one step.
    private func decodeStep(_ batch: [Request]) {
        do {
            let logits = try model.evaluateNext(batch.map { ($0.slot!, $0.next!) })
            let endings = zip(batch, logits).map { conclude($0, logits: $1) }
            condition.lock()
            defer { condition.unlock() }
            for (request, ending) in zip(batch, endings) { publish(request, ending) }
        } catch {
            fail(batch, error)
        }
    }

    /// The next chunk of one prompt; its last chunk yields the first token.
    private func prefillStep(_ request: Request) {
        let chunk = request.chunks.removeFirst()
        let last = request.chunks.isEmpty
        do {
            let logits = try model.step(
                [Transformer.Segment(slot: request.slot!, tokens: chunk.tokens)], order: chunk.order,
                wantLogits: last)
            guard last else { return }
            let ending = conclude(request, logits: logits[0])
            condition.lock()
            defer { condition.unlock() }
            publish(request, ending)
        } catch {
            fail([request], error)
        }
    }

    /// On the engine thread, without the lock (so sampling and stop matching never hold up
    /// the callers): samples `request`'s next token from `logits`; returns why it ends, if it does.
    private func conclude(_ request: Request, logits: [Float]) -> Generation.FinishReason? {
        if let reason = request.take(logits: logits, model: model) { return reason }
        return model.slotTokens[request.slot!].count >= model.contextLength ? .length : nil
    }

    /// Under the lock: hands out the request's new text, and its outcome when it ends.
    private func publish(_ request: Request, _ ending: Generation.FinishReason?) {
        guard !request.cancelled else { return }
        request.publish()
        if let ending { finish(request, ending) }
        condition.broadcast()
    }

    /// Under the lock: the request's outcome, its slot free again.
    private func finish(_ request: Request, _ reason: Generation.FinishReason) {
        request.finish(reason)
        request.slot = nil
        request.next = nil
        condition.broadcast()
    }

    private func fail(_ batch: [Request], _ error: InferenceError) {
        condition.lock()
        defer { condition.unlock() }
        for request in batch {
            request.outcome = .failure(error)
            request.slot = nil
            request.next = nil
        }
        condition.broadcast()
    }

    // MARK: Text

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

/// One generation's state: its prompt chunks, sampler, tokens and text, and what the caller
/// has yet to collect. Mutated by the engine thread and the caller under the generator's lock
/// (the chunks only by the engine thread).
private final class Request {
    let prompt: [Int]
    let limit: Int
    let stops: [[UInt8]]
    var sampler: Sampler
    var slot: Int?
    /// Prompt tokens still to evaluate, in steps.
    var chunks: [(tokens: [Int], order: UInt32)] = []
    /// The sampled token to evaluate next, while generating.
    var next: Int?
    var tokens: [Int] = []
    var bytes: [UInt8] = []
    var emitted = 0
    /// Text made on the engine thread, not yet handed to the caller.
    var produced: [String] = []
    /// Text for the caller (guarded by the generator's lock).
    var pieces: [String] = []
    var cancelled = false
    var outcome: Result<Generation, InferenceError>?

    init(prompt: [Int], parameters: SamplingParameters, model: Transformer) throws(InferenceError) {
        let context = model.contextLength
        guard !prompt.isEmpty else { throw InferenceError(.invalidRequest, "the prompt is empty") }
        guard prompt.count < context else {
            throw InferenceError(.contextExceeded, "the prompt is \(prompt.count) tokens; the context holds \(context)")
        }
        for t in prompt where t < 0 || t >= model.tokenizer.count {
            throw InferenceError(.invalidRequest, "token \(t) is outside the vocabulary of \(model.tokenizer.count)")
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
        self.prompt = prompt
        limit = parameters.maxTokens ?? (context - prompt.count)
        stops = parameters.stop.filter { !$0.isEmpty }.map { Array($0.utf8) }
        sampler = Sampler(parameters)
    }

    /// Takes `slot`, keeps what it holds of the prompt (when `reuse` allows), and plans the
    /// rest in chunks. Returns how many prompt tokens were kept.
    func start(slot: Int, model: Transformer, reuse: Bool) -> Int {
        self.slot = slot
        let common = reuse ? model.reusablePrefix(slot: slot, prompt: prompt) : 0
        model.truncate(slot: slot, to: common)
        let orders = Transformer.promptOrders(count: prompt.count)
        chunks = Transformer.chunks(Array(prompt[common...]), orders: Array(orders[common...]), limit: model.batchSize)
        return common
    }

    /// Samples the next token; returns why the generation ends, if it does.
    func take(logits: [Float], model: Transformer) -> Generation.FinishReason? {
        let token = sampler.sample(logits)
        if model.tokenizer.endOfGeneration.contains(token) { return .stop }
        tokens.append(token)
        bytes.append(contentsOf: model.tokenizer.bytes(of: token))
        let complete = Generator.completeUTF8Prefix(bytes)
        let longest = stops.map(\.count).max() ?? 0
        if let (at, _) = Generator.firstStop(in: bytes[..<complete], stops: stops, from: max(0, emitted - longest)) {
            bytes.removeLast(bytes.count - at)
            return .stop
        }
        // Hold back a tail that could still become a stop sequence.
        emit(upTo: complete - Generator.partialStopSuffix(bytes[..<complete], stops: stops))
        if tokens.count == limit { return .length }
        next = token
        return nil
    }

    func emit(upTo end: Int) {
        guard end > emitted else { return }
        produced.append(String(decoding: bytes[emitted..<end], as: UTF8.self))
        emitted = end
    }

    /// Under the lock: the text made so far goes to the caller.
    func publish() {
        pieces += produced
        produced.removeAll()
    }

    /// Under the lock.
    func finish(_ reason: Generation.FinishReason) {
        guard outcome == nil else { return }
        if reason != .cancelled {
            emit(upTo: bytes.count)
            publish()
        }
        outcome = .success(
            Generation(
                text: String(decoding: bytes, as: UTF8.self), tokens: tokens, promptTokens: prompt.count,
                finishReason: reason))
    }
}
