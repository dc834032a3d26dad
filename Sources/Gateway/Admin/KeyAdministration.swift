import AttestationCore
import AuditLog
import Foundation
import GatewayState
import Policy

extension AdminMessage {
    /// A named API key's settings: `POST keys` takes them, every key answer shows them.
    public struct KeySettings: Codable, Sendable, Equatable {
        public var name: String?
        /// The models it may ask for; absent: every model.
        public var models: [String]?
        public var requestsPerMinute: Int?
        public var tokensPerMinute: Int?
        public var quotaTokens: Int?
        /// `day` or `month` (UTC); `month` when a quota is given without one.
        public var quotaPeriod: String?
        public var minimumTier: String?
        /// RFC 3339.
        public var expiresAt: String?
        enum CodingKeys: String, CodingKey {
            case name, models
            case requestsPerMinute = "requests_per_minute"
            case tokensPerMinute = "tokens_per_minute"
            case quotaTokens = "quota_tokens"
            case quotaPeriod = "quota_period"
            case minimumTier = "minimum_tier"
            case expiresAt = "expires_at"
        }
        public init() {}
    }

    /// One secret of a key, as listed (never the secret).
    public struct KeySecret: Codable, Sendable, Equatable {
        public let hint: String
        public let createdAt: String
        public let validUntil: String?
        enum CodingKeys: String, CodingKey {
            case hint
            case createdAt = "created_at"
            case validUntil = "valid_until"
        }
    }

    /// A named key as the admin API shows it.
    public struct KeyView: Codable, Sendable, Equatable {
        public let id: String
        public let settings: KeySettings
        /// `active`, `revoked` or `expired`.
        public let status: String
        public let createdAt: String
        public let revokedAt: String?
        public let secrets: [KeySecret]
        /// Tokens used in the quota's current period, as this gateway counts them.
        public let quotaUsed: Int?
        enum CodingKeys: String, CodingKey {
            case id, settings, status, secrets
            case createdAt = "created_at"
            case revokedAt = "revoked_at"
            case quotaUsed = "quota_used"
        }
    }

    /// `POST keys` and `POST keys/ID/rotate`: the key and its new secret, shown this once.
    public struct KeyIssued: Codable, Sendable {
        public let key: KeyView
        public let secret: String
    }

    public struct KeyList: Codable, Sendable {
        public let keys: [KeyView]
    }

    /// `POST keys/ID/rotate`.
    public struct RotateRequest: Codable, Sendable {
        /// How long the old secret stays valid; 0 (the default): not at all.
        public let graceSeconds: Int?
        enum CodingKeys: String, CodingKey { case graceSeconds = "grace_seconds" }
        public init(graceSeconds: Int?) { self.graceSeconds = graceSeconds }
    }
}

