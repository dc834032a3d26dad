import AttestationCore
import Foundation

/// An Intel DCAP ECDSA quote: version 3 (SGX), 4 (TDX or SGX) or 5 (TD 1.0, TD 1.5 or SGX body),
/// parsed with every length checked. Parsing proves nothing; `TDXQuoteVerifier` does.
public struct DCAPQuote: Sendable, Equatable {
    public enum TEE: Sendable, Equatable {
        case sgx
        case tdx
    }

    /// The attested body.
    public enum Body: Sendable, Equatable {
        case enclave(EnclaveReport)
        case td(TDReport)
    }

    public let version: Int
    public let tee: TEE
    public let qeVendorID: [UInt8]
    public let body: Body
    /// Bytes the attestation key signs: header and body (and, in v5, the body's type and size).
    public let signedBytes: [UInt8]
    /// Raw r ‖ s over `signedBytes`.
    public let signature: [UInt8]
    /// Raw x ‖ y of the P-256 attestation key.
    public let attestationKey: [UInt8]
    /// The quoting enclave's report, signed by the PCK key.
    public let qeReport: EnclaveReport
    public let qeReportBytes: [UInt8]
    public let qeReportSignature: [UInt8]
    public let qeAuthData: [UInt8]
    /// PCK certificate chain, PEM (ASCII bytes, NUL padding removed), leaf first.
    public let pckChainBytes: [UInt8]
    /// Bytes after the signature data (some quoting libraries pad quotes); kept, not interpreted.
    public let trailing: Int

