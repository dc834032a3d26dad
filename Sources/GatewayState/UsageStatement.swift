import AttestationCore
import Crypto
import Foundation

/// Ledger rows added up: requests and tokens per group (a key, a provider, a model) and, when
/// asked, per hour.
public struct UsageTotals: Sendable, Equatable {
    public struct Line: Sendable, Equatable {
        public var group: String
        /// The hour's start (UTC), when grouped by hour.
        public var hour: Date?
        public var requests = 0
        public var promptTokens = 0
        public var completionTokens = 0
        public var totalTokens: Int { promptTokens + completionTokens }

        mutating func add(_ r: UsageRecord) {
            requests += 1
            promptTokens += r.promptTokens
            completionTokens += r.completionTokens
        }

        public var json: JSONValue {
            var o: [String: JSONValue] = [
                "requests": .int(requests), "prompt_tokens": .int(promptTokens),
                "completion_tokens": .int(completionTokens), "total_tokens": .int(totalTokens),
            ]
            if let hour { o["hour"] = .string(hour.rfc3339) }
            return .object(o)
        }
    }

    public enum Grouping: String, Sendable, CaseIterable {
        case key, provider, model
        func group(_ r: UsageRecord) -> String {
            switch self {
            case .key: r.keyID
            case .provider: r.provider ?? "-"
            case .model: r.model
            }
        }
    }

    let grouping: Grouping
    let hourly: Bool
    private var unsorted: [Line] = []
    private var index = [String: Int]()

    /// The lines, by group and hour.
    public var lines: [Line] {
        unsorted.sorted { ($0.group, $0.hour ?? .distantPast) < ($1.group, $1.hour ?? .distantPast) }
    }

    /// Empty totals, to be given rows with ``add(_:)``.
    public init(by grouping: Grouping, hourly: Bool) {
        self.grouping = grouping
        self.hourly = hourly
    }

    /// Adds up the rows of `query` in `store`, by `grouping`, per hour when `hourly`.
    public init(store: any GatewayStore, query: UsageQuery, by grouping: Grouping, hourly: Bool) throws {
        self.init(by: grouping, hourly: hourly)
        try store.usage(query) { r in
            add(r)
            return true
        }
    }

    public mutating func add(_ r: UsageRecord) {
        let hour =
            hourly ? Date(timeIntervalSince1970: (r.time.timeIntervalSince1970 / 3600).rounded(.down) * 3600) : nil
        let group = grouping.group(r)
        let slot = group + "\u{0}" + (hour?.rfc3339 ?? "")
        if index[slot] == nil {
            index[slot] = unsorted.count
            unsorted.append(Line(group: group, hour: hour))
        }
        unsorted[index[slot]!].add(r)
    }
}

/// A statement of the tokens the workers of one provider served in a period, signed by the
/// gateway's key: what a provider is paid from (in TON), and what it can check.
///
/// The statement is canonical JSON (``CanonicalJSON``) with a `signature` member: Ed25519 by the
/// gateway key over the canonical JSON of every other member. It holds the totals, the totals per
/// model and per hour, `rows_sha256`, a digest over the ledger rows it adds up (each row's
/// canonical fields, as its MAC covers them, one per line in ledger order: the ledger it came
/// from can be shown to give these numbers), and `final`: whether the period had ended when it
/// was signed (a statement of an open period is a partial one).
///
/// Threat: a provider, or anyone carrying the statement, changing a number to be paid more: the
/// signature no longer verifies. Verification takes the gateway key from the verifier (a pinned
/// `gateway.pub`), never from the statement.
public enum UsageStatement {
    public static let schema = "ccgate.usage-statement/v1"

    /// Why a statement was not made: ledger rows that are not a gateway's.
    public struct UnauthenticRows: Error, CustomStringConvertible {
        public let count: Int
        public let first: String
        public var description: String {
            "statement.unauthenticated-rows: \(count) ledger rows of this provider in the period do not carry a valid MAC (the first: request \(first)): the ledger was written by someone other than a gateway with this API key secret; nothing was signed"
        }
    }

