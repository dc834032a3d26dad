import AttestationCore
import EventLog
import Foundation

/// Verifies `tpm2-quote` evidence: a TPMS_ATTEST quote, its signature under an attestation key,
/// the freshness value, the quoted PCR digest against the supplied PCR values, and any TCG
/// firmware event log and IMA `ima-ng` runtime log against the quoted PCRs.
///
/// The algorithm is fixed and runs in this order, so the first reason is stable:
/// parse → signature algorithm → signature → nonce → PCR digest → event log → IMA log.
/// It never throws for bad evidence and never reads the clock: bad evidence is a reject.
///
/// Threats covered: forged quotes (signature under the AK), replayed quotes (nonce in
/// `extraData`), PCR values swapped after quoting (PCR digest), and logs that lie about what was
/// measured (replay to the quoted values). Whether the AK is a key inside a genuine TPM is
/// established as facts for the policy to judge (`evidence.tpm.ak_trust`): the AK's attributes
/// and Name, the EK certificate's chain to a pinned manufacturer root, and credential activation
/// (live in the gateway, or a record signed by a trusted gateway).
public struct TPMQuoteVerifier: Sendable {
    public static let format = "tpm2-quote"

    public struct Options: Sendable, Equatable {
        /// SHA-1 signatures and PCR banks are collision-prone; accepted only when a policy says so.
        public var allowSHA1: Bool
        /// Require the AK to be a restricted signing key (a key the TPM only lets sign TPM-made
        /// structures). Off by default: real-world AKs in the vectors are presented as bare SPKIs.
        public var requireRestrictedAK: Bool
        /// DER certificates that anchor EK certificate chains (the pinned TPM manufacturer roots
        /// and any added for a test PKI).
        public var ekRoots: [Data]
        /// How credential activation is known to have happened.
        public var activation: AKActivation

        public init(
            allowSHA1: Bool = false, requireRestrictedAK: Bool = false, ekRoots: [Data] = [],
            activation: AKActivation = .records(trustedKeys: [])
        ) {
            self.allowSHA1 = allowSHA1
            self.requireRestrictedAK = requireRestrictedAK
            self.ekRoots = ekRoots
            self.activation = activation
        }
    }

    public let options: Options

    public init(options: Options = Options()) { self.options = options }

    /// Verifies an envelope. `expectedNonce` nil skips the freshness check (hand verification of
    /// a file); the gateway always passes one. `time` is the instant of verification.
    ///
    /// The steps, in the documented order. Reading the evidence, the AK's attributes and the
    /// signature algorithm reject at once; the signature and the nonce collect their reasons; an
    /// unusable PCR selection then rejects with what was collected so far; the PCR digest and the
    /// log replays collect theirs before the verdict.
    public func verify(_ envelope: EvidenceEnvelope, expectedNonce: Data?, at time: Date) -> Verdict {
        var run = TPMRun(options: options)
        guard let evidence = run.fatal({ try $0.read(envelope) }),
            run.fatal({ try $0.checkAKAttributes(evidence) }) != nil,
            let algorithm = run.fatal({ try $0.signatureScheme(evidence) })
        else { return run.verdict() }
        let (hash, scheme) = algorithm
        run.checkSignature(evidence, scheme)
        run.checkNonce(evidence, expectedNonce)
        let identity = run.identity(evidence, at: time)
        guard let quoted = run.fatal({ try $0.quotedPCRs(evidence, hash) }) else { return run.verdict() }
        let bootReplayed = run.replayEventLog(evidence, quoted)
        let measured = run.replayIMA(evidence, quoted)
        var facts = identity
        // PCRs 0–7 of one bank all replayed from the firmware log: what a measured-boot tier needs.
        if bootReplayed { facts["tpm.boot_pcrs"] = "replayed" }
        if evidence.imaLog != nil { facts["ima.violations"] = String(run.violations) }
        return run.verdict(claims: Self.claims(evidence, scheme, quoted, measured, facts))
    }

