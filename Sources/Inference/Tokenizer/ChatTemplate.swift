import Foundation

/// The chat template a GGUF model carries (`tokenizer.chat_template`, Jinja), rendered the way
/// the Hugging Face tooling renders it: `trim_blocks` and `lstrip_blocks` on, loop controls on,
/// `{% generation %}` tags transparent, `tojson` as Python's `json.dumps(ensure_ascii=False)`.
///
/// The template language is a subset of Jinja: statements `if/elif/else`, `for` (with `loop`,
/// tuple targets, `if` filters and `else`), `set` (names and namespace attributes), `macro`,
/// `break`, `continue`; Python-like expressions, filters, tests and string/dict methods. A
/// template using anything else fails to parse with `template.failed` naming the construct;
/// it never renders something silently different.
public struct ChatTemplate: Sendable {
    public let source: String
    let nodes: [TemplateNode]

    /// Templates are a few KiB; anything near this is not a chat template.
    static let maxSourceBytes = 1 << 20
    /// Output cap, so a template looping without end stops.
    static let maxOutputBytes = 16 << 20

    public init(_ source: String) throws(InferenceError) {
        guard source.utf8.count <= Self.maxSourceBytes else {
            throw InferenceError(.templateFailed, "chat template exceeds 1 MiB")
        }
        self.source = source
        let tokens = try TemplateLexer(source).tokenize()
        var parser = TemplateParser(tokens: tokens)
        nodes = try parser.parseAll()
    }

    /// Renders the conversation. `messages` are objects with at least `role` and `content`.
    public func render(
        messages: [JSONValue], addGenerationPrompt: Bool = true, bosToken: String = "", eosToken: String = "",
        extra: [String: JSONValue] = [:]
    ) throws(InferenceError) -> String {
        var globals: [String: TemplateValue] = [
            "messages": TemplateValue(json: .array(messages)),
            "add_generation_prompt": .bool(addGenerationPrompt),
            "bos_token": .string(bosToken),
            "eos_token": .string(eosToken),
        ]
        for (k, v) in extra { globals[k] = TemplateValue(json: v) }
        var interpreter = TemplateInterpreter(globals: globals)
        do {
            try interpreter.run(nodes)
        } catch let error as TemplateError {
            throw InferenceError(.templateFailed, "chat template: \(error.message)")
        } catch {
            throw InferenceError(.templateFailed, "chat template: \(error)")
        }
        return interpreter.output
    }
}

struct TemplateError: Error {
    let message: String
    init(_ message: String) { self.message = message }
}

// MARK: - Values

/// A value inside the template, with Python's semantics where templates rely on them.
indirect enum TemplateValue: Sendable {
    case undefined(String)
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case list([TemplateValue])
    case dict([(String, TemplateValue)])
    case namespace(TemplateNamespace)
    case function(String)
    case method(TemplateValue, String)
    case macro(TemplateMacro)

    init(json: JSONValue) {
        switch json {
        case .null: self = .none
        case .bool(let b): self = .bool(b)
        case .number(let n): self = n.rounded() == n && abs(n) < 9e15 ? .int(Int(n)) : .double(n)
        case .string(let s): self = .string(s)
        case .array(let a): self = .list(a.map(TemplateValue.init(json:)))
        case .object(let pairs): self = .dict(pairs.map { ($0.0, TemplateValue(json: $0.1)) })
        }
    }

    var json: JSONValue? {
        switch self {
        case .none: .null
        case .bool(let b): .bool(b)
        case .int(let i): .number(Double(i))
        case .double(let d): .number(d)
        case .string(let s): .string(s)
        case .list(let l):
            l.allSatisfy({ $0.json != nil }) ? .array(l.compactMap(\.json)) : nil
        case .dict(let d):
            d.allSatisfy({ $0.1.json != nil }) ? .object(d.map { ($0.0, $0.1.json!) }) : nil
        case .namespace(let ns): TemplateValue.dict(ns.values).json
        default: nil
        }
    }

    var truthy: Bool {
        switch self {
        case .undefined, .none: false
        case .bool(let b): b
        case .int(let i): i != 0
        case .double(let d): d != 0
        case .string(let s): !s.isEmpty
        case .list(let l): !l.isEmpty
        case .dict(let d): !d.isEmpty
        default: true
        }
    }

    var isDefined: Bool { if case .undefined = self { false } else { true } }

    /// `str(value)` as Python prints it.
    var text: String {
        switch self {
        case .undefined: ""
        case .string(let s): s
        default: repr
        }
    }

    var repr: String {
        switch self {
        case .undefined: ""
        case .none: "None"
        case .bool(let b): b ? "True" : "False"
        case .int(let i): String(i)
        case .double(let d): TemplateValue.pythonFloat(d)
        case .string(let s):
            "'" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'") + "'"
        case .list(let l): "[" + l.map(\.repr).joined(separator: ", ") + "]"
        case .dict(let d): "{" + d.map { "'\($0.0)': \($0.1.repr)" }.joined(separator: ", ") + "}"
        case .namespace(let ns): "<Namespace \(TemplateValue.dict(ns.values).repr)>"
        case .function(let n), .method(_, let n): "<function \(n)>"
        case .macro(let m): "<macro \(m.name)>"
        }
    }

    static func pythonFloat(_ d: Double) -> String {
        if d.isNaN { return "nan" }
        if d.isInfinite { return d > 0 ? "inf" : "-inf" }
        if d.rounded() == d, abs(d) < 1e16 { return String(format: "%.1f", d) }
        return "\(d)"
    }

    var typeName: String {
        switch self {
        case .undefined: "undefined"
        case .none: "NoneType"
        case .bool: "bool"
        case .int: "int"
        case .double: "float"
        case .string: "str"
        case .list: "list"
        case .dict: "dict"
        case .namespace: "Namespace"
        case .function, .method, .macro: "function"
        }
    }

    var number: Double? {
        switch self {
        case .int(let i): Double(i)
        case .double(let d): d
        case .bool(let b): b ? 1 : 0
        default: nil
        }
    }

    func lookup(_ key: String) -> TemplateValue? {
        switch self {
        case .dict(let d): d.first { $0.0 == key }?.1
        case .namespace(let ns): ns.values.first { $0.0 == key }?.1
        default: nil
        }
    }

    /// Items for iteration: lists, strings by character, dicts by key.
    func iterate() throws -> [TemplateValue] {
        switch self {
        case .undefined: []
        case .list(let l): l
        case .string(let s): s.map { .string(String($0)) }
        case .dict(let d): d.map { .string($0.0) }
        default: throw TemplateError("'\(typeName)' object is not iterable")
        }
    }

    static func equal(_ a: TemplateValue, _ b: TemplateValue) -> Bool {
        switch (a, b) {
        case (.undefined, .undefined), (.none, .none): return true
        case (.string(let x), .string(let y)): return x == y
        case (.list(let x), .list(let y)): return x.count == y.count && zip(x, y).allSatisfy { equal($0, $1) }
        case (.dict(let x), .dict(let y)):
            return x.count == y.count && x.allSatisfy { pair in y.contains { $0.0 == pair.0 && equal($0.1, pair.1) } }
        default:
            if let x = a.number, let y = b.number, !(a.isString || b.isString) { return x == y }
            return false
        }
    }

    var isString: Bool { if case .string = self { true } else { false } }
}

