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
        let (handle, tpm2bPublic) = try createPrimary(template, what: "attestation key")
        return AttestationKey(handle: handle, device: self, tpm2bPublic: tpm2bPublic, algorithm: algorithm)
    }

    /// A primary key in the endorsement hierarchy from `template`: its handle (the caller
    /// flushes it) and its TPM2B_PUBLIC as the TPM marshals it.
    func createPrimary(_ template: TPM2B_PUBLIC, what: String) throws(TPMError) -> (ESYS_TR, Data) {
        var template = template
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
        guard rc == 0, let outPublic else { throw TPMError("create \(what)", rc) }
        var buffer = [UInt8](repeating: 0, count: MemoryLayout<TPM2B_PUBLIC>.size)
        var offset = 0
        let mrc = Tss2_MU_TPM2B_PUBLIC_Marshal(outPublic, &buffer, buffer.count, &offset)
        guard mrc == 0 else {
            flush(handle)
            throw TPMError("marshal \(what)", mrc)
        }
        return (handle, Data(buffer[0..<offset]))
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

/// The endorsement key: the TPM's manufacturer-certified identity, recreated from the TCG
/// default template (EK Credential Profile, template L-1: RSA-2048, AES-128-CFB, policy
/// PolicySecret(TPM_RH_ENDORSEMENT)), which gives the key the EK certificate certifies.
extension TPMDevice {
    /// NV index of the RSA-2048 EK certificate (TCG EK Credential Profile).
    public static let rsaEKCertificateIndex: UInt32 = 0x01c0_0002

    static func endorsementTemplate() -> TPM2B_PUBLIC {
        var template = TPM2B_PUBLIC()
        template.publicArea.type = 0x0001
        template.publicArea.nameAlg = HashAlgorithm.sha256.tpmAlgorithmID
        // fixedTPM | fixedParent | sensitiveDataOrigin | adminWithPolicy | restricted | decrypt
        template.publicArea.objectAttributes = 0x0003_00b2
        let policy: [UInt8] = [
            0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24,
            0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa,
        ]
        template.publicArea.authPolicy.size = UInt16(policy.count)
        withUnsafeMutableBytes(of: &template.publicArea.authPolicy.buffer) { $0.copyBytes(from: policy) }
        template.publicArea.parameters.rsaDetail.symmetric.algorithm = 0x0006
        template.publicArea.parameters.rsaDetail.symmetric.keyBits.aes = 128
        template.publicArea.parameters.rsaDetail.symmetric.mode.aes = 0x0043
        template.publicArea.parameters.rsaDetail.scheme.scheme = 0x0010
        template.publicArea.parameters.rsaDetail.keyBits = 2048
        template.publicArea.parameters.rsaDetail.exponent = 0
        template.publicArea.unique.rsa.size = 256
        return template
    }

    /// Creates the EK in the endorsement hierarchy; returns its handle (to flush) and TPM2B_PUBLIC.
    func createEndorsementKey() throws(TPMError) -> (ESYS_TR, Data) {
        try createPrimary(Self.endorsementTemplate(), what: "endorsement key")
    }

    /// The EK's TPM2B_PUBLIC.
    public func endorsementKeyPublic() throws(TPMError) -> Data {
        let (handle, bytes) = try createEndorsementKey()
        flush(handle)
        return bytes
    }

    /// The contents of an NV index (the EK certificate), read in chunks the TPM accepts; nil when
    /// the index is not defined.
    public func readNV(index: UInt32) throws(TPMError) -> Data? {
        var nvHandle: ESYS_TR = ESYS_TR(ESYS_TR_NONE)
        let rc = Esys_TR_FromTPMPublic(
            context, TPM2_HANDLE(index), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE),
            &nvHandle)
        guard rc == 0 else { return nil }
        defer { _ = Esys_TR_Close(context, &nvHandle) }
        var nvPublic: UnsafeMutablePointer<TPM2B_NV_PUBLIC>?
        var nvName: UnsafeMutablePointer<TPM2B_NAME>?
        let prc = Esys_NV_ReadPublic(
            context, nvHandle, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), &nvPublic, &nvName)
        defer {
            Esys_Free(nvPublic)
            Esys_Free(nvName)
        }
        guard prc == 0, let nvPublic else { throw TPMError("read NV index public area", prc) }
        let size = Int(nvPublic.pointee.nvPublic.dataSize)
        var contents = Data()
        while contents.count < size {
            let chunk = min(512, size - contents.count)
            var data: UnsafeMutablePointer<TPM2B_MAX_NV_BUFFER>?
            // The index authorizes its own reads (TPMA_NV_AUTHREAD, empty auth).
            let readRC = Esys_NV_Read(
                context, nvHandle, nvHandle, ESYS_TR(ESYS_TR_PASSWORD), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE),
                UInt16(chunk), UInt16(contents.count), &data)
            defer { Esys_Free(data) }
            guard readRC == 0, let data else { throw TPMError("read NV index 0x\(String(index, radix: 16))", readRC) }
            contents.append(withUnsafeBytes(of: data.pointee.buffer) { Data($0.prefix(Int(data.pointee.size))) })
            if data.pointee.size == 0 { break }
        }
        return contents
    }

    /// TPM2_ActivateCredential: recovers the secret of a credential made for `key`'s Name and
    /// wrapped to this TPM's EK. The TPM refuses when `key` is not the object the credential
    /// names, which is what proves the AK lives here.
    public func activateCredential(key: AttestationKey, credentialBlob: Data, encryptedSecret: Data) throws(TPMError)
        -> Data
    {
        var blob = TPM2B_ID_OBJECT()
        var secret = TPM2B_ENCRYPTED_SECRET()
        var offset = 0
        let blobRC = [UInt8](credentialBlob).withUnsafeBufferPointer {
            Tss2_MU_TPM2B_ID_OBJECT_Unmarshal($0.baseAddress, $0.count, &offset, &blob)
        }
        guard blobRC == 0, offset == credentialBlob.count else { throw TPMError("read credential blob", blobRC) }
        offset = 0
        let secretRC = [UInt8](encryptedSecret).withUnsafeBufferPointer {
            Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal($0.baseAddress, $0.count, &offset, &secret)
        }
        guard secretRC == 0, offset == encryptedSecret.count else {
            throw TPMError("read encrypted secret", secretRC)
        }
        let (ek, _) = try createEndorsementKey()
        defer { flush(ek) }
        let session = try endorsementPolicySession()
        defer { flush(session) }
        var certInfo: UnsafeMutablePointer<TPM2B_DIGEST>?
        let rc = Esys_ActivateCredential(
            context, key.handle, ek, ESYS_TR(ESYS_TR_PASSWORD), session, ESYS_TR(ESYS_TR_NONE), &blob, &secret,
            &certInfo)
        defer { Esys_Free(certInfo) }
        guard rc == 0, let certInfo else { throw TPMError("activate credential", rc) }
        return withUnsafeBytes(of: certInfo.pointee.buffer) { Data($0.prefix(Int(certInfo.pointee.size))) }
    }

    /// A policy session satisfying the EK's policy, PolicySecret(TPM_RH_ENDORSEMENT).
    func endorsementPolicySession() throws(TPMError) -> ESYS_TR {
        var session: ESYS_TR = ESYS_TR(ESYS_TR_NONE)
        var symmetric = TPMT_SYM_DEF()
        symmetric.algorithm = 0x0010
        let rc = Esys_StartAuthSession(
            context, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE),
            ESYS_TR(ESYS_TR_NONE), nil, TPM2_SE(0x01), &symmetric, HashAlgorithm.sha256.tpmAlgorithmID, &session)
        guard rc == 0 else { throw TPMError("start policy session", rc) }
        var timeout: UnsafeMutablePointer<TPM2B_TIMEOUT>?
        var ticket: UnsafeMutablePointer<TPMT_TK_AUTH>?
        let prc = Esys_PolicySecret(
            context, ESYS_TR(ESYS_TR_RH_ENDORSEMENT), session, ESYS_TR(ESYS_TR_PASSWORD), ESYS_TR(ESYS_TR_NONE),
            ESYS_TR(ESYS_TR_NONE), nil, nil, nil, 0, &timeout, &ticket)
        Esys_Free(timeout)
        Esys_Free(ticket)
        guard prc == 0 else {
            flush(session)
            throw TPMError("satisfy the endorsement policy", prc)
        }
        return session
    }
}