    static func claims(
        _ evidence: TPMEvidence, _ scheme: SignatureScheme, _ quoted: [String: [Int: Data]], _ measured: [MeasuredFile],
        _ identity: [String: String]
    )
        -> VerifiedClaims
    {
        var fields: [String: String] = [
            "ak.sha256": evidence.ak.key.fingerprint,
            "ak.type": evidence.ak.key.kind.description,
            "signature.scheme": scheme.description,
            "tpm.clock": String(evidence.quote.clock),
            "tpm.reset_count": String(evidence.quote.resetCount),
            "tpm.restart_count": String(evidence.quote.restartCount),
            "tpm.safe": String(evidence.quote.safe),
            // 16 hex digits, most significant first.
            "tpm.firmware_version": withUnsafeBytes(of: evidence.quote.firmwareVersion.bigEndian) { $0.hexString },
            "extra_data": Data(evidence.quote.extraData).hex,
        ]
        if let restricted = evidence.ak.restricted { fields["ak.restricted"] = String(restricted) }
        fields.merge(identity) { a, _ in a }
        return VerifiedClaims(pcrs: quoted.mapValues { $0.mapValues(\.hex) }, measuredFiles: measured, fields: fields)
    }

    /// Parses and verifies envelope bytes.
    public func verify(envelopeData: Data, expectedNonce: Data?, at time: Date) -> Verdict {
        switch EvidenceEnvelope.parse(envelopeData) {
        case .success(let envelope): verify(envelope, expectedNonce: expectedNonce, at: time)
        case .failure(let reason): .reject(format: Self.format, reasons: [reason])
        }
    }
}

/// The decoded contents of a `tpm2-quote` envelope.
struct TPMEvidence {
    struct AttestationKey {
        let key: PublicKey
        /// Known only when the AK came as a TPM2B_PUBLIC.
        let restricted: Bool?
        /// The AK's Name and attributes; only when it came as a TPM2B_PUBLIC.
        var identity: TPMKeyIdentity? = nil
    }

    /// The TPM's endorsement key and what vouches for it.
    struct Endorsement {
        let ek: TPMKeyIdentity
        let certificate: Data?
        let intermediates: Data?
    }

    let ak: AttestationKey
    let quote: TPMQuoteInfo
    let signature: TPMSignature
    let pcrs: [HashAlgorithm: [Int: Data]]
    let eventLog: TCGEventLog?
    let imaLog: IMALog?
    let endorsement: Endorsement?
    let activation: [String: String]?

    static func read(_ envelope: EvidenceEnvelope) -> Result<TPMEvidence, Reason> {
        Result { () throws(Reason) -> TPMEvidence in
            let ak = try readAK(envelope)
            let quote = try TPMParse.quote([UInt8](envelope.base64("quote").get())).get()
            let signature = try TPMParse.signature([UInt8](envelope.base64("signature").get())).get()
            let pcrs = try readPCRs(envelope)
            var eventLog: TCGEventLog?
            if let bytes = try envelope.optionalBase64("event_log").get() {
                do throws(TCGEventLog.ParseError) { eventLog = try TCGEventLog.parse(bytes) } catch {
                    throw Reason(.evidenceMalformed, "tpm.eventlog", error.description)
                }
            }
            var imaLog: IMALog?
            if let bytes = try envelope.optionalBase64("ima_log").get() {
                do throws(IMALog.ParseError) { imaLog = try IMALog.parse(bytes) } catch {
                    if case .unsupportedTemplate = error {
                        throw Reason(.evidenceUnsupported, "tpm.ima", error.description)
                    }
                    throw Reason(.evidenceMalformed, "tpm.ima", error.description)
                }
            }
            return TPMEvidence(
                ak: ak, quote: quote, signature: signature, pcrs: pcrs, eventLog: eventLog, imaLog: imaLog,
                endorsement: try readEndorsement(envelope), activation: try envelope.stringObject("activation").get())
        }
    }