/// `namespace()` objects: the one mutable value, so loops can carry state out.
final class TemplateNamespace: @unchecked Sendable {
    var values: [(String, TemplateValue)]
    init(_ values: [(String, TemplateValue)]) { self.values = values }
    func set(_ key: String, _ value: TemplateValue) {
        if let i = values.firstIndex(where: { $0.0 == key }) {
            values[i].1 = value
        } else {
            values.append((key, value))
        }
    }
}

struct TemplateMacro: Sendable {
    let name: String
    let parameters: [(String, TemplateExpr?)]
    let body: [TemplateNode]
}

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

// MARK: - Syntax

indirect enum TemplateExpr: Sendable {
    case literal(TemplateValue)
    case name(String)
    case attribute(TemplateExpr, String)
    case index(TemplateExpr, TemplateExpr)
    case slice(TemplateExpr, TemplateExpr?, TemplateExpr?, TemplateExpr?)
    case call(TemplateExpr, [TemplateExpr], [(String, TemplateExpr)])
    case filter(TemplateExpr, String, [TemplateExpr], [(String, TemplateExpr)])
    case test(TemplateExpr, String, [TemplateExpr], negated: Bool)
    case unary(String, TemplateExpr)
    case binary(String, TemplateExpr, TemplateExpr)
    case conditional(TemplateExpr, then: TemplateExpr, otherwise: TemplateExpr?)
    case list([TemplateExpr])
    case dict([(TemplateExpr, TemplateExpr)])
}

indirect enum TemplateNode: Sendable {
    case text(String)
    case output(TemplateExpr)
    case conditional([(TemplateExpr, [TemplateNode])], otherwise: [TemplateNode])
    case loop(
        targets: [String], over: TemplateExpr, filter: TemplateExpr?, body: [TemplateNode], otherwise: [TemplateNode])
    case assign(target: String, attribute: String?, value: TemplateExpr)
    case macro(TemplateMacro)
    case breakLoop
    case continueLoop
}

struct TemplateParser {
    let tokens: [TemplateToken]
    var i = 0

    init(tokens: [TemplateToken]) { self.tokens = tokens }

    func fail(_ message: String) -> InferenceError { InferenceError(.templateFailed, "chat template: \(message)") }

    var peek: TemplateToken? { i < tokens.count ? tokens[i] : nil }

    mutating func parseAll() throws(InferenceError) -> [TemplateNode] {
        let (nodes, end) = try parseBody(until: [])
        if let end { throw fail("unexpected {% \(end) %}") }
        return nodes
    }

    /// Parses nodes until a block tag whose keyword is in `until`; returns that keyword (its tag
    /// partly consumed: the keyword is eaten, the rest of the tag is left to the caller).
    mutating func parseBody(until: Set<String>) throws(InferenceError) -> ([TemplateNode], String?) {
        var nodes = [TemplateNode]()
        while let token = peek {
            switch token {
            case .text(let t):
                i += 1
                nodes.append(.text(t))
            case .outputStart:
                i += 1
                let e = try expression()
                try expect(.outputEnd, "'}}'")
                nodes.append(.output(e))
            case .blockStart:
                i += 1
                guard case .name(let keyword)? = peek else { throw fail("expected a statement after {%") }
                if until.contains(keyword) {
                    i += 1
                    return (nodes, keyword)
                }
                i += 1
                nodes.append(contentsOf: try statement(keyword))
            default:
                throw fail("unexpected token")
            }
        }
        if !until.isEmpty { throw fail("missing {% \(until.sorted().joined(separator: " / ")) %}") }
        return (nodes, nil)
    }

    mutating func expect(_ token: TemplateToken, _ what: String) throws(InferenceError) {
        guard peek == token else { throw fail("expected \(what)") }
        i += 1
    }

    mutating func name() throws(InferenceError) -> String {
        guard case .name(let n)? = peek else { throw fail("expected a name") }
        i += 1
        return n
    }

