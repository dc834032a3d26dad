import AttestationCore
import Crypto
import Foundation

/// A named API key as the store keeps it: who it is for, what it may do, and the keyed hashes of
/// the secrets that present it. The secrets themselves are kept nowhere.
///
/// Rows change only through audited appends (``AuditDraft/clientKey(_:_:)``), so every creation,
/// rotation and revocation has its entry in the chain, written in the same transaction.
public struct ClientKeyRecord: Sendable, Equatable, Codable {
    /// `key_` and 16 hex digits; named in usage rows, audit entries and statements.
    public var id: String
    public var name: String
    /// The accepted secrets' keyed hashes: the current one (no `validUntil`), and rotated-out
    /// ones until their grace period ends.
    public var secrets: [Secret]
    /// The models the key may ask for; nil: every model.
    public var models: [String]?
    public var requestsPerMinute: Int?
    public var tokensPerMinute: Int?
    public var quota: Quota?
    /// The weakest worker tier its requests may go to (a request may ask for a stronger one).
    public var minimumTier: String?
    public var expiresAt: Date?
    public var createdAt: Date
    public var revokedAt: Date?
    /// One more at each change: a gateway that has seen a revision refuses an older row.
    public var revision: Int = 0
    /// HMAC-SHA256 (hex) of the row's JSON without this field, under the key-hashing secret.
    public var mac: String?

    public struct Secret: Sendable, Equatable, Codable {
        /// HMAC-SHA256 (hex) of the secret under the gateways' key-hashing key.
        public var hash: String
        /// The secret's last four characters, to tell secrets apart in listings.
        public var hint: String
        public var createdAt: Date
        /// When a rotated-out secret stops being accepted.
        public var validUntil: Date?
        public init(hash: String, hint: String, createdAt: Date, validUntil: Date? = nil) {
            self.hash = hash
            self.hint = hint
            self.createdAt = createdAt
            self.validUntil = validUntil
        }
    }

    /// Tokens (prompt and completion) the key may use per calendar period (UTC).
    public struct Quota: Sendable, Equatable, Codable {
        public var tokens: Int
        public var period: QuotaPeriod
        public init(tokens: Int, period: QuotaPeriod) {
            self.tokens = tokens
            self.period = period
        }
    }

    public init(id: String, name: String, secrets: [Secret], createdAt: Date) {
        self.id = id
        self.name = name
        self.secrets = secrets
        self.createdAt = createdAt
    }

    /// Why the key cannot be used at `now`, or nil when it can.
    public func refusal(at now: Date) -> String? {
        if let revokedAt, revokedAt <= now { return "revoked" }
        if let expiresAt, expiresAt <= now { return "expired" }
        return nil
    }

    /// Whether the secret with keyed hash `hash` is accepted at `now`.
    public func accepts(hash: String, at now: Date) -> Bool {
        secrets.contains { $0.hash == hash && ($0.validUntil.map { now < $0 } ?? true) }
    }

    /// The stored row: the same JSON in every store (the worker rows' encoding: keys sorted,
    /// dates in seconds).
    public func json() throws -> String { String(decoding: try WorkerJSON.encoder.encode(self), as: UTF8.self) }

    public static func parse(_ text: String) throws -> ClientKeyRecord {
        try WorkerJSON.decoder.decode(ClientKeyRecord.self, from: Data(text.utf8))
    }

    /// Checks a key id's shape: `key_` and 16 lowercase hex digits.
    public static func isValidID(_ id: String) -> Bool {
        id.utf8.count == 20 && id.hasPrefix("key_")
            && id.utf8.dropFirst(4).allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }
}

/// A quota's calendar period, in UTC.
public enum QuotaPeriod: String, Sendable, Codable, CaseIterable {
    case day, month

    /// The start of the period holding `date`.
    public func start(of date: Date) -> Date {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        let parts = calendar.dateComponents(self == .day ? [.year, .month, .day] : [.year, .month], from: date)
        return calendar.date(from: parts) ?? date
    }

    /// The start of the period after the one holding `date`.
    public func end(of date: Date) -> Date {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        return calendar.date(byAdding: self == .day ? .day : .month, value: 1, to: start(of: date)) ?? date
    }
}

/// One request in the usage ledger: who asked, what served it, what it cost.
public struct UsageRecord: Sendable, Equatable {
    /// The gateway's id for the request (also its `x-request-id` when the client sent none).
    public var requestID: String
    public var time: Date
    /// The gateway that served it (its key's fingerprint); set by the store.
    public var gateway: String?
    public var keyID: String
    public var model: String
    public var worker: String?
    /// The worker's provider wallet, when it proved one.
    public var provider: String?
    public var promptTokens: Int
    public var completionTokens: Int
    /// Milliseconds until the first response byte; nil when none came.
    public var timeToFirstTokenMs: Int?
    public var durationMs: Int
    public var status: Int
    /// Where the counts come from: `engine` (the engine's `usage`), `estimated` (the engine
    /// reported none, as when a stream was cut: counted from the bytes), `none` (nothing served).
    public var source: String
    /// HMAC-SHA256 (hex) of the row under the ledger key (``KeyHashingSecret``), set by the
    /// gateway that writes it; a row without a valid one was not written by a gateway.
    public var mac: String?

    public init(
        requestID: String, time: Date, keyID: String, model: String, worker: String?, provider: String?,
        promptTokens: Int, completionTokens: Int, timeToFirstTokenMs: Int?, durationMs: Int, status: Int,
        source: String
    ) {
        self.requestID = requestID
        self.time = time
        self.keyID = keyID
        self.model = model
        self.worker = worker
        self.provider = provider
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.timeToFirstTokenMs = timeToFirstTokenMs
        self.durationMs = durationMs
        self.status = status
        self.source = source
    }