/// Named API keys for the admin API: created, rotated and revoked through audited appends (the
/// entry and the key's row in one transaction), and put in force on this gateway before the
/// answer; the other gateways on a shared store load them at their next re-read.
public actor KeyAdministration {
    let trail: AuditTrail
    let keyring: ClientKeyring
    let ledger: UsageLedger?
    let clock: any AttestationClock

    /// Longest grace period a rotation may leave the old secret.
    static let maxGrace = 30 * 86_400

    init(trail: AuditTrail, keyring: ClientKeyring, ledger: UsageLedger?, clock: any AttestationClock) {
        self.trail = trail
        self.keyring = keyring
        self.ledger = ledger
        self.clock = clock
    }

    public func create(_ settings: AdminMessage.KeySettings, actor: String) async throws -> AdminMessage.KeyIssued {
        let now = clock.now()
        let secret = ClientKeyring.newSecret()
        var record = ClientKeyRecord(
            id: ClientKeyring.newID(), name: "",
            secrets: [.init(hash: keyring.hash(secret: secret), hint: String(secret.suffix(4)), createdAt: now)],
            createdAt: now)
        try Self.apply(settings, to: &record, at: now)
        let sealed = try keyring.seal(record, after: nil)
        try await commit(sealed, event: "key-created", decision: "created", actor: actor, detail: [:])
        return AdminMessage.KeyIssued(key: view(sealed), secret: secret)
    }

    public func rotate(id: String, graceSeconds: Int, actor: String) async throws -> AdminMessage.KeyIssued {
        guard (0...Self.maxGrace).contains(graceSeconds) else {
            throw AdminError(400, "admin.bad-request", "grace_seconds must be 0 to \(Self.maxGrace)")
        }
        let current = try existing(id)
        guard current.refusal(at: clock.now()) == nil else {
            throw AdminError(409, "key.not-active", "key \(id) is \(current.refusal(at: clock.now()) ?? "")")
        }
        let now = clock.now()
        let secret = ClientKeyring.newSecret()
        var record = current
        let until = now.addingTimeInterval(Double(graceSeconds))
        // Every older secret ends at the latest by the end of this grace period.
        record.secrets = record.secrets.compactMap { s in
            var s = s
            s.validUntil = min(s.validUntil ?? until, until)
            return s.validUntil! > now ? s : nil
        }
        record.secrets.insert(
            .init(hash: keyring.hash(secret: secret), hint: String(secret.suffix(4)), createdAt: now), at: 0)
        let sealed = try keyring.seal(record, after: current)
        try await commit(
            sealed, event: "key-rotated", decision: "rotated", actor: actor,
            detail: ["grace_seconds": String(graceSeconds)])
        return AdminMessage.KeyIssued(key: view(sealed), secret: secret)
    }

    public func revoke(id: String, actor: String) async throws -> AdminMessage.KeyView {
        let current = try existing(id)
        guard current.revokedAt == nil else { return view(current) }
        var record = current
        record.revokedAt = clock.now()
        let sealed = try keyring.seal(record, after: current)
        try await commit(sealed, event: "key-revoked", decision: "revoked", actor: actor, detail: [:])
        return view(sealed)
    }

    public func show(id: String) throws -> AdminMessage.KeyView { view(try existing(id)) }

    public func list() -> AdminMessage.KeyList {
        AdminMessage.KeyList(keys: keyring.keys.map(view))
    }

    /// The key as the store has it now (another gateway on a shared store may have changed it
    /// since this one last read), checked as every row is.
    func existing(_ id: String) throws -> ClientKeyRecord {
        guard ClientKeyRecord.isValidID(id) else {
            throw AdminError(400, "admin.bad-request", "'\(id)' is not a key id (key_ and 16 hex digits)")
        }
        do { keyring.load(try trail.store.clientKeys()) } catch {
            throw AdminError(500, "gateway.store", "the keys could not be read: \(error)")
        }
        guard let key = keyring.key(id: id) else { throw AdminError(404, "key.unknown", "there is no key \(id)") }
        return key
    }

    /// Records the key's new row with its entry, then puts it in force here.
    func commit(_ record: ClientKeyRecord, event: String, decision: String, actor: String, detail: [String: String])
        async throws
    {
        var detail = detail
        detail["key"] = record.id
        detail["name"] = record.name
        detail["revision"] = String(record.revision)
        detail["record_sha256"] = HashAlgorithm.sha256.hash(Data(try record.json().utf8)).hex
        do {
            try await trail.record([
                .clientKey(AuditEvent(event: event, actor: actor, decision: decision, detail: detail), record)
            ])
        } catch let conflict as ClientKeyConflict {
            throw AdminError(409, "key.conflict", "\(conflict): it was changed meanwhile; look at it again and retry")
        } catch { throw AdminError(500, "gateway.store", "the key change could not be recorded: \(error)") }
        keyring.put(record)
        if let quota = record.quota { await ledger?.refreshQuotas([(record.id, quota.period)]) }
    }

    /// Checks and applies `settings` to a new key.
    static func apply(_ s: AdminMessage.KeySettings, to record: inout ClientKeyRecord, at now: Date) throws {
        func bad(_ message: String) -> AdminError { AdminError(400, "admin.bad-request", message) }
        guard let name = s.name?.trimmingCharacters(in: .whitespaces), (1...100).contains(name.count),
            name.unicodeScalars.allSatisfy({
                ![.control, .format, .lineSeparator, .paragraphSeparator, .unassigned, .surrogate, .privateUse]
                    .contains($0.properties.generalCategory)
            })
        else {
            // Threat: a name that rewrites an operator's terminal (escape sequences, bidi overrides).
            throw bad("name is required: 1 to 100 printable characters")
        }
        record.name = name
        if let models = s.models {
            guard !models.isEmpty, models.count <= 100, models.allSatisfy({ (1...200).contains($0.count) }) else {
                throw bad("models must list 1 to 100 model names")
            }
            record.models = models
        }
        for (field, value) in [
            ("requests_per_minute", s.requestsPerMinute), ("tokens_per_minute", s.tokensPerMinute),
            ("quota_tokens", s.quotaTokens),
        ] {
            if let value, !(1...1_000_000_000_000).contains(value) { throw bad("\(field) must be positive") }
        }
        record.requestsPerMinute = s.requestsPerMinute
        record.tokensPerMinute = s.tokensPerMinute
        if let tokens = s.quotaTokens {
            guard let period = QuotaPeriod(rawValue: s.quotaPeriod ?? "month") else {
                throw bad("quota_period must be day or month")
            }
            record.quota = .init(tokens: tokens, period: period)
        } else if s.quotaPeriod != nil {
            throw bad("quota_period needs quota_tokens")
        }
        if let tier = s.minimumTier {
            guard AssuranceTier(rawValue: tier) != nil else {
                throw bad(
                    "minimum_tier must be one of \(AssuranceTier.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            record.minimumTier = tier
        }
        if let text = s.expiresAt {
            guard let date = Date.rfc3339(text), date > now else {
                throw bad("expires_at must be an RFC 3339 time in the future")
            }
            record.expiresAt = date
        }
    }

    func view(_ r: ClientKeyRecord) -> AdminMessage.KeyView {
        var settings = AdminMessage.KeySettings()
        settings.name = r.name
        settings.models = r.models
        settings.requestsPerMinute = r.requestsPerMinute
        settings.tokensPerMinute = r.tokensPerMinute
        settings.quotaTokens = r.quota?.tokens
        settings.quotaPeriod = r.quota?.period.rawValue
        settings.minimumTier = r.minimumTier
        settings.expiresAt = r.expiresAt?.rfc3339
        let now = clock.now()
        return AdminMessage.KeyView(
            id: r.id, settings: settings, status: r.refusal(at: now) ?? "active", createdAt: r.createdAt.rfc3339,
            revokedAt: r.revokedAt?.rfc3339,
            secrets: r.secrets.filter { $0.validUntil.map { $0 > now } ?? true }.map {
                AdminMessage.KeySecret(
                    hint: $0.hint, createdAt: $0.createdAt.rfc3339, validUntil: $0.validUntil?.rfc3339)
            },
            quotaUsed: r.quota.flatMap { q in ledger?.used(keyID: r.id, period: q.period) })
    }
}