    mutating func statement(_ keyword: String) throws(InferenceError) -> [TemplateNode] {
        switch keyword {
        case "if":
            var branches = [(TemplateExpr, [TemplateNode])]()
            var condition = try expression()
            try expect(.blockEnd, "'%}'")
            while true {
                let (body, end) = try parseBody(until: ["elif", "else", "endif"])
                branches.append((condition, body))
                if end == "elif" {
                    condition = try expression()
                    try expect(.blockEnd, "'%}'")
                    continue
                }
                if end == "else" {
                    try expect(.blockEnd, "'%}'")
                    let (otherwise, _) = try parseBody(until: ["endif"])
                    try expect(.blockEnd, "'%}'")
                    return [.conditional(branches, otherwise: otherwise)]
                }
                try expect(.blockEnd, "'%}'")
                return [.conditional(branches, otherwise: [])]
            }
        case "for":
            var targets = [try name()]
            while peek == .op(",") {
                i += 1
                targets.append(try name())
            }
            guard peek == .name("in") else { throw fail("expected 'in' in for") }
            i += 1
            let over = try expression(allowConditional: false)
            var filter: TemplateExpr?
            if peek == .name("if") {
                i += 1
                filter = try expression(allowConditional: false)
            }
            if peek == .name("recursive") { throw fail("recursive loops are not supported") }
            try expect(.blockEnd, "'%}'")
            let (body, end) = try parseBody(until: ["else", "endfor"])
            try expect(.blockEnd, "'%}'")
            var otherwise = [TemplateNode]()
            if end == "else" {
                (otherwise, _) = try parseBody(until: ["endfor"])
                try expect(.blockEnd, "'%}'")
            }
            return [.loop(targets: targets, over: over, filter: filter, body: body, otherwise: otherwise)]
        case "set":
            let target = try name()
            var attribute: String?
            if peek == .op(".") {
                i += 1
                attribute = try name()
            }
            guard peek == .op("=") else { throw fail("block 'set' is not supported; use {% set x = … %}") }
            i += 1
            let value = try expression()
            try expect(.blockEnd, "'%}'")
            return [.assign(target: target, attribute: attribute, value: value)]
        case "macro":
            let macroName = try name()
            try expect(.op("("), "'('")
            var params = [(String, TemplateExpr?)]()
            while peek != .op(")") {
                let p = try name()
                var def: TemplateExpr?
                if peek == .op("=") {
                    i += 1
                    def = try expression()
                }
                params.append((p, def))
                if peek == .op(",") { i += 1 } else { break }
            }
            try expect(.op(")"), "')'")
            try expect(.blockEnd, "'%}'")
            let (body, _) = try parseBody(until: ["endmacro"])
            try expect(.blockEnd, "'%}'")
            return [.macro(TemplateMacro(name: macroName, parameters: params, body: body))]
        case "break":
            try expect(.blockEnd, "'%}'")
            return [.breakLoop]
        case "continue":
            try expect(.blockEnd, "'%}'")
            return [.continueLoop]
        case "generation":
            try expect(.blockEnd, "'%}'")
            let (body, _) = try parseBody(until: ["endgeneration"])
            try expect(.blockEnd, "'%}'")
            return body
        default:
            throw fail("statement '\(keyword)' is not supported")
        }
    }

    // Expressions, Jinja's precedence: conditional < or < and < not < comparison < + - < ~ < * / // % < ** < unary < postfix.

    mutating func expression(allowConditional: Bool = true) throws(InferenceError) -> TemplateExpr {
        var e = try orExpr()
        while allowConditional, peek == .name("if") {
            i += 1
            let condition = try orExpr()
            var otherwise: TemplateExpr?
            if peek == .name("else") {
                i += 1
                otherwise = try expression()
            }
            e = .conditional(condition, then: e, otherwise: otherwise)
        }
        return e
    }

    mutating func orExpr() throws(InferenceError) -> TemplateExpr {
        var e = try andExpr()
        while peek == .name("or") {
            i += 1
            e = .binary("or", e, try andExpr())
        }
        return e
    }

    mutating func andExpr() throws(InferenceError) -> TemplateExpr {
        var e = try notExpr()
        while peek == .name("and") {
            i += 1
            e = .binary("and", e, try notExpr())
        }
        return e
    }

    mutating func notExpr() throws(InferenceError) -> TemplateExpr {
        if peek == .name("not") {
            i += 1
            return .unary("not", try notExpr())
        }
        return try comparison()
    }

    mutating func comparison() throws(InferenceError) -> TemplateExpr {
        var e = try additive()
        while true {
            if case .op(let o)? = peek, ["==", "!=", "<", ">", "<=", ">="].contains(o) {
                i += 1
                e = .binary(o, e, try additive())
            } else if peek == .name("in") {
                i += 1
                e = .binary("in", e, try additive())
            } else if peek == .name("not"), i + 1 < tokens.count, tokens[i + 1] == .name("in") {
                i += 2
                e = .unary("not", .binary("in", e, try additive()))
            } else {
                return e
            }
        }
    }

    mutating func additive() throws(InferenceError) -> TemplateExpr {
        var e = try concat()
        while case .op(let o)? = peek, o == "+" || o == "-" {
            i += 1
            e = .binary(o, e, try concat())
        }
        return e
    }

    mutating func concat() throws(InferenceError) -> TemplateExpr {
        var e = try multiplicative()
        while peek == .op("~") {
            i += 1
            e = .binary("~", e, try multiplicative())
        }
        return e
    }

    mutating func multiplicative() throws(InferenceError) -> TemplateExpr {
        var e = try power()
        while case .op(let o)? = peek, ["*", "/", "//", "%"].contains(o) {
            i += 1
            e = .binary(o, e, try power())
        }
        return e
    }

    mutating func power() throws(InferenceError) -> TemplateExpr {
        var e = try unary()
        while peek == .op("**") {
            i += 1
            e = .binary("**", e, try unary())
        }
        return e
    }

    mutating func unary() throws(InferenceError) -> TemplateExpr {
        if peek == .op("-") {
            i += 1
            return .unary("-", try unary())
        }
        if peek == .op("+") {
            i += 1
            return try unary()
        }
        return try filters(try postfix(try primary()))
    }