    private static func readAK(_ envelope: EvidenceEnvelope) throws(Reason) -> AttestationKey {
        let spki = try envelope.optionalBase64("ak_public").get()
        let tpm2b = try envelope.optionalBase64("ak_tpm2b_public").get()
        switch (spki, tpm2b) {
        case (let der?, nil):
            do throws(PublicKeyError) {
                return AttestationKey(key: try PublicKey.cached(spkiDER: der), restricted: nil)
            } catch {
                switch error {
                case .unparsable(let s): throw TPMParse.malformed("ak_public: \(s)")
                case .unsupported(let s): throw TPMParse.unsupported("ak_public: \(s)")
                }
            }
        case (nil, let bytes?):
            let identity = try TPMKeyIdentity.parse([UInt8](bytes)).get()
            return AttestationKey(
                key: identity.area.key, restricted: identity.area.isRestrictedSigningKey, identity: identity)
        case (nil, nil):
            throw TPMParse.malformed("neither ak_public nor ak_tpm2b_public is present")
        case (.some, .some):
            throw TPMParse.malformed("both ak_public and ak_tpm2b_public are present")
        }
    }

    /// `ek_public` (TPM2B_PUBLIC), with `ek_certificate` (DER) and `ek_chain` (concatenated DER
    /// intermediates) when present. Certificates without an EK are malformed.
    private static func readEndorsement(_ envelope: EvidenceEnvelope) throws(Reason) -> Endorsement? {
        let certificate = try envelope.optionalBase64("ek_certificate").get()
        let chain = try envelope.optionalBase64("ek_chain").get()
        guard let ekBytes = try envelope.optionalBase64("ek_public").get() else {
            if certificate != nil || chain != nil {
                throw TPMParse.malformed("ek_certificate or ek_chain without ek_public")
            }
            return nil
        }
        return Endorsement(
            ek: try TPMKeyIdentity.parse([UInt8](ekBytes)).get(), certificate: certificate, intermediates: chain)
    }

    /// Bounds: 24 PCRs per bank in a PC Client TPM; indices beyond that are refused.
    private static func readPCRs(_ envelope: EvidenceEnvelope) throws(Reason) -> [HashAlgorithm: [Int: Data]] {
        guard let table = try envelope.stringTable("pcrs").get() else {
            throw TPMParse.malformed("missing field 'pcrs'")
        }
        var pcrs = [HashAlgorithm: [Int: Data]]()
        for (bankName, values) in table {
            guard let bank = HashAlgorithm(rawValue: bankName) else {
                throw TPMParse.unsupported("PCR bank '\(bankName)'")
            }
            for (indexText, hexValue) in values {
                guard let index = Int(indexText), (0..<32).contains(index), String(index) == indexText else {
                    throw TPMParse.malformed("PCR index '\(indexText)' in bank \(bankName)")
                }
                guard let value = Data(hex: hexValue), value.count == bank.digestSize else {
                    throw TPMParse.malformed("\(bankName) PCR \(index) is not a \(bank.digestSize)-byte hex value")
                }
                pcrs[bank, default: [:]][index] = value
            }
        }
        return pcrs
    }
}

/// One TPM quote verification: the trace so far, the reasons collected, and the steps.
private struct TPMRun {
    let options: TPMQuoteVerifier.Options
    var passed = [String]()
    var reasons = [Reason]()
    /// IMA entries that are violations (files measured while open for writing).
    var violations = 0

    init(options: TPMQuoteVerifier.Options) { self.options = options }

    /// Runs a step that ends verification when it fails.
    mutating func fatal<T>(_ step: (inout TPMRun) throws -> T) -> T? {
        do { return try step(&self) } catch {
            // Steps throw only reasons.
            reasons.append(error as? Reason ?? Reason(.evidenceMalformed, "tpm", "\(error)"))
            return nil
        }
    }

