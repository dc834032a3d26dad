import AttestationCore
import Foundation

/// Runs arbitrary bytes through every parser of this module that takes hostile input: the quote
/// parser (and, for quotes that parse, the claims and the verifier against a fixed collateral
/// set), TCB info and QE identity, and CCEL event logs. The libFuzzer target and the corpus
/// replay test both call this; any crash or sanitizer report is a bug.
public enum QuoteExercise {
    public static func run(_ bytes: [UInt8], collateral: Collateral?, at time: Date) {
        if let quote = try? DCAPQuote.parse(bytes) {
            _ = QuoteClaims.unverifiedFields(of: quote)
            let verifier = TDXQuoteVerifier(options: .init(pinnedRootFingerprints: PinnedRoots.production))
            _ = verifier.verify(quote: bytes, collateral: collateral, expectedNonce: Data(count: 64), at: time)
        }
        let text = String(decoding: bytes, as: UTF8.self)
        _ = TCBInfo.parse(text)
        _ = QEIdentity.parse(text)
        _ = CCELReplay.replay(Data(bytes))
    }
}
