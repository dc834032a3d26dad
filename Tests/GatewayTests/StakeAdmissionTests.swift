import AttestationCore
import Foundation
import Gateway
import Policy
import TestSupport
import Testing
import TONKit
import TONStake
import WorkerAgent

/// The TON staking gate end to end on loopback: real swtpm workers, a gateway reading stake from
/// two toncenter v2 endpoints served by `toncenter_tvm.py`, where the real nominator-pool code runs
/// in the TON VM (pytvm) and deposits and withdrawals are messages the contract itself processes.
@Suite(.serialized) struct StakeAdmissionTests {
    static let engine = Data("staked engine 1.0".utf8)
    static let model = Data("staked model v1".utf8)
    static let ton: UInt64 = 1_000_000_000

    static func policy(codeHashes: [String] = [TONChain.poolCodeHash], refresh: Int = 2, grace: Int = 900) -> String {
        GatewayHarness.policyText(engines: [engine], model: model, name: "staked") + """

            stake:
              minimum_ton: 10000
              source: nominator-pool
              pool: "\(TONChain.pool)"
              code_hashes: [\(codeHashes.joined(separator: ", "))]
              refresh_seconds: \(refresh)
              grace_seconds: \(grace)
            """
    }

    static func gateway(_ chain: TONChain, policy: String = policy()) async throws -> GatewayHarness {
        try await GatewayHarness(policy: policy) { c in
            c.toncenter = chain.ports.indices.map {
                ToncenterEndpoint(base: chain.url($0), apiKey: chain.apiKey, requestsPerSecond: 200)
            }
            c.stakeMonitorInterval = .milliseconds(500)
        }
    }

