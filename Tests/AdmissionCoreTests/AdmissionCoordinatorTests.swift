import AdmissionCore
import AttestationCore
import AuditLog
import GatewayState
import Foundation
import Policy
import Sealing
import Testing
import TestSupport
import WorkerProtocol

/// Admission decisions with no sockets, no TPM and no database files: TDX evidence from the DCAP
/// world generated in code, judged by the policy in force.
@Suite struct AdmissionCoordinatorTests {
    let nonce = Data(repeating: 5, count: 32)
    let worker = TestWorker()
    var hello: WireMessage.Hello {
        guard case .hello(let h) = worker.hello else { fatalError() }
        return h
    }

    @Test func anAdmissionSealsAKeyOnlyTheAttestedWorkerOpensAndRecordsItFirst() async throws {
        let core = try Core()
        let decision = await core.coordinator.admit(
            hello: hello, nonce: nonce, evidence: core.evidence(nonce: nonce, key: worker.kem.publicKeyBytes))
        let grant = try #require(decision.grant)
        #expect(decision.refusal == nil)
        let message = grant.message(reattestSeconds: 60)
        #expect(message.reattestSeconds == 60)
        let opened = try SessionKeySealing.open(
            .init(encapsulatedKey: message.encapsulatedKey, ciphertext: message.sealedSessionKey), with: worker.kem,
            context: Data(grant.session.sessionID.utf8) + nonce)
        #expect(opened == grant.sessionKey)
        // Another worker's key cannot open it.
        #expect(throws: SealingError.self) {
            try SessionKeySealing.open(
                .init(encapsulatedKey: message.encapsulatedKey, ciphertext: message.sealedSessionKey),
                with: WorkerKEMKey(),
                context: Data(grant.session.sessionID.utf8) + nonce)
        }
        // The admission, its key and the worker's row go in one transaction.
        #expect(decision.drafts.count == 2)
        guard case .event(let admit, let evidence?, .upsert(let row)?) = decision.drafts[0],
            case .event(let key, nil, nil) = decision.drafts[1]
        else {
            Issue.record("unexpected drafts \(decision.drafts)")
            return
        }
        #expect(admit.kind == .admission && admit.decision == "admit" && admit.policyVersion == 1)
        #expect(key.kind == .sessionKey && key.decision == "issued")
        #expect(row.id == "w1" && row.session == grant.session.sessionID && row.claims["tcb_status"] == "UpToDate")
        #expect(evidence.binding == attestationBinding(nonce: nonce, workerPublicKeys: worker.kem.publicKeyBytes))
    }

    /// Evidence that does not verify is refused and audited by its digest; the envelope itself is
    /// not stored (it proves nothing, and storing it would let anyone fill the disk).
    @Test func evidenceBoundToAnotherNonceOrKeyIsRefusedAndAuditedByDigest() async throws {
        let core = try Core()
        for evidence in [
            core.evidence(nonce: Data(repeating: 6, count: 32), key: worker.kem.publicKeyBytes),
            core.evidence(nonce: nonce, key: WorkerKEMKey().publicKeyBytes),
        ] {
            let decision = await core.coordinator.admit(hello: hello, nonce: nonce, evidence: evidence)
            #expect(decision.grant == nil)
            #expect(decision.refusal?.code == ReasonCode.nonceMismatch.rawValue)
            guard case .event(let event, nil, nil) = decision.drafts.first else {
                Issue.record("refusal of unverified evidence drafted with the envelope")
                return
            }
            #expect(
                event.kind == .admission && event.decision == "reject"
                    && event.reasons == [ReasonCode.nonceMismatch.rawValue])
            #expect(event.evidenceSHA256 == HashAlgorithm.sha256.hash(evidence.envelope).hex)
        }
    }

    @Test func thePolicyJudgesDebugGuestsAndTCBStatusNotTheVerifier() async throws {
        let core = try Core()
        let debug = await core.coordinator.admit(
            hello: hello, nonce: nonce,
            evidence: core.evidence(nonce: nonce, key: worker.kem.publicKeyBytes) { $0.tdAttributes[0] |= 0x01 })
        #expect(debug.refusal?.code == ReasonCode.policyDebugNotAllowed.rawValue)
        #expect(debug.verdict.reasons.first?.source == "policy.core-test")

        let lax = try Core(policy: Core.tdxPolicy + "  tdx:\n    allow_debug: true\n")
        let allowed = await lax.coordinator.admit(
            hello: hello, nonce: nonce,
            evidence: lax.evidence(nonce: nonce, key: worker.kem.publicKeyBytes) { $0.tdAttributes[0] |= 0x01 })
        #expect(allowed.grant != nil)
    }

    @Test func aStakeRuleNeedsAStakeReader() async throws {
        let stakePolicy =
            Core.tdxPolicy
            + "stake:\n  minimum_ton: 10\n  pool: \"0:\(String(repeating: "cd", count: 32))\"\n  code_hashes: [\"\(String(repeating: "ef", count: 32))\"]\n"
        let none = try Core(policy: stakePolicy)
        let evidence = none.evidence(nonce: nonce, key: worker.kem.publicKeyBytes)
        let refused = await none.coordinator.admit(hello: hello, nonce: nonce, evidence: evidence)
        #expect(refused.refusal?.code == "stake.unavailable")

        let staked = try Core(policy: stakePolicy, stake: FixedStake())
        let evidenceForStaked = staked.evidence(nonce: nonce, key: worker.kem.publicKeyBytes)
        let noProof = await staked.coordinator.admit(hello: hello, nonce: nonce, evidence: evidenceForStaked)
        #expect(noProof.refusal?.code == "stake.proof-missing")
        var withProof = evidenceForStaked
        withProof.providerProof = Data("{}".utf8)
        let admitted = await staked.coordinator.admit(hello: hello, nonce: nonce, evidence: withProof)
        let grant = try #require(admitted.grant)
        #expect(grant.record.provider == "0:" + String(repeating: "ab", count: 32))
        guard case .event(let event, _, _) = admitted.drafts[0] else { return }
        #expect(event.detail["stake.source"] == "test")
        // The stake is part of what a later policy is judged against.
        #expect(
            grant.admitted.reasons(under: try PolicyDocument.parse(stakePolicy), at: DCAPWorld.referenceTime).isEmpty)
    }

    @Test func aRecheckUsesThePolicyInForceNow() async throws {
        let core = try Core()
        let decision = await core.coordinator.admit(
            hello: hello, nonce: nonce, evidence: core.evidence(nonce: nonce, key: worker.kem.publicKeyBytes))
        let grant = try #require(decision.grant)
        #expect(core.coordinator.recheck(grant.admitted).reasons.isEmpty)
        try core.apply("schema: ccgate.policy/v1\nname: tpm-only\nevidence:\n  formats: [tpm2-quote]\n")
        let (policy, reasons) = core.coordinator.recheck(grant.admitted)
        #expect(policy.version == 2)
        #expect(reasons.first?.code == .evidenceUnsupported)
    }
}
