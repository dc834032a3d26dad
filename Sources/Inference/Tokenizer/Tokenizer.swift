import Foundation

/// Byte-level BPE (the GPT-2 scheme) as GGUF models describe it: `tokenizer.ggml.tokens`,
/// `.token_type`, `.merges`, `.pre`, the BOS/EOS ids and flags. Text is split into special
/// tokens and pieces, each piece is pre-tokenized, byte-encoded, and merged by merge rank.
public struct Tokenizer: Sendable {
    public enum TokenType: Int, Sendable {
        case undefined = 0, normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
    }

    public enum PreTokenizer: String, Sendable, CaseIterable {
        /// Each digit alone, then the GPT-2 pattern (SmolLM, StarCoder).
        case smollm
        /// The GPT-2 pattern.
        case gpt2
        /// Letters with one leading non-letter, digits alone, punctuation with trailing newlines (Qwen2/3).
        case qwen2
        /// As qwen2 with digits in groups of up to three; whole words found in the vocabulary skip merging.
        case llama3
    }

    public let tokens: [String]
    public let types: [TokenType]
    public let bos: Int?
    public let eos: Int?
    /// End-of-generation tokens: EOS, EOT and the like.
    public let endOfGeneration: Set<Int>
    public let addBOS: Bool
    public let preTokenizer: PreTokenizer

    private let ids: [String: Int]
    private let mergeRanks: [MergePair: Int]
    /// Tokens matched literally before pre-tokenization, longest first.
    private let specials: [(id: Int, text: [UInt8], control: Bool)]

    struct MergePair: Hashable, Sendable {
        let left: String
        let right: String
    }

    public var count: Int { tokens.count }

