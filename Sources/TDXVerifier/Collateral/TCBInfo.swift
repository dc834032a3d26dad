import AttestationCore
import Foundation

/// Intel's TCB info for one platform family (FMSPC): the TCB levels Intel knows, newest first,
/// with their status and advisories. Versions 2 (SGX) and 3 (SGX and TDX) are read.
public struct TCBInfo: Sendable, Equatable {
    public enum Kind: String, Sendable { case sgx = "SGX", tdx = "TDX" }

    public let kind: Kind
    public let version: Int
    public let issueDate: Date
    public let nextUpdate: Date
    public let fmspc: [UInt8]
    public let pceID: [UInt8]
    public let tcbEvaluationDataNumber: Int
    public let levels: [Level]
    /// TDX: the SEAM module Intel signs (MRSIGNER, attributes under mask), for module version 0.
    public let tdxModule: ModuleIdentity?
    /// TDX, version 3: per module version (`TDX_01`, `TDX_03`…) identity and TCB levels.
    public let tdxModuleIdentities: [ModuleIdentity]

    public struct Level: Sendable, Equatable {
        public let sgxComponents: [Int]
        public let pceSVN: Int
        public let tdxComponents: [Int]?
        public let tcbDate: Date
        public let status: String
        public let advisoryIDs: [String]
    }

    public struct ModuleIdentity: Sendable, Equatable {
        public let id: String
        public let mrSigner: [UInt8]
        public let attributes: [UInt8]
        public let attributesMask: [UInt8]
        public let levels: [IdentityLevel]
    }

    /// A level of an identity (QE or TDX module): a minimum ISV SVN and its status.
    public struct IdentityLevel: Sendable, Equatable {
        public let isvSVN: Int
        public let tcbDate: Date
        public let status: String
        public let advisoryIDs: [String]
    }

    /// TCB info is a few KiB to a few tens of KiB (SGX families have dozens of levels).
    static let maxSize = 1 << 20

    public static func parse(_ text: String) -> Result<TCBInfo, Reason> {
        let bad = { (what: String) in Reason(.evidenceMalformed, "tdx.collateral.tcb-info", "TCB info: \(what)") }
        guard text.utf8.count <= maxSize else { return .failure(bad("larger than \(maxSize) bytes")) }
        guard let object = JSONObject(text: text) else { return .failure(bad("not a JSON object")) }
        guard let version = object.int("version"), [2, 3].contains(version) else {
            return .failure(bad("version must be 2 or 3"))
        }
        let kind: Kind
        if version == 2 {
            kind = .sgx
        } else {
            guard let id = object.string("id"), let k = Kind(rawValue: id) else {
                return .failure(bad("id must be SGX or TDX"))
            }
            kind = k
        }
        guard let issue = object.date("issueDate"), let next = object.date("nextUpdate") else {
            return .failure(bad("issueDate/nextUpdate missing or not RFC 3339"))
        }
        guard let fmspc = object.hex("fmspc", bytes: 6), let pceID = object.hex("pceId", bytes: 2) else {
            return .failure(bad("fmspc (6 bytes) and pceId (2 bytes) are required"))
        }
        guard let eval = object.int("tcbEvaluationDataNumber") else {
            return .failure(bad("tcbEvaluationDataNumber missing"))
        }
        guard let levelObjects = object.objects("tcbLevels"), !levelObjects.isEmpty else {
            return .failure(bad("tcbLevels missing or empty"))
        }
        var levels = [Level]()
        for (i, levelObject) in levelObjects.enumerated() {
            guard let level = Self.level(levelObject, version: version, kind: kind) else {
                return .failure(bad("tcbLevels[\(i)] is malformed"))
            }
            levels.append(level)
        }
        var module: ModuleIdentity?
        var identities = [ModuleIdentity]()
        if kind == .tdx {
            if let m = object.object("tdxModule") {
                guard let parsed = Self.module(m, id: "TDX_00") else { return .failure(bad("tdxModule is malformed")) }
                module = parsed
            }
            for (i, m) in (object.objects("tdxModuleIdentities") ?? []).enumerated() {
                guard let id = m.string("id"), let parsed = Self.module(m, id: id) else {
                    return .failure(bad("tdxModuleIdentities[\(i)] is malformed"))
                }
                identities.append(parsed)
            }
        }
        return .success(
            TCBInfo(
                kind: kind, version: version, issueDate: issue, nextUpdate: next, fmspc: fmspc, pceID: pceID,
                tcbEvaluationDataNumber: eval, levels: levels, tdxModule: module, tdxModuleIdentities: identities))
    }

