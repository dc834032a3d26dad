import AttestationCore
import CTSS2
import Foundation

/// TPM 2.0 constants (TCG TPM 2.0 Library Part 2), spelled out because the tss2 headers define
/// them as casted macros that do not import.
enum TPMConstant {
    static let generatedValue: UInt32 = 0xff54_4347
    static let stAttestQuote: UInt16 = 0x8018
    static let algRSA: UInt16 = 0x0001
    static let algECC: UInt16 = 0x0023
    static let algRSASSA: UInt16 = 0x0014
    static let algRSAPSS: UInt16 = 0x0016
    static let algECDSA: UInt16 = 0x0018
    static let algNull: UInt16 = 0x0010
    static let curveP256: UInt16 = 0x0003
    static let curveP384: UInt16 = 0x0004
    static let curveP521: UInt16 = 0x0005
    static let attrRestricted: UInt32 = 0x0001_0000
    static let attrSign: UInt32 = 0x0004_0000
}

/// Reads a fixed-size C array (imported as a tuple) as a Swift array.
func tupleBytes<T>(_ tuple: T, count: Int) -> [UInt8] {
    withUnsafeBytes(of: tuple) { Array($0.prefix(count)) }
}

/// A PCR selection: bank → selected indices, in the order the TPM hashes them.
public struct PCRSelection: Sendable, Equatable {
    public struct Bank: Sendable, Equatable {
        public let algorithmID: UInt16
        public let indices: [Int]
    }
    public let banks: [Bank]
}

/// The parts of a TPMS_ATTEST of type QUOTE that verification uses.
public struct TPMQuoteInfo: Sendable {
    public let raw: [UInt8]
    public let qualifiedSigner: [UInt8]
    public let extraData: [UInt8]
    public let clock: UInt64
    public let resetCount: UInt32
    public let restartCount: UInt32
    public let safe: Bool
    public let firmwareVersion: UInt64
    public let selection: PCRSelection
    public let pcrDigest: [UInt8]
}

/// A TPMT_SIGNATURE reduced to what verification needs.
public struct TPMSignature: Sendable {
    public let algorithmID: UInt16
    public let hashAlgorithmID: UInt16
    /// RSA: the signature; ECDSA: `r ‖ s`, each left-padded to the longer of the two.
    public let bytes: [UInt8]
}

/// The parts of a TPMT_PUBLIC used for an attestation key.
public struct TPMPublicArea: Sendable {
    public let key: PublicKey
    public let objectAttributes: UInt32
    public let nameAlgorithmID: UInt16
    public var isRestrictedSigningKey: Bool {
        objectAttributes & TPMConstant.attrRestricted != 0 && objectAttributes & TPMConstant.attrSign != 0
    }
}

enum TPMParse {
    static func malformed(_ message: String) -> Reason { Reason(.evidenceMalformed, "tpm.parse", message) }
    static func unsupported(_ message: String) -> Reason { Reason(.evidenceUnsupported, "tpm.parse", message) }

    /// Unmarshals with libtss2-mu, requiring the whole buffer to be consumed.
    static func unmarshal<T>(
        _ bytes: [UInt8], into value: inout T, what: String,
        _ fn: (UnsafePointer<UInt8>?, Int, UnsafeMutablePointer<Int>?, UnsafeMutablePointer<T>?) -> TSS2_RC
    )
        -> Reason?
    {
        // Cap: a marshaled structure is never larger than its C form; larger input is hostile.
        guard bytes.count <= MemoryLayout<T>.size else {
            return malformed("\(what) is \(bytes.count) bytes, too large")
        }
        var offset = 0
        let rc = bytes.withUnsafeBufferPointer { buf in fn(buf.baseAddress, buf.count, &offset, &value) }
        guard rc == 0 else { return malformed("\(what) does not unmarshal (\(Self.describe(rc)))") }
        guard offset == bytes.count else {
            return malformed("\(what) has \(bytes.count - offset) trailing bytes")
        }
        return nil
    }

    static func describe(_ rc: TSS2_RC) -> String {
        if let text = Tss2_RC_Decode(rc) { return String(cString: text) }
        return "0x" + String(rc, radix: 16)
    }

