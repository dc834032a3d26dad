import AttestationCore
import Foundation
import Testing

@testable import Policy

/// Lint refuses policies that pin nothing about a TEE guest, and names lab settings; the judge
/// applies `ak_trust` and the SGX rules to the facts verifiers report.
@Suite struct PolicyLintTests {
    static let mrtd = String(repeating: "ab", count: 48)
    static let rtmr = String(repeating: "cd", count: 48)
    static let digest = String(repeating: "ef", count: 32)

    func lint(_ evidence: String, measurements: String = "") throws -> PolicyDocument.Lint {
        try PolicyDocument.parse("schema: ccgate.policy/v1\nname: t\nevidence:\n\(evidence)\n\(measurements)").lint
    }

    /// Threat: a TDX policy any guest on genuine hardware passes.
    @Test func tdxWithoutPinnedImageIsAnError() throws {
        #expect(try lint("  formats: [tdx-quote]").errors.count == 1)
        #expect(try lint("  formats: [tdx-quote]\n  tdx: {mrtd: [\(Self.mrtd)]}").errors.count == 1)
        let partial =
            "  formats: [tdx-quote]\n  tdx: {mrtd: [\(Self.mrtd)], rtmrs: [{rtmr0: \(Self.rtmr), rtmr1: \(Self.rtmr)}]}"
        #expect(try lint(partial).errors.count == 1)
        let pinned =
            "  formats: [tdx-quote]\n  tdx: {mrtd: [\(Self.mrtd)], rtmrs: [{rtmr0: \(Self.rtmr), rtmr1: \(Self.rtmr), rtmr2: \(Self.rtmr)}]}"
        #expect(try lint(pinned).errors.isEmpty)
        #expect(try lint("  formats: [tdx-quote]\n  tdx: {image_hashes: [\(Self.digest)]}").errors.isEmpty)
    }

