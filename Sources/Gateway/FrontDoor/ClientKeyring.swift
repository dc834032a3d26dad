import AttestationCore
import Crypto
import Foundation
import GatewayState
import HTTPTypes
import Policy
import Synchronization

/// The client a request was accepted from.
public struct ClientGrant: Sendable {
    /// The named key's id, or `config` for a key set by `--api-key`.
    public let keyID: String
    /// The named key, nil for a key set by flag (no limits).
    public let key: ClientKeyRecord?
}

/// The API keys the front door accepts, and their limits.
///
/// Two kinds of key: those set by flag (`--api-key`, no limits, id `config`) and named keys
/// managed through the admin API (``ClientKeyRecord``). A named key's secret is checked as
/// HMAC-SHA256 under the gateway's key-hashing secret (`DATA/api-keys.secret`, or the file given
/// to every gateway on a shared database), and each key row carries a MAC under the same secret.
///
/// Threat: someone who can write the database (a shared PostgreSQL's other users, a backup
/// restored by the wrong hand) adding a key, raising a key's limits, or un-revoking one. Without
/// the key-hashing secret, which never goes into the database, they can neither compute the hash
/// of a secret they know nor the MAC of a row they changed: such rows are refused at load. A row
/// put back from before a change (an older revision, whose MAC is genuine) is refused by a
/// gateway that has seen a newer one: the revisions seen are kept in the data directory
/// (`api-key-revisions.json`), so this holds across restarts.
///
/// Threat: a client guessing secrets by timing. The lookup is by the HMAC of the presented
/// secret, so how long it takes says nothing about how close a guess is.
public final class ClientKeyring: Sendable {
    let secret: KeyHashingSecret
    let clock: any AttestationClock
    let ledger: UsageLedger?
    private let configDigests: Set<Data>
    /// Where the highest revision seen of each key is kept; nil: in memory only.
    let revisionsFile: URL?

    private struct State {
        var byHash: [String: ClientKeyRecord] = [:]
        var byID: [String: ClientKeyRecord] = [:]
        var revisions: [String: Int] = [:]
        var buckets: [String: Buckets] = [:]

        mutating func index() {
            byHash = [:]
            for record in byID.values { for secret in record.secrets { byHash[secret.hash] = record } }
            // Limits that changed start afresh; others keep their buckets.
            buckets = buckets.filter { id, b in
                guard let k = byID[id] else { return false }
                return b.requests?.capacity == k.requestsPerMinute.map(Double.init)
                    && b.tokens?.capacity == k.tokensPerMinute.map(Double.init)
            }
        }
    }
    private let state = Mutex(State())

    /// Requests-per-minute and tokens-per-minute buckets of one key (this gateway's share).
    struct Buckets {
        var requests: Bucket?
        var tokens: Bucket?
    }

    public init(
        secret: KeyHashingSecret, configKeys: [String], ledger: UsageLedger?, revisionsFile: URL? = nil,
        clock: any AttestationClock = SystemClock()
    ) throws {
        self.secret = secret
        self.clock = clock
        self.ledger = ledger
        self.revisionsFile = revisionsFile
        configDigests = Set(configKeys.map { Data(SHA256.hash(data: Data($0.utf8))) })
        if let revisionsFile, let data = FileManager.default.contents(atPath: revisionsFile.path) {
            guard let seen = try? JSONDecoder().decode([String: Int].self, from: data) else {
                throw StoreError("\(revisionsFile.path): not the JSON object of key revisions this gateway writes")
            }
            state.withLock { $0.revisions = seen }
        }
        // A file that cannot be written would quietly lose the protection: found out at start.
        if let revisionsFile {
            let seen = state.withLock { $0.revisions }
            do { try JSONEncoder().encode(seen).write(to: revisionsFile, options: .atomic) } catch {
                throw StoreError("\(revisionsFile.path): cannot write the key revisions seen: \(error)")
            }
        }
    }

