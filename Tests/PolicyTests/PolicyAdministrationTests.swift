import AttestationCore
import Foundation
import Policy
import Testing
import TONKit

/// Signed policies, semantic diffs, the new settings, and re-evaluating admitted workers.
@Suite struct PolicyAdministrationTests {
    static let text = """
        schema: ccgate.policy/v1
        name: p1
        evidence: {formats: [tpm2-quote, tdx-quote], tdx: {accepted_tcb_statuses: [UpToDate]}}
        measurements:
          binaries: [{name: ccinfer, version: "1.0", sha256: \(String(repeating: "a", count: 64))}]
          models: [{name: smollm2, sha256: \(String(repeating: "b", count: 64))}]
        workers: {reattest_interval_seconds: 30, session_key_lifetime_seconds: 3600}
        stake: {minimum_ton: "2.5", pool: "-1:771873c7f9aea5f657c6138fd15840c70004b4bc89f6126698e384d6bf0a4227", code_hashes: [9a3ec14bc098f6b44064c305222caea2800f17dda85ee6a8198a7095ede10dcf]}
        """

    @Test func newSettingsParse() throws {
        let doc = try PolicyDocument.parse(Self.text)
        #expect(doc.workers.reattestIntervalSeconds == 30)
        #expect(doc.workers.sessionKeyLifetimeSeconds == 3600)
        #expect(doc.stake.minimumNanotons == 2_500_000_000)
        #expect(PolicyDocument.tonText(2_500_000_000) == "2.5")
        // The stake source defaults to a nominator pool; the pool and the allowed code come from the policy.
        #expect(
            doc.stake.source
                == .nominatorPool(
                    pool: try TONAddress.parseRaw("-1:771873c7f9aea5f657c6138fd15840c70004b4bc89f6126698e384d6bf0a4227")
                ))
        #expect(doc.stake.codeHashes == ["9a3ec14bc098f6b44064c305222caea2800f17dda85ee6a8198a7095ede10dcf"])
        #expect(doc.stake.refreshSeconds == 300 && doc.stake.graceSeconds == 900 && doc.stake.proofMaxAgeSeconds == 600)
        let jetton = try PolicyDocument.parse(
            "schema: ccgate.policy/v1\nname: j\nstake: {minimum_ton: 1, source: jetton, jetton_master: EQCD39VS5jcptHL8vMjEXrzGaRcCVYto7HUn4bpAOg8xqB2N, code_hashes: [\(String(repeating: "ab", count: 32))], grace_seconds: 60}"
        )
        #expect(
            jetton.stake.source
                == .jetton(
                    master: try TONAddress.parseRaw(
                        "0:83dfd552e63729b472fcbcc8c45ebcc6691702558b68ec7527e1ba403a0f31a8")))
        #expect(jetton.stake.graceSeconds == 60)
        let pool =
            "pool: \"-1:771873c7f9aea5f657c6138fd15840c70004b4bc89f6126698e384d6bf0a4227\", code_hashes: [\(String(repeating: "ab", count: 32))]"
        for bad in [
            "stake: {minimum_ton: \"1.0000000001\", \(pool)}", "stake: {minimum_ton: -1, \(pool)}",
            "stake: {minimum_ton: \"1e9\", \(pool)}",
            "stake: {minimum_ton: 1, code_hashes: [\(String(repeating: "ab", count: 32))]}",  // no pool
            // no code hashes
            "stake: {minimum_ton: 1, pool: \"-1:771873c7f9aea5f657c6138fd15840c70004b4bc89f6126698e384d6bf0a4227\"}",
            "stake: {minimum_ton: 1, source: jetton, \(pool)}",  // no master
            "stake: {minimum_ton: 1, source: staking, \(pool)}",
            "stake: {minimum_ton: 1, pool: \"2:abababababababababababababababababababababababababababababababab\", code_hashes: [\(String(repeating: "ab", count: 32))]}",
            "stake: {minimum_ton: 1, pool: \"EQCD39VS5jcptHL8vMjEXrzGaRcCVYto7HUn4bpAOg8xqB2M\", code_hashes: []}",
            "stake: {source: cocoon-proxy, code_hashes: [\(String(repeating: "ab", count: 32))]}",  // no minimum
            "workers: {reattest_interval_seconds: 0}", "workers: {session_key_lifetime: 5}",
        ] {
            #expect(throws: PolicyLoadErrors.self) {
                try PolicyDocument.parse("schema: ccgate.policy/v1\nname: x\n" + bad)
            }
        }
    }

    /// Threat: a policy nobody with an admin key approved. Only the exact signed bytes under a
    /// pinned key pass; everything else is refused with its own code.
    @Test func signaturesAreCheckedExactly() throws {
        let admin = Ed25519PrivateKey.generate()
        let other = Ed25519PrivateKey.generate()
        let bytes = Data(Self.text.utf8)
        let signature = PolicySignature.sign(bytes, with: admin)
        let parsed = try PolicySignature.parse(signature.json)
        #expect(try parsed.verify(bytes, pinned: [other.publicKey, admin.publicKey]) == admin.publicKey)

        func code(_ body: () throws -> Ed25519PublicKey) -> String? {
            do { _ = try body(); return nil } catch { return (error as? PolicySignatureError)?.code ?? "\(error)" }
        }
        #expect(code { try parsed.verify(bytes, pinned: [other.publicKey]) } == "policy.signer-not-pinned")
        #expect(
            code { try parsed.verify(bytes + Data(" ".utf8), pinned: [admin.publicKey]) } == "policy.signature-invalid")
        // A signature whose digest was edited to match another document fails on the signature itself.
        let edited = Data(Self.text.replacingOccurrences(of: "p1", with: "p2").utf8)
        let forged = try PolicySignature.parse(
            signature.json.replacingOccurrences(of: signature.policySHA256, with: HashAlgorithm.sha256.hash(edited).hex)
        )
        #expect(code { try forged.verify(edited, pinned: [admin.publicKey]) } == "policy.signature-invalid")
        // Another key's signature presented under the admin's key name.
        var fields = try #require(
            try JSONSerialization.jsonObject(with: Data(PolicySignature.sign(bytes, with: other).json.utf8))
                as? [String: Any])
        fields["key"] = admin.publicKey.base64
        let swapped = try PolicySignature.parse(
            String(decoding: try JSONSerialization.data(withJSONObject: fields), as: UTF8.self))
        #expect(code { try swapped.verify(bytes, pinned: [admin.publicKey]) } == "policy.signature-invalid")
        #expect(throws: PolicySignatureError.self) { try PolicySignature.parse("{\"schema\":\"x\"}") }
        #expect(throws: PolicySignatureError.self) { try PolicySignature.parse(String(repeating: "x", count: 10_000)) }
    }

    @Test func diffIsSemantic() throws {
        let a = try PolicyDocument.parse(Self.text)
        let newText = Self.text
            .replacingOccurrences(of: "name: p1", with: "name: p2")
            .replacingOccurrences(
                of: "binaries: [{name: ccinfer, version: \"1.0\", sha256: \(String(repeating: "a", count: 64))}]",
                with: "binaries: [{name: ccinfer, version: \"1.1\", sha256: \(String(repeating: "c", count: 64))}]"
            )
            .replacingOccurrences(of: "[UpToDate]", with: "[UpToDate, SWHardeningNeeded]")
            .replacingOccurrences(of: "minimum_ton: \"2.5\"", with: "minimum_ton: \"10\"")
        let changes = a.changes(to: try PolicyDocument.parse(newText)).map(\.description)
        #expect(changes.contains("~ name: p1 → p2"))
        #expect(changes.contains("+ measurements.binaries: ccinfer 1.1 (sha256 \(String(repeating: "c", count: 64)))"))
        #expect(changes.contains("- measurements.binaries: ccinfer 1.0 (sha256 \(String(repeating: "a", count: 64)))"))
        #expect(changes.contains("+ evidence.tdx.accepted_tcb_statuses: SWHardeningNeeded"))
        #expect(changes.contains("~ stake.minimum_ton: 2.5 → 10"))
        #expect(changes.count == 5)
        let longer = try PolicyDocument.parse(
            Self.text.replacingOccurrences(of: "minimum_ton: \"2.5\"", with: "minimum_ton: \"2.5\", grace_seconds: 60"))
        #expect(a.changes(to: longer).map(\.description) == ["~ stake.grace_seconds: 900 → 60"])
        #expect(a.changes(to: a).isEmpty)
    }

    /// `evidence.gpu` parses, shows in a diff, refuses what it does not know, and judges GPU facts.
    @Test func gpuRulesParseDiffAndJudge() throws {
        let a = try PolicyDocument.parse(Self.text)
        let gpuText = Self.text.replacingOccurrences(
            of: "tdx: {accepted_tcb_statuses: [UpToDate]}}",
            with: "tdx: {accepted_tcb_statuses: [UpToDate]}, gpu: {required: true, vbios: ['96.00.9F.00.01']}}")
        let b = try PolicyDocument.parse(gpuText)
        #expect(b.gpu.required && b.gpu.vbios == ["96.00.9f.00.01"])
        #expect(
            a.changes(to: b).map(\.description).sorted() == [
                "+ evidence.gpu.vbios: 96.00.9f.00.01", "~ evidence.gpu.required: false → true",
            ])
        #expect(throws: PolicyLoadErrors.self) {
            try PolicyDocument.parse(gpuText.replacingOccurrences(of: "required: true", with: "architectures: [volta]"))
        }
        #expect(throws: PolicyLoadErrors.self) {
            try PolicyDocument.parse(gpuText.replacingOccurrences(of: "required: true", with: "requried: true"))
        }
        #expect(b.judgeGPUs(["gpu.count": "0"], source: "p").first?.code == .policyGPUNotAllowed)
        #expect(b.judgeGPUs([:], source: "p").first?.code == .policyGPUNotAllowed)
        #expect(b.judgeGPUs(["gpu.count": "1", "gpu.0.vbios": "96.00.9f.00.01"], source: "p").isEmpty)
        #expect(b.judgeGPUs(["gpu.count": "1", "gpu.0.vbios": "96.00.5e.00.01"], source: "p").count == 1)
        #expect(a.judgeGPUs([:], source: "p").isEmpty)
    }

    @Test func judgementUsesStoredClaims() throws {
        let doc = try PolicyDocument.parse(Self.text)
        let claims = VerifiedClaims(
            measuredFiles: [
                MeasuredFile(
                    path: "ccworker-exec:/engine", algorithm: "sha256", digestHex: String(repeating: "a", count: 64),
                    pcr: 23),
                MeasuredFile(
                    path: "/model", algorithm: "sha256", digestHex: String(repeating: "b", count: 64), pcr: 23),
            ],
            fields: ["tee": "tdx", "debug": "false", "tcb_date": "2026-01-01T00:00:00Z"])
        let now = Date(timeIntervalSince1970: 1_790_000_000)
        #expect(
            doc.judge(
                AttestedFacts(format: "tdx-quote", claims: claims, tcbStatus: "UpToDate", advisoryIDs: []), at: now
            ).isEmpty)
        #expect(
            doc.judge(
                AttestedFacts(format: "tdx-quote", claims: claims, tcbStatus: "OutOfDate", advisoryIDs: []), at: now
            ).first?.code == .tcbStatusNotAllowed)
        #expect(
            doc.judge(
                AttestedFacts(format: "sgx-quote", claims: claims, tcbStatus: "UpToDate", advisoryIDs: []), at: now
            ).first?.code == .evidenceUnsupported)
        let pulled = try PolicyDocument.parse(
            Self.text.replacingOccurrences(
                of: String(repeating: "a", count: 64), with: String(repeating: "d", count: 64)))
        #expect(
            pulled.judge(
                AttestedFacts(format: "tdx-quote", claims: claims, tcbStatus: "UpToDate", advisoryIDs: []), at: now
            ).first?.code == .policyMeasurementNotAllowed)
    }

    @Test func theJudgeFailsClosedOnDCAPFactsThatLeaveOutStatusOrDebug() throws {
        let doc = try PolicyDocument.parse("schema: ccgate.policy/v1\nname: t\nevidence:\n  formats: [tdx-quote]\n")
        let now = Date(timeIntervalSince1970: 1_790_000_000)
        let complete = VerifiedClaims(fields: ["tee": "tdx", "debug": "false"])
        #expect(
            doc.judge(
                AttestedFacts(format: "tdx-quote", claims: complete, tcbStatus: "UpToDate", advisoryIDs: []), at: now
            ).isEmpty)
        let noStatus = doc.judge(
            AttestedFacts(format: "tdx-quote", claims: complete, tcbStatus: nil, advisoryIDs: []), at: now)
        #expect(noStatus.map(\.code) == [.tcbStatusNotAllowed])
        let noDebug = doc.judge(
            AttestedFacts(
                format: "tdx-quote", claims: VerifiedClaims(fields: ["tee": "tdx"]), tcbStatus: "UpToDate",
                advisoryIDs: []),
            at: now)
        #expect(noDebug.map(\.code) == [.policyDebugNotAllowed])
        let debug = doc.judge(
            AttestedFacts(
                format: "tdx-quote", claims: VerifiedClaims(fields: ["tee": "tdx", "debug": "true"]),
                tcbStatus: "UpToDate",
                advisoryIDs: []),
            at: now)
        #expect(debug.map(\.code) == [.policyDebugNotAllowed])
    }
}

