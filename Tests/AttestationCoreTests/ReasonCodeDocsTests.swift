import AttestationCore
import Foundation
import Testing

/// Reason codes are a contract with operators: every code a verifier or the policy may report is
/// documented in docs/EVIDENCE.md.
@Suite struct ReasonCodeDocsTests {
    @Test func everyReasonCodeIsDocumented() throws {
        let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("docs/EVIDENCE.md")
        let text = try String(contentsOf: docs, encoding: .utf8)
        for code in ReasonCode.all {
            #expect(text.contains("`\(code.rawValue)`"), "\(code.rawValue) is not in docs/EVIDENCE.md")
        }
        for code in [
            "policy.model-name-not-bound", "tpm.ak-untrusted", "tpm.ek-chain-invalid", "tpm.activation-failed",
        ] {
            #expect(ReasonCode.all.contains(ReasonCode(rawValue: code)), "\(code)")
        }
    }
}
