import COpenSSL
import Foundation
import Synchronization

/// A signature scheme as attestation evidence names it.
public enum SignatureScheme: Sendable, Equatable, CustomStringConvertible {
    case rsassaPKCS1v15(HashAlgorithm)
    /// RSASSA-PSS; the salt length is recovered from the signature (TPMs use the digest size or
    /// the maximum, depending on the implementation).
    case rsaPSS(HashAlgorithm)
    /// ECDSA over the curve of the key, signature as raw `r ‖ s` or DER.
    case ecdsa(HashAlgorithm)

    public var hash: HashAlgorithm {
        switch self {
        case .rsassaPKCS1v15(let h), .rsaPSS(let h), .ecdsa(let h): h
        }
    }

    public var description: String {
        switch self {
        case .rsassaPKCS1v15(let h): "RSASSA-\(h.rawValue.uppercased())"
        case .rsaPSS(let h): "RSAPSS-\(h.rawValue.uppercased())"
        case .ecdsa(let h): "ECDSA-\(h.rawValue.uppercased())"
        }
    }
}

/// Elliptic curves accepted for attestation keys.
public enum ECCurve: String, Sendable {
    case p256 = "P-256", p384 = "P-384", p521 = "P-521"

    public var coordinateSize: Int {
        switch self {
        case .p256: 32
        case .p384: 48
        case .p521: 66
        }
    }

    var oid: [UInt8] {
        switch self {
        case .p256: DER.oidP256
        case .p384: DER.oidP384
        case .p521: DER.oidP521
        }
    }
}

/// Why a public key could not be used.
public enum PublicKeyError: Error, Equatable, CustomStringConvertible {
    case unparsable(String)
    case unsupported(String)

    public var description: String {
        switch self {
        case .unparsable(let s): "unparsable public key: \(s)"
        case .unsupported(let s): "unsupported public key: \(s)"
        }
    }
}

/// A verified-usable signature public key (RSA ≥ 2048 bits, or ECDSA on P-256/384/521).
///
/// Threat: a weak key (short RSA modulus, odd curve) lets an attacker forge quotes; such keys are
/// refused at construction, so no verification ever runs under one.
public final class PublicKey: @unchecked Sendable {
    // An EVP_PKEY is immutable after construction and OpenSSL allows concurrent verification
    // with one key, hence @unchecked Sendable.
    package let pkey: OpaquePointer
    public let spkiDER: Data
    public let kind: Kind

    public enum Kind: Sendable, Equatable, CustomStringConvertible {
        case rsa(bits: Int)
        case ec(ECCurve)

        public var description: String {
            switch self {
            case .rsa(let bits): "RSA-\(bits)"
            case .ec(let curve): "EC \(curve.rawValue)"
            }
        }
    }

    /// Maximum accepted SPKI size: an RSA-16384 key is about 2 KiB; anything near the cap is hostile.
    static let maxSPKISize = 8192

    public convenience init(spkiDER der: Data) throws(PublicKeyError) {
        guard der.count <= Self.maxSPKISize else { throw .unparsable("\(der.count) bytes") }
        let parsed: OpaquePointer? = der.withUnsafeBytes { raw -> OpaquePointer? in
            guard let base = raw.bindMemory(to: UInt8.self).baseAddress else { return nil }
            var cursor: UnsafePointer<UInt8>? = base
            let key = d2i_PUBKEY(nil, &cursor, raw.count)
            if key != nil, let end = cursor, end != base + raw.count {
                EVP_PKEY_free(key)
                return nil
            }
            return key
        }
        ERR_clear_error()
        guard let pkey = parsed else { throw .unparsable("not a DER SubjectPublicKeyInfo") }
        try self.init(taking: pkey)
    }

    /// An RSA key from its big-endian modulus and exponent (TPM2B_PUBLIC form).
    public convenience init(rsaModulus n: [UInt8], exponent e: UInt32) throws(PublicKeyError) {
        try self.init(spkiDER: Self.spki(rsaModulus: n, exponent: e))
    }

    /// The DER SubjectPublicKeyInfo of an RSA key given by modulus and exponent.
    public static func spki(rsaModulus n: [UInt8], exponent e: UInt32) -> Data {
        let eBytes = withUnsafeBytes(of: e.bigEndian) { Array($0) }
        let rsaKey = DER.sequence(DER.unsignedInteger(n), DER.unsignedInteger(eBytes))
        return Data(DER.sequence(DER.sequence(DER.oidRSAEncryption, DER.null), DER.bitString(rsaKey)))
    }

    /// Loads a key, reusing an already decoded one with identical DER bytes. Decoding a key costs
    /// OpenSSL 3 about ten signature checks, and workers present the same AK at every
    /// re-attestation, so verifiers go through this cache.
    public static func cached(spkiDER der: Data) throws(PublicKeyError) -> PublicKey {
        try cached(CacheKey(der: der, fromCertificate: false)) { () throws(PublicKeyError) in
            try PublicKey(spkiDER: der)
        }
    }

    /// The key of a certificate OpenSSL has decoded: `pkey` (its public key, retained here when
    /// it is kept) named by `der`, the certificate's SubjectPublicKeyInfo as the certificate
    /// writes it, so that the key is neither decoded again nor re-encoded. Kept apart from keys
    /// loaded from bytes, whose `spkiDER` is OpenSSL's own encoding: bytes OpenSSL would write
    /// differently must not get one key's name through one door and another through the other.
    package static func cached(retaining pkey: OpaquePointer, spkiDER der: Data) throws(PublicKeyError) -> PublicKey {
        try cached(CacheKey(der: der, fromCertificate: true)) { () throws(PublicKeyError) in
            EVP_PKEY_up_ref(pkey)
            return try PublicKey(taking: pkey, spkiDER: der)
        }
    }