    /// A quote is a few KiB: header, body, signature data and a three-certificate PEM chain.
    public static let maxSize = 64 << 10
    static let headerSize = 48

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case malformed(String)
        case unsupported(String)
        public var description: String {
            switch self {
            case .malformed(let s), .unsupported(let s): s
            }
        }
    }

    /// Parses a quote: the header and report (the signed bytes), then the signature data. Every
    /// length is checked against what is left before it is read.
    public static func parse(_ bytes: [UInt8]) throws(ParseError) -> DCAPQuote {
        guard bytes.count <= maxSize else { throw .malformed("quote of \(bytes.count) bytes exceeds \(maxSize)") }
        var r = ByteReader(bytes)
        let (version, tee, vendor, body) = try header(&r)
        let signedBytes = Array(bytes[0..<r.offset])
        let sigDataLength = Int(try need(r.u32le(), "signature data length", r))
        guard sigDataLength <= r.remaining else {
            throw .malformed("signature data of \(sigDataLength) bytes runs past the quote")
        }
        var s = ByteReader(try need(r.read(sigDataLength), "signature data", r))
        let data = try signatureData(&s, version: version)
        return DCAPQuote(
            version: version, tee: tee, qeVendorID: vendor, body: body, signedBytes: signedBytes,
            signature: data.signature,
            attestationKey: data.key, qeReport: EnclaveReport(data.qeReport), qeReportBytes: data.qeReport,
            qeReportSignature: data.qeReportSignature, qeAuthData: data.auth, pckChainBytes: data.pem,
            trailing: r.remaining)
    }

    /// `value`, or the truncation error naming the reader's position.
    static func need<T>(_ value: T?, _ what: String, _ reader: ByteReader, in part: String = "quote") throws(ParseError)
        -> T
    {
        guard let value else { throw .malformed("\(part) truncated at byte \(reader.offset) (\(what))") }
        return value
    }

    /// The header and the report body.
    static func header(_ r: inout ByteReader) throws(ParseError) -> (Int, TEE, [UInt8], Body) {
        let version = Int(try need(r.u16le(), "version", r))
        guard [3, 4, 5].contains(version) else {
            throw .unsupported("quote version \(version) is not supported (3, 4, 5 are)")
        }
        let keyType = try need(r.u16le(), "attestation key type", r)
        guard keyType == 2 else {
            throw .unsupported("attestation key type \(keyType) is not supported (2: ECDSA P-256 is)")
        }
        let teeRaw = try need(r.u32le(), "TEE type", r)
        let tee: TEE
        switch (version, teeRaw) {
        case (3, _): tee = .sgx
        case (_, 0x0000_0000): tee = .sgx
        case (_, 0x0000_0081): tee = .tdx
        default: throw .unsupported("TEE type \(String(teeRaw, radix: 16)) is not supported (0: SGX, 0x81: TDX)")
        }
        _ = try need(r.read(4), "reserved / QE and PCE SVN", r)
        let vendor = try need(r.read(16), "QE vendor id", r)
        _ = try need(r.read(20), "user data", r)
        let body: Body
        if version == 5 {
            let type = try need(r.u16le(), "body type", r)
            let size = Int(try need(r.u32le(), "body size", r))
            let raw = try need(r.read(size), "body", r)
            switch (type, size) {
            case (1, EnclaveReport.size): body = .enclave(EnclaveReport(raw))
            case (2, TDReport.size10), (3, TDReport.size15): body = .td(TDReport(raw))
            default: throw .malformed("v5 body of type \(type) cannot be \(size) bytes")
            }
        } else if tee == .tdx {
            body = .td(TDReport(try need(r.read(TDReport.size10), "TD report", r)))
        } else {
            body = .enclave(EnclaveReport(try need(r.read(EnclaveReport.size), "enclave report", r)))
        }
        switch (tee, body) {
        case (.tdx, .td), (.sgx, .enclave): return (version, tee, vendor, body)
        default: throw .malformed("the body does not match the TEE type")
        }
    }

    /// The signature data: the quote signature and attestation key, the QE report with its
    /// signature and authentication data, and the PCK chain (PEM).
    static func signatureData(_ s: inout ByteReader, version: Int) throws(ParseError) -> (
        signature: [UInt8], key: [UInt8], qeReport: [UInt8], qeReportSignature: [UInt8], auth: [UInt8], pem: [UInt8]
    ) {
        let part = "signature data"
        let signature = try need(s.read(64), "quote signature", s, in: part)
        let key = try need(s.read(64), "attestation key", s, in: part)
        if version >= 4 {
            let type = try need(s.u16le(), "certification data type", s, in: part)
            let size = Int(try need(s.u32le(), "certification data size", s, in: part))
            guard type == 6 else {
                throw .unsupported("certification data type \(type) is not supported (6: QE report) ")
            }
            guard size == s.remaining else {
                throw .malformed("certification data size \(size) does not match the \(s.remaining) bytes left")
            }
        }
        let qeReport = try need(s.read(EnclaveReport.size), "QE report", s, in: part)
        let qeReportSignature = try need(s.read(64), "QE report signature", s, in: part)
        let authSize = Int(try need(s.u16le(), "QE authentication data size", s, in: part))
        let auth = try need(s.read(authSize), "QE authentication data", s, in: part)
        let certType = try need(s.u16le(), "PCK certification data type", s, in: part)
        let certSize = Int(try need(s.u32le(), "PCK certification data size", s, in: part))
        guard certType == 5 else {
            throw .unsupported("PCK certification data type \(certType) is not supported (5: PEM chain)")
        }
        let certBytes = try need(s.read(certSize), "PCK certificate chain", s, in: part)
        guard s.isAtEnd else { throw .malformed("\(s.remaining) unexplained bytes at the end of the signature data") }
        // A PEM chain may carry trailing NUL padding.
        let pem = Array(certBytes.prefix { $0 != 0 })
        guard pem.allSatisfy({ $0 < 0x80 }) else { throw .malformed("PCK certificate chain is not ASCII PEM") }
        return (signature, key, qeReport, qeReportSignature, auth, pem)
    }

    public var tdReport: TDReport? { if case .td(let t) = body { t } else { nil } }
    public var enclaveReport: EnclaveReport? { if case .enclave(let e) = body { e } else { nil } }

    /// The guest is debuggable: the host can read and change its memory.
    public var isDebug: Bool {
        switch body {
        case .td(let t): t.isDebug
        case .enclave(let e): e.isDebug
        }
    }

    /// The 64 bytes the attested party chose (TD REPORTDATA or enclave REPORTDATA).
    public var reportData: [UInt8] {
        switch body {
        case .td(let t): t.reportData
        case .enclave(let e): e.reportData
        }
    }
}

