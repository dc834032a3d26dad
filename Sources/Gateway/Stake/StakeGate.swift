import AdmissionCore
import AttestationCore
import AuditLog
import GatewayState
import Foundation
import Logging
import Policy
import Synchronization
import TONKit
import TONStake

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
public final class StakeGate: StakeChecking {
    let reader: StakeReader
    let oracle: StakeOracle
    /// The id provider proofs must name: the gateway key's fingerprint.
    public let gatewayID: String
    let clock: any AttestationClock
    /// The observation time last audited per provider, so that a cached decision is not logged twice.
    private let audited = Mutex<[String: Double]>([:])

    public init(
        endpoints: [ToncenterEndpoint], gatewayID: String, clock: any AttestationClock = SystemClock(),
        transport: any HTTPTransport = FetchTransport()
    ) {
        reader = StakeReader(
            clients: endpoints.map { ToncenterClient(endpoint: $0, transport: transport, maxAttempts: 2) })
        oracle = StakeOracle(source: nil, ttl: 300, grace: 900)
        self.gatewayID = gatewayID
        self.clock = clock
    }

    /// The admission check: the proof `proofData`, for this worker's KEM key, under `rules`.
    public func admit(proofData: Data?, workerKey: Data, rules: PolicyDocument.StakeRules) async -> StakeOutcome {
        guard let proofData else {
            return StakeOutcome.refused(
                "stake.proof-missing",
                "the policy requires a TON stake: start the worker with --provider-wallet and --provider-key")
        }
        let decoded: (proof: ProviderProof, wallet: TONAddress, stakeAccount: TONAddress?)
        do throws(ProviderProof.Failure) { decoded = try ProviderProof.decode(proofData) } catch {
            return StakeOutcome.refused(error.code, error.message)
        }
        let walletKey: Ed25519PublicKey
        switch await reader.walletPublicKey(decoded.wallet) {
        case .success(let key): walletKey = key
        case .failure(let failure):
            return StakeOutcome.refused(failure.code, failure.message, ["provider": decoded.wallet.raw])
        }
        do throws(ProviderProof.Failure) {
            try decoded.proof.verify(
                walletKey: walletKey, gatewayID: gatewayID, workerKey: workerKey, now: clock.now(),
                maxAge: TimeInterval(rules.proofMaxAgeSeconds))
        } catch { return StakeOutcome.refused(error.code, error.message, ["provider": decoded.wallet.raw]) }
        guard rules.source != nil else {
            return StakeOutcome.refused("stake.no-source", "the policy sets a minimum stake but no source")
        }
        return await check(
            ProviderStake(provider: decoded.wallet.raw, stakeAccount: decoded.stakeAccount?.raw), rules: rules)
    }

    /// Decides for an admitted (or being admitted) provider from the oracle, reading the chain when
    /// its observation has expired.
    func check(_ stake: ProviderStake, rules: PolicyDocument.StakeRules) async -> StakeOutcome {
        guard let query = Self.query(stake, rules) else {
            return StakeOutcome.refused("stake.no-source", "the policy sets a minimum stake but no source")
        }
        await oracle.configure(ttl: Double(rules.refreshSeconds), grace: Double(rules.graceSeconds))
        let reader = self.reader
        let now = clock.now().timeIntervalSince1970
        let decision = await oracle.decide(provider: stake.key, minimum: UInt128(rules.minimumNanotons ?? 0), now: now)
        {
            await reader.stake(query)
        }
        var detail = ["provider": stake.provider, "source": query.kind.name]
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
            return StakeOutcome(stake: stake, refusal: nil, detail: detail, fresh: fresh)
        case .refuse(let code, let message):
            audited.withLock { _ = $0.removeValue(forKey: stake.key) }
            return StakeOutcome(stake: nil, refusal: (code, message), detail: detail, fresh: true)
        }
    }

    /// Where `stake` is read under `rules` (the policy in force may change the source or the
    /// allowed code hashes); nil without a source.
    static func query(_ stake: ProviderStake, _ rules: PolicyDocument.StakeRules) -> StakeQuery? {
        guard let kind = rules.source, let provider = try? TONAddress.parseRaw(stake.provider) else { return nil }
        let account = stake.stakeAccount.flatMap { try? TONAddress.parseRaw($0) }
        return StakeQuery(
            kind: kind, provider: provider, stakeAccount: account, allowedCodeHashes: Set(rules.codeHashes))
    }

    /// Re-checks every admitted worker's provider every `interval` (the policy's refresh time a
    /// quarter at a time, so an expired observation is read again promptly) and evicts the
    /// workers whose provider no longer holds the stake. Runs until cancelled.
    func monitor(
        registry: WorkerRegistry, policies: PolicyState, evictor: Evictor, trail: AuditTrail, interval: Duration?,
        logger: Logger
    )
        async
    {
        while !Task.isCancelled {
            try? await Task.sleep(for: interval ?? .seconds(max(1, policies.current.document.stake.refreshSeconds / 4)))
            // The policy in force after the pause (an apply may have changed it meanwhile).
            let rules = policies.current.document.stake
            guard rules.minimumNanotons != nil, rules.source != nil else { continue }
            var byProvider = [String: (ProviderStake, [WorkerLink])]()
            for item in registry.admitted() {
                guard let stake = item.admission.stake else { continue }
                byProvider[stake.key, default: (stake, [])].1.append(item.link)
            }
            await oracle.retain(Set(byProvider.keys), now: clock.now().timeIntervalSince1970)
            for (stake, links) in byProvider.values.sorted(by: { $0.0.key < $1.0.key }) {
                let outcome = await check(stake, rules: rules)
                await act(
                    on: outcome, links: links, evictor: evictor, trail: trail, version: policies.current.version,
                    logger: logger)
            }
        }
    }

    /// Evicts a provider's workers on a refusal; records a fresh pass (or a stale one in the grace window).
    func act(
        on outcome: StakeOutcome, links: [WorkerLink], evictor: Evictor, trail: AuditTrail, version: Int, logger: Logger
    ) async {
        if let refusal = outcome.refusal {
            for link in links {
                let cause = Evictor.Cause(
                    code: refusal.code, message: refusal.message, actor: "stake-oracle", detail: outcome.detail)
                do { try await evictor.evict(link, cause) } catch {
                    logger.error("audit append failed", metadata: ["error": "\(error)"])
                }
                logger.notice(
                    "worker evicted: stake",
                    metadata: ["ccgate.worker.id": "\(link.workerID)", "ccgate.reason": "\(refusal.message)"])
            }
        } else if outcome.fresh {
            do {
                try await trail.record(
                    AuditEvent(
                        .stakeCheck, actor: "stake-oracle",
                        decision: outcome.detail["stale_seconds"] == nil ? .pass : .stale,
                        policyVersion: version,
                        detail: outcome.detail.merging(["workers": links.map(\.workerID).joined(separator: ",")]) {
                            a, _ in a
                        }))
            } catch {
                logger.error("audit append failed", metadata: ["error": "\(error)"])
            }
        }
    }
}
