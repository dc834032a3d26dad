import Foundation
import TONKit

/// Where the oracle reads a provider's stake (a `StakeReader` over toncenter in production).
public protocol StakeSource: Sendable {
    func read(provider: String) async -> StakeReading
}

/// What the oracle decides for a provider.
public enum StakeDecision: Sendable, Equatable {
    case admit(amount: UInt128, observedAt: Double, stale: Bool)
    case refuse(code: String, message: String)
}

/// Caches stake per provider with a time-to-live and decides admissions from it.
///
/// Fails closed: a provider never seen is refused while its stake is unknown. A provider that
/// was admitted keeps its admission through an outage of the chain data for `grace` after its
/// last good observation, and loses it at once on a positive observation below the minimum.
/// Threat: a provider withdrawing its stake after admission (the next refresh sees it and the
/// provider's workers are evicted), and an outage used to slip in (new providers are refused).
public actor StakeOracle {
    struct Entry {
        var amount: UInt128
        var observedAt: Double
        var admitted: Bool
        var observation: StakeObservation?
    }
    let source: (any StakeSource)?
    public private(set) var ttl: Double
    public private(set) var grace: Double
    /// Spreads refreshes: each entry's life is shortened by up to this fraction of the TTL.
    public let jitter: Double
    private var entries: [String: Entry] = [:]

    public init(source: (any StakeSource)?, ttl: Double = 300, grace: Double = 900, jitter: Double = 0.1) {
        self.source = source
        self.ttl = ttl
        self.grace = grace
        self.jitter = jitter
    }

    /// The decision for `provider` at `now` (seconds), reading the chain when the cached
    /// observation is older than the TTL.
    public func decide(provider: String, minimum: UInt128, now: Double) async -> StakeDecision {
        await decide(provider: provider, minimum: minimum, now: now) { [source] in
            await source?.read(provider: provider) ?? .unknown("no stake source")
        }
    }

    /// The decision for `provider`, reading with `read` when the cached observation has expired.
    public func decide(provider: String, minimum: UInt128, now: Double, read: @Sendable () async -> StakeReading) async
        -> StakeDecision
    {
        if let e = entries[provider], now - e.observedAt < ttl * (1 - Double.random(in: 0...jitter)) {
            return judge(provider, e, minimum: minimum, stale: false)
        }
        switch await read() {
        case .observed(let o):
            var e = Entry(
                amount: o.amount, observedAt: now, admitted: entries[provider]?.admitted ?? false, observation: o)
            let decision = judge(provider, e, minimum: minimum, stale: false)
            if case .admit = decision { e.admitted = true } else { e.admitted = false }
            entries[provider] = e
            return decision
        case .refused(let code, let message):
            entries[provider] = nil
            return .refuse(code: code, message: message)
        case .unknown(let why):
            if let e = entries[provider], e.admitted, now - e.observedAt <= grace, e.amount >= minimum {
                return .admit(amount: e.amount, observedAt: e.observedAt, stale: true)
            }
            if let e = entries[provider], e.admitted {
                entries[provider]?.admitted = false
                return .refuse(
                    code: "stake.unknown",
                    message: "stake unknown for \(Int(now - e.observedAt)) s, beyond the grace window: \(why)")
            }
            return .refuse(code: "stake.unknown", message: "stake unknown for a provider not yet admitted: \(why)")
        }
    }

    /// Takes the policy's time-to-live and grace window (a policy can change them).
    public func configure(ttl: Double, grace: Double) {
        self.ttl = ttl
        self.grace = grace
    }

    /// The last good observation of `provider` (for the audit log: source, block, amount).
    public func observation(_ provider: String) -> StakeObservation? { entries[provider]?.observation }

    /// Forgets providers no admitted worker names any more, once their last observation is older
    /// than the grace window (so that a provider being admitted right now, or reconnecting after a
    /// dropped connection, keeps what the oracle knows of it).
    public func retain(_ providers: Set<String>, now: Double) {
        entries = entries.filter { providers.contains($0.key) || now - $0.value.observedAt <= grace }
    }

    private func judge(_ provider: String, _ e: Entry, minimum: UInt128, stale: Bool) -> StakeDecision {
        guard e.amount >= minimum else {
            return .refuse(
                code: "stake.below-minimum",
                message: "\(provider) holds \(e.amount) nanotons, the policy needs \(minimum)")
        }
        return .admit(amount: e.amount, observedAt: e.observedAt, stale: stale)
    }
}