/// An SGX enclave report body (384 bytes): the application enclave's in an SGX quote, and the
/// quoting enclave's in every quote.
public struct EnclaveReport: Sendable, Equatable {
    public static let size = 384
    public let bytes: [UInt8]
    init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var cpuSVN: [UInt8] { Array(bytes[0..<16]) }
    public var miscSelect: UInt32 {
        UInt32(bytes[16]) | UInt32(bytes[17]) << 8 | UInt32(bytes[18]) << 16 | UInt32(bytes[19]) << 24
    }
    public var attributes: [UInt8] { Array(bytes[48..<64]) }
    public var mrEnclave: [UInt8] { Array(bytes[64..<96]) }
    public var mrSigner: [UInt8] { Array(bytes[128..<160]) }
    public var isvProdID: UInt16 { UInt16(bytes[256]) | UInt16(bytes[257]) << 8 }
    public var isvSVN: UInt16 { UInt16(bytes[258]) | UInt16(bytes[259]) << 8 }
    public var reportData: [UInt8] { Array(bytes[320..<384]) }
    /// ATTRIBUTES.DEBUG (bit 1 of the flags).
    public var isDebug: Bool { bytes[48] & 0x02 != 0 }
}

/// A TD report body: TD 1.0 (584 bytes) or TD 1.5 (648 bytes, adding TEE_TCB_SVN_2 and
/// MRSERVICETD).
public struct TDReport: Sendable, Equatable {
    public static let size10 = 584
    public static let size15 = 648
    public let bytes: [UInt8]
    init(_ bytes: [UInt8]) { self.bytes = bytes }

    func field(_ offset: Int, _ length: Int) -> [UInt8] { Array(bytes[offset..<(offset + length)]) }

    public var teeTCBSVN: [UInt8] { field(0, 16) }
    public var mrSeam: [UInt8] { field(16, 48) }
    public var mrSignerSeam: [UInt8] { field(64, 48) }
    public var seamAttributes: [UInt8] { field(112, 8) }
    public var tdAttributes: [UInt8] { field(120, 8) }
    public var xfam: [UInt8] { field(128, 8) }
    public var mrTD: [UInt8] { field(136, 48) }
    public var mrConfigID: [UInt8] { field(184, 48) }
    public var mrOwner: [UInt8] { field(232, 48) }
    public var mrOwnerConfig: [UInt8] { field(280, 48) }
    public func rtmr(_ i: Int) -> [UInt8] { field(328 + 48 * i, 48) }
    public var reportData: [UInt8] { field(520, 64) }
    public var teeTCBSVN2: [UInt8]? { bytes.count == Self.size15 ? field(584, 16) : nil }
    public var mrServiceTD: [UInt8]? { bytes.count == Self.size15 ? field(600, 48) : nil }
    /// TDATTRIBUTES.TUD.DEBUG (bit 0): the host can read and change the TD's state.
    public var isDebug: Bool { bytes[120] & 0x01 != 0 }

    /// The image hash a Cocoon root contract lists: SHA-256 over MRTD ‖ MRCONFIGID ‖ MROWNER ‖
    /// MROWNERCONFIG ‖ RTMR0..3 ‖ 64 zero bytes.
    public var cocoonImageHash: [UInt8] {
        let parts =
            mrTD + mrConfigID + mrOwner + mrOwnerConfig + rtmr(0) + rtmr(1) + rtmr(2) + rtmr(3)
            + [UInt8](repeating: 0, count: 64)
        return [UInt8](HashAlgorithm.sha256.hash(parts))
    }
}
