import AttestationCore
import COpenSSL
import Crypto
import Foundation

import TDXVerifier

/// A complete DCAP world generated in code from one `referenceTime`: a fake "Intel" root, a PCK
/// platform CA, a PCK leaf with the SGX extension, a TCB signer, CRLs, signed TCB info and QE
/// identity, and TD quotes signed by a quoting-enclave attestation key. Each test changes one
/// thing and checks the reason code that names it.
public struct DCAPWorld {
    /// Intel's PCK certificate extension (SGX extensions).
    public static let sgxExtensionOID = "1.2.840.113741.1.13.1"
    public static let referenceTime = Date(timeIntervalSince1970: 1_780_000_000)  // 2026-05-28
    public static let day: TimeInterval = 86_400

    public var root = TestCA(name: "Intel SGX Root CA")
    public var platformCA: TestCA
    public var tcbSigner: TestCA
    public var pckKey = P256.Signing.PrivateKey()
    public var attestationKey = P256.Signing.PrivateKey()
    public var pckSerial = 0x5A5A01

    // Platform facts certified in the PCK certificate.
    public var fmspc: [UInt8] = [0x90, 0xC0, 0x6F, 0x00, 0x00, 0x00]
    public var pceID: [UInt8] = [0x00, 0x00]
    public var cpuSVN: [Int] = [3, 3, 2, 2, 3, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0]
    public var pceSVN = 13
    public var pckValidity: (Date, Date) = (referenceTime - 365 * day, referenceTime + 365 * day)

