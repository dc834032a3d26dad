import AttestationCore
import Foundation
import Policy
import TestSupport
import Testing

@Suite struct PolicyDocumentTests {
    @Test func shippedPoliciesLoad() throws {
        let dir = SharedTestData.packageRoot.appendingPathComponent("Policies")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".yaml") }
        #expect(!files.isEmpty)
        for file in files {
            let doc = try PolicyDocument.load(contentsOf: dir.appendingPathComponent(file))
            #expect(!doc.name.isEmpty)
            #expect(doc.lint == PolicyDocument.Lint(), "\(file): \(doc.lint)")
        }
        let def = try PolicyDocument.load(contentsOf: dir.appendingPathComponent("default.yaml"))
        #expect(def.tdx.acceptedTCBStatuses == ["UpToDate"])
        #expect(def.tdx.allowDebug == false)
        #expect(def.tpm.allowSHA1 == false)
        #expect(def.requireMeasurements)
        #expect(def.tpm.akTrust == .ekCertificate)
    }

    /// Threat: a typo silently weakening a policy. Unknown keys and bad values are errors, all of
    /// them reported with line and column.
    @Test func everyProblemIsReportedWithItsPosition() {
        let text = """
            schema: ccgate.policy/v1
            name: bad
            evidence:
              tpm:
                allow_sha_1: true
              tdx:
                allow_debug: maybe
            measurements:
              models:
                - name: m
                  sha256: 1234
            """
        do {
            _ = try PolicyDocument.parse(text, file: "bad.yaml")
            Issue.record("a bad policy loaded")
        } catch {
            let messages = error.errors.map(\.description)
            #expect(messages.count == 3, "\(messages)")
            #expect(messages.contains { $0.hasPrefix("bad.yaml:5:5: unknown key 'allow_sha_1'") })
            #expect(messages.contains { $0.hasPrefix("bad.yaml:7:18:") && $0.contains("true or false") })
            #expect(messages.contains { $0.hasPrefix("bad.yaml:11:15:") && $0.contains("64 hex digits") })
        }
    }

    @Test(arguments: [
        "", "name: x", "schema: ccgate.policy/v2\nname: x", "schema: ccgate.policy/v1\nname: x\nevidence: [1",
        "- a\n- b",
    ])
    func brokenDocumentsAreRefused(_ text: String) {
        #expect(throws: PolicyLoadErrors.self) { try PolicyDocument.parse(text) }
    }

    static func claims(files: [(String, String)], pcr16: String? = nil) -> VerifiedClaims {
        // VerifiedClaims is made by verifiers only; tests in this package may use the package init.
        VerifiedClaims(
            pcrs: pcr16.map { ["sha256": [16: $0]] } ?? [:],
            measuredFiles: files.map { MeasuredFile(path: $0.0, algorithm: "sha256", digestHex: $0.1, pcr: 23) })
    }

    @Test func measurementsMustBeAllowlisted() throws {
        let engine = String(repeating: "aa", count: 32)
        let model = String(repeating: "bb", count: 32)
        let doc = try PolicyDocument.parse(
            """
            schema: ccgate.policy/v1
            name: t
            measurements:
              binaries: [{name: ccinfer, sha256: \(engine)}]
              models: [{name: m, sha256: \(model)}]
            """)
        let executed = "ccworker-exec:/e"
        #expect(doc.evaluate(Self.claims(files: [(executed, engine), ("/m", model)])).isEmpty)
        let oneByteOff = String(repeating: "aa", count: 31) + "ab"
        let reasons = doc.evaluate(Self.claims(files: [(executed, oneByteOff), ("/m", model)]))
        #expect(reasons.first?.code == .policyMeasurementNotAllowed)
        #expect(!doc.evaluate(Self.claims(files: [("/m", model)])).isEmpty)
        #expect(
            !doc.evaluate(
                Self.claims(files: [(executed, engine), ("/m", model), ("/x", String(repeating: "cc", count: 32))])
            ).isEmpty)
    }

    @Test func pcrRulesAreEnforced() throws {
        let good = String(repeating: "11", count: 32)
        let doc = try PolicyDocument.parse(
            """
            schema: ccgate.policy/v1
            name: t
            evidence:
              tpm:
                pcrs:
                  sha256:
                    "16": [\(good)]
            """)
        #expect(doc.evaluate(Self.claims(files: [], pcr16: good)).isEmpty)
        #expect(
            doc.evaluate(Self.claims(files: [], pcr16: String(repeating: "12", count: 32))).first?.code
                == .policyMeasurementNotAllowed)
        #expect(doc.evaluate(Self.claims(files: [])).first?.code == .policyMeasurementNotAllowed)
    }
}