    /// Builds and signs the statement for `provider` over `[since, until)`, from one read of the
    /// ledger. With `secret`, every row must carry its MAC (``KeyHashingSecret``): a statement is
    /// never signed over rows a writer of the database added or changed.
    public static func make(
        store: any GatewayStore, provider: String, since: Date, until: Date, key: Ed25519PrivateKey, at now: Date,
        secret: KeyHashingSecret?
    ) throws -> Data {
        var total = UsageTotals.Line(group: provider)
        var models = UsageTotals(by: .model, hourly: false)
        var hours = UsageTotals(by: .provider, hourly: true)
        var digest = SHA256()
        var gateways = Set<String>()
        var unauthentic = 0
        var firstUnauthentic = ""
        try store.usage(UsageQuery(since: since, until: until, provider: provider)) { r in
            if let secret, !secret.isGenuine(r) {
                if unauthentic == 0 { firstUnauthentic = r.requestID }
                unauthentic += 1
                return true
            }
            total.add(r)
            models.add(r)
            hours.add(r)
            gateways.insert(r.gateway ?? "")
            digest.update(data: KeyHashingSecret.canonical(r) + [0x0A])
            return true
        }
        guard unauthentic == 0 else { throw UnauthenticRows(count: unauthentic, first: firstUnauthentic) }
        var body: [String: JSONValue] = [
            "schema": .string(schema), "provider": .string(provider),
            "period": .object(["since": .string(since.rfc3339), "until": .string(until.rfc3339)]),
            "issued_at": .string(now.rfc3339), "signer": .string(key.publicKey.fingerprint),
            "final": .bool(until.addingTimeInterval(3600) <= now),
            "gateways": .array(gateways.sorted().map(JSONValue.string)),
            "totals": total.json,
            "models": .array(
                models.lines.map { line in
                    var o = line.json.object ?? [:]
                    o["model"] = .string(line.group)
                    return .object(o)
                }),
            "hours": .array(hours.lines.map(\.json)),
            "rows_sha256": .string(Data(digest.finalize()).hex),
        ]
        let signature = key.signature(for: Data(CanonicalJSON.encode(.object(body))))
        body["signature"] = .string(signature.base64EncodedString())
        return Data(CanonicalJSON.encode(.object(body)) + [0x0A])
    }

    /// What a verified statement says.
    public struct Summary: Sendable, Equatable {
        public let provider: String
        public let since: String
        public let until: String
        public let requests: Int
        public let promptTokens: Int
        public let completionTokens: Int
        public let signer: String
    }

    public struct Refusal: Error, CustomStringConvertible {
        /// `statement.malformed`, `statement.signature`, `statement.inconsistent`.
        public let code: String
        public let message: String
        public var description: String { "\(code): \(message)" }
    }

    /// Checks a statement's signature under `key` and that its parts add up to its totals.
    public static func verify(_ data: Data, key: Ed25519PublicKey) throws(Refusal) -> Summary {
        guard let value = CanonicalJSON.parse(data.last == 0x0A ? data.dropLast() : data[...]),
            var body = value.object, body["schema"]?.string == schema,
            let signatureText = body.removeValue(forKey: "signature")?.string,
            let signature = Data(base64Encoded: signatureText)
        else { throw Refusal(code: "statement.malformed", message: "not a \(schema) document with a signature") }
        guard key.isValidSignature(signature, for: Data(CanonicalJSON.encode(.object(body)))) else {
            throw Refusal(
                code: "statement.signature",
                message:
                    "the signature does not verify under the gateway key \(key.fingerprint.prefix(16))…: the statement was changed, or another gateway signed it"
            )
        }
        func count(_ o: JSONValue?, _ name: String) -> Int { o?.object?[name]?.int ?? -1 }
        let totals = body["totals"]
        for part in ["models", "hours"] {
            let lines = body[part]?.array ?? []
            for name in ["requests", "prompt_tokens", "completion_tokens"] {
                guard lines.reduce(0, { $0 + count($1, name) }) == count(totals, name) else {
                    throw Refusal(
                        code: "statement.inconsistent", message: "its \(part) do not add up to its total \(name)")
                }
            }
        }
        let period = body["period"]?.object
        guard let provider = body["provider"]?.string, !provider.isEmpty, period?["since"]?.string != nil,
            period?["until"]?.string != nil, totals?.object != nil
        else { throw Refusal(code: "statement.malformed", message: "it lacks its provider, period or totals") }
        return Summary(
            provider: body["provider"]?.string ?? "", since: period?["since"]?.string ?? "",
            until: period?["until"]?.string ?? "", requests: count(totals, "requests"),
            promptTokens: count(totals, "prompt_tokens"), completionTokens: count(totals, "completion_tokens"),
            signer: body["signer"]?.string ?? "")
    }
}
