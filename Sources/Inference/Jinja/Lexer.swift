import Foundation

// MARK: - Lexer

enum TemplateToken: Equatable {
    case text(String)
    case outputStart, outputEnd
    case blockStart, blockEnd
    case name(String)
    case string(String)
    case int(Int)
    case double(Double)
    case op(String)
}

struct TemplateLexer {
    let source: [Character]
    init(_ source: String) { self.source = Array(source) }

    func tokenize() throws(InferenceError) -> [TemplateToken] {
        var tokens = [TemplateToken]()
        var i = 0
        var text = ""
        var stripNextLeading = false
        var trimNextNewline = false

        func flushText(rstrip: Bool, lstripBlock: Bool) {
            var t = text
            if rstrip {
                while let last = t.last, last.isWhitespace { t.removeLast() }
            } else if lstripBlock {
                // Only spaces and tabs between the last newline (or the start) and the tag.
                var j = t.endIndex
                while j > t.startIndex, t[t.index(before: j)] == " " || t[t.index(before: j)] == "\t" {
                    j = t.index(before: j)
                }
                if j == t.startIndex || t[t.index(before: j)] == "\n" { t = String(t[..<j]) }
            }
            if !t.isEmpty { tokens.append(.text(t)) }
            text = ""
        }

        while i < source.count {
            let c = source[i]
            let next: Character? = i + 1 < source.count ? source[i + 1] : nil
            if c == "{", next == "{" || next == "%" || next == "#" {
                let kind = next!
                var j = i + 2
                let minus = j < source.count && source[j] == "-"
                let plus = j < source.count && source[j] == "+"
                if minus || plus { j += 1 }
                flushText(rstrip: minus, lstripBlock: kind != "{" && !plus)
                if kind == "#" {
                    // Comment: skip to "#}".
                    var k = j
                    while k + 1 < source.count, !(source[k] == "#" && source[k + 1] == "}") { k += 1 }
                    guard k + 1 < source.count else {
                        throw InferenceError(.templateFailed, "chat template: unterminated comment")
                    }
                    let stripAfter = k > j && source[k - 1] == "-"
                    i = k + 2
                    stripNextLeading = stripAfter
                    trimNextNewline = !stripAfter
                    continue
                }
                tokens.append(kind == "{" ? .outputStart : .blockStart)
                var k = j
                let close: Character = kind == "{" ? "}" : "%"
                var closed = false
                while k < source.count {
                    let ch = source[k]
                    if ch == " " || ch == "\t" || ch == "\n" || ch == "\r" { k += 1; continue }
                    // End of tag, with optional "-" or "+".
                    if (ch == "-" || ch == "+"), k + 2 < source.count, source[k + 1] == close, source[k + 2] == "}" {
                        tokens.append(kind == "{" ? .outputEnd : .blockEnd)
                        stripNextLeading = ch == "-"
                        trimNextNewline = kind == "%" && ch != "+" && ch != "-"
                        k += 3
                        closed = true
                        break
                    }
                    if ch == close, k + 1 < source.count, source[k + 1] == "}" {
                        tokens.append(kind == "{" ? .outputEnd : .blockEnd)
                        stripNextLeading = false
                        trimNextNewline = kind == "%"
                        k += 2
                        closed = true
                        break
                    }
                    if ch == "\"" || ch == "'" {
                        var s = ""
                        var m = k + 1
                        while m < source.count, source[m] != ch {
                            if source[m] == "\\", m + 1 < source.count {
                                m += 1
                                switch source[m] {
                                case "n": s.append("\n")
                                case "t": s.append("\t")
                                case "r": s.append("\r")
                                default: s.append(source[m])
                                }
                            } else {
                                s.append(source[m])
                            }
                            m += 1
                        }
                        guard m < source.count else {
                            throw InferenceError(.templateFailed, "chat template: unterminated string")
                        }
                        tokens.append(.string(s))
                        k = m + 1
                        continue
                    }
                    if ch.isLetter || ch == "_" {
                        var m = k
                        while m < source.count, source[m].isLetter || source[m].isNumber || source[m] == "_" { m += 1 }
                        tokens.append(.name(String(source[k..<m])))
                        k = m
                        continue
                    }
                    if ch.isASCII, ch.isNumber {
                        var m = k
                        while m < source.count, source[m].isASCII, source[m].isNumber { m += 1 }
                        if m + 1 < source.count, source[m] == ".", source[m + 1].isASCII, source[m + 1].isNumber {
                            m += 1
                            while m < source.count, source[m].isASCII, source[m].isNumber { m += 1 }
                            tokens.append(.double(Double(String(source[k..<m]))!))
                        } else {
                            guard let v = Int(String(source[k..<m])) else {
                                throw InferenceError(.templateFailed, "chat template: number too large")
                            }
                            tokens.append(.int(v))
                        }
                        k = m
                        continue
                    }
                    let two = k + 1 < source.count ? String(source[k...(k + 1)]) : ""
                    if ["==", "!=", "<=", ">=", "//", "**"].contains(two) {
                        tokens.append(.op(two))
                        k += 2
                        continue
                    }
                    if "+-*/%~|.,:()[]{}<>=".contains(ch) {
                        tokens.append(.op(String(ch)))
                        k += 1
                        continue
                    }
                    throw InferenceError(.templateFailed, "chat template: unexpected character '\(ch)'")
                }
                guard closed else { throw InferenceError(.templateFailed, "chat template: unterminated tag") }
                i = k
                continue
            }
            if stripNextLeading {
                if c.isWhitespace { i += 1; continue }
                stripNextLeading = false
            }
            if trimNextNewline {
                trimNextNewline = false
                if c == "\n" { i += 1; continue }
                if c == "\r\n" { i += 1; continue }
            }
            text.append(c)
            i += 1
        }
        flushText(rstrip: false, lstripBlock: false)
        return tokens
    }
}
