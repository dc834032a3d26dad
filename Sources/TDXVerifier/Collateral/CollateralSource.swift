import AttestationCore
import Foundation

/// Names one platform family's collateral: Intel issues TCB info per FMSPC and TEE type, QE
/// identity per TEE type, and PCK CRLs per CA (platform or processor).
public struct CollateralKey: Hashable, Sendable, CustomStringConvertible {
    public let tee: DCAPQuote.TEE
    public let fmspc: [UInt8]
    public let pceID: [UInt8]
    /// Subject of the CA that issued the PCK certificate (the PCK CRL's issuer).
    public let pckIssuer: String

    public init(tee: DCAPQuote.TEE, fmspc: [UInt8], pceID: [UInt8], pckIssuer: String) {
        self.tee = tee
        self.fmspc = fmspc
        self.pceID = pceID
        self.pckIssuer = pckIssuer
    }

    public var description: String {
        "\(tee == .tdx ? "tdx" : "sgx")/\(Data(fmspc).hex)/\(Data(pceID).hex)/\(pckIssuer.contains("Processor") ? "processor" : "platform")"
    }
}

/// Where a verifier finds collateral a quote's envelope does not carry. Lookups are synchronous
/// and never touch the network: fetching from a PCCS is done ahead of verification, by the caller.
public protocol CollateralSource: Sendable {
    /// How verdicts name this source (`cache`, `offline`, `online`).
    var mode: String { get }
    /// Collateral for the key that is still current at `time`, if any.
    func collateral(for key: CollateralKey, at time: Date) -> Collateral?
}

extension DCAPQuote {
    /// The collateral this quote needs, from its PCK certificate once the chain verifies to one of
    /// `roots` at `time`: what a cache or a PCCS is asked for. Nil otherwise, so that forged
    /// chains cannot make the gateway fetch for made-up platforms.
    public func collateralKey(roots: Set<String>, at time: Date) -> CollateralKey? {
        guard let chain = try? Memo.chain(pemBytes: pckChainBytes),
            ChainCheck(pinnedFingerprints: roots).verify(chain, name: "PCK", at: time) == nil,
            let ext = chain[0].sgxExtension
        else { return nil }
        return CollateralKey(tee: tee, fmspc: ext.fmspc, pceID: ext.pceID, pckIssuer: chain[1].subject)
    }
}

extension CollateralKey {
    /// The collateral a `tdx-quote` or `sgx-quote` envelope needs from outside it: nil when it is
    /// another format, already carries its collateral, is unreadable, or its PCK chain does not
    /// verify to one of `roots` at `time` (see ``DCAPQuote/collateralKey(roots:at:)``). What
    /// callers use instead of parsing quotes themselves.
    public static func needed(by envelope: EvidenceEnvelope, roots: Set<String>, at time: Date) -> CollateralKey? {
        guard TDXQuoteVerifier.formats.contains(envelope.format), !envelope.has("collateral") else { return nil }
        return forQuote(in: envelope, roots: roots, at: time)
    }

    /// The collateral the envelope's quote is for, whether or not the envelope carries it.
    public static func forQuote(in envelope: EvidenceEnvelope, roots: Set<String>, at time: Date) -> CollateralKey? {
        guard case .success(let bytes) = envelope.base64("quote"), let quote = try? DCAPQuote.parse([UInt8](bytes))
        else { return nil }
        return quote.collateralKey(roots: roots, at: time)
    }
}
