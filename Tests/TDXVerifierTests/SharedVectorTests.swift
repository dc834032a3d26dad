import AttestationCore
import Foundation
import TestSupport
import Testing

@testable import TDXVerifier

/// Every `tdx-quote` and `sgx-quote` case of the shared vectors gets its expected verdict, TCB
/// status, advisory IDs, reason and claims under the default options.
@Suite struct SharedVectorTests {
    static let dcapCases =
        ((try? SharedTestData.cases(kind: "tdx")) ?? []) + ((try? SharedTestData.cases(kind: "sgx")) ?? [])

    static func verifier(roots: [String]?) throws -> TDXQuoteVerifier {
        var fingerprints = Set<String>()
        for path in roots ?? ["roots/intel-sgx-root-ca.pem"] {
            for root in try TrustRoots.load(pemFile: SharedTestData.url(path).path) {
                fingerprints.insert(root.fingerprint)
            }
        }
        return TDXQuoteVerifier(options: .init(pinnedRootFingerprints: fingerprints))
    }

    @Test func theSharedVectorsAreThere() {
        #expect(Self.dcapCases.count >= 20, "expected the shared TDX/SGX vectors at \(SharedTestData.root.path)")
    }

    @Test(arguments: dcapCases)
    func sharedCase(_ c: SharedTestData.Case) throws {
        let data = try SharedTestData.data(c.envelope)
        let at = try #require(Date.rfc3339(c.verify_at))
        let nonce = c.nonce_hex.map { Data(hex: $0)! }
        let verdict = try Self.verifier(roots: c.roots).verify(envelopeData: data, expectedNonce: nonce, at: at)
        #expect(verdict.outcome.rawValue == c.expect.verdict, "\(c.id): \(verdict.reasons) \(verdict.passedChecks)")
        if let reason = c.expect.reason {
            #expect(verdict.reason?.rawValue == reason, "\(c.id): \(verdict.reasons)")
        }
        if let status = c.expect.tcb_status {
            #expect(verdict.tcbStatus == status, "\(c.id)")
        }
        if let advisories = c.expect.advisory_ids {
            #expect(verdict.advisoryIDs == advisories, "\(c.id)")
        }
        guard let expected = c.expect.claims else { return }
        // An accepted quote's claims are verified; a rejected one's are what it states.
        let fields: [String: String]
        if let claims = verdict.claims {
            fields = claims.fields
        } else {
            let envelope = try EvidenceEnvelope.parse(data).get()
            fields = QuoteClaims.unverifiedFields(of: try DCAPQuote.parse([UInt8](try envelope.base64("quote").get())))
        }
        let pairs: [(String, String?)] = [
            ("mrtd", expected.mrtd), ("rtmr0", expected.rtmr0), ("rtmr1", expected.rtmr1), ("rtmr2", expected.rtmr2),
            ("rtmr3", expected.rtmr3), ("report_data", expected.report_data),
        ]
        for (name, value) in pairs {
            guard let value else { continue }
            #expect(fields[name] == value, "\(c.id) \(name)")
        }
    }

    /// The production pin in `certs/` is the Intel SGX Root CA of the shared vectors.
    @Test func pinnedRootIsIntels() throws {
        let pinned = try String(
            contentsOf: SharedTestData.packageRoot.appendingPathComponent("certs/pinned-roots.txt"), encoding: .utf8)
        let intel = try TrustRoots.load(pemFile: SharedTestData.url("roots/intel-sgx-root-ca.pem").path)
        #expect(intel.count == 1)
        #expect(pinned.contains("intel-sgx-root-ca") && pinned.contains(intel[0].fingerprint))
    }

    /// The SGX sample is ConfigurationAndSWHardeningNeeded: a policy accepting that status accepts it.
    @Test func sgxSampleAcceptedWhenItsStatusIs() throws {
        let data = try SharedTestData.data("sgx/d3-dcapqvl-sample.json")
        var v = try Self.verifier(roots: nil)
        var options = v.options
        options.acceptedStatuses = [TCBStatus.upToDate.rawValue, TCBStatus.configurationAndSWHardeningNeeded.rawValue]
        v = TDXQuoteVerifier(options: options)
        let verdict = v.verify(envelopeData: data, expectedNonce: nil, at: Date.rfc3339("2025-07-19T10:01:17Z")!)
        #expect(verdict.isAccepted, "\(verdict.reasons)")
        #expect(verdict.claims?.fields["mrenclave"]?.count == 64)
    }

    /// The debug TD of the trustee vectors is accepted, UpToDate, when a policy allows debug guests.
    @Test func debugTDAcceptedWhenAllowed() throws {
        let data = try SharedTestData.data("tdx/d4-trustee-quote4-debug.json")
        var options = try Self.verifier(roots: nil).options
        options.allowDebug = true
        let verdict = TDXQuoteVerifier(options: options).verify(
            envelopeData: data, expectedNonce: nil, at: Date.rfc3339("2023-07-01T01:00:00Z")!)
        #expect(verdict.isAccepted, "\(verdict.reasons)")
        #expect(verdict.tcbStatus == "UpToDate")
        #expect(verdict.advisoryIDs == [])
        #expect(verdict.claims?.fields["debug"] == "true")
    }
}

/// Hostile bytes near real quotes: deterministic mutations of every shared quote run through
/// every parser and the verifier. Nothing crashes, and a quote whose signed bytes changed is
/// never accepted.
@Suite struct MutatedQuoteTests {
    @Test(arguments: SharedVectorTests.dcapCases.filter { $0.expect.verdict == "accept" })
    func mutationsNeverCrashOrAccept(_ c: SharedTestData.Case) async throws {
        try await onCPULane {
            let envelope = try EvidenceEnvelope.parse(try SharedTestData.data(c.envelope)).get()
            let quote = [UInt8](try envelope.base64("quote").get())
            let fields = try #require(try envelope.stringObject("collateral").get())
            let collateral = try Collateral.read(fields).get()
            let signedCount = try DCAPQuote.parse(quote).signedBytes.count
            let at = try #require(Date.rfc3339(c.verify_at))
            let verifier = try SharedVectorTests.verifier(roots: c.roots)
            var rng = SeededRandom(seed: 0xDCA9 ^ UInt64(quote.count))
            for i in 0..<150 {
                let mutation = Mutation.allCases[i % Mutation.allCases.count]
                let mutated = mutation.apply(quote, &rng)
                QuoteExercise.run(mutated, collateral: collateral, at: at)
                let verdict = verifier.verify(quote: mutated, collateral: collateral, expectedNonce: nil, at: at)
                if mutated.count < signedCount || mutated.prefix(signedCount) != quote.prefix(signedCount) {
                    #expect(
                        !verdict.isAccepted, "\(c.id): mutation \(i) (\(mutation)) of the signed bytes was accepted")
                }
            }
        }
    }
}