    // TD facts.
    public var teeTCBSVN: [UInt8] = [5, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    public var teeTCBSVN2: [UInt8]? = nil
    public var tdAttributes: [UInt8] = [0, 0, 0, 0x10, 0, 0, 0, 0]
    public var mrtd = [UInt8](repeating: 0x11, count: 48)
    public var rtmrs: [[UInt8]] = (0..<4).map { [UInt8](repeating: UInt8(0x20 + $0), count: 48) }
    public var reportData = [UInt8](repeating: 0x77, count: 64)

    // Quoting enclave.
    public var qeMRSigner = [UInt8](repeating: 0xDC, count: 32)
    public var qeISVSVN: UInt16 = 4
    public var qeAuthData = [UInt8](0..<32)

    // Collateral content.
    public var tcbLevels: [String] = [
        DCAPWorld.level(
            sgx: [3, 3, 2, 2, 3, 1, 0, 5], pce: 13, tdx: [5, 0, 3], date: "2025-11-12T00:00:00Z", status: "UpToDate"),
        DCAPWorld.level(
            sgx: [2, 2, 2, 2, 3, 1, 0, 3], pce: 11, tdx: [3, 0, 2], date: "2024-03-13T00:00:00Z", status: "OutOfDate",
            advisories: ["INTEL-SA-00960", "INTEL-SA-00837"]),
    ]
    public var moduleIdentities = ""
    public var qeLevels =
        #"[{"tcb":{"isvsvn":4},"tcbDate":"2025-11-12T00:00:00Z","tcbStatus":"UpToDate"},{"tcb":{"isvsvn":2},"tcbDate":"2024-03-13T00:00:00Z","tcbStatus":"OutOfDate","advisoryIDs":["INTEL-SA-00615"]}]"#
    public var collateralIssued = referenceTime - 10 * day
    public var collateralNext = referenceTime + 20 * day
    public var tcbInfoFMSPC: [UInt8]? = nil
    public var evaluationNumber = 18
    public var revokedPCKSerials: [Int] = []
    public var revokedCASerials: [Int] = []

    public init() {
        platformCA = TestCA(name: "Intel SGX PCK Platform CA", issuer: root)
        tcbSigner = TestCA(name: "Intel SGX TCB Signing", issuer: root, isCA: false)
    }

    public static func level(
        sgx: [Int], pce: Int, tdx: [Int], date: String, status: String, advisories: [String] = []
    ) -> String {
        let pad = { (v: [Int]) in v + [Int](repeating: 0, count: 16 - v.count) }
        let sgxJSON = pad(sgx).map { #"{"svn":\#($0)}"# }.joined(separator: ",")
        let tdxJSON = pad(tdx).map { #"{"svn":\#($0)}"# }.joined(separator: ",")
        let adv =
            advisories.isEmpty ? "" : #","advisoryIDs":[\#(advisories.map { "\"\($0)\"" }.joined(separator: ","))]"#
        return
            #"{"tcb":{"sgxtcbcomponents":[\#(sgxJSON)],"pcesvn":\#(pce),"tdxtcbcomponents":[\#(tdxJSON)]},"tcbDate":"\#(date)","tcbStatus":"\#(status)"\#(adv)}"#
    }

    // MARK: Certificates

    public func pckCertificate() -> [UInt8] {
        platformCA.issue(
            subject: "Intel SGX PCK Certificate", key: pckKey, serial: pckSerial, validity: pckValidity,
            extensions: [(DCAPWorld.sgxExtensionOID, sgxExtension())])
    }

    public func sgxExtension() -> [UInt8] {
        func entry(_ oid: String, _ value: [UInt8]) -> [UInt8] { DERBuild.sequence(DERBuild.oid(oid) + value) }
        var tcb = [UInt8]()
        for (i, svn) in cpuSVN.enumerated() {
            tcb += entry("\(DCAPWorld.sgxExtensionOID).2.\(i + 1)", DERBuild.integer(svn))
        }
        tcb += entry("\(DCAPWorld.sgxExtensionOID).2.17", DERBuild.integer(pceSVN))
        tcb += entry("\(DCAPWorld.sgxExtensionOID).2.18", DERBuild.octets(cpuSVN.map { UInt8($0) }))
        return DERBuild.sequence(
            entry("\(DCAPWorld.sgxExtensionOID).1", DERBuild.octets([UInt8](repeating: 0xAB, count: 16)))
                + entry("\(DCAPWorld.sgxExtensionOID).2", DERBuild.sequence(tcb))
                + entry("\(DCAPWorld.sgxExtensionOID).3", DERBuild.octets(pceID))
                + entry("\(DCAPWorld.sgxExtensionOID).4", DERBuild.octets(fmspc))
                + entry("\(DCAPWorld.sgxExtensionOID).5", [0x0A, 0x01, 0x00]))
    }

    public var pckChainPEM: String { PEM.encode([pckCertificate(), platformCA.certificate, root.certificate]) }

    // MARK: Quote

    public func quote(
        version: Int = 4, signQERWith qeSigner: P256.Signing.PrivateKey? = nil, tamper: ((inout [UInt8]) -> Void)? = nil
    )
        -> [UInt8]
    {
        var header = [UInt8]()
        header += le16(UInt16(version)) + le16(2) + le32(0x81) + [0, 0, 0, 0]
        header += [UInt8](repeating: 0x93, count: 16) + [UInt8](repeating: 0, count: 20)
        var body = [UInt8]()
        body += teeTCBSVN
        body += [UInt8](repeating: 0x49, count: 48)  // MRSEAM
        body += [UInt8](repeating: 0, count: 48)  // MRSIGNERSEAM: Intel's is zero
        body += [UInt8](repeating: 0, count: 8)  // SEAMATTRIBUTES
        body += tdAttributes
        body += [0xE7, 0x02, 0x06, 0, 0, 0, 0, 0]  // XFAM
        body += mrtd
        body += [UInt8](repeating: 0, count: 48 * 3)  // MRCONFIGID, MROWNER, MROWNERCONFIG
        for r in rtmrs { body += r }
        body += reportData
        if let svn2 = teeTCBSVN2 { body += svn2 + [UInt8](repeating: 0, count: 48) }
        var signed = header
        if version == 5 { signed += le16(teeTCBSVN2 == nil ? 2 : 3) + le32(UInt32(body.count)) }
        signed += body
        if let tamper { tamper(&signed) }
        let quoteSignature = try! attestationKey.signature(for: SHA256.hash(data: signed)).rawRepresentation

        let attKeyRaw = [UInt8](attestationKey.publicKey.rawRepresentation)
        var qeReport = [UInt8](repeating: 0, count: 384)
        qeReport[48] = 0x11  // ATTRIBUTES: INIT | MODE64BIT, not DEBUG
        qeReport.replaceSubrange(128..<160, with: qeMRSigner)
        qeReport.replaceSubrange(256..<258, with: le16(2))
        qeReport.replaceSubrange(258..<260, with: le16(qeISVSVN))
        let binding = [UInt8](SHA256.hash(data: attKeyRaw + qeAuthData))
        qeReport.replaceSubrange(320..<352, with: binding)
        let qeSig = try! (qeSigner ?? pckKey).signature(for: SHA256.hash(data: qeReport)).rawRepresentation

        let pem = Array(pckChainPEM.utf8) + [0]
        var certData = qeReport + [UInt8](qeSig) + le16(UInt16(qeAuthData.count)) + qeAuthData
        certData += le16(5) + le32(UInt32(pem.count)) + pem
        let sigData = [UInt8](quoteSignature) + attKeyRaw + le16(6) + le32(UInt32(certData.count)) + certData
        return signed + le32(UInt32(sigData.count)) + sigData
    }

    // MARK: Collateral

    public var tcbInfoText: String {
        let fmspcHex = Data(tcbInfoFMSPC ?? fmspc).hex.uppercased()
        let modules = moduleIdentities.isEmpty ? "" : #","tdxModuleIdentities":\#(moduleIdentities)"#
        return
            #"{"id":"TDX","version":3,"issueDate":"\#(collateralIssued.rfc3339)","nextUpdate":"\#(collateralNext.rfc3339)","fmspc":"\#(fmspcHex)","pceId":"0000","tcbType":0,"tcbEvaluationDataNumber":\#(evaluationNumber),"tdxModule":{"mrsigner":"\#(String(repeating: "0", count: 96))","attributes":"0000000000000000","attributesMask":"FFFFFFFFFFFFFFFF"}\#(modules),"tcbLevels":[\#(tcbLevels.joined(separator: ","))]}"#
    }

    public var qeIdentityText: String {
        #"{"id":"TD_QE","version":2,"issueDate":"\#(collateralIssued.rfc3339)","nextUpdate":"\#(collateralNext.rfc3339)","tcbEvaluationDataNumber":\#(evaluationNumber),"miscselect":"00000000","miscselectMask":"FFFFFFFF","attributes":"11000000000000000000000000000000","attributesMask":"FBFFFFFFFFFFFFFF0000000000000000","mrsigner":"\#(Data(repeating: 0xDC, count: 32).hex.uppercased())","isvprodid":2,"tcbLevels":\#(qeLevels)}"#
    }

    public func collateral(tcbInfo: String? = nil, tcbSignatureOver: String? = nil) -> Collateral {
        let tcb = tcbInfo ?? tcbInfoText
        let qe = qeIdentityText
        let tcbSig = tcbSigner.signRaw(Array((tcbSignatureOver ?? tcb).utf8))
        let qeSig = tcbSigner.signRaw(Array(qe.utf8))
        let signerChain = PEM.encode([tcbSigner.certificate, root.certificate])
        return Collateral(
            pckCRLIssuerChain: PEM.encode([platformCA.certificate, root.certificate]),
            rootCACRL: root.crl(revoked: revokedCASerials, thisUpdate: collateralIssued, nextUpdate: collateralNext),
            pckCRL: platformCA.crl(
                revoked: revokedPCKSerials, thisUpdate: collateralIssued, nextUpdate: collateralNext),
            tcbInfoIssuerChain: signerChain, tcbInfo: tcb, tcbInfoSignature: tcbSig, qeIdentityIssuerChain: signerChain,
            qeIdentity: qe, qeIdentitySignature: qeSig)
    }

    public func envelope(quote: [UInt8]? = nil, collateral: Collateral?, eventLog: Data? = nil) -> Data {
        var object: [String: Any] = [
            "format": "tdx-quote", "version": 1, "quote": Data(quote ?? self.quote()).base64EncodedString(),
        ]
        if let collateral { object["collateral"] = collateral.fields }
        if let eventLog { object["event_log"] = eventLog.base64EncodedString() }
        return try! JSONSerialization.data(withJSONObject: object)
    }

    public func verifier(_ adjust: (inout TDXQuoteVerifier.Options) -> Void = { _ in }) -> TDXQuoteVerifier {
        var options = TDXQuoteVerifier.Options(pinnedRootFingerprints: [root.fingerprint])
        adjust(&options)
        return TDXQuoteVerifier(options: options)
    }

    public func verify(
        _ envelope: Data? = nil, at time: Date = referenceTime, nonce: Data? = nil,
        _ adjust: (inout TDXQuoteVerifier.Options) -> Void = { _ in }
    ) -> Verdict {
        verifier(adjust).verify(
            envelopeData: envelope ?? self.envelope(collateral: collateral()), expectedNonce: nonce, at: time)
    }
}

public func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }
public func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8((v >> (8 * $0)) & 0xFF) } }

