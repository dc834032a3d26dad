import AttestationCore
import Foundation

/// One decision to audit, before the log gives it a place in the chain.
public struct AuditEvent: Sendable, Equatable {
    /// `admission`, `reattestation`, `eviction`, `session-key`, `policy-applied`, `admin-login`, ...
    public var event: String
    /// Who decided: `gateway` for the gateway's own decisions, `admin` for the admin API, `config`.
    public var actor: String
    public var worker: String?
    /// `admit`, `reject`, `pass`, `fail`, `evicted`, `issued`, `applied`, ...
    public var decision: String?
    /// Reason codes (FORMAT.md's, and the gateway's own `worker.*`, `admin.*`, `session.*`).
    public var reasons: [String]
    /// The policy version the decision was taken under.
    public var policyVersion: Int?
    /// SHA-256 of the evidence envelope decided on (the envelope itself is stored beside it).
    public var evidenceSHA256: String?
    /// SHA-256 of the collateral the decision used, where it came from outside the evidence.
    public var collateralSHA256: String?
    public var detail: [String: String]
    /// The fingerprint of the key of the gateway that wrote the entry, where several gateways
    /// share one chain (set by the store; absent in a single gateway's older entries).
    public var gateway: String?

    public init(
        event: String, actor: String = "gateway", worker: String? = nil, decision: String? = nil,
        reasons: [String] = [], policyVersion: Int? = nil, evidenceSHA256: String? = nil,
        collateralSHA256: String? = nil, detail: [String: String] = [:]
    ) {
        self.event = event
        self.actor = actor
        self.worker = worker
        self.decision = decision
        self.reasons = reasons
        self.policyVersion = policyVersion
        self.evidenceSHA256 = evidenceSHA256
        self.collateralSHA256 = collateralSHA256
        self.detail = detail
    }
}

/// An entry in the chain: the event, its sequence number and time, the hash of the entry before
/// it, and its own hash.
///
/// `hash` = SHA-256 of the canonical JSON (``CanonicalJSON``) of every field but `hash`; the
/// stored and exported line is the canonical JSON of every field including it. Each entry
/// therefore checks itself, and names the one before it: editing, removing, reordering or
/// inserting an entry breaks a link that `AuditVerifier` reports by entry number.
public struct AuditEntry: Sendable, Equatable {
    public let seq: Int
    public let time: Date
    public let prev: String
    public let hash: String
    public let event: AuditEvent
    /// The exported line (without a newline).
    public let line: [UInt8]

    public static let genesis = String(repeating: "0", count: 64)

    /// Chains `event` after the entry with hash `prev`.
    public init(seq: Int, time: Date, prev: String, event: AuditEvent) {
        var body = Self.body(seq: seq, time: time, prev: prev, event: event)
        let hash = HashAlgorithm.sha256.hash(CanonicalJSON.encode(.object(body))).hex
        body["hash"] = .string(hash)
        self.seq = seq
        self.time = time
        self.prev = prev
        self.hash = hash
        self.event = event
        self.line = CanonicalJSON.encode(.object(body))
    }

    static func body(seq: Int, time: Date, prev: String, event: AuditEvent) -> [String: JSONValue] {
        var body: [String: JSONValue] = [
            "seq": .int(seq), "time": .string(time.rfc3339), "prev": .string(prev), "event": .string(event.event),
            "actor": .string(event.actor), "reasons": .array(event.reasons.map(JSONValue.string)),
        ]
        if let w = event.worker { body["worker"] = .string(w) }
        if let d = event.decision { body["decision"] = .string(d) }
        if let v = event.policyVersion { body["policy_version"] = .int(v) }
        if let e = event.evidenceSHA256 { body["evidence_sha256"] = .string(e) }
        if let c = event.collateralSHA256 { body["collateral_sha256"] = .string(c) }
        if let g = event.gateway { body["gateway"] = .string(g) }
        if !event.detail.isEmpty { body["detail"] = .object(event.detail.mapValues(JSONValue.string)) }
        return body
    }