    public init(gguf: GGUFFile) throws(InferenceError) {
        guard let model = gguf.string("tokenizer.ggml.model") else {
            throw InferenceError(.modelMalformed, "tokenizer.ggml.model is missing")
        }
        guard model == "gpt2" else {
            throw InferenceError(
                .modelUnsupported, "tokenizer '\(model)' is not supported (byte-level BPE, 'gpt2', is)")
        }
        guard let tokenValues = gguf.metadata["tokenizer.ggml.tokens"]?.array, !tokenValues.isEmpty else {
            throw InferenceError(.modelMalformed, "tokenizer.ggml.tokens is missing or empty")
        }
        var tokens = [String]()
        tokens.reserveCapacity(tokenValues.count)
        for v in tokenValues {
            guard let s = v.string else {
                throw InferenceError(.modelMalformed, "tokenizer.ggml.tokens holds a non-string")
            }
            tokens.append(s)
        }
        var types = [TokenType](repeating: .normal, count: tokens.count)
        if let typeValues = gguf.metadata["tokenizer.ggml.token_type"]?.array {
            guard typeValues.count == tokens.count else {
                throw InferenceError(
                    .modelMalformed,
                    "tokenizer.ggml.token_type has \(typeValues.count) entries for \(tokens.count) tokens")
            }
            for (i, v) in typeValues.enumerated() { types[i] = v.int.flatMap(TokenType.init(rawValue:)) ?? .undefined }
        }
        var merges = [MergePair: Int]()
        if let mergeValues = gguf.metadata["tokenizer.ggml.merges"]?.array {
            merges.reserveCapacity(mergeValues.count)
            for (rank, v) in mergeValues.enumerated() {
                guard let s = v.string else {
                    throw InferenceError(.modelMalformed, "tokenizer.ggml.merges holds a non-string")
                }
                // "left right"; the separator is the first space after the first character.
                let scalars = Array(s.unicodeScalars)
                guard let split = scalars.indices.dropFirst().first(where: { scalars[$0] == " " }) else {
                    throw InferenceError(.modelMalformed, "merge \(rank) '\(s)' has no separator")
                }
                var left = String.UnicodeScalarView()
                left.append(contentsOf: scalars[..<split])
                var right = String.UnicodeScalarView()
                right.append(contentsOf: scalars[(split + 1)...])
                let pair = MergePair(left: String(left), right: String(right))
                if merges[pair] == nil { merges[pair] = rank }
            }
        }
        let preName = gguf.string("tokenizer.ggml.pre") ?? "gpt2"
        let pre: PreTokenizer? =
            switch preName {
            case "smollm", "starcoder", "refact", "codeshell", "exaone": .smollm
            case "gpt2", "gpt-2", "phi-2", "jina-es", "jina-de", "roberta-bpe": .gpt2
            case "qwen2", "deepseek-r1-qwen": .qwen2
            case "llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral": .llama3
            default: nil
            }
        guard let pre else {
            throw InferenceError(
                .modelUnsupported,
                "pre-tokenizer '\(preName)' is not supported (smollm, gpt2, qwen2, llama3 families are)")
        }
        preTokenizer = pre
        func tokenID(_ key: String) throws(InferenceError) -> Int? {
            guard let id = gguf.int(key) else { return nil }
            guard id >= 0, id < tokens.count else {
                throw InferenceError(.modelMalformed, "\(key) \(id) is outside the vocabulary")
            }
            return id
        }
        bos = try tokenID("tokenizer.ggml.bos_token_id")
        eos = try tokenID("tokenizer.ggml.eos_token_id")
        addBOS = gguf.metadata["tokenizer.ggml.add_bos_token"]?.bool ?? false
        if addBOS, bos == nil {
            throw InferenceError(.modelMalformed, "add_bos_token is set but there is no BOS token")
        }
        var eog = Set<Int>()
        if let eos { eog.insert(eos) }
        if let eot = try tokenID("tokenizer.ggml.eot_token_id") { eog.insert(eot) }
        if let eom = try tokenID("tokenizer.ggml.eom_token_id") { eog.insert(eom) }
        // Chat models end a turn with one of these even when EOS names another token.
        for (i, t) in tokens.enumerated() where types[i] == .control || types[i] == .userDefined {
            if [
                "<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<end_of_turn>", "<|end_of_text|>",
                "<|eom_id|>",
            ].contains(t) {
                eog.insert(i)
            }
        }
        endOfGeneration = eog

        var ids = [String: Int](minimumCapacity: tokens.count)
        for (i, t) in tokens.enumerated() where ids[t] == nil { ids[t] = i }
        self.ids = ids
        self.tokens = tokens
        self.types = types
        mergeRanks = merges
        specials = tokens.indices
            .filter { [.control, .userDefined, .unknown].contains(types[$0]) && !tokens[$0].isEmpty }
            .map { (id: $0, text: Array(tokens[$0].utf8), control: types[$0] != .userDefined) }
            .sorted { $0.text.count != $1.text.count ? $0.text.count > $1.text.count : $0.id < $1.id }
    }

    // MARK: Encoding

    /// Token ids for `text`. With `parseSpecial`, the text of control tokens (`<|im_start|>`)
    /// becomes those tokens; user-defined tokens are always matched. `addSpecial` prepends BOS
    /// when the model asks for it.
    public func encode(_ text: String, addSpecial: Bool = false, parseSpecial: Bool = true) -> [Int] {
        var output = [Int]()
        if addSpecial, addBOS, let bos { output.append(bos) }
        for fragment in partition(Array(text.utf8), parseSpecial: parseSpecial) {
            switch fragment {
            case .token(let id): output.append(id)
            case .text(let bytes): encodePiece(bytes, into: &output)
            }
        }
        return output
    }

    enum Fragment {
        case text([UInt8])
        case token(Int)
    }