/// Signatures carry a serial, an expiry and the gateway they are for; each is covered by the
/// signature and checked before a policy is applied.
@Suite struct PolicySignatureScopeTests {
    static let text = Data("schema: ccgate.policy/v1\nname: scoped\n".utf8)
    static let gateway = String(repeating: "ab", count: 32)

    func code(_ body: () throws -> Void) -> String? {
        do { try body(); return nil } catch { return (error as? PolicySignatureError)?.code ?? "\(error)" }
    }

    /// Threat: an older signed policy re-applied with the admin token alone (a rollback).
    @Test func serialsOnlyGoUp() throws {
        let admin = Ed25519PrivateKey.generate()
        let signature = try PolicySignature.parse(PolicySignature.sign(Self.text, with: admin, serial: 10).json)
        _ = try signature.verify(Self.text, pinned: [admin.publicKey])
        #expect(code { try signature.checkApplicable(gatewayID: Self.gateway, at: Date(), after: 9) } == nil)
        #expect(
            code { try signature.checkApplicable(gatewayID: Self.gateway, at: Date(), after: 10) }
                == "policy.signature-stale")
        #expect(
            code { try signature.checkApplicable(gatewayID: Self.gateway, at: Date(), after: 11) }
                == "policy.signature-stale")
        // The serial is signed: raising it breaks the signature.
        let raised = try PolicySignature.parse(
            signature.json.replacingOccurrences(of: "\"serial\":10", with: "\"serial\":99"))
        #expect(raised.serial == 99)
        #expect(code { _ = try raised.verify(Self.text, pinned: [admin.publicKey]) } == "policy.signature-invalid")
    }

    @Test func expiryAndGatewayAreEnforced() throws {
        let admin = Ed25519PrivateKey.generate()
        let end = Date(timeIntervalSince1970: 2_000_000_000)
        let scoped = try PolicySignature.parse(
            PolicySignature.sign(Self.text, with: admin, serial: 5, notAfter: end, gateway: Self.gateway).json)
        _ = try scoped.verify(Self.text, pinned: [admin.publicKey])
        #expect(code { try scoped.checkApplicable(gatewayID: Self.gateway, at: end, after: 0) } == nil)
        #expect(
            code { try scoped.checkApplicable(gatewayID: Self.gateway, at: end.addingTimeInterval(1), after: 0) }
                == "policy.signature-stale")
        let other = String(repeating: "cd", count: 32)
        #expect(code { try scoped.checkApplicable(gatewayID: other, at: end, after: 0) } == "policy.signature-invalid")
        // Widening the scope to any gateway breaks the signature.
        let widened = try PolicySignature.parse(scoped.json.replacingOccurrences(of: Self.gateway, with: "*"))
        #expect(code { _ = try widened.verify(Self.text, pinned: [admin.publicKey]) } == "policy.signature-invalid")
    }
}
