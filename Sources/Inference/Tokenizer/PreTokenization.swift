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

    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    static func gpt2(_ cpts: [Unicode.Scalar], _ piece: Range<Int>) -> [Range<Int>] {
        var out = [Range<Int>]()
        func cpt(_ i: Int) -> UInt32? { piece.contains(i) ? cpts[i].value : nil }
        func fl(_ i: Int) -> Flags { piece.contains(i) ? flags(cpts[i]) : Flags(outside: true) }
        var prevEnd = piece.lowerBound
        func add(_ end: Int) -> Int {
            let n = end - prevEnd
            if n > 0 { out.append(prevEnd..<end) }
            prevEnd = end
            return n
        }
        var pos = piece.lowerBound
        while pos < piece.upperBound {
            let c = cpts[pos].value
            let f = fl(pos)
            if c == 0x27, pos + 1 < piece.upperBound {  // '
                let n1 = cpt(pos + 1)
                if n1 == 0x73 || n1 == 0x74 || n1 == 0x6D || n1 == 0x64 {  // s t m d
                    pos += add(pos + 2)
                    continue
                }
                if pos + 2 < piece.upperBound {
                    let n2 = cpt(pos + 2)
                    if (n1 == 0x72 && n2 == 0x65) || (n1 == 0x76 && n2 == 0x65) || (n1 == 0x6C && n2 == 0x6C) {  // re ve ll
                        pos += add(pos + 3)
                        continue
                    }
                }
            }
            var f2 = c == 0x20 ? fl(pos + 1) : f
            if f2.letter {
                if c == 0x20 { pos += 1 }
                while f2.letter { pos += 1; f2 = fl(pos) }
                _ = add(pos)
                continue
            }
            if f2.number {
                if c == 0x20 { pos += 1 }
                while f2.number { pos += 1; f2 = fl(pos) }
                _ = add(pos)
                continue
            }
            if !(f2.whitespace || f2.letter || f2.number) && !f2.outside {
                if c == 0x20 { pos += 1 }
                while !(f2.whitespace || f2.letter || f2.number) && !f2.outside { pos += 1; f2 = fl(pos) }
                _ = add(pos)
                continue
            }
            var spaces = 0
            while fl(pos + spaces).whitespace { spaces += 1 }
            if spaces > 1, cpt(pos + spaces) != nil {
                pos += spaces - 1
                _ = add(pos)
                continue
            }
            if spaces > 0 {
                pos += spaces
                _ = add(pos)
                continue
            }
            pos += 1
            _ = add(pos)
        }
        return out
    }

    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,G}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    static func qwenStyle(_ cpts: [Unicode.Scalar], _ piece: Range<Int>, digitGroup: Int) -> [Range<Int>] {
        var out = [Range<Int>]()
        func cpt(_ i: Int) -> UInt32? { piece.contains(i) ? cpts[i].value : nil }
        func fl(_ i: Int) -> Flags { piece.contains(i) ? flags(cpts[i]) : Flags(outside: true) }
        func lower(_ v: UInt32?) -> UInt32? { v.map { (0x41...0x5A).contains($0) ? $0 + 32 : $0 } }
        var prevEnd = piece.lowerBound
        func add(_ end: Int) -> Int {
            let n = end - prevEnd
            if n > 0 { out.append(prevEnd..<end) }
            prevEnd = end
            return n
        }
        var pos = piece.lowerBound
        while pos < piece.upperBound {
            let c = cpts[pos].value
            let f = fl(pos)
            if c == 0x27, pos + 1 < piece.upperBound {
                let n1 = lower(cpt(pos + 1))
                if n1 == 0x73 || n1 == 0x74 || n1 == 0x6D || n1 == 0x64 {
                    pos += add(pos + 2)
                    continue
                }
                if pos + 2 < piece.upperBound {
                    let n2 = lower(cpt(pos + 2))
                    if (n1 == 0x72 && n2 == 0x65) || (n1 == 0x76 && n2 == 0x65) || (n1 == 0x6C && n2 == 0x6C) {
                        pos += add(pos + 3)
                        continue
                    }
                }
            }
            if !(c == 0x0D || c == 0x0A || f.number), f.letter || fl(pos + 1).letter {
                pos += 1
                while fl(pos).letter { pos += 1 }
                _ = add(pos)
                continue
            }
            if f.number {
                var start = pos
                while fl(pos).number {
                    pos += 1
                    if pos - start >= digitGroup {
                        _ = add(pos)
                        start = pos
                    }
                }
                _ = add(pos)
                continue
            }
            var f2 = c == 0x20 ? fl(pos + 1) : f
            if !(f2.whitespace || f2.letter || f2.number) && !f.outside {
                if c == 0x20 { pos += 1 }
                while !(f2.whitespace || f2.letter || f2.number) && !f2.outside { pos += 1; f2 = fl(pos) }
                while let n = cpt(pos), n == 0x0D || n == 0x0A { pos += 1 }
                _ = add(pos)
                continue
            }
            var spaces = 0
            var lastNewlineEnd = 0
            while fl(pos + spaces).whitespace {
                if let n = cpt(pos + spaces), n == 0x0D || n == 0x0A { lastNewlineEnd = pos + spaces + 1 }
                spaces += 1
            }
            if lastNewlineEnd > 0 {
                pos = lastNewlineEnd
                _ = add(pos)
                continue
            }
            if spaces > 1, cpt(pos + spaces) != nil {
                pos += spaces - 1
                _ = add(pos)
                continue
            }
            if spaces > 0 {
                pos += spaces
                _ = add(pos)
                continue
            }
            pos += 1
            _ = add(pos)
        }
        return out
    }
}
