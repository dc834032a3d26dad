import Foundation

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