    mutating func primary() throws(InferenceError) -> TemplateExpr {
        guard let token = peek else { throw fail("unexpected end of expression") }
        i += 1
        switch token {
        case .string(var s):
            // Adjacent string literals concatenate.
            while case .string(let more)? = peek {
                s += more
                i += 1
            }
            return .literal(.string(s))
        case .int(let v): return .literal(.int(v))
        case .double(let v): return .literal(.double(v))
        case .name(let n):
            switch n {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(n)
            }
        case .op("("):
            let e = try expression()
            if peek == .op(",") {
                // A tuple: treated as a list.
                var items = [e]
                while peek == .op(",") {
                    i += 1
                    if peek == .op(")") { break }
                    items.append(try expression())
                }
                try expect(.op(")"), "')'")
                return .list(items)
            }
            try expect(.op(")"), "')'")
            return e
        case .op("["):
            var items = [TemplateExpr]()
            while peek != .op("]") {
                items.append(try expression())
                if peek == .op(",") { i += 1 } else { break }
            }
            try expect(.op("]"), "']'")
            return .list(items)
        case .op("{"):
            var pairs = [(TemplateExpr, TemplateExpr)]()
            while peek != .op("}") {
                let k = try expression()
                try expect(.op(":"), "':'")
                pairs.append((k, try expression()))
                if peek == .op(",") { i += 1 } else { break }
            }
            try expect(.op("}"), "'}'")
            return .dict(pairs)
        default:
            throw fail("unexpected token in expression")
        }
    }

    mutating func arguments() throws(InferenceError) -> ([TemplateExpr], [(String, TemplateExpr)]) {
        var args = [TemplateExpr]()
        var kwargs = [(String, TemplateExpr)]()
        while peek != .op(")") {
            if case .name(let n)? = peek, i + 1 < tokens.count, tokens[i + 1] == .op("=") {
                i += 2
                kwargs.append((n, try expression()))
            } else {
                args.append(try expression())
            }
            if peek == .op(",") { i += 1 } else { break }
        }
        try expect(.op(")"), "')'")
        return (args, kwargs)
    }

    mutating func postfix(_ base: TemplateExpr) throws(InferenceError) -> TemplateExpr {
        var e = base
        while true {
            if peek == .op(".") {
                i += 1
                e = .attribute(e, try name())
            } else if peek == .op("[") {
                i += 1
                var parts: [TemplateExpr?] = [nil]
                var isSlice = false
                while peek != .op("]") {
                    if peek == .op(":") {
                        isSlice = true
                        parts.append(nil)
                        i += 1
                    } else {
                        parts[parts.count - 1] = try expression()
                    }
                }
                try expect(.op("]"), "']'")
                if isSlice {
                    guard parts.count <= 3 else { throw fail("bad slice") }
                    while parts.count < 3 { parts.append(nil) }
                    e = .slice(e, parts[0], parts[1], parts[2])
                } else {
                    guard let index = parts[0] else { throw fail("empty subscript") }
                    e = .index(e, index)
                }
            } else if peek == .op("(") {
                i += 1
                let (args, kwargs) = try arguments()
                e = .call(e, args, kwargs)
            } else {
                return e
            }
        }
    }

    mutating func filters(_ base: TemplateExpr) throws(InferenceError) -> TemplateExpr {
        var e = base
        while true {
            if peek == .op("|") {
                i += 1
                let f = try name()
                var args = [TemplateExpr]()
                var kwargs = [(String, TemplateExpr)]()
                if peek == .op("(") {
                    i += 1
                    (args, kwargs) = try arguments()
                }
                e = .filter(e, f, args, kwargs)
            } else if peek == .name("is") {
                i += 1
                var negated = false
                if peek == .name("not") {
                    negated = true
                    i += 1
                }
                let t = try name()
                var args = [TemplateExpr]()
                if peek == .op("(") {
                    i += 1
                    (args, _) = try arguments()
                } else if case .string? = peek {
                    args = [try primary()]
                } else if case .int? = peek {
                    args = [try primary()]
                } else if case .name(let n)? = peek, !["and", "or", "else", "if", "in", "not", "is"].contains(n) {
                    args = [try primary()]
                }
                e = .test(e, t, args, negated: negated)
            } else {
                return e
            }
        }
    }
}

// MARK: - Interpreter

struct TemplateInterpreter {
    var scopes: [[String: TemplateValue]]
    var output = ""

    init(globals: [String: TemplateValue]) {
        var g = globals
        for f in ["raise_exception", "range", "namespace", "dict", "strftime_now"] where g[f] == nil {
            g[f] = .function(f)
        }
        scopes = [g]
    }

    enum Flow: Error {
        case breakLoop
        case continueLoop
    }

    mutating func run(_ nodes: [TemplateNode]) throws {
        for node in nodes {
            try execute(node)
            if output.utf8.count > ChatTemplate.maxOutputBytes { throw TemplateError("output exceeds 16 MiB") }
        }
    }

    func lookup(_ name: String) -> TemplateValue {
        for scope in scopes.reversed() { if let v = scope[name] { return v } }
        return .undefined(name)
    }

    mutating func assign(_ name: String, _ value: TemplateValue) { scopes[scopes.count - 1][name] = value }

