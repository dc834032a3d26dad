import AttestationCore
import Foundation
import Synchronization
import TestSupport
import Testing
import TONKit
import TONStake

/// The oracle's decisions over a scripted source, and provider proofs against a wallet key read
/// from loopback toncenter stand-ins.
@Suite struct StakeOracleTests {
    final class Script: StakeSource {
        let next = Mutex<[StakeReading]>([])
        let reads = Atomic<Int>(0)
        func push(_ r: StakeReading) { next.withLock { $0.append(r) } }
        func read(provider: String) async -> StakeReading {
            reads.add(1, ordering: .relaxed)
            return next.withLock { $0.isEmpty ? .unknown("nothing scripted") : $0.removeFirst() }
        }
    }

    static func seen(_ amount: UInt128) -> StakeReading {
        .observed(StakeObservation(source: "test", amount: amount, blockSeqno: 1, endpoints: ["a", "b"]))
    }

    @Test func failsClosedKeepsGraceAndEvictsOnWithdrawal() async {
        let script = Script()
        let oracle = StakeOracle(source: script, ttl: 60, grace: 300, jitter: 0)
        let minimum: UInt128 = 10_000_000_000_000
        // A new provider while the chain data is unknown: refused.
        #expect(
            await oracle.decide(provider: "p", minimum: minimum, now: 0)
                == .refuse(
                    code: "stake.unknown", message: "stake unknown for a provider not yet admitted: nothing scripted"))
        // Enough stake: admitted; within the TTL no new read.
        script.push(Self.seen(20_000_000_000_000))
        #expect(
            await oracle.decide(provider: "p", minimum: minimum, now: 10)
                == .admit(amount: 20_000_000_000_000, observedAt: 10, stale: false))
        let reads = script.reads.load(ordering: .relaxed)
        _ = await oracle.decide(provider: "p", minimum: minimum, now: 30)
        #expect(script.reads.load(ordering: .relaxed) == reads)
        // Outage: served from the last observation inside the grace window, refused after it.
        #expect(
            await oracle.decide(provider: "p", minimum: minimum, now: 200)
                == .admit(amount: 20_000_000_000_000, observedAt: 10, stale: true))
        guard case .refuse(let code, _) = await oracle.decide(provider: "p", minimum: minimum, now: 400) else {
            Issue.record("kept past grace"); return
        }
        #expect(code == "stake.unknown")
        // Back, then a withdrawal below the minimum: refused at the next observation.
        script.push(Self.seen(20_000_000_000_000))
        _ = await oracle.decide(provider: "p", minimum: minimum, now: 500)
        script.push(Self.seen(5_000_000_000_000))
        guard case .refuse(let below, _) = await oracle.decide(provider: "p", minimum: minimum, now: 561) else {
            Issue.record("not refused"); return
        }
        #expect(below == "stake.below-minimum")
        // A refusal from the source (a look-alike contract) is passed on.
        script.push(.refused(code: "stake.code-not-allowed", message: "x"))
        guard case .refuse("stake.code-not-allowed", _) = await oracle.decide(provider: "q", minimum: minimum, now: 0)
        else { Issue.record("accepted"); return }
    }

    /// The gateway prunes providers without admitted workers; one being admitted at that moment
    /// (its worker not yet registered) must keep its admission through an outage.
    @Test func pruningKeepsRecentProviders() async {
        let script = Script()
        let oracle = StakeOracle(source: script, ttl: 60, grace: 300, jitter: 0)
        let minimum: UInt128 = 10_000_000_000_000
        script.push(Self.seen(20_000_000_000_000))
        #expect(
            await oracle.decide(provider: "p", minimum: minimum, now: 0)
                == .admit(amount: 20_000_000_000_000, observedAt: 0, stale: false))
        await oracle.retain([], now: 5)
        #expect(await oracle.observation("p") != nil)
        #expect(
            await oracle.decide(provider: "p", minimum: minimum, now: 100)
                == .admit(amount: 20_000_000_000_000, observedAt: 0, stale: true))
        await oracle.retain([], now: 301)
        #expect(await oracle.observation("p") == nil)
        guard case .refuse("stake.unknown", let why) = await oracle.decide(provider: "p", minimum: minimum, now: 302)
        else { Issue.record("kept"); return }
        #expect(why.contains("not yet admitted"))
    }

    /// Threats: a forged wallet signature, a stake claimed in another provider's name, a proof
    /// lifted to another worker or gateway, an old proof.
    @Test func providerProofs() async throws {
        let providerKey = Ed25519PrivateKey.generate()
        let a = try StakeReaderTests.Stub(mode: "ok", walletKey: providerKey.publicKey.raw.hex)
        let b = try StakeReaderTests.Stub(mode: "ok", walletKey: providerKey.publicKey.raw.hex)
        let reader = StakeReader(clients: [a.client(), b.client()])
        let wallet = try TONAddress.parse("UQDQ7lcI1SH-Pjydj7UWT8xbnQEQbpAGEhSu-da17Jaki3tq").address
        let onChain = try await reader.walletPublicKey(wallet).get()
        #expect(onChain == providerKey.publicKey)
        let worker = Data(repeating: 7, count: 32)
        let now = Date(timeIntervalSince1970: 1_790_000_000)
        let proof = ProviderProof.sign(
            wallet: wallet, gatewayID: "gw-1", workerKey: worker, time: 1_790_000_000, key: providerKey)
        try proof.verify(walletKey: onChain, gatewayID: "gw-1", workerKey: worker, now: now)

        func code(_ p: ProviderProof, gateway: String = "gw-1", worker w: Data = worker, at t: Date = now) -> String? {
            do { try p.verify(walletKey: onChain, gatewayID: gateway, workerKey: w, now: t); return nil } catch {
                return error.code
            }
        }
        // Signed by someone else's key, in this wallet's name.
        let forged = ProviderProof.sign(
            wallet: wallet, gatewayID: "gw-1", workerKey: worker, time: 1_790_000_000, key: Ed25519PrivateKey.generate()
        )
        #expect(code(forged) == "stake.proof-invalid")
        var flipped = proof.signature
        flipped[0] ^= 1
        #expect(
            code(
                ProviderProof(
                    wallet: proof.wallet, gatewayID: "gw-1", workerKey: worker, time: proof.time, signature: flipped))
                == "stake.proof-invalid")
        // The provider's real signature presented for another wallet.
        let other = ProviderProof(
            wallet: "0:" + String(repeating: "ab", count: 32), gatewayID: "gw-1", workerKey: worker, time: proof.time,
            signature: proof.signature)
        #expect(code(other) == "stake.proof-invalid")
        #expect(code(proof, gateway: "gw-2") == "stake.proof-mismatch")
        #expect(code(proof, worker: Data(repeating: 8, count: 32)) == "stake.proof-mismatch")
        #expect(code(proof, at: now + 3600) == "stake.proof-stale")
    }

    /// Bad input from a worker: anything but a well-formed proof is `stake.proof-malformed`, never a crash.
    @Test func malformedProofsAreRefusedWithACode() throws {
        let key = Ed25519PrivateKey.generate()
        let wallet = try TONAddress.parseRaw("0:" + String(repeating: "11", count: 32))
        let good = try JSONEncoder().encode(
            ProviderProof.sign(
                wallet: wallet, gatewayID: "gw", workerKey: Data(repeating: 1, count: 32), time: 1, key: key))
        #expect(try ProviderProof.decode(good).wallet == wallet)
        func code(_ data: Data) -> String? {
            do { _ = try ProviderProof.decode(data); return nil } catch { return error.code }
        }
        let object = try #require(try JSONSerialization.jsonObject(with: good) as? [String: Any])
        func edited(_ key: String, _ value: Any) throws -> Data {
            var o = object
            o[key] = value
            return try JSONSerialization.data(withJSONObject: o)
        }
        let bad: [Data] = [
            Data(), Data("not json".utf8), Data("[]".utf8), Data(repeating: 0x7b, count: 5000),
            try edited("signature", Data(count: 63).base64EncodedString()),
            try edited("worker_key", Data(count: 31).base64EncodedString()),
            try edited("wallet", "0:zz"), try edited("wallet", "-1:" + String(repeating: "11", count: 32)),
            try edited("stake_account", "EQ-not-an-address"), try edited("time", "soon"),
        ]
        for data in bad {
            #expect(code(data) == "stake.proof-malformed", "\(String(decoding: data.prefix(60), as: UTF8.self))")
        }
    }
}
