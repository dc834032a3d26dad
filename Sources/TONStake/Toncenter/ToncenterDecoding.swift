import Foundation
import TONKit

/// A TVM integer (up to 257 bits): sign and big-endian magnitude, without leading zeros.
public struct TVMInteger: Sendable, Hashable, CustomStringConvertible {
    public let negative: Bool
    public let magnitude: [UInt8]

    public init(negative: Bool, magnitude: [UInt8]) {
        let trimmed = Array(magnitude.drop { $0 == 0 })
        self.negative = negative && !trimmed.isEmpty
        self.magnitude = trimmed
    }

    public init(_ value: Int64) {
        self.init(negative: value < 0, magnitude: withUnsafeBytes(of: value.magnitude.bigEndian, Array.init))
    }

    /// `0x1f`, `-0x1` (toncenter's top-level form) or decimal (inside tuples and lists).
    public init?(_ text: String) {
        var t = Substring(text)
        let negative = t.hasPrefix("-")
        if negative { t = t.dropFirst() }
        var mag = [UInt8]()
        if t.hasPrefix("0x") || t.hasPrefix("0X") {
            let digits = t.dropFirst(2)
            // 257 bits at most, and the hex digits of it (only digits: no second "0x").
            guard !digits.isEmpty, digits.count <= 66, digits.allSatisfy({ $0.isASCII && $0.isHexDigit }),
                let bytes = Data(hex: digits.count % 2 == 1 ? "0" + digits : String(digits))
            else { return nil }
            mag = [UInt8](bytes)
        } else {
            let dec = Array(t.utf8)
            guard !dec.isEmpty, dec.count <= 80, dec.allSatisfy({ (0x30...0x39).contains($0) }) else { return nil }
            for c in dec {
                // magnitude = magnitude * 10 + digit
                var carry = Int(c - 0x30)
                for i in stride(from: mag.count - 1, through: 0, by: -1) {
                    let v = Int(mag[i]) * 10 + carry
                    mag[i] = UInt8(v & 0xFF)
                    carry = v >> 8
                }
                while carry > 0 {
                    mag.insert(UInt8(carry & 0xFF), at: 0)
                    carry >>= 8
                }
            }
        }
        guard mag.drop(while: { $0 == 0 }).count <= 33 else { return nil }
        self.init(negative: negative, magnitude: mag)
    }

    public var isZero: Bool { magnitude.isEmpty }

    /// The value as an amount (nanotons): nil when negative or wider than 128 bits.
    public var uint128: UInt128? {
        guard !negative, magnitude.count <= 16 else { return nil }
        return magnitude.reduce(UInt128(0)) { $0 << 8 | UInt128($1) }
    }

    public var int64: Int64? {
        guard magnitude.count <= 8 else { return nil }
        let m = magnitude.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        if negative { return m <= UInt64(Int64.max) + 1 ? Int64(truncatingIfNeeded: 0 &- m) : nil }
        return m <= UInt64(Int64.max) ? Int64(m) : nil
    }

    /// The value as 32 big-endian bytes (a public key, an account id): nil when negative or wider.
    public var bytes32: [UInt8]? {
        guard !negative, magnitude.count <= 32 else { return nil }
        return [UInt8](repeating: 0, count: 32 - magnitude.count) + magnitude
    }

    public var description: String {
        guard !magnitude.isEmpty else { return "0" }
        var digits = [UInt8]()
        var m = magnitude
        while !m.isEmpty {
            var remainder = 0
            var next = [UInt8]()
            for byte in m {
                let v = remainder << 8 | Int(byte)
                let q = v / 10
                remainder = v % 10
                if !(next.isEmpty && q == 0) { next.append(UInt8(q)) }
            }
            digits.append(UInt8(remainder) + 0x30)
            m = next
        }
        return (negative ? "-" : "") + String(decoding: digits.reversed(), as: UTF8.self)
    }
}

/// A value on a TVM stack as toncenter returns it.
public indirect enum TVMValue: Sendable, Equatable {
    case int(TVMInteger)
    case cell(Cell)
    /// A null (an empty dictionary) or a list flattened from nested pairs; toncenter renders
    /// both as `tvm.list`.
    case list([TVMValue])
    case tuple([TVMValue])

    public var integer: TVMInteger? { if case .int(let i) = self { i } else { nil } }
    public var cellValue: Cell? { if case .cell(let c) = self { c } else { nil } }
}

