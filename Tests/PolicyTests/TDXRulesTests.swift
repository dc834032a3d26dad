import AttestationCore
import Foundation
import Policy
import Testing

/// The TDX section of a policy: statuses, grace periods, advisories, debug, MRTD / RTMR / image
/// hash allowlists.
@Suite struct TDXRulesTests {
    static let mrtd = String(repeating: "11", count: 48)
    static let rtmr1 = String(repeating: "21", count: 48)
    static let image = String(repeating: "ab", count: 32)

    static let text = """
        schema: ccgate.policy/v1
        name: tdx-fleet
        evidence:
          formats: [tdx-quote]
          tdx:
            accepted_tcb_statuses: [UpToDate, SWHardeningNeeded]
            platform_grace_period_days: 30
            collateral_grace_period_days: 2
            rejected_advisory_ids: [INTEL-SA-00837]
            allow_debug: false
            mrtd: [\(mrtd)]
            rtmrs:
              - rtmr1: \(rtmr1)
            image_hashes: [\(image)]
        measurements:
          require: false
        """

    func claims(mrtd: String = mrtd, rtmr1: String = rtmr1, image: String = image) -> VerifiedClaims {
        VerifiedClaims(fields: ["tee": "tdx", "mrtd": mrtd, "rtmr1": rtmr1, "cocoon_image_hash": image])
    }

    @Test func rulesLoad() throws {
        let doc = try PolicyDocument.parse(Self.text)
        #expect(doc.tdx.acceptedTCBStatuses == ["UpToDate", "SWHardeningNeeded"])
        #expect(doc.tdx.platformGracePeriodDays == 30)
        #expect(doc.tdx.collateralGracePeriodDays == 2)
        #expect(doc.tdx.rejectedAdvisoryIDs == ["INTEL-SA-00837"])
        #expect(doc.tdx.mrtds == [Self.mrtd])
        #expect(doc.tdx.rtmrSets == [[1: Self.rtmr1]])
        #expect(doc.tdx.imageHashes == [Self.image])
    }

    @Test func allowlistedTDMeetsThePolicy() throws {
        let doc = try PolicyDocument.parse(Self.text)
        #expect(doc.evaluate(claims()).isEmpty)
    }

    /// Threat: a genuine TDX platform running an image nobody audited.
    @Test(arguments: [
        ("mrtd", String(repeating: "12", count: 48)), ("rtmr1", String(repeating: "22", count: 48)),
        ("image", String(repeating: "ac", count: 32)),
    ])
    func unlistedMeasurementFails(_ field: String, _ value: String) throws {
        let doc = try PolicyDocument.parse(Self.text)
        let c: VerifiedClaims
        switch field {
        case "mrtd": c = claims(mrtd: value)
        case "rtmr1": c = claims(rtmr1: value)
        default: c = claims(image: value)
        }
        let reasons = doc.evaluate(c)
        #expect(reasons.count == 1)
        #expect(reasons.first?.code == .policyMeasurementNotAllowed)
    }

    @Test func tpmClaimsIgnoreTDXRules() throws {
        let doc = try PolicyDocument.parse(Self.text)
        #expect(doc.evaluate(VerifiedClaims(fields: ["tee": "sgx"])).isEmpty)
    }

    @Test func typosAndBadValuesAreErrors() {
        let text = """
            schema: ccgate.policy/v1
            name: bad
            evidence:
              tdx:
                accepted_tcb_statuses: [UpToDat]
                platform_grace_period_days: -1
                rejected_advisory_ids: [SA-1]
                mrtd: [abcd]
                rtmrs:
                  - rtmr4: 00
            """
        do {
            _ = try PolicyDocument.parse(text, file: "bad.yaml")
            Issue.record("a bad TDX section loaded")
        } catch {
            let messages = error.errors.map(\.message)
            #expect(messages.contains { $0.contains("UpToDat") })
            #expect(messages.contains { $0.contains("platform_grace_period_days") })
            #expect(messages.contains { $0.contains("SA-1") })
            #expect(messages.contains { $0.contains("mrtd") })
            #expect(messages.contains { $0.contains("rtmr4") })
            #expect(error.errors.allSatisfy { $0.line > 0 })
        }
    }
}