    public var totalTokens: Int { promptTokens + completionTokens }
}

/// Which ledger rows a report or statement covers: `since` inclusive, `until` exclusive.
public struct UsageQuery: Sendable, Equatable {
    public var since: Date?
    public var until: Date?
    public var keyID: String?
    public var provider: String?
    public init(since: Date? = nil, until: Date? = nil, keyID: String? = nil, provider: String? = nil) {
        self.since = since
        self.until = until
        self.keyID = keyID
        self.provider = provider
    }

    func matches(_ r: UsageRecord) -> Bool {
        (since.map { r.time >= $0 } ?? true) && (until.map { r.time < $0 } ?? true)
            && (keyID.map { r.keyID == $0 } ?? true) && (provider.map { r.provider == $0 } ?? true)
    }
}

/// The ledger's and key table's columns as every store reads and writes them.
enum UsageColumns {
    static let list =
        "request_id, time_ms, gateway, key_id, model, worker, provider, prompt_tokens, completion_tokens, ttft_ms, duration_ms, status, source, mac"

    static func milliseconds(_ date: Date) -> Int { Int((date.timeIntervalSince1970 * 1000).rounded(.down)) }

    /// A row in `list`'s order, read through column accessors.
    static func record(text: (Int32) -> String?, int: (Int32) -> Int?) throws -> UsageRecord {
        guard let id = text(0), let ms = int(1), let key = text(3), let model = text(4) else {
            throw StoreError("a usage ledger row lacks its request id, time, key or model")
        }
        // Counts as written are at most 10^9 (UsageScan.maxCount); a row outside that was not
        // written by a gateway and must not overflow a sum.
        func count(_ i: Int32) -> Int { min(max(int(i) ?? 0, 0), 1_000_000_000) }
        var r = UsageRecord(
            requestID: id, time: Date(timeIntervalSince1970: Double(min(max(ms, 0), 1 << 50)) / 1000), keyID: key,
            model: model,
            worker: text(5), provider: text(6), promptTokens: count(7), completionTokens: count(8),
            timeToFirstTokenMs: int(9), durationMs: int(10) ?? 0, status: int(11) ?? 0, source: text(12) ?? "")
        r.gateway = text(2)
        r.mac = text(13)
        return r
    }

    /// A key row, checked to be the key its id says; nil for a row that is not one (written by
    /// someone other than a gateway: it names no key anyone can use, and does not stop the others
    /// from loading).
    static func key(id: String?, record: String?) -> ClientKeyRecord? {
        guard let id, let record, let key = try? ClientKeyRecord.parse(record), key.id == id else { return nil }
        return key
    }
}

/// The gateways' key-hashing secret (`DATA/api-keys.secret`, or the file every gateway on a
/// shared database is given) and the keys derived from it with HKDF-SHA256, one per use: the
/// hashes of API key secrets, the MACs of key rows, the MACs of usage ledger rows. The secret
/// never goes into the database, so a writer of the database can forge none of them.
public struct KeyHashingSecret: Sendable {
    public let secretHashes: SymmetricKey
    public let keyRows: SymmetricKey
    public let ledgerRows: SymmetricKey

    public init(_ secret: SymmetricKey) {
        func derive(_ use: String) -> SymmetricKey {
            HKDF<SHA256>.deriveKey(
                inputKeyMaterial: secret, salt: Data("ccgate".utf8), info: Data(use.utf8), outputByteCount: 32)
        }
        secretHashes = derive("api key secrets")
        keyRows = derive("api key rows")
        ledgerRows = derive("usage ledger rows")
    }

    /// Reads a secret file: 64 hex digits (32 bytes).
    public static func read(_ url: URL) throws -> KeyHashingSecret {
        guard let text = try? String(contentsOf: url, encoding: .utf8) else {
            throw StoreError("\(url.path): cannot read the API key secret")
        }
        let hex = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard hex.count == 64, let bytes = Data(hex: hex) else {
            throw StoreError("\(url.path): the API key secret must be 64 hex digits (32 bytes)")
        }
        return KeyHashingSecret(SymmetricKey(data: bytes))
    }

    /// A ledger row's MAC (hex): HMAC-SHA256 over its canonical fields, the gateway's included.
    public func mac(_ r: UsageRecord) -> String {
        Data(HMAC<SHA256>.authenticationCode(for: Self.canonical(r), using: ledgerRows)).hex
    }

    /// Whether a ledger row read back carries the MAC its fields give.
    public func isGenuine(_ r: UsageRecord) -> Bool {
        guard let mac = r.mac, let given = Data(hex: mac) else { return false }
        return HMAC<SHA256>.isValidAuthenticationCode(given, authenticating: Self.canonical(r), using: ledgerRows)
    }

    static func canonical(_ r: UsageRecord) -> [UInt8] {
        CanonicalJSON.encode(
            .array([
                .string(r.requestID), .int(UsageColumns.milliseconds(r.time)), .string(r.gateway ?? ""),
                .string(r.keyID), .string(r.model), .string(r.worker ?? ""), .string(r.provider ?? ""),
                .int(r.promptTokens), .int(r.completionTokens), .int(r.timeToFirstTokenMs ?? -1), .int(r.durationMs),
                .int(r.status), .string(r.source),
            ]))
    }
}