/// A toncenter v2 failure, classified for the caller's retry and trust decisions.
public struct ToncenterError: Error, CustomStringConvertible, Equatable {
    public enum Kind: String, Sendable {
        /// 429: slow down and retry.
        case rateLimited = "toncenter.rate-limited"
        /// 5xx or a liteserver error: retry later, another endpoint may answer.
        case unavailable = "toncenter.unavailable"
        /// 4xx other than 429: the request is wrong; retrying will not help.
        case rejected = "toncenter.rejected"
        /// Not a toncenter answer (garbage JSON, a missing field, a bad BoC).
        case malformed = "toncenter.malformed"
    }
    public let kind: Kind
    public let status: Int
    public let message: String
    public init(_ kind: Kind, status: Int, _ message: String) {
        self.kind = kind
        self.status = status
        self.message = message
    }
    public var description: String { "\(kind.rawValue) (HTTP \(status)): \(message)" }
}

/// A get-method's result.
public struct RunGetMethodResult: Sendable, Equatable {
    public let exitCode: Int
    public let gasUsed: Int
    /// Top of the stack last, as TVM and toncenter order it.
    public let stack: [TVMValue]
    /// The masterchain block the method ran at, when the server says.
    public let blockSeqno: Int?
}

/// `getAddressInformation`.
public struct AccountInformation: Sendable, Equatable {
    public let balance: UInt128
    public let state: String
    public let code: Cell?
    public let data: Cell?
    public let lastTransactionLT: String?
    public let blockSeqno: Int?
    public let syncTime: Int?
}