    mutating func execute(_ node: TemplateNode) throws {
        switch node {
        case .text(let t): output += t
        case .output(let e): output += try evaluate(e).text
        case .conditional(let branches, let otherwise):
            for (condition, body) in branches where try evaluate(condition).truthy {
                try run(body)
                return
            }
            try run(otherwise)
        case .loop(let targets, let over, let filter, let body, let otherwise):
            var items = try evaluate(over).iterate()
            if let filter {
                var kept = [TemplateValue]()
                for item in items {
                    scopes.append([:])
                    try bind(targets, item)
                    let keep = try evaluate(filter).truthy
                    scopes.removeLast()
                    if keep { kept.append(item) }
                }
                items = kept
            }
            if items.isEmpty {
                try run(otherwise)
                return
            }
            for (index, item) in items.enumerated() {
                scopes.append([:])
                defer { scopes.removeLast() }
                try bind(targets, item)
                assign(
                    "loop",
                    .dict([
                        ("index", .int(index + 1)), ("index0", .int(index)), ("first", .bool(index == 0)),
                        ("last", .bool(index == items.count - 1)), ("length", .int(items.count)),
                        ("revindex", .int(items.count - index)), ("revindex0", .int(items.count - index - 1)),
                        ("previtem", index > 0 ? items[index - 1] : .undefined("previtem")),
                        ("nextitem", index + 1 < items.count ? items[index + 1] : .undefined("nextitem")),
                    ]))
                do { try run(body) } catch Flow.continueLoop { continue } catch Flow.breakLoop { break }
            }
        case .assign(let target, let attribute, let valueExpr):
            let value = try evaluate(valueExpr)
            if let attribute {
                guard case .namespace(let ns) = lookup(target) else {
                    throw TemplateError("cannot set attribute on '\(target)': not a namespace")
                }
                ns.set(attribute, value)
            } else {
                assign(target, value)
            }
        case .macro(let m): assign(m.name, .macro(m))
        case .breakLoop: throw Flow.breakLoop
        case .continueLoop: throw Flow.continueLoop
        }
    }

    mutating func bind(_ targets: [String], _ item: TemplateValue) throws {
        if targets.count == 1 {
            assign(targets[0], item)
            return
        }
        guard case .list(let parts) = item, parts.count == targets.count else {
            throw TemplateError("cannot unpack \(item.typeName) into \(targets.count) names")
        }
        for (t, v) in zip(targets, parts) { assign(t, v) }
    }

    mutating func evaluate(_ e: TemplateExpr) throws -> TemplateValue {
        switch e {
        case .literal(let v): return v
        case .name(let n): return lookup(n)
        case .list(let items): return .list(try items.map { try evaluate($0) })
        case .dict(let pairs):
            var d = [(String, TemplateValue)]()
            for (k, v) in pairs { d.append((try evaluate(k).text, try evaluate(v))) }
            return .dict(d)
        case .attribute(let base, let name):
            let b = try evaluate(base)
            if case .undefined(let n) = b { throw TemplateError("'\(n)' is undefined") }
            if let v = b.lookup(name) { return v }
            if TemplateInterpreter.methods(of: b).contains(name) { return .method(b, name) }
            return .undefined(name)
        case .index(let base, let indexExpr):
            let b = try evaluate(base)
            let index = try evaluate(indexExpr)
            return try subscriptValue(b, index)
        case .slice(let base, let start, let stop, let step):
            let b = try evaluate(base)
            return try slice(
                b, start.map { try evaluate($0) }, stop.map { try evaluate($0) }, step.map { try evaluate($0) })
        case .call(let callee, let argExprs, let kwargExprs):
            let f = try evaluate(callee)
            let args = try argExprs.map { try evaluate($0) }
            var kwargs = [(String, TemplateValue)]()
            for (k, v) in kwargExprs { kwargs.append((k, try evaluate(v))) }
            return try call(f, args, kwargs)
        case .filter(let base, let name, let argExprs, let kwargExprs):
            let v = try evaluate(base)
            let args = try argExprs.map { try evaluate($0) }
            var kwargs = [(String, TemplateValue)]()
            for (k, kv) in kwargExprs { kwargs.append((k, try evaluate(kv))) }
            return try TemplateInterpreter.filter(name, v, args, kwargs)
        case .test(let base, let name, let argExprs, let negated):
            let v = try evaluate(base)
            let args = try argExprs.map { try evaluate($0) }
            let result = try TemplateInterpreter.test(name, v, args)
            return .bool(negated ? !result : result)
        case .unary(let op, let operand):
            let v = try evaluate(operand)
            switch op {
            case "not": return .bool(!v.truthy)
            default:
                if case .int(let i) = v { return .int(-i) }
                guard let n = v.number else { throw TemplateError("bad operand type for unary -: '\(v.typeName)'") }
                return .double(-n)
            }
        case .binary(let op, let lhs, let rhs):
            if op == "and" {
                let a = try evaluate(lhs)
                return a.truthy ? try evaluate(rhs) : a
            }
            if op == "or" {
                let a = try evaluate(lhs)
                return a.truthy ? a : try evaluate(rhs)
            }
            return try TemplateInterpreter.binary(op, try evaluate(lhs), try evaluate(rhs))
        case .conditional(let condition, let then, let otherwise):
            if try evaluate(condition).truthy { return try evaluate(then) }
            return try otherwise.map { try evaluate($0) } ?? .undefined("conditional")
        }
    }

    func subscriptValue(_ b: TemplateValue, _ index: TemplateValue) throws -> TemplateValue {
        switch (b, index) {
        case (.undefined(let n), _): throw TemplateError("'\(n)' is undefined")
        case (.list(let l), .int(let i)):
            let j = i < 0 ? l.count + i : i
            return l.indices.contains(j) ? l[j] : .undefined("index \(i)")
        case (.string(let s), .int(let i)):
            let chars = Array(s)
            let j = i < 0 ? chars.count + i : i
            return chars.indices.contains(j) ? .string(String(chars[j])) : .undefined("index \(i)")
        case (.dict, .string(let k)), (.namespace, .string(let k)):
            return b.lookup(k) ?? .undefined(k)
        default:
            return .undefined("subscript")
        }
    }