    func verdict(claims: VerifiedClaims? = nil) -> Verdict {
        guard reasons.isEmpty, let claims else {
            return .reject(format: TPMQuoteVerifier.format, reasons: reasons, passed: passed)
        }
        return .accept(format: TPMQuoteVerifier.format, claims: claims, passed: passed)
    }

    /// Envelope format and version, then the TPM structures.
    mutating func read(_ envelope: EvidenceEnvelope) throws(Reason) -> TPMEvidence {
        guard envelope.format == TPMQuoteVerifier.format else {
            throw Reason(
                .evidenceUnsupported, "tpm.envelope", "format '\(envelope.format)' is not \(TPMQuoteVerifier.format)")
        }
        guard envelope.version == 1 else {
            throw Reason(
                .evidenceMalformed, "tpm.envelope", "unknown \(TPMQuoteVerifier.format) version \(envelope.version)")
        }
        switch TPMEvidence.read(envelope) {
        case .success(let evidence):
            passed.append("parsed: TPMS_ATTEST quote, TPMT_SIGNATURE, \(evidence.ak.key.kind) attestation key")
            return evidence
        case .failure(let reason): throw reason
        }
    }

    func checkAKAttributes(_ evidence: TPMEvidence) throws(Reason) {
        if options.requireRestrictedAK, let restricted = evidence.ak.restricted, !restricted {
            throw Reason(.evidenceUnsupported, "tpm.ak", "the attestation key is not a restricted signing key")
        }
    }

    /// The signature's hash (SHA-1 only when allowed) and scheme.
    func signatureScheme(_ evidence: TPMEvidence) throws(Reason) -> (HashAlgorithm, SignatureScheme) {
        let sig = evidence.signature
        guard let hash = HashAlgorithm(tpmAlgorithmID: sig.hashAlgorithmID) else {
            throw TPMParse.unsupported("signature hash algorithm 0x\(String(sig.hashAlgorithmID, radix: 16))")
        }
        if hash == .sha1, !options.allowSHA1 {
            throw Reason(.evidenceUnsupported, "tpm.signature", "SHA-1 quote signatures are not allowed by policy")
        }
        switch sig.algorithmID {
        case TPMConstant.algRSASSA: return (hash, .rsassaPKCS1v15(hash))
        case TPMConstant.algRSAPSS: return (hash, .rsaPSS(hash))
        default: return (hash, .ecdsa(hash))
        }
    }

    /// The signature over the exact TPMS_ATTEST bytes.
    mutating func checkSignature(_ evidence: TPMEvidence, _ scheme: SignatureScheme) {
        if evidence.ak.key.verify(signature: evidence.signature.bytes, message: evidence.quote.raw, scheme: scheme) {
            passed.append("signature: \(scheme) verifies under AK \(evidence.ak.key.fingerprint.prefix(16))…")
        } else {
            reasons.append(
                Reason(
                    .quoteSignatureInvalid, "tpm.signature",
                    "\(scheme) signature does not verify under the \(evidence.ak.key.kind) attestation key"))
        }
    }

    /// Freshness: `extraData` is the expected value.
    mutating func checkNonce(_ evidence: TPMEvidence, _ expectedNonce: Data?) {
        guard let expectedNonce else {
            passed.append("nonce: not checked (no expected value given)")
            return
        }
        if Data(evidence.quote.extraData) == expectedNonce {
            passed.append("nonce: extraData matches the expected \(expectedNonce.count)-byte value")
        } else {
            reasons.append(
                Reason(
                    .nonceMismatch, "tpm.nonce",
                    "extraData \(Data(evidence.quote.extraData).hex) ≠ expected \(expectedNonce.hex)"))
        }
    }

