import AttestationCore
import Foundation
import TestSupport
import Testing

@testable import TPMVerifier

/// Every `tpm2-quote` case of the shared vectors gets its expected verdict, reason and PCRs
/// under the default options (no SHA-1).
@Suite struct SharedVectorTests {
    static let tpmCases = (try? SharedTestData.cases(kind: "tpm")) ?? []

    @Test func theSharedVectorsAreThere() throws {
        #expect(Self.tpmCases.count >= 7, "expected the shared TPM vectors at \(SharedTestData.root.path)")
    }

    @Test(arguments: tpmCases)
    func sharedCase(_ c: SharedTestData.Case) throws {
        let data = try SharedTestData.data(c.envelope)
        let at = try #require(Date.rfc3339(c.verify_at))
        let nonce = c.nonce_hex.map { Data(hex: $0)! }
        let verdict = TPMQuoteVerifier().verify(envelopeData: data, expectedNonce: nonce, at: at)
        #expect(verdict.outcome.rawValue == c.expect.verdict, "\(c.id): \(verdict.reasons)")
        if let reason = c.expect.reason {
            #expect(verdict.reason?.rawValue == reason, "\(c.id): \(verdict.reasons)")
        }
        if let pcrs = c.expect.claims?.pcrs {
            let claims = try #require(verdict.claims)
            for (bank, values) in pcrs {
                for (index, hex) in values {
                    #expect(claims.pcrs[bank]?[Int(index)!] == hex, "\(c.id) \(bank)[\(index)]")
                }
            }
        }
    }

    /// The Windows quote is SHA-1 signed: rejected by default, accepted (with its event log
    /// replaying to the quoted PCRs) when SHA-1 is allowed.
    @Test func sha1QuoteAcceptedWhenAllowed() throws {
        let data = try SharedTestData.data("tpm/goattestation-windows-gcp-shielded-vm.json")
        let at = Date.rfc3339("2026-03-01T00:00:00Z")!
        let strict = TPMQuoteVerifier().verify(envelopeData: data, expectedNonce: nil, at: at)
        #expect(strict.reason == .evidenceUnsupported)
        let loose = TPMQuoteVerifier(options: .init(allowSHA1: true)).verify(
            envelopeData: data, expectedNonce: Data(), at: at)
        #expect(loose.isAccepted, "\(loose.reasons)")
        #expect(loose.passedChecks.contains { $0.hasPrefix("event log:") })
        // A real firmware log replaying over every boot PCR: the fact a measured-boot tier needs.
        #expect(loose.claims?.fields["tpm.boot_pcrs"] == "replayed")
        // The shared swtpm-style vectors carry no firmware log: no such fact.
        if let plain = try? SharedTestData.data("tpm/swtpm-ecc-sha256.json") {
            let verdict = TPMQuoteVerifier().verify(envelopeData: plain, expectedNonce: nil, at: at)
            #expect(verdict.claims?.fields["tpm.boot_pcrs"] == nil)
        }
    }
}
