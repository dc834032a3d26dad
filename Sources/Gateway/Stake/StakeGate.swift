import AttestationCore
import AuditLog
import Foundation
import Logging
import Policy
import Synchronization
import TONKit

/// The stake a provider was admitted on: where it is read, and under which oracle key.
public struct ProviderStake: Sendable, Equatable {
    /// The provider wallet (raw form), shown per worker.
    public let provider: String
    /// The oracle's cache key: the wallet and the contract holding the stake.
    let key: String
    let query: StakeQuery
}

/// Admits a worker's provider only while the provider proves control of a TON wallet holding the
/// policy's minimum stake, and keeps checking it.
///
/// Threats: a provider staking nothing (the stake is read on chain from at least two toncenter
/// endpoints, from a contract whose code hash the policy allows); a provider claiming another's
/// stake (the proof must verify under the key the wallet holds on chain, and jetton wallets and
/// Cocoon proxies must be owned by that wallet); a provider withdrawing after admission (the
/// monitor re-reads each provider's stake every refresh and evicts on a positive observation
/// below the minimum); an outage used to slip in (new providers are refused while the stake is
/// unknown; admitted ones serve through the grace window only).
public final class StakeGate: Sendable {
    let reader: StakeReader
    let oracle: StakeOracle
    /// The id provider proofs must name: the gateway key's fingerprint.
    public let gatewayID: String
    let clock: any AttestationClock
    /// The observation time last audited per provider, so that a cached decision is not logged twice.
    private let audited = Mutex<[String: Double]>([:])

    public init(endpoints: [ToncenterEndpoint], gatewayID: String, clock: any AttestationClock = SystemClock(),
                transport: any HTTPTransport = URLSessionTransport()) {
        reader = StakeReader(clients: endpoints.map { ToncenterClient(endpoint: $0, transport: transport, maxAttempts: 2) })
        oracle = StakeOracle(source: nil, ttl: 300, grace: 900)
        self.gatewayID = gatewayID
        self.clock = clock
    }

    /// What a stake check decided: admitted (with the stake the worker record keeps) or refused,
    /// and for the audit log the source, block and observed amount.
    public struct Outcome: Sendable {
        public let stake: ProviderStake?
        public let refusal: (code: String, message: String)?
        public let detail: [String: String]
        /// Whether this outcome rests on a new chain observation (else: the cached one).
        public let fresh: Bool
        /// `detail` as admission entries carry it (`stake.source`, `stake.block_seqno`, …).
        var auditDetail: [String: String] { detail.mapKeys { "stake." + $0 } }
    }

    /// The admission check: the proof `proofData`, for this worker's KEM key, under `rules`.
    func admit(proofData: Data?, workerKey: Data, rules: PolicyDocument.StakeRules) async -> Outcome {
        guard let proofData else {
            return Self.refused("stake.proof-missing", "the policy requires a TON stake: start the worker with --provider-wallet and --provider-key")
        }
        let decoded: (proof: ProviderProof, wallet: TONAddress, stakeAccount: TONAddress?)
        do throws(ProviderProof.Failure) { decoded = try ProviderProof.decode(proofData) } catch { return Self.refused(error.code, error.message) }
        let walletKey: Ed25519PublicKey
        switch await reader.walletPublicKey(decoded.wallet) {
        case .success(let key): walletKey = key
        case .failure(let failure): return Self.refused(failure.code, failure.message, ["provider": decoded.wallet.raw])
        }
        do throws(ProviderProof.Failure) {
            try decoded.proof.verify(
                walletKey: walletKey, gatewayID: gatewayID, workerKey: workerKey, now: clock.now(),
                maxAge: TimeInterval(rules.proofMaxAgeSeconds))
        } catch { return Self.refused(error.code, error.message, ["provider": decoded.wallet.raw]) }
        guard let kind = rules.source else { return Self.refused("stake.no-source", "the policy sets a minimum stake but no source") }
        let query = StakeQuery(
            kind: kind, provider: decoded.wallet, stakeAccount: decoded.stakeAccount, allowedCodeHashes: Set(rules.codeHashes))
        let stake = ProviderStake(
            provider: decoded.wallet.raw, key: decoded.wallet.raw + (decoded.stakeAccount.map { "|" + $0.raw } ?? ""), query: query)
        return await check(stake, rules: rules)
    }