    private static func level(_ object: JSONObject, version: Int, kind: Kind) -> Level? {
        guard let tcb = object.object("tcb"), let date = object.date("tcbDate"), let status = object.string("tcbStatus")
        else {
            return nil
        }
        let advisories = object.strings("advisoryIDs") ?? []
        guard let pceSVN = tcb.int("pcesvn") else { return nil }
        var sgx = [Int]()
        var tdx: [Int]?
        if version == 2 {
            for i in 1...16 {
                guard let svn = tcb.int(String(format: "sgxtcbcomp%02dsvn", i)) else { return nil }
                sgx.append(svn)
            }
        } else {
            guard let comps = tcb.objects("sgxtcbcomponents"), comps.count == 16 else { return nil }
            for c in comps {
                guard let svn = c.int("svn") else { return nil }
                sgx.append(svn)
            }
            if kind == .tdx {
                guard let comps = tcb.objects("tdxtcbcomponents"), comps.count == 16 else { return nil }
                var values = [Int]()
                for c in comps {
                    guard let svn = c.int("svn") else { return nil }
                    values.append(svn)
                }
                tdx = values
            }
        }
        return Level(
            sgxComponents: sgx, pceSVN: pceSVN, tdxComponents: tdx, tcbDate: date, status: status,
            advisoryIDs: advisories)
    }

    private static func module(_ object: JSONObject, id: String) -> ModuleIdentity? {
        guard let signer = object.hex("mrsigner", bytes: 48), let attributes = object.hex("attributes", bytes: 8),
            let mask = object.hex("attributesMask", bytes: 8)
        else { return nil }
        var levels = [IdentityLevel]()
        for l in object.objects("tcbLevels") ?? [] {
            guard let level = identityLevel(l) else { return nil }
            levels.append(level)
        }
        return ModuleIdentity(id: id, mrSigner: signer, attributes: attributes, attributesMask: mask, levels: levels)
    }

    static func identityLevel(_ object: JSONObject) -> IdentityLevel? {
        guard let tcb = object.object("tcb"), let svn = tcb.int("isvsvn"), let date = object.date("tcbDate"),
            let status = object.string("tcbStatus")
        else { return nil }
        return IdentityLevel(
            isvSVN: svn, tcbDate: date, status: status, advisoryIDs: object.strings("advisoryIDs") ?? [])
    }
}

/// Intel's identity of the quoting enclave (`enclaveIdentity`, version 2): the expected
/// MRSIGNER, ISVPRODID, MISCSELECT and ATTRIBUTES under masks, and TCB levels by ISV SVN.
public struct QEIdentity: Sendable, Equatable {
    /// `QE` for SGX quotes, `TD_QE` for TDX quotes.
    public let id: String
    public let version: Int
    public let issueDate: Date
    public let nextUpdate: Date
    public let tcbEvaluationDataNumber: Int
    public let miscSelect: UInt32
    public let miscSelectMask: UInt32
    public let attributes: [UInt8]
    public let attributesMask: [UInt8]
    public let mrSigner: [UInt8]
    public let isvProdID: Int
    public let levels: [TCBInfo.IdentityLevel]