/// A certificate authority of the test PKI: a P-256 key and its certificate.
public struct TestCA {
    public let name: String
    public let key: P256.Signing.PrivateKey
    public let certificate: [UInt8]
    public let serial: Int

    /// A self-signed root.
    public init(name: String) {
        self.name = name
        key = P256.Signing.PrivateKey()
        serial = 1
        certificate = X509Build.certificate(
            subject: name, issuer: name, subjectKey: key, issuerKey: key, serial: 1,
            validity: (DCAPWorld.referenceTime - 3650 * DCAPWorld.day, DCAPWorld.referenceTime + 3650 * DCAPWorld.day),
            isCA: true, extensions: [])
    }

    /// An intermediate (or a non-CA signer) issued by `issuer`.
    public init(name: String, issuer: TestCA, isCA: Bool = true, serial: Int = Int.random(in: 1000...999_999)) {
        self.name = name
        key = P256.Signing.PrivateKey()
        self.serial = serial
        certificate = X509Build.certificate(
            subject: name, issuer: issuer.name, subjectKey: key, issuerKey: issuer.key, serial: serial,
            validity: (DCAPWorld.referenceTime - 1000 * DCAPWorld.day, DCAPWorld.referenceTime + 1000 * DCAPWorld.day),
            isCA: isCA, extensions: [])
    }