    /// Decides for an admitted (or being admitted) provider from the oracle, reading the chain when
    /// its observation has expired.
    func check(_ stake: ProviderStake, rules: PolicyDocument.StakeRules) async -> Outcome {
        await oracle.configure(ttl: Double(rules.refreshSeconds), grace: Double(rules.graceSeconds))
        let reader = self.reader
        let now = clock.now().timeIntervalSince1970
        let decision = await oracle.decide(provider: stake.key, minimum: UInt128(rules.minimumNanotons ?? 0), now: now) {
            await reader.stake(stake.query)
        }
        var detail = ["provider": stake.provider, "source": stake.query.kind.name]
        if let o = await oracle.observation(stake.key) {
            detail["source"] = o.source
            detail["observed_nanotons"] = "\(o.amount)"
            if let seqno = o.blockSeqno { detail["block_seqno"] = "\(seqno)" }
            detail["endpoints"] = o.endpoints.joined(separator: ",")
            if let note = o.note { detail["note"] = note }
        }
        detail["minimum_nanotons"] = "\(rules.minimumNanotons ?? 0)"
        switch decision {
        case .admit(_, let at, let stale):
            if stale { detail["stale_seconds"] = "\(Int(now - at))" }
            let fresh = audited.withLock { seen in
                defer { seen[stake.key] = at }
                return stale || seen[stake.key] != at
            }
            return Outcome(stake: stake, refusal: nil, detail: detail, fresh: fresh)
        case .refuse(let code, let message):
            audited.withLock { _ = $0.removeValue(forKey: stake.key) }
            return Outcome(stake: nil, refusal: (code, message), detail: detail, fresh: true)
        }
    }

    static func refused(_ code: String, _ message: String, _ detail: [String: String] = [:]) -> Outcome {
        Outcome(stake: nil, refusal: (code, message), detail: detail, fresh: true)
    }

    /// Re-checks every admitted worker's provider every `interval` (the policy's refresh time a
    /// quarter at a time, so an expired observation is read again promptly) and evicts the
    /// workers whose provider no longer holds the stake. Runs until cancelled.
    func monitor(registry: WorkerRegistry, policies: PolicyState, trail: AuditTrail, interval: Duration?, logger: Logger) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: interval ?? .seconds(max(1, policies.current.document.stake.refreshSeconds / 4)))
            // The policy in force after the pause (an apply may have changed it meanwhile).
            let rules = policies.current.document.stake
            guard rules.minimumNanotons != nil else { continue }
            var byProvider = [String: (ProviderStake, [WorkerLink])]()
            for item in registry.admitted() {
                guard let stake = item.admission.stake else { continue }
                byProvider[stake.key, default: (stake, [])].1.append(item.link)
            }
            await oracle.retain(Set(byProvider.keys), now: clock.now().timeIntervalSince1970)
            for (admitted, links) in byProvider.values.sorted(by: { $0.0.key < $1.0.key }) {
                // Read where the policy in force says (an applied policy may change the source or the code hashes).
                guard let kind = rules.source else { continue }
                let query = StakeQuery(
                    kind: kind, provider: admitted.query.provider, stakeAccount: admitted.query.stakeAccount,
                    allowedCodeHashes: Set(rules.codeHashes))
                let stake = ProviderStake(provider: admitted.provider, key: admitted.key, query: query)
                let outcome = await check(stake, rules: rules)
                let version = policies.current.version
                if let refusal = outcome.refusal {
                    for link in links {
                        registry.remove(workerID: link.workerID, sessionID: link.sessionID)
                        var detail = outcome.detail
                        detail["session"] = link.sessionID
                        detail["message"] = refusal.message
                        do {
                            try await trail.record(
                                AuditEvent(
                                    event: "eviction", actor: "stake-oracle", worker: link.workerID, decision: "evicted",
                                    reasons: [refusal.code], policyVersion: version, detail: detail),
                                worker: .remove(id: link.workerID, session: link.sessionID))
                        } catch {
                            logger.error("audit append failed", metadata: ["error": "\(error)"])
                        }
                        link.end(code: refusal.code, message: refusal.message, audited: true)
                        logger.notice(
                            "worker evicted: stake", metadata: ["ccgate.worker.id": "\(link.workerID)", "ccgate.reason": "\(refusal.message)"])
                    }
                } else if outcome.fresh {
                    do {
                        try await trail.record(
                            AuditEvent(
                                event: "stake-check", actor: "stake-oracle", decision: outcome.detail["stale_seconds"] == nil ? "pass" : "stale",
                                policyVersion: version, detail: outcome.detail.merging(["workers": links.map(\.workerID).joined(separator: ",")]) { a, _ in a }))
                    } catch {
                        logger.error("audit append failed", metadata: ["error": "\(error)"])
                    }
                }
            }
        }
    }
}
