/// Splits text into the words BPE merges within, as the pre-tokenizer regexes of the model
/// families define them. Written as scanners over code points (no regex engine), so that the
/// result is the same on every platform and cost is linear in the text.
enum PreTokenization {
    struct Flags {
        var letter = false
        var number = false
        var whitespace = false
        /// Outside the piece being scanned.
        var outside = false
    }

    /// The whitespace set of the reference tokenizers (`\s` extended to Unicode spaces).
    static func isWhitespace(_ v: UInt32) -> Bool {
        switch v {
        case 0x09...0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000: true
        default: false
        }
    }

    static func flags(_ s: Unicode.Scalar) -> Flags {
        var f = Flags()
        f.whitespace = isWhitespace(s.value)
        if s.value < 128 {
            let v = s.value
            f.letter = (0x41...0x5A).contains(v) || (0x61...0x7A).contains(v)
            f.number = (0x30...0x39).contains(v)
            return f
        }
        switch s.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: f.letter = true
        case .decimalNumber, .letterNumber, .otherNumber: f.number = true
        default: break
        }
        return f
    }

    static func split(_ text: String, style: Tokenizer.PreTokenizer) -> [String] {
        let scalars = Array(text.unicodeScalars)
        var ranges: [Range<Int>]
        switch style {
        case .smollm:
            // First every number character alone, then GPT-2 within the rest.
            var pieces = [Range<Int>]()
            var start = 0
            for (i, s) in scalars.enumerated() where flags(s).number {
                if i > start { pieces.append(start..<i) }
                pieces.append(i..<(i + 1))
                start = i + 1
            }
            if start < scalars.count { pieces.append(start..<scalars.count) }
            ranges = pieces.flatMap { piece in
                piece.count == 1 && flags(scalars[piece.lowerBound]).number ? [piece] : gpt2(scalars, piece)
            }
        case .gpt2:
            ranges = gpt2(scalars, 0..<scalars.count)
        case .qwen2:
            ranges = qwenStyle(scalars, 0..<scalars.count, digitGroup: 1)
        case .llama3:
            ranges = qwenStyle(scalars, 0..<scalars.count, digitGroup: 3)
        }
        return ranges.map { r in
            var view = String.UnicodeScalarView()
            view.append(contentsOf: scalars[r])
            return String(view)
        }
    }

    /// Cursor over one piece of text, collecting the words the scanners cut.
    struct Scanner {
        let cpts: [Unicode.Scalar]
        let piece: Range<Int>
        var out = [Range<Int>]()
        var prevEnd: Int

        init(_ cpts: [Unicode.Scalar], _ piece: Range<Int>) {
            self.cpts = cpts
            self.piece = piece
            prevEnd = piece.lowerBound
        }

        func cpt(_ i: Int) -> UInt32? { piece.contains(i) ? cpts[i].value : nil }
        func fl(_ i: Int) -> Flags { piece.contains(i) ? flags(cpts[i]) : Flags(outside: true) }

        /// Ends the current word at `end`; returns its length.
        @discardableResult
        mutating func add(_ end: Int) -> Int {
            let n = end - prevEnd
            if n > 0 { out.append(prevEnd..<end) }
            prevEnd = end
            return n
        }

        /// `'s|'t|'re|'ve|'m|'ll|'d` at `pos` (optionally ignoring case): the length matched, or 0.
        func contraction(at pos: Int, ignoringCase: Bool) -> Int {
            guard cpt(pos) == 0x27, pos + 1 < piece.upperBound else { return 0 }
            func lower(_ v: UInt32?) -> UInt32? {
                ignoringCase ? v.map { (0x41...0x5A).contains($0) ? $0 + 32 : $0 } : v
            }
            let n1 = lower(cpt(pos + 1))
            if n1 == 0x73 || n1 == 0x74 || n1 == 0x6D || n1 == 0x64 { return 2 }  // s t m d
            guard pos + 2 < piece.upperBound else { return 0 }
            let n2 = lower(cpt(pos + 2))
            // re ve ll
            return (n1 == 0x72 && n2 == 0x65) || (n1 == 0x76 && n2 == 0x65) || (n1 == 0x6C && n2 == 0x6C) ? 3 : 0
        }

        /// `\s+(?!\S)|\s+` at `pos`, else one character: where the word ends.
        func whitespaceOrOther(at pos: Int) -> Int {
            var spaces = 0
            while fl(pos + spaces).whitespace { spaces += 1 }
            if spaces > 1, cpt(pos + spaces) != nil { return pos + spaces - 1 }
            return pos + max(spaces, 1)
        }

        /// `<space>?[^\s\p{L}\p{N}]+` starting at `pos`: where the run ends.
        func symbols(from pos: Int) -> Int {
            var end = cpts[pos].value == 0x20 ? pos + 1 : pos
            var f = fl(end)
            while !(f.whitespace || f.letter || f.number) && !f.outside {
                end += 1
                f = fl(end)
            }
            return end
        }
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    static func gpt2(_ cpts: [Unicode.Scalar], _ piece: Range<Int>) -> [Range<Int>] {
        var s = Scanner(cpts, piece)
        var pos = piece.lowerBound
        while pos < piece.upperBound {
            let c = cpts[pos].value
            let n = s.contraction(at: pos, ignoringCase: false)
            if n > 0 {
                pos += s.add(pos + n)
                continue
            }
            let f2 = c == 0x20 ? s.fl(pos + 1) : s.fl(pos)
            if f2.letter || f2.number {
                if c == 0x20 { pos += 1 }
                while f2.letter ? s.fl(pos).letter : s.fl(pos).number { pos += 1 }
                s.add(pos)
                continue
            }
            if !(f2.whitespace || f2.outside) {
                pos = s.symbols(from: pos)
                s.add(pos)
                continue
            }
            pos = s.whitespaceOrOther(at: pos)
            s.add(pos)
        }
        return s.out
    }

    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,G}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    static func qwenStyle(_ cpts: [Unicode.Scalar], _ piece: Range<Int>, digitGroup: Int) -> [Range<Int>] {
        var s = Scanner(cpts, piece)
        var pos = piece.lowerBound
        while pos < piece.upperBound {
            let c = cpts[pos].value
            let f = s.fl(pos)
            let n = s.contraction(at: pos, ignoringCase: true)
            if n > 0 {
                pos += s.add(pos + n)
                continue
            }
            if !(c == 0x0D || c == 0x0A || f.number), f.letter || s.fl(pos + 1).letter {
                pos += 1
                while s.fl(pos).letter { pos += 1 }
                s.add(pos)
                continue
            }
            if f.number {
                var start = pos
                while s.fl(pos).number {
                    pos += 1
                    if pos - start >= digitGroup {
                        s.add(pos)
                        start = pos
                    }
                }
                s.add(pos)
                continue
            }
            let f2 = c == 0x20 ? s.fl(pos + 1) : f
            if !(f2.whitespace || f2.letter || f2.number) && !f.outside {
                pos = s.symbols(from: pos)
                while let n = s.cpt(pos), n == 0x0D || n == 0x0A { pos += 1 }
                s.add(pos)
                continue
            }
            // \s*[\r\n]+ : whitespace up to and including the last newline of the run.
            var spaces = 0
            var lastNewlineEnd = 0
            while s.fl(pos + spaces).whitespace {
                if let n = s.cpt(pos + spaces), n == 0x0D || n == 0x0A { lastNewlineEnd = pos + spaces + 1 }
                spaces += 1
            }
            pos = lastNewlineEnd > 0 ? lastNewlineEnd : s.whitespaceOrOther(at: pos)
            s.add(pos)
        }
        return s.out
    }
}
