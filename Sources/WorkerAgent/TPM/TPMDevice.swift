import AttestationCore
import CTSS2
import Foundation

/// A failed TPM operation, with the TSS response code decoded.
public struct TPMError: Error, CustomStringConvertible, Equatable {
    public let operation: String
    public let code: UInt32
    public let detail: String

    init(_ operation: String, _ rc: TSS2_RC) {
        self.operation = operation
        self.code = rc
        self.detail = Tss2_RC_Decode(rc).map { String(cString: $0) } ?? "0x\(String(rc, radix: 16))"
    }

    init(_ operation: String, message: String) {
        self.operation = operation
        self.code = 0
        self.detail = message
    }

    public var description: String { "TPM \(operation) failed: \(detail)" }
}

/// The attestation key algorithms the agent can create.
public enum AttestationKeyAlgorithm: String, Sendable, CaseIterable {
    case eccP256 = "ecc"
    case rsa2048 = "rsa"
}

/// A loaded attestation key. Its transient handle is flushed when the key is released, so no
/// TPM object slots leak (a TPM without a resource manager has only three).
public final class AttestationKey {
    let handle: ESYS_TR
    // Strong: the key must be flushed before its TPM connection closes.
    let device: TPMDevice
    /// TPM2B_PUBLIC bytes, as marshaled by the TPM.
    public let tpm2bPublic: Data
    public let algorithm: AttestationKeyAlgorithm

    init(handle: ESYS_TR, device: TPMDevice, tpm2bPublic: Data, algorithm: AttestationKeyAlgorithm) {
        self.handle = handle
        self.device = device
        self.tpm2bPublic = tpm2bPublic
        self.algorithm = algorithm
    }

    deinit { device.flush(handle) }
}

/// A TPM quote as the TPM produced it.
public struct TPMQuote: Sendable {
    /// TPMS_ATTEST bytes (the contents of TPM2B_ATTEST).
    public let attest: Data
    /// Marshaled TPMT_SIGNATURE.
    public let signature: Data
}

/// A connection to a TPM through the TSS Enhanced System API: a hardware TPM
/// (`device:/dev/tpmrm0`) or a software one (`swtpm:host=127.0.0.1,port=2321`).
///
/// Not thread-safe: an ESYS context serves one caller at a time. Owners serialize access.
public final class TPMDevice {
    private var tcti: OpaquePointer?
    private var context: OpaquePointer?
    public let tctiConfiguration: String

    /// Opens the TPM named by a TCTI configuration string (`name:conf`).
    public init(tcti configuration: String) throws(TPMError) {
        tctiConfiguration = configuration
        // The TSS libraries log every failure to stderr; errors are reported through TPMError
        // instead. An operator who wants the TSS trace sets TSS2_LOG themselves.
        setenv("TSS2_LOG", "all+NONE", 0)
        var tctiContext: OpaquePointer?
        let rc = Tss2_TctiLdr_Initialize(configuration, &tctiContext)
        guard rc == 0, let tctiContext else { throw TPMError("open '\(configuration)'", rc) }
        var esys: OpaquePointer?
        let rc2 = Esys_Initialize(&esys, tctiContext, nil)
        guard rc2 == 0, esys != nil else {
            var t: OpaquePointer? = tctiContext
            Tss2_TctiLdr_Finalize(&t)
            throw TPMError("initialize ESYS", rc2)
        }
        tcti = tctiContext
        context = esys
    }

    deinit {
        Esys_Finalize(&context)
        Tss2_TctiLdr_Finalize(&tcti)
    }

    func flush(_ handle: ESYS_TR) {
        _ = Esys_FlushContext(context, handle)
    }