    public var fingerprint: String { HashAlgorithm.sha256.hash(certificate).hex }

    public func issue(
        subject: String, key subjectKey: P256.Signing.PrivateKey, serial: Int, validity: (Date, Date),
        extensions: [(String, [UInt8])]
    ) -> [UInt8] {
        X509Build.certificate(
            subject: subject, issuer: name, subjectKey: subjectKey, issuerKey: key, serial: serial, validity: validity,
            isCA: false,
            extensions: extensions)
    }

    public func signRaw(_ message: [UInt8]) -> [UInt8] {
        [UInt8](try! key.signature(for: SHA256.hash(data: message)).rawRepresentation)
    }

    public func crl(revoked: [Int], thisUpdate: Date, nextUpdate: Date) -> [UInt8] {
        X509Build.crl(issuer: name, key: key, revoked: revoked, thisUpdate: thisUpdate, nextUpdate: nextUpdate)
    }
}

public enum PEM {
    public static func encode(_ ders: [[UInt8]]) -> String {
        ders.map { der in
            let b64 = Data(der).base64EncodedString(options: [.lineLength64Characters, .endLineWithLineFeed])
            return "-----BEGIN CERTIFICATE-----\n\(b64)\n-----END CERTIFICATE-----\n"
        }.joined()
    }
}

/// The DER the SGX extension needs, built by hand (the verifier parses it by hand too; OpenSSL
/// cross-checks the certificate around it).
public enum DERBuild {
    public static func tlv(_ tag: UInt8, _ content: [UInt8]) -> [UInt8] {
        var length: [UInt8]
        if content.count < 0x80 {
            length = [UInt8(content.count)]
        } else if content.count < 0x100 {
            length = [0x81, UInt8(content.count)]
        } else {
            length = [0x82, UInt8(content.count >> 8), UInt8(content.count & 0xFF)]
        }
        return [tag] + length + content
    }
    public static func sequence(_ content: [UInt8]) -> [UInt8] { tlv(0x30, content) }
    public static func octets(_ content: [UInt8]) -> [UInt8] { tlv(0x04, content) }
    public static func integer(_ v: Int) -> [UInt8] {
        var bytes = [UInt8]()
        var x = v
        repeat {
            bytes.insert(UInt8(x & 0xFF), at: 0)
            x >>= 8
        } while x > 0
        if bytes[0] & 0x80 != 0 { bytes.insert(0, at: 0) }
        return tlv(0x02, bytes)
    }
    public static func oid(_ dotted: String) -> [UInt8] {
        let parts = dotted.split(separator: ".").map { Int($0)! }
        var out: [UInt8] = [UInt8(parts[0] * 40 + parts[1])]
        for p in parts.dropFirst(2) {
            var chunk = [UInt8(p & 0x7F)]
            var x = p >> 7
            while x > 0 {
                chunk.insert(UInt8(x & 0x7F) | 0x80, at: 0)
                x >>= 7
            }
            out += chunk
        }
        return tlv(0x06, out)
    }
}

/// Certificates and CRLs made with OpenSSL, signed with the swift-crypto keys above.
public enum X509Build {
    public static func evpKey(_ key: P256.Signing.PrivateKey) -> OpaquePointer {
        let der = [UInt8](key.derRepresentation)
        return der.withUnsafeBufferPointer { buffer in
            var cursor: UnsafePointer<UInt8>? = buffer.baseAddress
            return d2i_AutoPrivateKey(nil, &cursor, buffer.count)!
        }
    }