/// Decodes toncenter v2 response bodies (the python server and the C++ one, REST and JSON-RPC).
///
/// Quirks handled (`../shared/testdata/ton/toncenter`): `ok: false` with the message in `error`
/// or in `result`; `exit_code ≠ 0` with `ok: true`; balances as decimal strings, or the number 0;
/// top-level integers as hex (`-0x1`), nested ones as decimal tonlib objects; cells as BoCs.
/// Threat: a compromised or broken endpoint. Nothing here trusts a field it did not check:
/// garbage is `toncenter.malformed`, never a zero balance.
public enum ToncenterDecoding {
    /// The `result` of an envelope, or the classified error.
    public static func result(_ body: Data, status: Int) throws(ToncenterError) -> Any {
        guard body.count <= 8 << 20, let object = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any]
        else {
            throw classify(status: status, message: "not a JSON object", malformedWhenOK: true)
        }
        let ok = object["ok"] as? Bool
        if ok == true, (200..<300).contains(status), let result = object["result"] { return result }
        let message = object["error"] as? String ?? object["result"] as? String ?? "no message"
        let code = object["code"] as? Int ?? status
        if ok == true { throw ToncenterError(.malformed, status: status, "ok without a result") }
        throw classify(status: code == 0 ? status : code, message: message, malformedWhenOK: false)
    }

    static func classify(status: Int, message: String, malformedWhenOK: Bool) -> ToncenterError {
        switch status {
        case 429: return ToncenterError(.rateLimited, status: status, message)
        case 500...599: return ToncenterError(.unavailable, status: status, message)
        case 200..<300: return ToncenterError(malformedWhenOK ? .malformed : .rejected, status: status, message)
        default: return ToncenterError(.rejected, status: status, message)
        }
    }

    public static func runGetMethod(_ body: Data, status: Int) throws(ToncenterError) -> RunGetMethodResult {
        guard let r = try result(body, status: status) as? [String: Any], let exit = r["exit_code"] as? Int,
            let entries = r["stack"] as? [Any]
        else { throw ToncenterError(.malformed, status: status, "runGetMethod result lacks exit_code or stack") }
        var stack = [TVMValue]()
        for e in entries { stack.append(try value(e, status: status, depth: 0)) }
        return RunGetMethodResult(
            exitCode: exit, gasUsed: r["gas_used"] as? Int ?? 0, stack: stack,
            blockSeqno: (r["block_id"] as? [String: Any])?["seqno"] as? Int)
    }

    public static func addressInformation(_ body: Data, status: Int) throws(ToncenterError) -> AccountInformation {
        guard let r = try result(body, status: status) as? [String: Any] else {
            throw ToncenterError(.malformed, status: status, "getAddressInformation result is not an object")
        }
        let balance: UInt128
        if let text = r["balance"] as? String, let b = UInt128(text) {
            balance = b
        } else if let n = r["balance"] as? Int, n == 0 {
            balance = 0
        } else {
            throw ToncenterError(.malformed, status: status, "balance is not a decimal amount")
        }
        guard let state = r["state"] as? String else {
            throw ToncenterError(.malformed, status: status, "no account state")
        }
        func boc(_ key: String) throws(ToncenterError) -> Cell? {
            guard let text = r[key] as? String, !text.isEmpty else { return nil }
            return try cell(base64: text, status: status)
        }
        return AccountInformation(
            balance: balance, state: state, code: try boc("code"), data: try boc("data"),
            lastTransactionLT: (r["last_transaction_id"] as? [String: Any])?["lt"] as? String,
            blockSeqno: (r["block_id"] as? [String: Any])?["seqno"] as? Int, syncTime: r["sync_utime"] as? Int)
    }

    static func cell(base64 text: String, status: Int) throws(ToncenterError) -> Cell {
        guard let data = Data(base64Encoded: text) else {
            throw ToncenterError(.malformed, status: status, "a cell is not base64")
        }
        do {
            let roots = try BagOfCells.parse(data)
            guard roots.count == 1 else {
                throw ToncenterError(.malformed, status: status, "a cell BoC has \(roots.count) roots")
            }
            return roots[0]
        } catch let e as ToncenterError { throw e } catch {
            throw ToncenterError(.malformed, status: status, "bad cell: \(error)")
        }
    }

    /// Stacks nest a few levels (lists of tuples); deeper is not a get-method result.
    static let maxDepth = 16

    static func value(_ entry: Any, status: Int, depth: Int) throws(ToncenterError) -> TVMValue {
        guard depth < maxDepth else { throw ToncenterError(.malformed, status: status, "stack nested too deep") }
        // Legacy top level: ["num", "0x…"], ["cell", {"bytes": …}], ["list"|"tuple", {"elements": […]}].
        if let pair = entry as? [Any], pair.count == 2, let type = pair[0] as? String {
            switch type {
            case "num":
                guard let text = pair[1] as? String, let i = TVMInteger(text) else {
                    throw ToncenterError(.malformed, status: status, "a number entry is not an integer")
                }
                return .int(i)
            case "cell", "slice":
                guard let o = pair[1] as? [String: Any], let bytes = o["bytes"] as? String else {
                    throw ToncenterError(.malformed, status: status, "a cell entry lacks bytes")
                }
                return .cell(try cell(base64: bytes, status: status))
            case "list", "tuple":
                guard let o = pair[1] as? [String: Any], let elements = o["elements"] as? [Any] else {
                    throw ToncenterError(.malformed, status: status, "a \(type) entry lacks elements")
                }
                var items = [TVMValue]()
                for e in elements { items.append(try value(e, status: status, depth: depth + 1)) }
                return type == "list" ? .list(items) : .tuple(items)
            default:
                throw ToncenterError(.malformed, status: status, "unknown stack entry type '\(type)'")
            }
        }
        // tonlib objects (nested entries, and runGetMethodStd at every level).
        guard let o = entry as? [String: Any], let type = o["@type"] as? String else {
            throw ToncenterError(.malformed, status: status, "a stack entry is neither a pair nor a tonlib object")
        }
        switch type {
        case "tvm.stackEntryNumber":
            guard let n = (o["number"] as? [String: Any])?["number"] as? String, let i = TVMInteger(n) else {
                throw ToncenterError(.malformed, status: status, "a number object is not an integer")
            }
            return .int(i)
        case "tvm.stackEntryCell", "tvm.stackEntrySlice":
            let inner = (o["cell"] ?? o["slice"]) as? [String: Any]
            guard let bytes = inner?["bytes"] as? String else {
                throw ToncenterError(.malformed, status: status, "a cell object lacks bytes")
            }
            return .cell(try cell(base64: bytes, status: status))
        case "tvm.stackEntryTuple", "tvm.stackEntryList":
            let inner = (o["tuple"] ?? o["list"]) as? [String: Any]
            guard let elements = inner?["elements"] as? [Any] else {
                throw ToncenterError(.malformed, status: status, "a tuple object lacks elements")
            }
            var items = [TVMValue]()
            for e in elements { items.append(try value(e, status: status, depth: depth + 1)) }
            return type == "tvm.stackEntryTuple" ? .tuple(items) : .list(items)
        default:
            throw ToncenterError(.malformed, status: status, "unknown tonlib stack object '\(type)'")
        }
    }
}