    /// Creates an attestation key: a restricted signing primary key in the endorsement hierarchy.
    /// The TPM derives it from its endorsement seed, so the same TPM returns the same key each time.
    public func createAttestationKey(_ algorithm: AttestationKeyAlgorithm = .eccP256) throws(TPMError) -> AttestationKey
    {
        var template = TPM2B_PUBLIC()
        // fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | restricted | sign
        template.publicArea.objectAttributes = 0x2 | 0x10 | 0x20 | 0x40 | 0x1_0000 | 0x4_0000
        template.publicArea.nameAlg = HashAlgorithm.sha256.tpmAlgorithmID
        switch algorithm {
        case .eccP256:
            template.publicArea.type = 0x0023
            template.publicArea.parameters.eccDetail.symmetric.algorithm = 0x0010
            template.publicArea.parameters.eccDetail.scheme.scheme = 0x0018
            template.publicArea.parameters.eccDetail.scheme.details.ecdsa.hashAlg = HashAlgorithm.sha256.tpmAlgorithmID
            template.publicArea.parameters.eccDetail.curveID = 0x0003
            template.publicArea.parameters.eccDetail.kdf.scheme = 0x0010
        case .rsa2048:
            template.publicArea.type = 0x0001
            template.publicArea.parameters.rsaDetail.symmetric.algorithm = 0x0010
            template.publicArea.parameters.rsaDetail.scheme.scheme = 0x0014
            template.publicArea.parameters.rsaDetail.scheme.details.rsassa.hashAlg = HashAlgorithm.sha256.tpmAlgorithmID
            template.publicArea.parameters.rsaDetail.keyBits = 2048
            template.publicArea.parameters.rsaDetail.exponent = 0
        }
        var sensitive = TPM2B_SENSITIVE_CREATE()
        var outsideInfo = TPM2B_DATA()
        var creationPCR = TPML_PCR_SELECTION()
        var handle: ESYS_TR = ESYS_TR(ESYS_TR_NONE)
        var outPublic: UnsafeMutablePointer<TPM2B_PUBLIC>?
        var creationData: UnsafeMutablePointer<TPM2B_CREATION_DATA>?
        var creationHash: UnsafeMutablePointer<TPM2B_DIGEST>?
        var creationTicket: UnsafeMutablePointer<TPMT_TK_CREATION>?
        let rc = Esys_CreatePrimary(
            context, ESYS_TR(ESYS_TR_RH_ENDORSEMENT), ESYS_TR(ESYS_TR_PASSWORD), ESYS_TR(ESYS_TR_NONE),
            ESYS_TR(ESYS_TR_NONE), &sensitive, &template, &outsideInfo, &creationPCR, &handle, &outPublic,
            &creationData, &creationHash, &creationTicket)
        defer {
            Esys_Free(outPublic)
            Esys_Free(creationData)
            Esys_Free(creationHash)
            Esys_Free(creationTicket)
        }
        guard rc == 0, let outPublic else { throw TPMError("create attestation key", rc) }
        var buffer = [UInt8](repeating: 0, count: MemoryLayout<TPM2B_PUBLIC>.size)
        var offset = 0
        let mrc = Tss2_MU_TPM2B_PUBLIC_Marshal(outPublic, &buffer, buffer.count, &offset)
        guard mrc == 0 else {
            flush(handle)
            throw TPMError("marshal attestation key", mrc)
        }
        return AttestationKey(handle: handle, device: self, tpm2bPublic: Data(buffer[0..<offset]), algorithm: algorithm)
    }