    func slice(_ b: TemplateValue, _ start: TemplateValue?, _ stop: TemplateValue?, _ step: TemplateValue?) throws
        -> TemplateValue
    {
        func int(_ v: TemplateValue?) throws -> Int? {
            guard let v else { return nil }
            if case .none = v { return nil }
            guard case .int(let i) = v else { throw TemplateError("slice indices must be integers") }
            return i
        }
        let stepValue = try int(step) ?? 1
        guard stepValue != 0 else { throw TemplateError("slice step cannot be zero") }
        func indices(_ count: Int) throws -> [Int] {
            func clamp(_ v: Int?, _ def: Int) -> Int {
                guard var x = v else { return def }
                if x < 0 { x += count }
                return stepValue > 0 ? min(max(x, 0), count) : min(max(x, -1), count - 1)
            }
            let s = clamp(try int(start), stepValue > 0 ? 0 : count - 1)
            let e = clamp(try int(stop), stepValue > 0 ? count : -1)
            return Array(stride(from: s, to: e, by: stepValue))
        }
        switch b {
        case .list(let l): return .list(try indices(l.count).map { l[$0] })
        case .string(let s):
            let chars = Array(s)
            return .string(String(try indices(chars.count).map { chars[$0] }))
        case .undefined(let n): throw TemplateError("'\(n)' is undefined")
        default: throw TemplateError("'\(b.typeName)' object is not subscriptable")
        }
    }

    static func methods(of v: TemplateValue) -> Set<String> {
        switch v {
        case .string:
            [
                "strip", "lstrip", "rstrip", "startswith", "endswith", "split", "upper", "lower", "title", "capitalize",
                "replace", "find", "count", "join",
            ]
        case .dict: ["items", "keys", "values", "get"]
        default: []
        }
    }