    /// Reads an entry back from its line, checking that the line is canonical-form-consistent:
    /// its `hash` must be the hash of the rest. Returns nil with a reason otherwise.
    public static func parse(line: some Collection<UInt8>) -> Result<AuditEntry, AuditLineError> {
        guard let value = CanonicalJSON.parse(line), var fields = value.object else {
            return .failure(.init("not a JSON object"))
        }
        guard let hash = fields.removeValue(forKey: "hash")?.string else { return .failure(.init("has no hash")) }
        let computed = HashAlgorithm.sha256.hash(CanonicalJSON.encode(.object(fields))).hex
        guard computed == hash else {
            return .failure(.init("its content does not match its hash (the entry was altered)"))
        }
        guard let seq = fields["seq"]?.int, let timeText = fields["time"]?.string, let time = Date.rfc3339(timeText),
            let prev = fields["prev"]?.string, let event = fields["event"]?.string, let actor = fields["actor"]?.string
        else { return .failure(.init("lacks seq, time, prev, event or actor")) }
        var decoded = AuditEvent(event: event, actor: actor)
        decoded.worker = fields["worker"]?.string
        decoded.decision = fields["decision"]?.string
        decoded.reasons = fields["reasons"]?.array?.compactMap(\.string) ?? []
        decoded.policyVersion = fields["policy_version"]?.int
        decoded.evidenceSHA256 = fields["evidence_sha256"]?.string
        decoded.collateralSHA256 = fields["collateral_sha256"]?.string
        decoded.gateway = fields["gateway"]?.string
        decoded.detail = fields["detail"]?.object?.compactMapValues(\.string) ?? [:]
        // Nothing beyond the schema, in no other shape: it would otherwise ride along unread
        // (the hash covers it, but no reader would show it).
        guard Set(fields.keys).isSubset(of: schemaKeys), time.rfc3339 == timeText,
            fields["reasons"]?.array?.count == decoded.reasons.count,
            fields["detail"].map({ $0.object?.count == decoded.detail.count }) ?? true,
            fields["gateway"].map({ $0.string != nil }) ?? true
        else { return .failure(.init("holds fields outside the audit schema")) }
        return .success(AuditEntry(seq: seq, time: time, prev: prev, hash: hash, event: decoded, line: Array(line)))
    }

    static let schemaKeys: Set<String> = [
        "seq", "time", "prev", "event", "actor", "reasons", "worker", "decision", "policy_version", "evidence_sha256",
        "collateral_sha256", "detail", "gateway",
    ]

    private init(seq: Int, time: Date, prev: String, hash: String, event: AuditEvent, line: [UInt8]) {
        self.seq = seq
        self.time = time
        self.prev = prev
        self.hash = hash
        self.event = event
        self.line = line
    }
}

public struct AuditLineError: Error, CustomStringConvertible, Equatable {
    public let message: String
    init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The state of the chain after its last entry.
public struct ChainHead: Sendable, Equatable {
    public let count: Int
    public let hash: String
    public static let empty = ChainHead(count: 0, hash: AuditEntry.genesis)
    public init(count: Int, hash: String) {
        self.count = count
        self.hash = hash
    }
}

/// The kinds of audit entry the gateway writes (the `event` field). The raw strings are what the
/// chain stores and exports; they never change.
public enum AuditEventKind: String, Sendable, CaseIterable {
    case admission
    case reattestation
    case eviction
    case disconnect
    case sessionKey = "session-key"
    case protocolError = "protocol-error"
    case policyApplied = "policy-applied"
    case policyApply = "policy-apply"
    /// A version another gateway on the shared store applied, put in force (or refused) here.
    case policyAdopted = "policy-adopted"
    case adminLogin = "admin-login"
    case gatewayStart = "gateway-start"
    case stakeCheck = "stake-check"
    case checkpoint
}

/// What an audit entry decided (the `decision` field), with stable raw strings.
public enum AuditDecision: String, Sendable, CaseIterable {
    case admit, reject, pass, fail, evicted, closed, issued, applied, refused, started, stale, accept, signed
}

extension AuditEvent {
    /// An entry of a known kind and decision.
    public init(
        _ kind: AuditEventKind, actor: String = "gateway", worker: String? = nil, decision: AuditDecision? = nil,
        reasons: [String] = [], policyVersion: Int? = nil, evidenceSHA256: String? = nil,
        collateralSHA256: String? = nil,
        detail: [String: String] = [:]
    ) {
        self.init(
            event: kind.rawValue, actor: actor, worker: worker, decision: decision?.rawValue, reasons: reasons,
            policyVersion: policyVersion, evidenceSHA256: evidenceSHA256, collateralSHA256: collateralSHA256,
            detail: detail)
    }

    /// The entry's kind, when it is one the gateway writes.
    public var kind: AuditEventKind? { AuditEventKind(rawValue: event) }
}