    /// A provider: a wallet v4r2 on the chain holding a fresh key, with `stake` TON deposited in the pool.
    static func provider(_ chain: TONChain, stake: UInt64?) async throws -> GatewayClient.ProviderIdentity {
        let key = Ed25519PrivateKey.generate()
        let wallet = try await chain.wallet(publicKey: key.publicKey.raw, balance: 40_000 * ton)
        if let stake {
            // The pool keeps 1 TON of a deposit as its processing fee.
            #expect(
                try await chain.send(from: wallet, to: TONChain.pool, value: (stake + 1) * ton, comment: "d").exitCode
                    == 0)
        }
        return GatewayClient.ProviderIdentity(wallet: try TONAddress.parseRaw(wallet), key: key)
    }

    static func worker(
        _ id: String, _ gateway: GatewayHarness, _ engine: FakeEngine, _ provider: GatewayClient.ProviderIdentity?
    )
        async throws -> TestWorker
    {
        try await TestWorker(
            id: id, gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: engine.port,
            engine: Self.engine, model: Self.model,
            provider: provider)
    }

    /// The code a rejected worker was given (nil: admitted).
    static func rejection(_ worker: TestWorker) async -> String? {
        switch await worker.admitted() {
        case .success: return nil
        case .failure(let error): return (error as? WorkerRejected)?.code ?? "\(error)"
        }
    }

    static func events(_ gateway: GatewayHarness, _ event: String, worker: String) throws -> [[String: Any]] {
        try gateway.auditEvents().filter { $0["event"] as? String == event && $0["worker"] as? String == worker }
    }

    static func detail(_ entry: [String: Any]?) -> [String: String] { entry?["detail"] as? [String: String] ?? [:] }

    /// Must show: a provider with enough stake is admitted (audited with the source, block and
    /// observed stake); after a withdrawal message lowers its stake, its worker is evicted within
    /// one refresh.
    @Test func stakedProviderIsAdmittedAndEvictedAfterWithdrawal() async throws {
        let chain = try await offPool { try TONChain() }
        let gateway = try await Self.gateway(chain)
        let engine = try await FakeEngine(name: "staked")
        let provider = try await Self.provider(chain, stake: 15_000)
        let worker = try await Self.worker("staked-1", gateway, engine, provider)
        defer {
            Teardown.after {
                await worker.stop(); await engine.stop(); await gateway.stop()
            }
        }
        guard case .success = await worker.admitted() else {
            Issue.record("a staked provider was not admitted"); return
        }

        let admission = try Self.events(gateway, "admission", worker: "staked-1").last
        let d = Self.detail(admission)
        #expect(admission?["decision"] as? String == "admit")
        #expect(d["stake.observed_nanotons"] == "15000000000000")
        #expect(d["stake.source"] == "nominator-pool:\(TONChain.pool)")
        #expect(d["stake.provider"] == provider.wallet.raw)
        let admittedSeqno = Int(d["stake.block_seqno"] ?? "") ?? 0
        #expect(admittedSeqno > 0)
        #expect(gateway.server.registry.workers.first?.record.provider == provider.wallet.raw)
        let served = try await gateway.request(
            "/v1/chat/completions", method: "POST",
            body: #"{"model":"fake","messages":[{"role":"user","content":"hi"}]}"#)
        #expect(served.status == 200)

        // The provider withdraws: the pool's own code removes the position (state 0: at once).
        let withdrawal = try await chain.send(
            from: provider.wallet.raw, to: TONChain.pool, value: Self.ton, comment: "w")
        #expect(withdrawal.exitCode == 0)
        let gone = await PolicyAdminTests.disconnected(worker, limit: .seconds(60))
        #expect(gone != nil, "the worker kept serving after its provider withdrew")
        print(
            "stake: worker evicted \(gone.map { "\($0)" } ?? "-") after the withdrawal committed (refresh_seconds 2, monitor every 0.5 s)"
        )
        #expect(!gateway.server.registry.isAdmitted("staked-1"))
        let eviction = try Self.events(gateway, "eviction", worker: "staked-1").last
        #expect(eviction?["reasons"] as? [String] == ["stake.below-minimum"])
        #expect(eviction?["actor"] as? String == "stake-oracle")
        let e = Self.detail(eviction)
        #expect(e["observed_nanotons"] == "0")
        #expect(e["note"] == "not a nominator")
        #expect((Int(e["block_seqno"] ?? "") ?? 0) >= withdrawal.blockSeqno)
        // Within one refresh: the first observation that saw the withdrawal evicted (no check passed
        // on a block at or after it). Timing-free, so it holds on a loaded machine too.
        let passedAfter = try gateway.auditEvents().filter {
            $0["event"] as? String == "stake-check" && Self.detail($0)["provider"] == provider.wallet.raw
                && (Int(Self.detail($0)["block_seqno"] ?? "") ?? 0) >= withdrawal.blockSeqno
        }
        #expect(passedAfter.isEmpty, "the stake was seen withdrawn and still passed: \(passedAfter)")
        #expect(try await gateway.verifiedChain().entries > 0)
    }

    /// Must show: with both endpoints down a new provider is refused, while an admitted one keeps
    /// serving through the grace window and is evicted when it ends.
    @Test func bothEndpointsDownRefuseNewProvidersAndKeepAdmittedOnesThroughGrace() async throws {
        let chain = try await offPool { try TONChain() }
        let gateway = try await Self.gateway(chain, policy: Self.policy(refresh: 2, grace: 30))
        let engine = try await FakeEngine(name: "staked")
        let admitted = try await Self.provider(chain, stake: 12_000)
        let newcomer = try await Self.provider(chain, stake: 12_000)
        let a = try await Self.worker("grace-a", gateway, engine, admitted)
        defer {
            Teardown.after {
                await a.stop(); await engine.stop(); await gateway.stop()
            }
        }
        guard case .success = await a.admitted() else { Issue.record("not admitted"); return }

        try await chain.mode("down", endpoint: 0)
        try await chain.mode("down", endpoint: 1)
        let b = try await Self.worker("grace-b", gateway, engine, newcomer)
        defer { Teardown.after { await b.stop() } }
        #expect(await Self.rejection(b) == "stake.unknown")
        let served = try await gateway.request(
            "/v1/chat/completions", method: "POST",
            body: #"{"model":"fake","messages":[{"role":"user","content":"still here?"}]}"#)
        #expect(served.status == 200, "an admitted provider stopped serving inside the grace window")
        let gone = await PolicyAdminTests.disconnected(a, limit: .seconds(90))
        #expect(gone != nil, "the admitted provider outlived the grace window")
        let eviction = try Self.events(gateway, "eviction", worker: "grace-a").last
        #expect(eviction?["reasons"] as? [String] == ["stake.unknown"])
        #expect(Self.detail(eviction)["message"]?.contains("beyond the grace window") == true)
        // The outage was audited while it was being ridden out.
        let stale = try gateway.auditEvents().filter {
            $0["event"] as? String == "stake-check" && $0["decision"] as? String == "stale"
        }
        #expect(!stale.isEmpty)
    }

    /// Must show: 429 responses and garbage JSON never admit anyone, on one endpoint or both.
    @Test func rateLimitsAndGarbageNeverAdmit() async throws {
        let chain = try await offPool { try TONChain() }
        let gateway = try await Self.gateway(chain)
        let engine = try await FakeEngine(name: "staked")
        let provider = try await Self.provider(chain, stake: 15_000)
        defer {
            Teardown.after {
                await engine.stop(); await gateway.stop()
            }
        }
        for (index, modes) in [
            ["ratelimit", "ok"], ["ok", "garbage"], ["ratelimit", "ratelimit"], ["garbage", "garbage"],
        ].enumerated() {
            try await chain.mode(modes[0], endpoint: 0)
            try await chain.mode(modes[1], endpoint: 1)
            let w = try await Self.worker("faulty-\(index)", gateway, engine, provider)
            #expect(await Self.rejection(w) == "stake.unknown", "\(modes)")
            await w.stop()
        }
        #expect(gateway.server.registry.workers.isEmpty)
    }

    /// A missing proof, a forged wallet signature, a stake claimed in another provider's name, too
    /// little stake, and a stake on a contract whose code hash the policy does not allow are each
    /// refused with their reason.
    @Test func forgedProofsAndUnknownContractsAreRefused() async throws {
        let chain = try await offPool { try TONChain() }
        let gateway = try await Self.gateway(chain)
        let engine = try await FakeEngine(name: "staked")
        let staked = try await Self.provider(chain, stake: 15_000)
        let other = try await Self.provider(chain, stake: nil)
        defer {
            Teardown.after {
                await engine.stop(); await gateway.stop()
            }
        }
        let cases: [(String, GatewayClient.ProviderIdentity?, String)] = [
            ("no-proof", nil, "stake.proof-missing"),
            ("forged", .init(wallet: staked.wallet, key: Ed25519PrivateKey.generate()), "stake.proof-invalid"),
            // A real provider (its own wallet and key on chain) claiming the staked wallet's position.
            ("borrowed", .init(wallet: staked.wallet, key: other.key), "stake.proof-invalid"),
            ("unstaked", other, "stake.below-minimum"),
        ]
        for (id, identity, expected) in cases {
            let w = try await Self.worker(id, gateway, engine, identity)
            #expect(await Self.rejection(w) == expected, "\(id)")
            await w.stop()
            let entry = try Self.events(gateway, "admission", worker: id).last
            #expect(entry?["reasons"] as? [String] == [expected], "\(id) audited")
        }
        // A gateway whose policy allows only the wallet code: the pool is a contract it does not know.
        let strict = try await Self.gateway(chain, policy: Self.policy(codeHashes: [TONChain.walletCodeHash]))
        defer { Teardown.after { await strict.stop() } }
        let w = try await Self.worker("look-alike", strict, engine, staked)
        #expect(await Self.rejection(w) == "stake.code-not-allowed")
        await w.stop()
        #expect(gateway.server.registry.workers.isEmpty && strict.server.registry.workers.isEmpty)
    }

    /// Threat: a provider proof whose time is Int.min (or Int.max), to overflow the gateway's
    /// age arithmetic. It is refused with a coded reason and the gateway goes on admitting.
    @Test func proofWithAnExtremeTimeIsRefusedAndServiceContinues() async throws {
        let chain = try await offPool { try TONChain() }
        let gateway = try await Self.gateway(chain)
        let engine = try await FakeEngine(name: "staked")
        let staked = try await Self.provider(chain, stake: 15_000)
        defer {
            Teardown.after {
                await engine.stop(); await gateway.stop()
            }
        }
        let tpm = try await Swtpm.start()
        defer { tpm.stop() }
        let (attestor, _) = try measuredAttestor(on: tpm, engine: Self.engine, model: Self.model)
        for time in [Int.min, Int.max] {
            let ending = try await HostileWorker.run(
                gatewayPort: gateway.workerPort, attestor: attestor, id: "time-\(time)", model: "fake",
                proof: { gatewayID, workerKey in
                    let proof = ProviderProof.sign(
                        wallet: staked.wallet, gatewayID: gatewayID, workerKey: workerKey, time: time, key: staked.key)
                    return (try? JSONEncoder().encode(proof)) ?? Data()
                })
            guard case .rejected(let rejection)? = ending else {
                Issue.record("expected a rejection, got \(String(describing: ending))")
                continue
            }
            #expect(rejection.code == "stake.proof-stale", "\(time)")
        }
        let w = try await Self.worker("after", gateway, engine, staked)
        defer { Teardown.after { await w.stop() } }
        guard case .success = await w.admitted() else {
            Issue.record("the gateway stopped admitting after the hostile proofs")
            return
        }
    }

    /// A signed policy that adds the stake rule evicts, at once, the worker admitted without a
    /// provider proof and keeps the staked one.
    @Test func applyingAStakeRuleEvictsWorkersWithoutProof() async throws {
        let chain = try await offPool { try TONChain() }
        let admin = Ed25519PrivateKey.generate()
        let unstakedText = GatewayHarness.policyText(engines: [Self.engine], model: Self.model, name: "unstaked")
        let gateway = try await GatewayHarness(policy: unstakedText) { c in
            c.adminPort = 0
            c.adminKeys = [admin.publicKey]
            c.policySignature = PolicySignature.sign(Data(unstakedText.utf8), with: admin).json
            c.toncenter = chain.ports.indices.map {
                ToncenterEndpoint(base: chain.url($0), apiKey: chain.apiKey, requestsPerSecond: 200)
            }
        }
        let engine = try await FakeEngine(name: "staked")
        let staked = try await Self.provider(chain, stake: 15_000)
        let plain = try await Self.worker("plain", gateway, engine, nil)
        let backed = try await Self.worker("backed", gateway, engine, staked)
        defer {
            Teardown.after {
                await plain.stop(); await backed.stop(); await engine.stop(); await gateway.stop()
            }
        }
        guard case .success = await plain.admitted(), case .success = await backed.admitted() else {
            Issue.record("not admitted"); return
        }
        // Without a stake rule the staked worker's provider is not checked (nor recorded).
        #expect(gateway.server.registry.workers.allSatisfy { $0.record.provider == nil })

        let stakedText = Self.policy()
        let applied = try await gateway.admin(
            "/v1/admin/policy/apply", method: "POST",
            json: PolicyAdminTests.signed(stakedText, admin))
        #expect(applied.status == 200, "\(applied.body)")
        let evicted = (applied.body["evictions"] as? [[String: Any]])?.map { $0["worker"] as? String } ?? []
        // Both were admitted without a proof (the first policy asked for none): both leave.
        #expect(Set(evicted) == ["plain", "backed"])
        #expect(!gateway.server.registry.isAdmitted("plain"))
        let eviction = try Self.events(gateway, "eviction", worker: "plain").last
        #expect(eviction?["reasons"] as? [String] == ["stake.proof-missing"])
        // The evicted workers' connections close; connecting again (as ccworker does), the one with a
        // proof is admitted on its stake and the one without is refused, for good.
        let backedClosed = await PolicyAdminTests.disconnected(backed),
            plainClosed = await PolicyAdminTests.disconnected(plain)
        #expect(backedClosed != nil && plainClosed != nil)
        let again = try await Self.worker("backed", gateway, engine, staked)
        let bare = try await Self.worker("plain", gateway, engine, nil)
        defer {
            Teardown.after {
                await again.stop(); await bare.stop()
            }
        }
        guard case .success = await again.admitted() else {
            Issue.record("the staked worker was not admitted again"); return
        }
        #expect(gateway.server.registry.workers.first { $0.workerID == "backed" }?.record.provider == staked.wallet.raw)
        let refusal = await bare.outcome() as? WorkerRejected
        #expect(refusal?.code == "stake.proof-missing" && refusal?.isRetryable(hasProvider: false) == false)
    }
}