    mutating func call(_ f: TemplateValue, _ args: [TemplateValue], _ kwargs: [(String, TemplateValue)]) throws
        -> TemplateValue
    {
        switch f {
        case .function(let name):
            switch name {
            case "raise_exception": throw TemplateError(args.first?.text ?? "raise_exception called")
            case "range":
                let ints = try args.map { v -> Int in
                    guard case .int(let i) = v else { throw TemplateError("range() takes integers") }
                    return i
                }
                let (s, e, st): (Int, Int, Int) =
                    switch ints.count {
                    case 1: (0, ints[0], 1)
                    case 2: (ints[0], ints[1], 1)
                    case 3: (ints[0], ints[1], ints[2])
                    default: throw TemplateError("range() takes 1-3 arguments")
                    }
                guard st != 0 else { throw TemplateError("range() step cannot be zero") }
                let values = Array(stride(from: s, to: e, by: st))
                guard values.count <= 100_000 else { throw TemplateError("range() is too long") }
                return .list(values.map { .int($0) })
            case "namespace": return .namespace(TemplateNamespace(kwargs))
            case "dict": return .dict(kwargs)
            case "strftime_now":
                var t = time(nil)
                var tmValue = tm()
                localtime_r(&t, &tmValue)
                var buffer = [Int8](repeating: 0, count: 256)
                let n = strftime(&buffer, buffer.count, args.first?.text ?? "", &tmValue)
                return .string(String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self))
            default: throw TemplateError("'\(name)' is not callable")
            }
        case .method(let receiver, let name):
            return try TemplateInterpreter.method(receiver, name, args)
        case .macro(let m):
            scopes.append([:])
            defer { scopes.removeLast() }
            for (index, (param, def)) in m.parameters.enumerated() {
                if index < args.count {
                    assign(param, args[index])
                } else if let kw = kwargs.first(where: { $0.0 == param }) {
                    assign(param, kw.1)
                } else if let def {
                    assign(param, try evaluate(def))
                } else {
                    assign(param, .undefined(param))
                }
            }
            let saved = output
            output = ""
            try run(m.body)
            let result = output
            output = saved
            return .string(result)
        case .undefined(let n): throw TemplateError("'\(n)' is undefined")
        default: throw TemplateError("'\(f.typeName)' object is not callable")
        }
    }

    static func pythonStrip(_ s: String, _ chars: String?, leading: Bool, trailing: Bool) -> String {
        let set: (Character) -> Bool = chars.map { c in { c.contains($0) } } ?? { $0.isWhitespace }
        var view = Substring(s)
        if leading { while let f = view.first, set(f) { view.removeFirst() } }
        if trailing { while let l = view.last, set(l) { view.removeLast() } }
        return String(view)
    }

    static func method(_ receiver: TemplateValue, _ name: String, _ args: [TemplateValue]) throws -> TemplateValue {
        switch (receiver, name) {
        case (.string(let s), "strip"):
            return .string(pythonStrip(s, args.first?.stringValue, leading: true, trailing: true))
        case (.string(let s), "lstrip"):
            return .string(pythonStrip(s, args.first?.stringValue, leading: true, trailing: false))
        case (.string(let s), "rstrip"):
            return .string(pythonStrip(s, args.first?.stringValue, leading: false, trailing: true))
        case (.string(let s), "startswith"), (.string(let s), "endswith"):
            let options: [String] =
                switch args.first {
                case .string(let p)?: [p]
                case .list(let l)?: l.compactMap(\.stringValue)
                default: throw TemplateError("\(name)() takes a string")
                }
            return .bool(options.contains { name == "startswith" ? s.hasPrefix($0) : s.hasSuffix($0) })
        case (.string(let s), "split"):
            if let sep = args.first?.stringValue {
                guard !sep.isEmpty else { throw TemplateError("empty separator") }
                return .list(s.components(separatedBy: sep).map { .string($0) })
            }
            return .list(s.split(whereSeparator: \.isWhitespace).map { .string(String($0)) })
        case (.string(let s), "upper"): return .string(s.uppercased())
        case (.string(let s), "lower"): return .string(s.lowercased())
        case (.string(let s), "title"): return .string(s.capitalized)
        case (.string(let s), "capitalize"): return .string(s.prefix(1).uppercased() + s.dropFirst().lowercased())
        case (.string(let s), "replace"):
            guard let a = args.first?.stringValue, args.count >= 2, let b = args[1].stringValue else {
                throw TemplateError("replace() takes two strings")
            }
            return .string(s.replacingOccurrences(of: a, with: b))
        case (.string(let s), "find"):
            guard let needle = args.first?.stringValue else { throw TemplateError("find() takes a string") }
            guard let r = s.range(of: needle) else { return .int(-1) }
            return .int(s.distance(from: s.startIndex, to: r.lowerBound))
        case (.string(let s), "count"):
            guard let needle = args.first?.stringValue, !needle.isEmpty else {
                throw TemplateError("count() takes a string")
            }
            return .int(s.components(separatedBy: needle).count - 1)
        case (.string(let s), "join"):
            return .string(try (args.first ?? .list([])).iterate().map(\.text).joined(separator: s))
        case (.dict(let d), "items"): return .list(d.map { .list([.string($0.0), $0.1]) })
        case (.dict(let d), "keys"): return .list(d.map { .string($0.0) })
        case (.dict(let d), "values"): return .list(d.map { $0.1 })
        case (.dict, "get"):
            guard let key = args.first?.stringValue else { throw TemplateError("get() takes a key") }
            return receiver.lookup(key) ?? (args.count > 1 ? args[1] : .none)
        default: throw TemplateError("'\(receiver.typeName)' has no method '\(name)'")
        }
    }

    static func binary(_ op: String, _ a: TemplateValue, _ b: TemplateValue) throws -> TemplateValue {
        switch op {
        case "~": return .string(a.text + b.text)
        case "==": return .bool(TemplateValue.equal(a, b))
        case "!=": return .bool(!TemplateValue.equal(a, b))
        case "in":
            switch b {
            case .string(let s):
                guard let n = a.stringValue else { throw TemplateError("'in <string>' requires a string") }
                return .bool(s.contains(n))
            case .list(let l): return .bool(l.contains { TemplateValue.equal($0, a) })
            case .dict, .namespace: return .bool(a.stringValue.map { b.lookup($0) != nil } ?? false)
            case .undefined(let n): throw TemplateError("'\(n)' is undefined")
            default: throw TemplateError("argument of type '\(b.typeName)' is not iterable")
            }
        case "<", ">", "<=", ">=":
            let order: Int
            if case .string(let x) = a, case .string(let y) = b {
                order = x < y ? -1 : (x == y ? 0 : 1)
            } else if let x = a.number, let y = b.number {
                order = x < y ? -1 : (x == y ? 0 : 1)
            } else {
                throw TemplateError("'\(op)' not supported between '\(a.typeName)' and '\(b.typeName)'")
            }
            switch op {
            case "<": return .bool(order < 0)
            case ">": return .bool(order > 0)
            case "<=": return .bool(order <= 0)
            default: return .bool(order >= 0)
            }
        case "+":
            switch (a, b) {
            case (.string(let x), .string(let y)): return .string(x + y)
            case (.list(let x), .list(let y)): return .list(x + y)
            case (.int(let x), .int(let y)): return .int(x &+ y)
            default:
                if case .undefined(let n) = a { throw TemplateError("'\(n)' is undefined") }
                if case .undefined(let n) = b { throw TemplateError("'\(n)' is undefined") }
                guard let x = a.number, let y = b.number, !a.isString, !b.isString else {
                    throw TemplateError("unsupported operand types for +: '\(a.typeName)' and '\(b.typeName)'")
                }
                return .double(x + y)
            }
        case "*":
            if case .string(let s) = a, case .int(let n) = b {
                return .string(String(repeating: s, count: max(0, min(n, 1 << 16))))
            }
            fallthrough
        default:
            if case .int(let x) = a, case .int(let y) = b {
                switch op {
                case "-": return .int(x &- y)
                case "*": return .int(x &* y)
                case "//":
                    guard y != 0 else { throw TemplateError("integer division by zero") }
                    return .int(Int((Double(x) / Double(y)).rounded(.down)))
                case "%":
                    guard y != 0 else { throw TemplateError("integer modulo by zero") }
                    return .int(((x % y) + y) % y)
                default: break
                }
            }
            guard let x = a.number, let y = b.number, !a.isString, !b.isString else {
                throw TemplateError("unsupported operand types for \(op): '\(a.typeName)' and '\(b.typeName)'")
            }
            switch op {
            case "-": return .double(x - y)
            case "*": return .double(x * y)
            case "/":
                guard y != 0 else { throw TemplateError("division by zero") }
                return .double(x / y)
            case "//":
                guard y != 0 else { throw TemplateError("division by zero") }
                return .double((x / y).rounded(.down))
            case "%":
                guard y != 0 else { throw TemplateError("modulo by zero") }
                return .double(x - y * (x / y).rounded(.down))
            case "**": return .double(pow(x, y))
            default: throw TemplateError("operator \(op) is not supported")
            }
        }
    }

    static func filter(_ name: String, _ v: TemplateValue, _ args: [TemplateValue], _ kwargs: [(String, TemplateValue)])
        throws -> TemplateValue
    {
        func kw(_ key: String, _ position: Int) -> TemplateValue? {
            kwargs.first { $0.0 == key }?.1 ?? (position < args.count ? args[position] : nil)
        }
        switch name {
        case "trim": return .string(pythonStrip(v.text, kw("chars", 0)?.stringValue, leading: true, trailing: true))
        case "length", "count":
            switch v {
            case .string(let s): return .int(s.count)
            case .list(let l): return .int(l.count)
            case .dict(let d): return .int(d.count)
            case .undefined: return .int(0)
            default: throw TemplateError("object of type '\(v.typeName)' has no len()")
            }
        case "upper": return .string(v.text.uppercased())
        case "lower": return .string(v.text.lowercased())
        case "capitalize": return .string(v.text.prefix(1).uppercased() + v.text.dropFirst().lowercased())
        case "title": return .string(v.text.capitalized)
        case "string": return .string(v.text)
        case "safe": return v
        case "int":
            if case .int = v { return v }
            if let n = v.number { return .int(Int(n)) }
            return .int(Int(v.text.trimmingCharacters(in: .whitespaces)) ?? 0)
        case "float": return .double(v.number ?? Double(v.text) ?? 0)
        case "abs":
            if case .int(let i) = v { return .int(abs(i)) }
            return .double(abs(v.number ?? 0))
        case "default", "d":
            let fallback = kw("default_value", 0) ?? .string("")
            let boolean = kw("boolean", 1)?.truthy ?? false
            if !v.isDefined || (boolean && !v.truthy) { return fallback }
            return v
        case "first": return try v.iterate().first ?? .undefined("first")
        case "last": return try v.iterate().last ?? .undefined("last")
        case "list": return .list(try v.iterate())
        case "reverse":
            if case .string(let s) = v { return .string(String(s.reversed())) }
            return .list(try v.iterate().reversed())
        case "join":
            let sep = kw("d", 0)?.text ?? ""
            if let attr = kw("attribute", 1)?.stringValue {
                return .string(try v.iterate().map { $0.lookup(attr)?.text ?? "" }.joined(separator: sep))
            }
            return .string(try v.iterate().map(\.text).joined(separator: sep))
        case "replace":
            guard args.count >= 2 else { throw TemplateError("replace needs two arguments") }
            return .string(v.text.replacingOccurrences(of: args[0].text, with: args[1].text))
        case "items":
            guard case .dict(let d) = v else { return .list([]) }
            return .list(d.map { .list([.string($0.0), $0.1]) })
        case "tojson":
            guard let json = v.json else { throw TemplateError("tojson: \(v.typeName) is not JSON-serializable") }
            let indent = kw("indent", 0).flatMap { if case .int(let i) = $0 { i } else { nil } }
            return .string(pythonJSON(json, indent: indent, depth: 0))
        case "selectattr", "rejectattr":
            guard let attr = args.first?.stringValue else { throw TemplateError("\(name) needs an attribute name") }
            let items = try v.iterate()
            let kept = try items.filter { item in
                let value = item.lookup(attr) ?? .undefined(attr)
                let pass = args.count > 1 ? try test(args[1].text, value, Array(args.dropFirst(2))) : value.truthy
                return name == "selectattr" ? pass : !pass
            }
            return .list(kept)
        case "map":
            guard let attr = kwargs.first(where: { $0.0 == "attribute" })?.1.stringValue else {
                throw TemplateError("map is supported with attribute= only")
            }
            return .list(try v.iterate().map { $0.lookup(attr) ?? .undefined(attr) })
        case "unique":
            var out = [TemplateValue]()
            for item in try v.iterate() where !out.contains(where: { TemplateValue.equal($0, item) }) {
                out.append(item)
            }
            return .list(out)
        default:
            throw TemplateError("filter '\(name)' is not supported")
        }
    }

    /// `json.dumps(value, ensure_ascii=False, indent=indent)`.
    static func pythonJSON(_ value: JSONValue, indent: Int?, depth: Int) -> String {
        guard let indent else {
            var out = ""
            value.write(to: &out, separators: (", ", ": "), asciiOnly: false)
            return out
        }
        let pad = String(repeating: " ", count: indent * (depth + 1))
        let closePad = String(repeating: " ", count: indent * depth)
        switch value {
        case .array(let items) where !items.isEmpty:
            return "[\n" + items.map { pad + pythonJSON($0, indent: indent, depth: depth + 1) }.joined(separator: ",\n")
                + "\n" + closePad + "]"
        case .object(let pairs) where !pairs.isEmpty:
            return "{\n"
                + pairs.map { k, v in
                    var key = ""
                    JSONValue.quote(k, into: &key, asciiOnly: false)
                    return pad + key + ": " + pythonJSON(v, indent: indent, depth: depth + 1)
                }.joined(separator: ",\n") + "\n" + closePad + "}"
        default:
            var out = ""
            value.write(to: &out, separators: (", ", ": "), asciiOnly: false)
            return out
        }
    }

    static func test(_ name: String, _ v: TemplateValue, _ args: [TemplateValue]) throws -> Bool {
        switch name {
        case "defined": return v.isDefined
        case "undefined": return !v.isDefined
        case "none": if case .none = v { return true } else { return false }
        case "string": return v.isString
        case "number": if case .int = v { return true } else if case .double = v { return true } else { return false }
        case "integer": if case .int = v { return true } else { return false }
        case "float": if case .double = v { return true } else { return false }
        case "boolean": if case .bool = v { return true } else { return false }
        case "true": if case .bool(true) = v { return true } else { return false }
        case "false": if case .bool(false) = v { return true } else { return false }
        case "mapping":
            if case .dict = v { return true } else if case .namespace = v { return true } else { return false }
        case "iterable", "sequence":
            switch v {
            case .list, .string, .dict: return true
            default: return false
            }
        case "callable":
            switch v {
            case .function, .method, .macro: return true
            default: return false
            }
        case "eq", "equalto", "==": return TemplateValue.equal(v, args.first ?? .none)
        case "ne", "!=": return !TemplateValue.equal(v, args.first ?? .none)
        case "in": return try binary("in", v, args.first ?? .list([])).truthy
        case "odd", "even", "divisibleby":
            guard case .int(let i) = v else { throw TemplateError("\(name) needs an integer") }
            if name == "odd" { return i % 2 != 0 }
            if name == "even" { return i % 2 == 0 }
            guard case .int(let d)? = args.first, d != 0 else {
                throw TemplateError("divisibleby needs a non-zero integer")
            }
            return i % d == 0
        case "lower": return v.text == v.text.lowercased()
        case "upper": return v.text == v.text.uppercased()
        default: throw TemplateError("test '\(name)' is not supported")
        }
    }
}

extension TemplateValue {
    var stringValue: String? { if case .string(let s) = self { s } else { nil } }
}
