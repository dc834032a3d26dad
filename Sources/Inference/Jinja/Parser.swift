import Foundation

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