    /// The facts about the AK's identity (never a reject: the policy judges them): `ak.name`,
    /// `ak.tpm_key` (TPM-resident restricted signing attributes), `ek.sha256`, `ek.certificate`
    /// (`verified`, `untrusted`, `invalid`, `absent`) with `ek.certificate.detail` and
    /// `ek.root`, and `ak.activation` (`live`, `record`, `none`) with its detail.
    mutating func identity(_ evidence: TPMEvidence, at time: Date) -> [String: String] {
        var facts = ["ak.tpm_key": "false", "ek.certificate": "absent", "ak.activation": "none"]
        guard let ak = evidence.ak.identity else {
            facts["ak.detail"] = "the attestation key is a bare public key, not a TPM2B_PUBLIC"
            return facts
        }
        facts["ak.name"] = ak.name.hex
        if let problem = ak.attestationKeyProblem { facts["ak.detail"] = problem } else { facts["ak.tpm_key"] = "true" }
        guard let endorsement = evidence.endorsement else { return facts }
        let ekSHA256 = endorsement.ek.area.key.fingerprint
        facts["ek.sha256"] = ekSHA256
        if let certificate = endorsement.certificate {
            switch EKCertificate.verify(
                certificate: certificate, intermediates: endorsement.intermediates, ek: endorsement.ek.area.key,
                roots: options.ekRoots)
            {
            case .verified(let root):
                facts["ek.certificate"] = "verified"
                facts["ek.root"] = root
                passed.append("ek certificate: chains to pinned root \(root.prefix(16))…")
            case .untrusted(let why):
                facts["ek.certificate"] = "untrusted"
                facts["ek.certificate.detail"] = why
            case .invalid(let why):
                facts["ek.certificate"] = "invalid"
                facts["ek.certificate.detail"] = why
            }
        }
        let (activation, detail) = activationFact(evidence, akName: ak.name, ekSHA256: ekSHA256)
        facts["ak.activation"] = activation
        if let detail { facts["ak.activation.detail"] = detail }
        return facts
    }

    func activationFact(_ evidence: TPMEvidence, akName: Data, ekSHA256: String) -> (String, String?) {
        switch options.activation {
        case .live(let name, let ek):
            guard name == akName, ek == ekSHA256 else {
                return ("none", "the credential activation this session relies on was for another AK or EK")
            }
            return ("live", nil)
        case .records(let trusted):
            guard let fields = evidence.activation else { return ("none", "no activation record") }
            guard let record = ActivationRecord(fields: fields) else { return ("none", "malformed activation record") }
            guard record.akName == akName, record.ekSHA256 == ekSHA256 else {
                return ("none", "the activation record names another AK or EK")
            }
            guard record.gatewayID == record.key.fingerprint else {
                return ("none", "the activation record's gateway id is not its key's")
            }
            guard trusted.contains(record.key) else {
                return (
                    "none", "the activation record is signed by an untrusted key \(record.key.fingerprint.prefix(16))…"
                )
            }
            guard record.isValidlySigned else { return ("none", "the activation record's signature does not verify") }
            return ("record", "activated by gateway \(record.gatewayID) at \(record.time.rfc3339)")
        }
    }

    /// The supplied PCR values the quote selects, and their digest against the quoted one.
    mutating func quotedPCRs(_ evidence: TPMEvidence, _ hash: HashAlgorithm) throws(Reason) -> [String: [Int: Data]] {
        var quoted = [String: [Int: Data]]()
        var concatenated = Data()
        for bank in evidence.quote.selection.banks where !bank.indices.isEmpty {
            guard let bankHash = HashAlgorithm(tpmAlgorithmID: bank.algorithmID) else {
                throw TPMParse.unsupported("PCR bank 0x\(String(bank.algorithmID, radix: 16))")
            }
            if bankHash == .sha1, !options.allowSHA1 {
                throw Reason(.evidenceUnsupported, "tpm.pcrs", "SHA-1 PCR banks are not allowed by policy")
            }
            for index in bank.indices {
                guard let value = evidence.pcrs[bankHash]?[index] else {
                    throw Reason(
                        .evidenceMalformed, "tpm.pcrs",
                        "the quote selects \(bankHash.rawValue) PCR \(index) but no value is supplied")
                }
                quoted[bankHash.rawValue, default: [:]][index] = value
                concatenated.append(value)
            }
        }
        if hash.hash(concatenated) == Data(evidence.quote.pcrDigest) {
            passed.append("pcr digest: matches \(quoted.values.map(\.count).reduce(0, +)) supplied PCR values")
        } else {
            reasons.append(
                Reason(.pcrDigestMismatch, "tpm.pcrs", "the quoted PCR digest does not match the supplied PCR values"))
        }
        return quoted
    }