    /// Extends `pcr` in each bank with the digest given for it.
    public func extend(pcr: Int, digests: [HashAlgorithm: Data]) throws(TPMError) {
        guard (0..<24).contains(pcr) else { throw TPMError("extend", message: "PCR \(pcr) out of range") }
        var values = TPML_DIGEST_VALUES()
        var list = [TPMT_HA]()
        for (alg, digest) in digests.sorted(by: { $0.key.tpmAlgorithmID < $1.key.tpmAlgorithmID }) {
            guard digest.count == alg.digestSize else {
                throw TPMError("extend", message: "\(alg.rawValue) digest is \(digest.count) bytes")
            }
            var ha = TPMT_HA()
            ha.hashAlg = alg.tpmAlgorithmID
            withUnsafeMutableBytes(of: &ha.digest) { $0.copyBytes(from: digest) }
            list.append(ha)
        }
        values.count = UInt32(list.count)
        withUnsafeMutableBytes(of: &values.digests) { raw in
            let typed = raw.bindMemory(to: TPMT_HA.self)
            for (i, ha) in list.enumerated() { typed[i] = ha }
        }
        let rc = Esys_PCR_Extend(
            context, ESYS_TR(ESYS_TR_PCR0) + ESYS_TR(pcr), ESYS_TR(ESYS_TR_PASSWORD),
            ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), &values)
        guard rc == 0 else { throw TPMError("extend PCR \(pcr)", rc) }
    }

    /// Resets a resettable PCR (16 and 23 at locality 0) to zero.
    public func reset(pcr: Int) throws(TPMError) {
        let rc = Esys_PCR_Reset(
            context, ESYS_TR(ESYS_TR_PCR0) + ESYS_TR(pcr), ESYS_TR(ESYS_TR_PASSWORD),
            ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE))
        guard rc == 0 else { throw TPMError("reset PCR \(pcr)", rc) }
    }

    static func selection(bank: HashAlgorithm, indices: [Int]) -> TPML_PCR_SELECTION {
        var sel = TPML_PCR_SELECTION()
        sel.count = 1
        var mask: [UInt8] = [0, 0, 0, 0]
        for i in indices where (0..<24).contains(i) { mask[i / 8] |= 1 << (i % 8) }
        sel.pcrSelections.0 = TPMS_PCR_SELECTION(
            hash: bank.tpmAlgorithmID, sizeofSelect: 3,
            pcrSelect: (mask[0], mask[1], mask[2], mask[3]))
        return sel
    }

    /// Reads PCR values of one bank.
    public func readPCRs(bank: HashAlgorithm, indices: [Int]) throws(TPMError) -> [Int: Data] {
        var result = [Int: Data]()
        var pending = Array(Set(indices)).sorted()
        // The TPM returns at most eight digests per call; ask again for the rest.
        while !pending.isEmpty {
            var selection = Self.selection(bank: bank, indices: pending)
            var counter: UInt32 = 0
            var selectionOut: UnsafeMutablePointer<TPML_PCR_SELECTION>?
            var values: UnsafeMutablePointer<TPML_DIGEST>?
            let rc = Esys_PCR_Read(
                context, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE),
                &selection, &counter, &selectionOut, &values)
            defer {
                Esys_Free(selectionOut)
                Esys_Free(values)
            }
            guard rc == 0, let selectionOut, let values else { throw TPMError("read PCRs", rc) }
            let mask = withUnsafeBytes(of: selectionOut.pointee.pcrSelections.0.pcrSelect) { Array($0) }
            var returned = [Int]()
            for i in 0..<24 where selectionOut.pointee.count > 0 && mask[i / 8] & (1 << (i % 8)) != 0 {
                returned.append(i)
            }
            let digests = withUnsafeBytes(of: values.pointee.digests) { Array($0.bindMemory(to: TPM2B_DIGEST.self)) }
            guard !returned.isEmpty, returned.count == Int(values.pointee.count) else {
                throw TPMError("read PCRs", message: "the TPM returned no values for \(bank.rawValue) \(pending)")
            }
            for (i, index) in returned.enumerated() {
                let d = digests[i]
                result[index] = withUnsafeBytes(of: d.buffer) { Data($0.prefix(Int(d.size))) }
            }
            pending.removeAll { returned.contains($0) }
        }
        return result
    }

    /// Quotes the selected PCRs of one bank with `key`, binding `qualifyingData` (at most 64 bytes).
    public func quote(key: AttestationKey, qualifyingData: Data, bank: HashAlgorithm, indices: [Int]) throws(TPMError)
        -> TPMQuote
    {
        guard qualifyingData.count <= 64 else {
            throw TPMError("quote", message: "qualifying data longer than 64 bytes")
        }
        var data = TPM2B_DATA()
        data.size = UInt16(qualifyingData.count)
        withUnsafeMutableBytes(of: &data.buffer) { $0.copyBytes(from: qualifyingData) }
        var scheme = TPMT_SIG_SCHEME()
        scheme.scheme = 0x0010  // TPM_ALG_NULL: the key's own scheme
        var selection = Self.selection(bank: bank, indices: indices)
        var quoted: UnsafeMutablePointer<TPM2B_ATTEST>?
        var signature: UnsafeMutablePointer<TPMT_SIGNATURE>?
        let rc = Esys_Quote(
            context, key.handle, ESYS_TR(ESYS_TR_PASSWORD), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE),
            &data, &scheme, &selection, &quoted, &signature)
        defer {
            Esys_Free(quoted)
            Esys_Free(signature)
        }
        guard rc == 0, let quoted, let signature else { throw TPMError("quote", rc) }
        let attest = withUnsafeBytes(of: quoted.pointee.attestationData) { Data($0.prefix(Int(quoted.pointee.size))) }
        var buffer = [UInt8](repeating: 0, count: MemoryLayout<TPMT_SIGNATURE>.size)
        var offset = 0
        let mrc = Tss2_MU_TPMT_SIGNATURE_Marshal(signature, &buffer, buffer.count, &offset)
        guard mrc == 0 else { throw TPMError("marshal signature", mrc) }
        return TPMQuote(attest: attest, signature: Data(buffer[0..<offset]))
    }
}
