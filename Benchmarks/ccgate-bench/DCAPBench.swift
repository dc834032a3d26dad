// DCAP quote verification, warm and cold, against raw P-256 signature checks in the same run.
import AttestationCore
import Foundation
import TDXVerifier

/// Full verifications of the Cocoon TDX quote with its collateral (every check: PCK chain, CRLs,
/// TCB info, QE identity, QE report, TCB level, quote signature, nonce), with the verifier's memo
/// tables warm (a platform seen before) and reset before every verification (a platform never
/// seen), next to bare ECDSA P-256 verifications of the quote's own signature.
func dcapBench() {
    let url = sharedRootURL.appendingPathComponent("tdx/cocoon-quote-d5-collateral.json")
    guard let data = try? Data(contentsOf: url),
        let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
        let quoteText = object["quote"] as? String, let quote = Data(base64Encoded: quoteText),
        let fields = object["collateral"] as? [String: String], let collateral = try? Collateral.read(fields).get()
    else {
        print("\nccgate bench: DCAP: skipped (\(url.path) not readable)")
        return
    }
    let bytes = [UInt8](quote)
    let nonce = Data(
        hex:
            "d21efaa8d7de2b0f5601df8b24cfbca690c5231e677d0fe35954c8be00614bd27f467a5624a6667aa74506cb14c271a48894c3ef11d2d26b269a2926fc74f87b"
    )!
    let at = Date.rfc3339("2026-03-01T00:00:00Z")!
    let verifier = TDXQuoteVerifier(options: .init(pinnedRootFingerprints: PinnedRoots.production))
    func verify() -> Bool {
        verifier.verify(quote: bytes, collateral: collateral, expectedNonce: nonce, at: at).isAccepted
    }
    precondition(verify(), "the DCAP benchmark quote must verify")

    // The raw baseline: the quote's own signature under its attestation key.
    let parsed = try! DCAPQuote.parse(bytes)
    let key = try! PublicKey(
        curve: .p256, x: Array(parsed.attestationKey[0..<32]), y: Array(parsed.attestationKey[32..<64]))
    let raw = rate { key.verify(signature: parsed.signature, message: parsed.signedBytes, scheme: .ecdsa(.sha256)) }
    let warm = rate(verify)
    let cold = rate {
        TDXQuoteVerifier.resetCaches()
        return verify()
    }
    print("\nccgate bench: DCAP quote verification (Cocoon TDX quote v4, collateral in hand)")
    print("  baseline  raw ECDSA P-256 verify          \(String(format: "%9.0f", raw)) /s")
    print(
        "  ccgate    full verification, warm cache   \(String(format: "%9.0f", warm)) /s  ratio \(String(format: "%.3f", warm / raw))  = \(String(format: "%.2f", raw / warm)) P-256 verifications each (goal ≤ 3)"
    )
    print(
        "  ccgate    full verification, cold cache   \(String(format: "%9.0f", cold)) /s  ratio \(String(format: "%.3f", cold / raw))  = \(String(format: "%.2f", raw / cold)) P-256 verifications each"
    )
}

/// Every accepted TDX case of the shared vectors that carries its collateral, verified cold (the
/// verifier's memo tables reset before each verification: a platform never seen) and warm, as
/// `name: value` lines that `scripts/bench-dcap` sets beside dcap-qvl's on the same cases.
func dcapCasesBench() {
    struct Case: Decodable {
        let id: String
        let envelope: String
        let verify_at: String
        let nonce_hex: String?
        let expect: Expect
    }
    struct Expect: Decodable { let verdict: String }
    guard let data = try? Data(contentsOf: sharedRootURL.appendingPathComponent("cases.json")),
        let cases = try? JSONDecoder().decode([Case].self, from: data)
    else {
        print("ccgate bench: DCAP cases: skipped (cases.json not readable)")
        return
    }
    let verifier = TDXQuoteVerifier(options: .init(pinnedRootFingerprints: PinnedRoots.production))
    for c in cases where c.id.hasPrefix("tdx") && c.expect.verdict == "accept" {
        guard let text = try? Data(contentsOf: sharedRootURL.appendingPathComponent(c.envelope)),
            case .success(let envelope) = EvidenceEnvelope.parse(text), envelope.has("collateral"),
            case .success(let quote) = envelope.base64("quote"),
            case .success(let fields?) = envelope.stringObject("collateral"),
            let collateral = try? Collateral.read(fields).get(), let at = Date.rfc3339(c.verify_at)
        else { continue }
        let bytes = [UInt8](quote)
        let nonce = c.nonce_hex.flatMap { Data(hex: $0) }
        func verify() -> Bool {
            verifier.verify(quote: bytes, collateral: collateral, expectedNonce: nonce, at: at).isAccepted
        }
        guard verify() else {
            print("ccgate bench: DCAP case \(c.id) does not verify; skipped")
            continue
        }
        let cold = rate {
            TDXQuoteVerifier.resetCaches()
            return verify()
        }
        let warm = rate(verify)
        print("ccgate_cold.\(c.id): \(Int(cold))")
        print("ccgate_warm.\(c.id): \(Int(warm))")
    }
}
