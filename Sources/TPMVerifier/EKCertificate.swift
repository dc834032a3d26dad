import AttestationCore
import COpenSSL
import Foundation
import Synchronization

/// Checks an endorsement-key certificate: that it is an EK certificate (the TCG EK extended key
/// usage 2.23.133.8.1, not a CA), that it certifies the EK the evidence presents, and that it
/// chains to a pinned TPM manufacturer root through intermediates the evidence carries.
///
/// Threats: an EK certificate issued by anyone but a TPM manufacturer (a self-made CA vouching
/// for a software "TPM"); a genuine certificate presented beside another key; and a key a
/// manufacturer certified for something other than a TPM's EK (a secure element's decryption
/// key that would answer credential activation for any Name) — hence the EK usage. The
/// evidence's intermediates are untrusted; only the pinned roots anchor. Validity periods are
/// not enforced: an EK certificate names a TPM for the TPM's life, and TPMs outlive their
/// certificates' dates (the TCG's and common verifiers' practice).
public enum EKCertificate {
    public enum Outcome: Sendable, Equatable {
        /// The chain ends at the pinned root with this DER SHA-256 fingerprint.
        case verified(root: String)
        /// The chain is well formed but ends at no pinned root.
        case untrusted(String)
        /// Expired, badly signed, not a certificate, or not for this EK.
        case invalid(String)
    }

    /// Bound on carried intermediates: manufacturer chains are one or two certificates deep.
    static let maxIntermediates = 4

    /// The TCG EK certificate extended key usage (tcg-kp-EKCertificate).
    static let ekUsage = "2.23.133.8.1"

    public static func verify(certificate: Data, intermediates: Data?, ek: PublicKey, roots: [Data]) -> Outcome {
        // The outcome depends on these bytes alone (no dates, no revocation lists), so a TPM
        // presenting the same certificate again is answered from memory.
        let key = IncrementalHash.framed(.sha256, [certificate, intermediates ?? Data(), ek.spkiDER] + roots)
        if let known = outcomes.withLock({ $0[key] }) { return known }
        let outcome = check(certificate: certificate, intermediates: intermediates, ek: ek, roots: roots)
        // OpenSSL failing to allocate says nothing about the certificate: not remembered.
        if case .invalid(let why) = outcome, why.hasPrefix(openSSLFailure) { return outcome }
        outcomes.withLock { kept in
            if kept.count >= maxOutcomes { kept.removeAll() }
            kept[key] = outcome
        }
        return outcome
    }

    /// Outcomes kept, by SHA-256 over every input's length and bytes; a gateway sees one EK
    /// certificate per worker TPM. Past the bound, it starts over.
    private static let outcomes = Mutex<[Data: Outcome]>([:])
    static let openSSLFailure = "OpenSSL: "
    static let maxOutcomes = 4096

    static func check(certificate: Data, intermediates: Data?, ek: PublicKey, roots: [Data]) -> Outcome {
        defer { ERR_clear_error() }
        guard let leaf = decode(certificate) else { return .invalid("the EK certificate is not an X.509 certificate") }
        defer { X509_free(leaf) }
        // Compared as keys, not encodings: some EK certificates label RSA keys id-RSAES-OAEP.
        guard let pub = X509_get0_pubkey(leaf), EVP_PKEY_eq(pub, ek.pkey) == 1 else {
            return .invalid("the EK certificate certifies another key than the presented EK")
        }
        guard X509_check_ca(leaf) == 0 else { return .invalid("the EK certificate is a CA certificate") }
        guard usages(of: leaf).contains(ekUsage) else {
            return .invalid(
                "the certificate lacks the TCG EK certificate usage (\(ekUsage)): it does not certify an EK")
        }
        guard let trust = TrustStore.of(roots) else { return .invalid(openSSLFailure + "no store") }
        // The store lives while this reference does, whatever the cache drops meanwhile.
        return withExtendedLifetime(trust) { check(leaf, intermediates, trust.store) }
    }

    /// The chain from `leaf` through `intermediates` to a root in `store`.
    private static func check(_ leaf: OpaquePointer, _ intermediates: Data?, _ store: OpaquePointer) -> Outcome {
        guard let chain = OPENSSL_sk_new_null() else { return .invalid(openSSLFailure + "no stack") }
        defer { OPENSSL_sk_pop_free(chain) { X509_free(OpaquePointer($0)) } }
        var rest = intermediates ?? Data()
        while !rest.isEmpty {
            guard OPENSSL_sk_num(chain) < Int32(maxIntermediates) else {
                return .invalid("more than \(maxIntermediates) intermediate certificates")
            }
            guard let (cert, used) = decodePrefix(rest) else { return .invalid("an intermediate is not X.509") }
            OPENSSL_sk_push(chain, UnsafeRawPointer(cert))
            rest = rest.dropFirst(used)
        }
        guard let ctx = X509_STORE_CTX_new() else { return .invalid(openSSLFailure + "no context") }
        defer { X509_STORE_CTX_free(ctx) }
        guard X509_STORE_CTX_init(ctx, store, leaf, chain) == 1 else {
            return .invalid(openSSLFailure + "cannot set up verification")
        }
        let params = X509_STORE_CTX_get0_param(ctx)
        // A pinned intermediate anchors as well as a pinned root.
        X509_VERIFY_PARAM_set_flags(params, UInt(X509_V_FLAG_PARTIAL_CHAIN | X509_V_FLAG_NO_CHECK_TIME))
        if X509_verify_cert(ctx) == 1 {
            let verified = X509_STORE_CTX_get0_chain(ctx)
            let count = OPENSSL_sk_num(verified)
            let top = OpaquePointer(OPENSSL_sk_value(verified, count - 1))
            return .verified(root: fingerprint(top))
        }
        let error = X509_STORE_CTX_get_error(ctx)
        let text = String(cString: X509_verify_cert_error_string(Int(error)))
        switch error {
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT,
            X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN, X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
            return .untrusted("the EK certificate chain ends at no pinned TPM manufacturer root (\(text))")
        default:
            return .invalid("the EK certificate chain does not verify: \(text)")
        }
    }