    /// Writes the revisions seen (atomically: a crash leaves the old file or the new). Called
    /// under the state's lock, so that writes land in the order the revisions grew.
    private func saveRevisions(_ revisions: [String: Int]) {
        guard let revisionsFile, let data = try? JSONEncoder().encode(revisions) else { return }
        try? data.write(to: revisionsFile, options: .atomic)
    }

    // MARK: Secrets and rows

    /// The keyed hash of a secret, as rows store it.
    public func hash(secret: String) -> String {
        Data(HMAC<SHA256>.authenticationCode(for: Data(secret.utf8), using: self.secret.secretHashes)).hex
    }

    /// A new secret: `sk-ccg-` and 32 random bytes in base64url.
    public static func newSecret() -> String {
        let bytes = SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) }
        return "sk-ccg-"
            + bytes.base64EncodedString().replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }

    /// A new key id: `key_` and 16 random hex digits.
    public static func newID() -> String {
        "key_" + SymmetricKey(size: .bits128).withUnsafeBytes { Data($0.prefix(8)) }.hex
    }

    /// Sets `record.mac` (with its revision one past `previous`) under the key-hashing secret.
    public func seal(_ record: ClientKeyRecord, after previous: ClientKeyRecord?) throws -> ClientKeyRecord {
        var out = record
        out.revision = (previous?.revision ?? 0) + 1
        out.mac = nil
        out.mac = Data(HMAC<SHA256>.authenticationCode(for: Data(try out.json().utf8), using: secret.keyRows)).hex
        return out
    }

    /// Whether a row's MAC is the one this gateway's secret gives it.
    func isGenuine(_ record: ClientKeyRecord) -> Bool {
        guard let mac = record.mac, let macBytes = Data(hex: mac) else { return false }
        var bare = record
        bare.mac = nil
        guard let text = try? bare.json() else { return false }
        return HMAC<SHA256>.isValidAuthenticationCode(macBytes, authenticating: Data(text.utf8), using: secret.keyRows)
    }

    /// Replaces the named keys with `records`; returns the ids of rows refused (a MAC that does
    /// not verify, or a revision older than one already seen), which stay as they were.
    @discardableResult
    public func load(_ records: [ClientKeyRecord]) -> [String] {
        var refused = [String]()
        state.withLock { s in
            let before = s.revisions
            var byID = [String: ClientKeyRecord]()
            for record in records {
                guard isGenuine(record), record.revision >= s.revisions[record.id] ?? 0 else {
                    refused.append(record.id)
                    if let known = s.byID[record.id] { byID[record.id] = known }
                    continue
                }
                byID[record.id] = record
                s.revisions[record.id] = record.revision
            }
            s.byID = byID
            s.index()
            if before != s.revisions { saveRevisions(s.revisions) }
        }
        return refused
    }

    /// Puts one key's new row in force (this gateway's own change, already recorded).
    func put(_ record: ClientKeyRecord) {
        state.withLock { s in
            s.byID[record.id] = record
            s.revisions[record.id] = max(record.revision, s.revisions[record.id] ?? 0)
            s.index()
            saveRevisions(s.revisions)
        }
    }

    /// The named keys, by id.
    public var keys: [ClientKeyRecord] { state.withLock { $0.byID.values.sorted { $0.id < $1.id } } }

    /// The named key with `id`, as loaded.
    public func key(id: String) -> ClientKeyRecord? { state.withLock { $0.byID[id] } }

    /// The keys with quotas, for the ledger to count.
    public var quotaKeys: [(id: String, period: QuotaPeriod)] {
        state.withLock { s in s.byID.values.compactMap { k in k.quota.map { (k.id, $0.period) } } }
    }

    // MARK: Requests

    /// The client presenting `authorization` (`Bearer SECRET`).
    public func authenticate(_ authorization: String?) throws(OpenAIError) -> ClientGrant {
        guard let header = authorization, header.hasPrefix("Bearer ") else { throw OpenAIError.unauthorized }
        let secret = String(header.dropFirst(7))
        if configDigests.contains(Data(SHA256.hash(data: Data(secret.utf8)))) {
            return ClientGrant(keyID: "config", key: nil)
        }
        let digest = hash(secret: secret)
        let now = clock.now()
        guard let key = state.withLock({ $0.byHash[digest] }), key.accepts(hash: digest, at: now) else {
            throw OpenAIError.unauthorized
        }
        if let refusal = key.refusal(at: now) {
            throw OpenAIError(
                .unauthorized, "This API key (\(key.id)) is \(refusal).", code: "invalid_api_key")
        }
        return ClientGrant(keyID: key.id, key: key)
    }

    /// Checks a request for `model` against the key's model list, rate limits and quota, and
    /// counts it; returns the weakest tier its workers may have.
    public func admit(_ grant: ClientGrant, model: String?) throws(OpenAIError) -> AssuranceTier? {
        guard let key = grant.key else { return nil }
        if let model, let models = key.models, !models.contains(model) {
            throw OpenAIError(
                .forbidden, "This API key may not use the model '\(model)'.", code: "model_not_allowed",
                param: "model")
        }
        let now = clock.now()
        if let quota = key.quota, let ledger, ledger.used(keyID: key.id, period: quota.period) >= quota.tokens {
            let wait = quota.period.end(of: now).timeIntervalSince(now)
            throw OpenAIError(
                .tooManyRequests,
                "This API key has used its quota of \(quota.tokens) tokens this \(quota.period.rawValue).",
                type: "insufficient_quota", code: "insufficient_quota", retryAfter: wait)
        }
        try state.withLock { s throws(OpenAIError) in
            var b =
                s.buckets[key.id]
                ?? Buckets(
                    requests: key.requestsPerMinute.map { Bucket(capacity: Double($0), at: now) },
                    tokens: key.tokensPerMinute.map { Bucket(capacity: Double($0), at: now) })
            defer { s.buckets[key.id] = b }
            if let wait = b.tokens?.waitUntilPositive(at: now) {
                throw OpenAIError(
                    .tooManyRequests, "Rate limit reached: \(key.tokensPerMinute ?? 0) tokens per minute.",
                    type: "tokens", code: "rate_limit_exceeded", retryAfter: wait)
            }
            if let wait = b.requests?.take(1, at: now) {
                throw OpenAIError(
                    .tooManyRequests, "Rate limit reached: \(key.requestsPerMinute ?? 0) requests per minute.",
                    type: "requests", code: "rate_limit_exceeded", retryAfter: wait)
            }
        }
        return key.minimumTier.flatMap(AssuranceTier.init(rawValue:))
    }

    /// Counts a finished request's tokens against the key's tokens-per-minute bucket.
    public func charge(keyID: String, tokens: Int) {
        guard tokens > 0 else { return }
        let now = clock.now()
        state.withLock { s in s.buckets[keyID]?.tokens?.spend(Double(tokens), at: now) }
    }
}

/// A token bucket refilled evenly over a minute up to `capacity`.
struct Bucket {
    let capacity: Double
    var level: Double
    var updated: Date

    init(capacity: Double, at now: Date) {
        self.capacity = capacity
        level = capacity
        updated = now
    }

    var perSecond: Double { capacity / 60 }

    mutating func refill(at now: Date) {
        level = min(capacity, level + max(0, now.timeIntervalSince(updated)) * perSecond)
        updated = now
    }

    /// Takes `amount`; nil when taken, else the seconds until it could be.
    mutating func take(_ amount: Double, at now: Date) -> Double? {
        refill(at: now)
        guard level >= amount else { return (amount - level) / perSecond }
        level -= amount
        return nil
    }

    /// Spends `amount` after the fact (the level may go below zero).
    mutating func spend(_ amount: Double, at now: Date) {
        refill(at: now)
        level -= amount
    }

    /// Nil while anything is left, else the seconds until something is.
    mutating func waitUntilPositive(at now: Date) -> Double? {
        refill(at: now)
        return level > 0 ? nil : (-level) / perSecond + 0.001
    }
}