    /// Splits out special tokens, longest first, each fragment searched left to right.
    func partition(_ bytes: [UInt8], parseSpecial: Bool) -> [Fragment] {
        var fragments: [Fragment] = [.text(bytes)]
        for special in specials where parseSpecial || !special.control {
            var next = [Fragment]()
            for fragment in fragments {
                guard case .text(let raw) = fragment, raw.count >= special.text.count else {
                    next.append(fragment); continue
                }
                var start = 0
                var i = 0
                let needle = special.text
                while i + needle.count <= raw.count {
                    if raw[i] == needle[0], raw[i..<(i + needle.count)].elementsEqual(needle) {
                        if i > start { next.append(.text(Array(raw[start..<i]))) }
                        next.append(.token(special.id))
                        i += needle.count
                        start = i
                    } else {
                        i += 1
                    }
                }
                if start < raw.count { next.append(.text(Array(raw[start...]))) }
            }
            fragments = next
        }
        return fragments
    }

    func encodePiece(_ bytes: [UInt8], into output: inout [Int]) {
        let text = String(decoding: bytes, as: UTF8.self)
        for word in PreTokenization.split(text, style: preTokenizer) {
            let encoded = ByteEncoding.encode(Array(word.utf8))
            if preTokenizer == .llama3, let id = ids[encoded] {
                output.append(id)
                continue
            }
            for symbol in merge(encoded) {
                if let id = ids[symbol] {
                    output.append(id)
                } else {
                    // Not in the vocabulary even after merging: fall back to one token per character.
                    for ch in symbol.unicodeScalars { if let id = ids[String(ch)] { output.append(id) } }
                }
            }
        }
    }

    /// Applies merges, lowest rank first (leftmost on ties), until none applies.
    func merge(_ word: String) -> [String] {
        var symbols = word.unicodeScalars.map { String($0) }
        guard symbols.count > 1 else { return symbols }
        while symbols.count > 1 {
            var best: (rank: Int, index: Int)?
            for i in 0..<(symbols.count - 1) {
                if let rank = mergeRanks[MergePair(left: symbols[i], right: symbols[i + 1])],
                    best == nil || rank < best!.rank
                {
                    best = (rank, i)
                }
            }
            guard let (_, i) = best else { break }
            symbols[i] += symbols[i + 1]
            symbols.remove(at: i + 1)
        }
        return symbols
    }

    // MARK: Decoding

    /// The bytes a token stands for. Control tokens are empty unless `special`.
    public func bytes(of token: Int, special: Bool = false) -> [UInt8] {
        guard token >= 0, token < tokens.count else { return [] }
        switch types[token] {
        case .normal, .byte, .undefined, .unused: return ByteEncoding.decode(tokens[token])
        case .userDefined: return Array(tokens[token].utf8)
        case .control, .unknown: return special ? Array(tokens[token].utf8) : []
        }
    }

    /// Text of a whole sequence (invalid UTF-8 repaired).
    public func decode(_ ids: [Int], special: Bool = false) -> String {
        String(decoding: ids.flatMap { bytes(of: $0, special: special) }, as: UTF8.self)
    }

    public func id(of text: String) -> Int? { ids[text] }
}

/// GPT-2's reversible map from bytes to printable characters, so that BPE runs on text.
enum ByteEncoding {
    static let byteToScalar: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        var n: UInt32 = 0
        for b in 0..<256 {
            let printable = (33...126).contains(b) || (161...172).contains(b) || (174...255).contains(b)
            if printable {
                table[b] = Unicode.Scalar(UInt32(b))!
            } else {
                table[b] = Unicode.Scalar(256 + n)!
                n += 1
            }
        }
        return table
    }()

    static let scalarToByte: [UInt32: UInt8] = {
        var map = [UInt32: UInt8]()
        for (b, s) in byteToScalar.enumerated() { map[s.value] = UInt8(b) }
        return map
    }()

    static func encode(_ bytes: [UInt8]) -> String {
        var view = String.UnicodeScalarView()
        for b in bytes { view.append(byteToScalar[Int(b)]) }
        return String(view)
    }

    /// Characters outside the map (a malformed vocabulary) are passed through as UTF-8.
    static func decode(_ text: String) -> [UInt8] {
        var out = [UInt8]()
        for s in text.unicodeScalars {
            if let b = scalarToByte[s.value] { out.append(b) } else { out.append(contentsOf: Array(String(s).utf8)) }
        }
        return out
    }
}