    /// An OpenSSL store of root certificates, built once per list of roots and kept: decoding
    /// the pinned manufacturer roots costs more than checking a chain against them, and a gateway
    /// checks against the same list at every admission. OpenSSL (3.0 and later) stores are safe
    /// to verify against from several threads at once; nothing is added to one after it is built.
    final class TrustStore: @unchecked Sendable {
        let store: OpaquePointer

        private init?(_ roots: [Data]) {
            guard let store = X509_STORE_new() else { return nil }
            for der in roots {
                guard let root = decode(der) else { continue }
                X509_STORE_add_cert(store, root)
                X509_free(root)
            }
            self.store = store
        }

        deinit { X509_STORE_free(store) }

        /// Keyed by a SHA-256 over every root's length and bytes, so that a list differing in
        /// any byte never gets another list's store. A few lists are kept (a gateway has one).
        private static let built = Mutex<[Data: TrustStore]>([:])
        static let maxKept = 16

        static func of(_ roots: [Data]) -> TrustStore? {
            let key = IncrementalHash.framed(.sha256, roots)
            if let kept = built.withLock({ $0[key] }) { return kept }
            guard let made = TrustStore(roots) else { return nil }
            // Two first uses may race: both get the store kept first. Callers hold the store
            // they were given, so one dropped here is freed only after its last check.
            return built.withLock { kept in
                if let first = kept[key] { return first }
                if kept.count >= maxKept { kept.removeAll() }
                kept[key] = made
                return made
            }
        }
    }

    /// The extended key usage OIDs of a certificate, dotted.
    static func usages(of cert: OpaquePointer) -> [String] {
        guard let raw = X509_get_ext_d2i(cert, NID_ext_key_usage, nil, nil) else { return [] }
        let stack = OpaquePointer(raw)
        defer { EXTENDED_KEY_USAGE_free(stack) }
        var out = [String]()
        for i in 0..<OPENSSL_sk_num(stack) {
            var buffer = [CChar](repeating: 0, count: 80)
            let n = OBJ_obj2txt(&buffer, Int32(buffer.count), OpaquePointer(OPENSSL_sk_value(stack, i)), 1)
            if n > 0, n < Int32(buffer.count) {
                out.append(String(decoding: buffer.prefix(Int(n)).map { UInt8(bitPattern: $0) }, as: UTF8.self))
            }
        }
        return out
    }

    static func decode(_ der: Data) -> OpaquePointer? {
        guard let (cert, used) = decodePrefix(der), used == der.count else { return nil }
        return cert
    }

    /// The first certificate in `der` and the bytes it takes.
    static func decodePrefix(_ der: Data) -> (OpaquePointer, Int)? {
        der.withUnsafeBytes { raw -> (OpaquePointer, Int)? in
            guard let base = raw.bindMemory(to: UInt8.self).baseAddress else { return nil }
            var cursor: UnsafePointer<UInt8>? = base
            guard let cert = d2i_X509(nil, &cursor, raw.count), let end = cursor else { return nil }
            return (cert, end - base)
        }
    }

    static func spki(of key: OpaquePointer) -> Data {
        var out: UnsafeMutablePointer<UInt8>? = nil
        let length = i2d_PUBKEY(key, &out)
        guard length > 0, let out else { return Data() }
        defer { CRYPTO_free(out, #fileID, #line) }
        return Data(bytes: out, count: Int(length))
    }

    static func fingerprint(_ cert: OpaquePointer?) -> String {
        var out: UnsafeMutablePointer<UInt8>? = nil
        let length = i2d_X509(cert, &out)
        guard length > 0, let out else { return "" }
        defer { CRYPTO_free(out, #fileID, #line) }
        return HashAlgorithm.sha256.hash(Data(bytes: out, count: Int(length))).hex
    }

    /// The DER certificate at the start of bytes read from a TPM NV index, which may be padded.
    public static func trimmed(_ bytes: Data) -> Data? {
        guard let (cert, used) = decodePrefix(bytes) else { return nil }
        X509_free(cert)
        return bytes.prefix(used)
    }
}