    public static func parse(_ text: String) -> Result<QEIdentity, Reason> {
        let bad = { (what: String) in Reason(.evidenceMalformed, "tdx.collateral.qe-identity", "QE identity: \(what)") }
        guard text.utf8.count <= TCBInfo.maxSize else { return .failure(bad("larger than \(TCBInfo.maxSize) bytes")) }
        guard let object = JSONObject(text: text) else { return .failure(bad("not a JSON object")) }
        guard let id = object.string("id"), let version = object.int("version"), version == 2 else {
            return .failure(bad("id and version 2 are required"))
        }
        guard let issue = object.date("issueDate"), let next = object.date("nextUpdate") else {
            return .failure(bad("issueDate/nextUpdate missing or not RFC 3339"))
        }
        guard let misc = object.hex("miscselect", bytes: 4), let miscMask = object.hex("miscselectMask", bytes: 4),
            let attributes = object.hex("attributes", bytes: 16),
            let attributesMask = object.hex("attributesMask", bytes: 16),
            let signer = object.hex("mrsigner", bytes: 32), let prod = object.int("isvprodid"),
            let eval = object.int("tcbEvaluationDataNumber")
        else { return .failure(bad("miscselect, attributes, masks, mrsigner, isvprodid are required")) }
        var levels = [TCBInfo.IdentityLevel]()
        for (i, l) in (object.objects("tcbLevels") ?? []).enumerated() {
            guard let level = TCBInfo.identityLevel(l) else { return .failure(bad("tcbLevels[\(i)] is malformed")) }
            levels.append(level)
        }
        guard !levels.isEmpty else { return .failure(bad("tcbLevels missing or empty")) }
        // MISCSELECT is written as the big-endian hex of the 32-bit value.
        let be = { (b: [UInt8]) in b.reduce(UInt32(0)) { $0 << 8 | UInt32($1) } }
        return .success(
            QEIdentity(
                id: id, version: version, issueDate: issue, nextUpdate: next, tcbEvaluationDataNumber: eval,
                miscSelect: be(misc), miscSelectMask: be(miscMask), attributes: attributes,
                attributesMask: attributesMask,
                mrSigner: signer, isvProdID: prod, levels: levels))
    }
}

/// A JSON object read with Foundation, with typed accessors that return nil on any mismatch.
struct JSONObject {
    let values: [String: Any]

    init?(text: String) {
        guard let data = text.data(using: .utf8),
            let any = try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]),
            let dict = any as? [String: Any]
        else { return nil }
        values = dict
    }

    init(_ values: [String: Any]) { self.values = values }

    func string(_ key: String) -> String? { values[key] as? String }
    func object(_ key: String) -> JSONObject? { (values[key] as? [String: Any]).map(JSONObject.init) }
    func objects(_ key: String) -> [JSONObject]? {
        guard let array = values[key] as? [Any] else { return nil }
        var out = [JSONObject]()
        for element in array {
            guard let dict = element as? [String: Any] else { return nil }
            out.append(JSONObject(dict))
        }
        return out
    }
    func strings(_ key: String) -> [String]? {
        guard let array = values[key] as? [Any] else { return nil }
        let out = array.compactMap { $0 as? String }
        return out.count == array.count ? out : nil
    }
    /// A non-negative integer; booleans and fractions are refused.
    func int(_ key: String) -> Int? {
        guard let value = values[key], type(of: value) != Bool.self else { return nil }
        if let number = value as? Int { return number >= 0 ? number : nil }
        guard let d = value as? Double, d == d.rounded(), d >= 0, d < 1e12 else { return nil }
        return Int(d)
    }
    func date(_ key: String) -> Date? { string(key).flatMap(Date.rfc3339) }
    func hex(_ key: String, bytes: Int) -> [UInt8]? {
        guard let text = string(key), let data = Data(hex: text), data.count == bytes else { return nil }
        return [UInt8](data)
    }
}