    /// The firmware event log replays to the quoted PCRs it touches. Returns whether PCRs 0–7 of
    /// one bank were all replayed and matched (the boot chain is known, not only some registers).
    @discardableResult
    mutating func replayEventLog(_ evidence: TPMEvidence, _ quoted: [String: [Int: Data]]) -> Bool {
        guard let log = evidence.eventLog else { return false }
        var compared = 0
        var bootBanks = [String: Set<Int>]()
        var mismatches = [String]()
        let replayed = log.replay()
        for (bank, values) in replayed {
            for (index, value) in values.sorted(by: { $0.key < $1.key }) {
                guard let quotedValue = quoted[bank.rawValue]?[index] else { continue }
                compared += 1
                if quotedValue != value { mismatches.append("\(bank.rawValue)[\(index)]") }
                if (0...7).contains(index) { bootBanks[bank.rawValue, default: []].insert(index) }
            }
        }
        if mismatches.isEmpty {
            passed.append(
                "event log: \(log.events.count) events (\(log.layout.rawValue)) replay to \(compared) quoted PCRs")
        } else {
            reasons.append(
                Reason(
                    .eventLogReplayMismatch, "tpm.eventlog",
                    "replaying the event log does not give quoted " + mismatches.joined(separator: ", ")))
        }
        // A boot PCR the log never extends must still hold its reset value (zeros), in a bank the
        // log covers.
        let loggedBanks = Set(replayed.keys.map(\.rawValue))
        for (bank, values) in quoted where loggedBanks.contains(bank) {
            for index in 0...7 where values[index].map({ $0.allSatisfy { $0 == 0 } }) == true {
                bootBanks[bank, default: []].insert(index)
            }
        }
        return mismatches.isEmpty && bootBanks.values.contains { $0.count == 8 }
    }

    /// The runtime measurement (IMA) log replays to quoted registers (every register it extends
    /// must be quoted); returns the files it measured.
    mutating func replayIMA(_ evidence: TPMEvidence, _ quoted: [String: [Int: Data]]) -> [MeasuredFile] {
        guard let ima = evidence.imaLog else { return [] }
        var problems = [String]()
        let registers = Set(ima.entries.map(\.pcr))
        for register in registers.sorted() {
            let banks = quoted.filter { $0.value[register] != nil }
            if banks.isEmpty {
                problems.append("PCR \(register) is not quoted")
                continue
            }
            for (bankName, values) in banks {
                guard let bank = HashAlgorithm(rawValue: bankName) else { continue }
                if ima.replay(bank: bank)[register] != values[register] { problems.append("\(bankName)[\(register)]") }
            }
        }
        guard problems.isEmpty else {
            reasons.append(
                Reason(
                    .eventLogReplayMismatch, "tpm.ima",
                    "replaying the IMA log does not give quoted " + problems.joined(separator: ", ")))
            return []
        }
        passed.append(
            "ima log: \(ima.entries.count) entries replay to quoted PCR \(registers.sorted().map(String.init).joined(separator: ","))"
        )
        // Threat: a file changed while it was measured (IMA's open-writers and ToMToU
        // violations): its content is unknown, so the log cannot vouch for it. The policy judges.
        violations = ima.entries.filter(\.isViolation).count
        return ima.entries.filter { !$0.isViolation }.map {
            MeasuredFile(path: $0.path, algorithm: $0.fileAlgorithm, digestHex: $0.fileDigest.hex, pcr: $0.pcr)
        }
    }
}