    static func quote(_ bytes: [UInt8]) -> Result<TPMQuoteInfo, Reason> {
        // The magic and type are checked before unmarshaling so that a non-quote is named as such.
        var r = ByteReader(bytes)
        guard let magic = r.u32be(), let type = r.u16be() else {
            return .failure(malformed("TPMS_ATTEST is truncated"))
        }
        guard magic == TPMConstant.generatedValue else {
            return .failure(malformed("TPMS_ATTEST magic is 0x\(String(magic, radix: 16)), not TPM_GENERATED_VALUE"))
        }
        guard type == TPMConstant.stAttestQuote else {
            return .failure(malformed("TPMS_ATTEST type is 0x\(String(type, radix: 16)), not TPM_ST_ATTEST_QUOTE"))
        }
        var attest = TPMS_ATTEST()
        if let reason = unmarshal(bytes, into: &attest, what: "TPMS_ATTEST", Tss2_MU_TPMS_ATTEST_Unmarshal) {
            return .failure(reason)
        }
        let info = attest.attested.quote
        var banks = [PCRSelection.Bank]()
        let selections = withUnsafeBytes(of: info.pcrSelect.pcrSelections) {
            Array($0.bindMemory(to: TPMS_PCR_SELECTION.self))
        }
        for sel in selections.prefix(Int(info.pcrSelect.count)) {
            let mask = tupleBytes(sel.pcrSelect, count: Int(sel.sizeofSelect))
            var indices = [Int]()
            for (byteIndex, byte) in mask.enumerated() {
                for bit in 0..<8 where byte & (1 << bit) != 0 { indices.append(byteIndex * 8 + bit) }
            }
            banks.append(.init(algorithmID: sel.hash, indices: indices))
        }
        return .success(
            TPMQuoteInfo(
                raw: bytes,
                qualifiedSigner: tupleBytes(attest.qualifiedSigner.name, count: Int(attest.qualifiedSigner.size)),
                extraData: tupleBytes(attest.extraData.buffer, count: Int(attest.extraData.size)),
                clock: attest.clockInfo.clock, resetCount: attest.clockInfo.resetCount,
                restartCount: attest.clockInfo.restartCount, safe: attest.clockInfo.safe != 0,
                firmwareVersion: attest.firmwareVersion, selection: PCRSelection(banks: banks),
                pcrDigest: tupleBytes(info.pcrDigest.buffer, count: Int(info.pcrDigest.size))))
    }

    static func signature(_ bytes: [UInt8]) -> Result<TPMSignature, Reason> {
        var sig = TPMT_SIGNATURE()
        if let reason = unmarshal(bytes, into: &sig, what: "TPMT_SIGNATURE", Tss2_MU_TPMT_SIGNATURE_Unmarshal) {
            return .failure(reason)
        }
        switch sig.sigAlg {
        case TPMConstant.algRSASSA:
            let s = sig.signature.rsassa
            return .success(
                TPMSignature(
                    algorithmID: sig.sigAlg, hashAlgorithmID: s.hash,
                    bytes: tupleBytes(s.sig.buffer, count: Int(s.sig.size))))
        case TPMConstant.algRSAPSS:
            let s = sig.signature.rsapss
            return .success(
                TPMSignature(
                    algorithmID: sig.sigAlg, hashAlgorithmID: s.hash,
                    bytes: tupleBytes(s.sig.buffer, count: Int(s.sig.size))))
        case TPMConstant.algECDSA:
            let s = sig.signature.ecdsa
            let r = tupleBytes(s.signatureR.buffer, count: Int(s.signatureR.size))
            let sv = tupleBytes(s.signatureS.buffer, count: Int(s.signatureS.size))
            let width = max(r.count, sv.count)
            let pad = { (v: [UInt8]) in [UInt8](repeating: 0, count: width - v.count) + v }
            return .success(TPMSignature(algorithmID: sig.sigAlg, hashAlgorithmID: s.hash, bytes: pad(r) + pad(sv)))
        default:
            return .failure(unsupported("signature algorithm 0x\(String(sig.sigAlg, radix: 16))"))
        }
    }

    static func publicArea(_ bytes: [UInt8]) -> Result<TPMPublicArea, Reason> {
        var pub = TPM2B_PUBLIC()
        if let reason = unmarshal(bytes, into: &pub, what: "TPM2B_PUBLIC", Tss2_MU_TPM2B_PUBLIC_Unmarshal) {
            return .failure(reason)
        }
        let area = pub.publicArea
        do throws(PublicKeyError) {
            let key: PublicKey
            switch area.type {
            case TPMConstant.algRSA:
                let n = tupleBytes(area.unique.rsa.buffer, count: Int(area.unique.rsa.size))
                let e = area.parameters.rsaDetail.exponent
                key = try PublicKey.cached(spkiDER: PublicKey.spki(rsaModulus: n, exponent: e == 0 ? 65537 : e))
            case TPMConstant.algECC:
                let curve: ECCurve
                switch area.parameters.eccDetail.curveID {
                case TPMConstant.curveP256: curve = .p256
                case TPMConstant.curveP384: curve = .p384
                case TPMConstant.curveP521: curve = .p521
                default:
                    return .failure(unsupported("ECC curve 0x\(String(area.parameters.eccDetail.curveID, radix: 16))"))
                }
                key = try PublicKey.cached(
                    spkiDER: PublicKey.spki(
                        curve: curve, x: tupleBytes(area.unique.ecc.x.buffer, count: Int(area.unique.ecc.x.size)),
                        y: tupleBytes(area.unique.ecc.y.buffer, count: Int(area.unique.ecc.y.size))))
            default:
                return .failure(unsupported("key type 0x\(String(area.type, radix: 16))"))
            }
            return .success(
                TPMPublicArea(key: key, objectAttributes: area.objectAttributes, nameAlgorithmID: area.nameAlg))
        } catch {
            switch error {
            case .unparsable(let s): return .failure(malformed("attestation key: \(s)"))
            case .unsupported(let s): return .failure(unsupported("attestation key: \(s)"))
            }
        }
    }
}