    /// Threat: an SGX policy any enclave passes.
    @Test func sgxWithoutEnclaveRuleIsAnError() throws {
        #expect(try lint("  formats: [sgx-quote]").errors.count == 1)
        #expect(try lint("  formats: [sgx-quote]\n  sgx: {mrenclaves: [\(Self.digest)]}").errors.isEmpty)
        let signer =
            "  formats: [sgx-quote]\n  sgx: {signers: [{mrsigner: \(Self.digest), isvprodid: 1, min_isvsvn: 3}]}"
        #expect(try lint(signer).errors.isEmpty)
        #expect(throws: PolicyLoadErrors.self) {
            try PolicyDocument.parse(
                "schema: ccgate.policy/v1\nname: t\nevidence:\n  sgx: {signers: [{mrsigner: \(Self.digest)}]}")
        }
    }

    @Test func labSettingsAreWarnings() throws {
        let lab = try lint(
            "  formats: [tpm2-quote]\n  tpm: {ak_trust: as-presented}",
            measurements: "measurements: {allow_unmeasured_engine: true}")
        #expect(lab.errors.isEmpty)
        #expect(lab.warnings.count == 2)
        #expect(try lint("  formats: [tpm2-quote]").warnings.isEmpty)
        #expect(throws: PolicyLoadErrors.self) {
            try PolicyDocument.parse("schema: ccgate.policy/v1\nname: t\nevidence: {tpm: {ak_trust: trusting}}")
        }
        #expect(throws: PolicyLoadErrors.self) {
            try PolicyDocument.parse("schema: ccgate.policy/v1\nname: t\nevidence: {tpm: {ak_trust: enrolled}}")
        }
    }

    static func tpmFacts(_ fields: [String: String]) -> AttestedFacts {
        AttestedFacts(format: "tpm2-quote", claims: VerifiedClaims(fields: fields), tcbStatus: nil, advisoryIDs: [])
    }

    static let anchored = [
        "ak.tpm_key": "true", "ek.certificate": "verified", "ek.sha256": digest, "ak.activation": "live",
    ]

    /// Threat: a software AK. Each missing fact fails closed with its own code.
    @Test func akTrustIsJudgedFromTheFacts() throws {
        let policy = try PolicyDocument.parse("schema: ccgate.policy/v1\nname: t\n")
        #expect(policy.judge(Self.tpmFacts(Self.anchored), at: Date(), scope: .evidence).isEmpty)
        func code(_ change: [String: String?]) -> ReasonCode? {
            var fields = Self.anchored
            for (k, v) in change { fields[k] = v }
            return policy.judge(Self.tpmFacts(fields), at: Date(), scope: .evidence).first?.code
        }
        #expect(code(["ak.tpm_key": "false"]) == .tpmAKUntrusted)
        #expect(code(["ek.certificate": "absent"]) == .tpmAKUntrusted)
        #expect(code(["ek.certificate": nil]) == .tpmAKUntrusted)
        #expect(code(["ek.certificate": "untrusted"]) == .tpmEKChainInvalid)
        #expect(code(["ek.certificate": "invalid"]) == .tpmEKChainInvalid)
        #expect(code(["ak.activation": "none"]) == .tpmAKUntrusted)
        #expect(code(["ak.activation": "record"]) == nil)

        let enrolled = try PolicyDocument.parse(
            "schema: ccgate.policy/v1\nname: t\nevidence: {tpm: {ak_trust: enrolled, enrolled_eks: [\(Self.digest)]}}")
        var uncertified = Self.anchored
        uncertified["ek.certificate"] = "absent"
        #expect(enrolled.judge(Self.tpmFacts(uncertified), at: Date(), scope: .evidence).isEmpty)
        uncertified["ek.sha256"] = String(repeating: "00", count: 32)
        #expect(enrolled.judge(Self.tpmFacts(uncertified), at: Date(), scope: .evidence).first?.code == .tpmAKUntrusted)

        let lab = try PolicyDocument.parse(
            "schema: ccgate.policy/v1\nname: t\nevidence: {tpm: {ak_trust: as-presented}}")
        #expect(lab.judge(Self.tpmFacts([:]), at: Date(), scope: .evidence).isEmpty)
    }

    @Test func enclaveRules() throws {
        let policy = try PolicyDocument.parse(
            """
            schema: ccgate.policy/v1
            name: t
            evidence:
              formats: [sgx-quote]
              sgx: {signers: [{mrsigner: \(Self.digest), isvprodid: 7, min_isvsvn: 3}]}
            measurements: {require: false}
            """)
        func reasons(_ fields: [String: String]) -> [Reason] {
            policy.evaluate(
                VerifiedClaims(fields: ["mrenclave": String(repeating: "11", count: 32)].merging(fields) { $1 }))
        }
        #expect(reasons(["mrsigner": Self.digest, "isvprodid": "7", "isvsvn": "3"]).isEmpty)
        #expect(reasons(["mrsigner": Self.digest, "isvprodid": "7", "isvsvn": "2"]).count == 1)
        #expect(reasons(["mrsigner": Self.digest, "isvprodid": "8", "isvsvn": "9"]).count == 1)
        #expect(reasons(["mrsigner": String(repeating: "00", count: 32), "isvprodid": "7", "isvsvn": "9"]).count == 1)
        #expect(reasons([:]).count == 1)
    }

    /// Names bind to measured models once any model entry lists names; policy apply and
    /// re-attestation use the same check.
    @Test func modelNamesAreBoundToMeasuredModels() throws {
        let small = String(repeating: "12", count: 32)
        let large = String(repeating: "34", count: 32)
        let policy = try PolicyDocument.parse(
            """
            schema: ccgate.policy/v1
            name: t
            measurements:
              require: false
              models:
                - {name: small.gguf, names: [smollm2-135m], sha256: \(small)}
                - {name: large.gguf, names: [llama-405b, llama-405b-instruct], sha256: \(large)}
            """)
        let measuredSmall = [MeasuredFile(path: "/m", algorithm: "sha256", digestHex: small, pcr: 23)]
        #expect(policy.unboundModelNames(["smollm2-135m"], measured: measuredSmall).isEmpty)
        #expect(policy.unboundModelNames(["llama-405b"], measured: measuredSmall) == ["llama-405b"])
        #expect(policy.unboundModelNames(["SmolLM2-135M"], measured: measuredSmall) == ["SmolLM2-135M"])
        let facts = AttestedFacts(
            format: "tpm2-quote", claims: VerifiedClaims(measuredFiles: measuredSmall), tcbStatus: nil, advisoryIDs: [])
        #expect(policy.nameReasons(["llama-405b-instruct"], facts).map(\.code) == [.policyModelNameNotBound])
        // A policy whose models list no names binds nothing (lint warns).
        let unnamed = try PolicyDocument.parse(
            "schema: ccgate.policy/v1\nname: t\nmeasurements: {require: false, models: [{name: m, sha256: \(small)}]}")
        #expect(unnamed.unboundModelNames(["anything"], measured: measuredSmall).isEmpty)
        #expect(unnamed.lint.warnings.contains { $0.contains("names") })
    }

    /// An engine hashed on disk but not executed from its measured copy is refused unless the
    /// policy allows it.
    @Test func unmeasuredEngineNeedsThePolicyFlag() throws {
        let model = String(repeating: "12", count: 32)
        let measurements = "binaries: [{name: e, sha256: \(Self.digest)}], models: [{name: m, sha256: \(model)}]"
        let strict = try PolicyDocument.parse("schema: ccgate.policy/v1\nname: t\nmeasurements: {\(measurements)}")
        let lab = try PolicyDocument.parse(
            "schema: ccgate.policy/v1\nname: t\nmeasurements: {\(measurements), allow_unmeasured_engine: true}")
        func claims(_ enginePath: String) -> VerifiedClaims {
            VerifiedClaims(measuredFiles: [
                MeasuredFile(path: enginePath, algorithm: "sha256", digestHex: Self.digest, pcr: 23),
                MeasuredFile(path: "/m", algorithm: "sha256", digestHex: model, pcr: 23),
            ])
        }
        #expect(strict.evaluate(claims("/opt/ccinfer")).map(\.code) == [.policyUnmeasuredEngine])
        #expect(strict.evaluate(claims("ccworker-exec:/opt/ccinfer")).isEmpty)
        #expect(lab.evaluate(claims("/opt/ccinfer")).isEmpty)
    }
}
