import AttestationCore
import COpenSSL
import Foundation
import Synchronization

/// An X.509 certificate decoded by OpenSSL, with the few accessors DCAP verification needs.
///
/// Only parsing and single signature checks are delegated to OpenSSL; which certificate must be
/// signed by which, what is trusted and what time counts are decided by `PCKChain` and the
/// verifier, so the verification order is ours and Intel's, not OpenSSL's store logic.
package final class Certificate: @unchecked Sendable {
    // An X509 object is not mutated after decoding; concurrent reads are safe.
    let x509: OpaquePointer
    package let der: [UInt8]
    /// SHA-256 of the DER encoding, lowercase hex: how pinned roots are named.
    package let fingerprint: String
    package let publicKey: PublicKey
    package let notBefore: Date
    package let notAfter: Date
    /// Intel's platform facts, when this is a PCK certificate (read once, at decoding).
    private(set) var sgxExtension: SGXExtension? = nil

    /// A certificate is under 2 KiB; Intel's are about 1.2 KiB.
    static let maxSize = 8192

    package enum DecodeError: Error, CustomStringConvertible {
        case invalid(String)
        package var description: String {
            switch self {
            case .invalid(let s): s
            }
        }
    }

    package init(der: [UInt8]) throws(DecodeError) {
        guard der.count <= Self.maxSize else {
            throw .invalid("certificate of \(der.count) bytes exceeds \(Self.maxSize)")
        }
        defer { ERR_clear_error() }
        let decoded: OpaquePointer? = der.withUnsafeBufferPointer { buffer in
            guard let base = buffer.baseAddress else { return nil }
            var cursor: UnsafePointer<UInt8>? = base
            let cert = d2i_X509(nil, &cursor, buffer.count)
            if cert != nil, cursor != base + buffer.count {
                X509_free(cert)
                return nil
            }
            return cert
        }
        guard let x509 = decoded else { throw .invalid("not a DER X.509 certificate") }
        self.x509 = x509
        self.der = der
        fingerprint = HashAlgorithm.sha256.hash(der).hex
        guard let before = asn1Date(X509_get0_notBefore(x509)), let after = asn1Date(X509_get0_notAfter(x509)) else {
            X509_free(x509)
            throw .invalid("certificate validity dates are unreadable")
        }
        notBefore = before
        notAfter = after
        // The SubjectPublicKeyInfo as the certificate holds it (OpenSSL 3's key encoder, which
        // i2d_PUBKEY goes through, costs more than decoding the whole certificate).
        guard let pkey = X509_get0_pubkey(x509), let info = X509_get_X509_PUBKEY(x509) else {
            X509_free(x509)
            throw .invalid("certificate public key is unreadable")
        }
        var out: UnsafeMutablePointer<UInt8>? = nil
        let length = i2d_X509_PUBKEY(info, &out)
        guard length > 0, let out else {
            X509_free(x509)
            throw .invalid("certificate public key is unreadable")
        }
        let spki = Data(bytes: out, count: Int(length))
        CRYPTO_free(out, #fileID, #line)
        do {
            publicKey = try PublicKey.cached(retaining: pkey, spkiDER: spki)
        } catch {
            X509_free(x509)
            throw .invalid("certificate key: \(error)")
        }
        sgxExtension = extensionValue(oid: SGXExtension.oid).flatMap(SGXExtension.init(extensionDER:))
    }

    deinit { X509_free(x509) }

    /// Intel's chains are at most a few certificates of about 1 KiB each.
    static let maxChainPEM = 32 << 10
    static let maxChainLength = 5

    /// Every certificate in PEM text, in order. Text too long or with more certificates than any
    /// Intel chain has is refused before any certificate is decoded.
    package static func chain(pemBytes: [UInt8]) throws(DecodeError) -> [Certificate] {
        guard pemBytes.count <= maxChainPEM else {
            throw .invalid("certificate chain larger than \(maxChainPEM) bytes")
        }
        guard let blocks = PEMBlock.all(in: pemBytes, label: "CERTIFICATE") else {
            throw .invalid("certificate chain: bad PEM block")
        }
        guard blocks.count <= maxChainLength else {
            throw .invalid("certificate chain of more than \(maxChainLength) certificates")
        }
        // Each block is decoded once, here: a block that is not an X.509 certificate fails.
        var certs = [Certificate]()
        for der in blocks { certs.append(try Certificate(der: [UInt8](der))) }
        return certs
    }

    var subjectName: OpaquePointer { X509_get_subject_name(x509) }
    var issuerName: OpaquePointer { X509_get_issuer_name(x509) }
    package var subject: String { nameText(subjectName) }

    private let verifiedBy = VerifiedKeys()

    /// The certificate's signature verifies under `key` (remembered once it has).
    func isSigned(by key: PublicKey) -> Bool { verifiedBy.check(key) { X509_verify(x509, key.pkey) == 1 } }

    /// The subject is the issuer named in `other`.
    package func isIssuer(of other: Certificate) -> Bool { X509_NAME_cmp(subjectName, other.issuerName) == 0 }

    /// Basic constraints say CA (OpenSSL's 1; not its looser readings of v1 or Netscape certificates).
    package var isCA: Bool { X509_check_ca(x509) == 1 }

    /// The subject's commonName, when there is exactly one.
    package var commonName: String? {
        let name = subjectName
        let index = X509_NAME_get_index_by_NID(name, NID_commonName, -1)
        guard index >= 0, X509_NAME_get_index_by_NID(name, NID_commonName, index) < 0,
            let entry = X509_NAME_get_entry(name, index), let data = X509_NAME_ENTRY_get_data(entry)
        else { return nil }
        let length = Int(ASN1_STRING_length(data))
        guard length > 0, let bytes = ASN1_STRING_get0_data(data) else { return nil }
        return String(decoding: UnsafeBufferPointer(start: bytes, count: length), as: UTF8.self)
    }

    package func isValid(at time: Date) -> Bool { notBefore <= time && time <= notAfter }

    var serialNumber: UnsafePointer<ASN1_INTEGER>? { X509_get0_serialNumber(x509) }

    /// The DER contents of the extension with this dotted OID, if present.
    package func extensionValue(oid: String) -> [UInt8]? {
        let count = X509_get_ext_count(x509)
        guard count >= 0 else { return nil }
        for i in 0..<count {
            guard let ext = X509_get_ext(x509, i), let object = X509_EXTENSION_get_object(ext) else { continue }
            var buffer = [CChar](repeating: 0, count: 128)
            let n = OBJ_obj2txt(&buffer, Int32(buffer.count), object, 1)
            guard n > 0, n < buffer.count else { continue }
            let text = String(decoding: buffer.prefix(Int(n)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            guard text == oid, let data = X509_EXTENSION_get_data(ext) else { continue }
            return asn1Bytes(data)
        }
        return nil
    }
}

/// A certificate revocation list decoded by OpenSSL.
final class RevocationList: @unchecked Sendable {
    let crl: OpaquePointer
    let der: [UInt8]
    let thisUpdate: Date
    let nextUpdate: Date

    /// Intel's PCK CRLs list every revoked platform of a CA: tens of KiB. A MiB is hostile.
    static let maxSize = 1 << 20

    init(der: [UInt8]) throws(Certificate.DecodeError) {
        guard der.count <= Self.maxSize else { throw .invalid("CRL of \(der.count) bytes exceeds \(Self.maxSize)") }
        defer { ERR_clear_error() }
        let decoded: OpaquePointer? = der.withUnsafeBufferPointer { buffer in
            guard let base = buffer.baseAddress else { return nil }
            var cursor: UnsafePointer<UInt8>? = base
            let crl = d2i_X509_CRL(nil, &cursor, buffer.count)
            if crl != nil, cursor != base + buffer.count {
                X509_CRL_free(crl)
                return nil
            }
            return crl
        }
        guard let crl = decoded else { throw .invalid("not a DER X.509 CRL") }
        self.crl = crl
        self.der = der
        guard let this = asn1Date(X509_CRL_get0_lastUpdate(crl)), let next = asn1Date(X509_CRL_get0_nextUpdate(crl))
        else {
            X509_CRL_free(crl)
            throw .invalid("CRL has no readable thisUpdate/nextUpdate")
        }
        thisUpdate = this
        nextUpdate = next
    }

    deinit { X509_CRL_free(crl) }

    var issuerName: OpaquePointer { X509_CRL_get_issuer(crl) }
    var issuer: String { nameText(issuerName) }

    func isIssued(by cert: Certificate) -> Bool { X509_NAME_cmp(issuerName, cert.subjectName) == 0 }

    private let verifiedBy = VerifiedKeys()

    /// The CRL's signature verifies under `key` (remembered once it has).
    func isSigned(by key: PublicKey) -> Bool { verifiedBy.check(key) { X509_CRL_verify(crl, key.pkey) == 1 } }

    package func isValid(at time: Date) -> Bool { thisUpdate <= time && time <= nextUpdate }

    /// The certificate is one this CRL's issuer issued, and its serial number is listed.
    func revokes(_ cert: Certificate) -> Bool {
        defer { ERR_clear_error() }
        guard X509_NAME_cmp(cert.issuerName, issuerName) == 0, let serial = cert.serialNumber else { return false }
        var entry: OpaquePointer? = nil
        return X509_CRL_get0_by_serial(crl, &entry, serial) >= 1
    }
}

/// The keys (by SPKI fingerprint) a decoded object's signature verified under. The object's
/// bytes never change, so a signature that verified once verifies again; failures are not kept.
private final class VerifiedKeys: Sendable {
    private let keys = Mutex<Set<String>>([])

    func check(_ key: PublicKey, _ verify: () -> Bool) -> Bool {
        if keys.withLock({ $0.contains(key.fingerprint) }) { return true }
        defer { ERR_clear_error() }
        guard verify() else { return false }
        keys.withLock { _ = $0.insert(key.fingerprint) }
        return true
    }
}

private func asn1Date(_ time: UnsafePointer<ASN1_TIME>?) -> Date? {
    guard let time else { return nil }
    var parts = tm()
    guard ASN1_TIME_to_tm(time, &parts) == 1 else { return nil }
    return Date(timeIntervalSince1970: TimeInterval(timegm(&parts)))
}

private func asn1Bytes(_ string: UnsafePointer<ASN1_OCTET_STRING>) -> [UInt8] {
    let length = Int(ASN1_STRING_length(string))
    guard length > 0, let data = ASN1_STRING_get0_data(string) else { return [] }
    return Array(UnsafeBufferPointer(start: data, count: length))
}

private func nameText(_ name: OpaquePointer) -> String {
    guard let text = X509_NAME_oneline(name, nil, 0) else { return "?" }
    defer { CRYPTO_free(text, #fileID, #line) }
    return String(cString: text)
}
