import Foundation

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