    public static func name(_ cn: String) -> OpaquePointer {
        let n = X509_NAME_new()!
        _ = X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, cn, -1, -1, 0)
        _ = X509_NAME_add_entry_by_txt(n, "O", MBSTRING_ASC, "Intel Corporation", -1, -1, 0)
        _ = X509_NAME_add_entry_by_txt(n, "C", MBSTRING_ASC, "US", -1, -1, 0)
        return n
    }

    public static func certificate(
        subject: String, issuer: String, subjectKey: P256.Signing.PrivateKey, issuerKey: P256.Signing.PrivateKey,
        serial: Int,
        validity: (Date, Date), isCA: Bool, extensions: [(String, [UInt8])]
    ) -> [UInt8] {
        let x = X509_new()!
        defer { X509_free(x) }
        X509_set_version(x, 2)
        ASN1_INTEGER_set(X509_get_serialNumber(x), serial)
        let subjectName = name(subject)
        let issuerName = name(issuer)
        X509_set_subject_name(x, subjectName)
        X509_set_issuer_name(x, issuerName)
        X509_NAME_free(subjectName)
        X509_NAME_free(issuerName)
        ASN1_TIME_set(X509_getm_notBefore(x), time_t(validity.0.timeIntervalSince1970))
        ASN1_TIME_set(X509_getm_notAfter(x), time_t(validity.1.timeIntervalSince1970))
        let subjectPKey = evpKey(subjectKey)
        let issuerPKey = evpKey(issuerKey)
        defer {
            EVP_PKEY_free(subjectPKey)
            EVP_PKEY_free(issuerPKey)
        }
        X509_set_pubkey(x, subjectPKey)
        let constraints = X509V3_EXT_conf_nid(
            nil, nil, NID_basic_constraints, isCA ? "critical,CA:TRUE" : "critical,CA:FALSE")!
        X509_add_ext(x, constraints, -1)
        X509_EXTENSION_free(constraints)
        for (oid, der) in extensions {
            let object = OBJ_txt2obj(oid, 1)!
            let octets = ASN1_OCTET_STRING_new()!
            ASN1_OCTET_STRING_set(octets, der, Int32(der.count))
            let ext = X509_EXTENSION_create_by_OBJ(nil, object, 0, octets)!
            X509_add_ext(x, ext, -1)
            X509_EXTENSION_free(ext)
            ASN1_OCTET_STRING_free(octets)
            ASN1_OBJECT_free(object)
        }
        precondition(X509_sign(x, issuerPKey, EVP_sha256()) > 0)
        var out: UnsafeMutablePointer<UInt8>? = nil
        let n = i2d_X509(x, &out)
        defer { CRYPTO_free(out, #fileID, #line) }
        return Array(UnsafeBufferPointer(start: out, count: Int(n)))
    }

    public static func crl(
        issuer: String, key: P256.Signing.PrivateKey, revoked: [Int], thisUpdate: Date, nextUpdate: Date
    ) -> [UInt8] {
        let crl = X509_CRL_new()!
        defer { X509_CRL_free(crl) }
        X509_CRL_set_version(crl, 1)
        let issuerName = name(issuer)
        X509_CRL_set_issuer_name(crl, issuerName)
        X509_NAME_free(issuerName)
        let this = ASN1_TIME_set(nil, time_t(thisUpdate.timeIntervalSince1970))
        let next = ASN1_TIME_set(nil, time_t(nextUpdate.timeIntervalSince1970))
        X509_CRL_set1_lastUpdate(crl, this)
        X509_CRL_set1_nextUpdate(crl, next)
        for serial in revoked {
            let entry = X509_REVOKED_new()!
            let s = ASN1_INTEGER_new()!
            ASN1_INTEGER_set(s, serial)
            X509_REVOKED_set_serialNumber(entry, s)
            X509_REVOKED_set_revocationDate(entry, this)
            X509_CRL_add0_revoked(crl, entry)
            ASN1_INTEGER_free(s)
        }
        ASN1_TIME_free(this)
        ASN1_TIME_free(next)
        X509_CRL_sort(crl)
        let pkey = evpKey(key)
        defer { EVP_PKEY_free(pkey) }
        precondition(X509_CRL_sign(crl, pkey, EVP_sha256()) > 0)
        var out: UnsafeMutablePointer<UInt8>? = nil
        let n = i2d_X509_CRL(crl, &out)
        defer { CRYPTO_free(out, #fileID, #line) }
        return Array(UnsafeBufferPointer(start: out, count: Int(n)))
    }
}