    private static func cached(_ name: CacheKey, _ make: () throws(PublicKeyError) -> PublicKey) throws(PublicKeyError)
        -> PublicKey
    {
        if let hit = cache.withLock({ $0[name] }) { return hit }
        let key = try make()
        cache.withLock { entries in
            if entries.count >= maxCachedKeys { entries.removeAll(keepingCapacity: true) }
            entries[name] = key
        }
        return key
    }

    /// DER bytes as a dictionary key, hashed whole as one buffer (`Data`'s own hashing reads its
    /// first 80 bytes one at a time, so keys sharing those would all collide). Equality is on
    /// every byte, so a colliding hash never returns another key.
    private struct CacheKey: Hashable {
        let der: Data
        let fromCertificate: Bool
        func hash(into hasher: inout Hasher) {
            hasher.combine(fromCertificate)
            der.withUnsafeBytes { hasher.combine(bytes: $0) }
        }
    }

    /// Forgets every decoded key (benchmarks of a cold verifier).
    package static func clearCache() { cache.withLock { $0.removeAll() } }

    /// Bound on the cache: a gateway sees one AK per worker; past this many, it starts over.
    static let maxCachedKeys = 4096
    private static let cache = Mutex<[CacheKey: PublicKey]>([:])

    /// An EC key from its affine coordinates (TPM2B_PUBLIC form).
    public convenience init(curve: ECCurve, x: [UInt8], y: [UInt8]) throws(PublicKeyError) {
        try self.init(spkiDER: Self.spki(curve: curve, x: x, y: y))
    }

    /// The DER SubjectPublicKeyInfo of an EC key given by its affine coordinates.
    public static func spki(curve: ECCurve, x: [UInt8], y: [UInt8]) throws(PublicKeyError) -> Data {
        let size = curve.coordinateSize
        guard x.count <= size, y.count <= size else { throw .unparsable("coordinate longer than the curve") }
        let pad = { (v: [UInt8]) in [UInt8](repeating: 0, count: size - v.count) + v }
        let point = [0x04] + pad(x) + pad(y)
        return Data(DER.sequence(DER.sequence(DER.oidECPublicKey, curve.oid), DER.bitString(point)))
    }

    /// Takes ownership of `pkey`; `spkiDER`, when known, is its DER SubjectPublicKeyInfo.
    private init(taking pkey: OpaquePointer, spkiDER known: Data? = nil) throws(PublicKeyError) {
        self.pkey = pkey
        let bits = Int(EVP_PKEY_get_bits(pkey))
        switch EVP_PKEY_get_base_id(pkey) {
        case EVP_PKEY_RSA:
            guard bits >= 2048 else {
                EVP_PKEY_free(pkey)
                throw .unsupported("RSA-\(bits) is below the 2048-bit minimum")
            }
            kind = .rsa(bits: bits)
        case EVP_PKEY_EC:
            switch bits {
            case 256: kind = .ec(.p256)
            case 384: kind = .ec(.p384)
            case 521: kind = .ec(.p521)
            default:
                EVP_PKEY_free(pkey)
                throw .unsupported("EC key of \(bits) bits")
            }
        case let type:
            EVP_PKEY_free(pkey)
            throw .unsupported("key type \(type)")
        }
        var out: UnsafeMutablePointer<UInt8>? = nil
        if let known {
            spkiDER = known
        } else if case let len = i2d_PUBKEY(pkey, &out), len > 0, let out {
            spkiDER = Data(bytes: out, count: Int(len))
            CRYPTO_free(out, #fileID, #line)
        } else {
            spkiDER = Data()
        }
        fingerprint = HashAlgorithm.sha256.hash(spkiDER).hex
    }

    deinit { EVP_PKEY_free(pkey) }

    /// SHA-256 of the DER SubjectPublicKeyInfo, lowercase hex: the key's stable name.
    public let fingerprint: String

    /// Verifies `signature` over `message` (the message is hashed here with the scheme's hash).
    /// Returns false for any failure, including a scheme that does not fit the key.
    public func verify(signature: [UInt8], message: [UInt8], scheme: SignatureScheme) -> Bool {
        defer { ERR_clear_error() }
        var sig = signature
        switch (scheme, kind) {
        case (.rsassaPKCS1v15, .rsa), (.rsaPSS, .rsa):
            break
        case (.ecdsa, .ec(let curve)):
            if signature.count == 2 * curve.coordinateSize {
                let r = Array(signature[0..<curve.coordinateSize])
                let s = Array(signature[curve.coordinateSize...])
                sig = DER.sequence(DER.unsignedInteger(r), DER.unsignedInteger(s))
            }
        default:
            return false
        }
        guard let mdctx = EVP_MD_CTX_new() else { return false }
        defer { EVP_MD_CTX_free(mdctx) }
        var pctx: OpaquePointer? = nil
        guard EVP_DigestVerifyInit(mdctx, &pctx, scheme.hash.evpMD, nil, pkey) == 1 else { return false }
        switch scheme {
        case .rsassaPKCS1v15:
            guard EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) == 1 else { return false }
        case .rsaPSS:
            guard EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1,
                EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_AUTO) == 1
            else { return false }
        case .ecdsa:
            break
        }
        return EVP_DigestVerify(mdctx, sig, sig.count, message, message.count) == 1
    }
}
