import AttestationCore
import Foundation
import TDXVerifier

/// Verifies an NVIDIA Hopper GPU's attestation report (`nvgpu-report` envelopes, see
/// docs/EVIDENCE.md), in NVIDIA's order: the device chain to the pinned NVIDIA Device Identity CA,
/// the report's signature under the chain's leaf, the nonce, the opaque data (versions, FWID),
/// the reference manifests (signature and chain to the pinned RIM root, version), then every
/// active golden measurement against the report. The first failure is the verdict's reason.
///
/// Threat: software posing as a GPU in confidential-computing mode. Only a key certified by
/// NVIDIA's device CA (fused into the GPU) signs a report this accepts, only over the verifier's
/// nonce, and only measurements NVIDIA signed as golden for that driver and VBIOS pass.
public struct NVGPUReportVerifier: Sendable {
    public static let format = "nvgpu-report"

    public struct Options: Sendable {
        /// SHA-256 fingerprints of the roots a device chain may end at.
        public var deviceRoots: Set<String> = [NVIDIARoots.deviceIdentityCA]
        /// The roots a manifest's signer chain may end at: fingerprints and PEM text (libxmlsec1's trust).
        public var rimRoots: Set<String> = [NVIDIARoots.rimSigningRootCA]
        public var rimRootPEM: String = NVIDIARoots.rimSigningRootCAPEM
        public init() {}
    }

    public let options: Options
    public init(options: Options = Options()) { self.options = options }

    /// The parts of one GPU's evidence.
    public struct Evidence: Sendable {
        public var report: [UInt8]
        /// PEM, leaf first (NVML's `attestationCertChain`).
        public var chainPEM: [UInt8]
        public var driverManifest: [UInt8]?
        public var vbiosManifest: [UInt8]?

        public init(report: [UInt8], chainPEM: [UInt8], driverManifest: [UInt8]? = nil, vbiosManifest: [UInt8]? = nil) {
            self.report = report
            self.chainPEM = chainPEM
            self.driverManifest = driverManifest
            self.vbiosManifest = vbiosManifest
        }

        /// One GPU of a composite envelope's `gpus` member: the same fields as an `nvgpu-report`
        /// envelope (`report`, `cert_chain`, optional `rim_driver` and `rim_vbios`), and no others.
        public static func from(row: [String: String], name: String) -> Result<Evidence, Reason> {
            let malformed = { (why: String) in Reason(.evidenceMalformed, "envelope.gpus", "GPU \(name): \(why)") }
            let known: Set<String> = ["report", "cert_chain", "rim_driver", "rim_vbios"]
            if let unknown = row.keys.sorted().first(where: { !known.contains($0) }) {
                return .failure(malformed("unknown field '\(unknown.prefix(32))'"))
            }
            func bytes(_ field: String) -> Result<[UInt8]?, Reason> {
                guard let text = row[field] else { return .success(nil) }
                guard text.utf8.allSatisfy({ $0 < 0x80 }),
                    let data = Data(base64Encoded: text, options: [.ignoreUnknownCharacters])
                else { return .failure(malformed("field '\(field)' is not base64")) }
                return .success([UInt8](data))
            }
            guard let chain = row["cert_chain"] else { return .failure(malformed("missing field 'cert_chain'")) }
            return bytes("report").flatMap { report in
                guard let report else { return .failure(malformed("missing field 'report'")) }
                return bytes("rim_driver").flatMap { driver in
                    bytes("rim_vbios").map { vbios in
                        Evidence(
                            report: report, chainPEM: Array(chain.utf8), driverManifest: driver, vbiosManifest: vbios)
                    }
                }
            }
        }

        /// The fields of an `nvgpu-report` envelope.
        public static func from(_ envelope: EvidenceEnvelope) -> Result<Evidence, Reason> {
            envelope.base64("report").flatMap { report in
                envelope.optionalString("cert_chain").flatMap { chain in
                    guard let chain else {
                        return .failure(Reason(.evidenceMalformed, "envelope", "missing field 'cert_chain'"))
                    }
                    return envelope.optionalBase64("rim_driver").flatMap { driver in
                        envelope.optionalBase64("rim_vbios").map { vbios in
                            Evidence(
                                report: [UInt8](report), chainPEM: Array(chain.utf8),
                                driverManifest: driver.map { [UInt8]($0) },
                                vbiosManifest: vbios.map { [UInt8]($0) })
                        }
                    }
                }
            }
        }
    }

    public func verify(envelope: EvidenceEnvelope, expectedNonce: Data?, at time: Date) -> Verdict {
        guard envelope.format == Self.format, envelope.version == 1 else {
            return reject([Reason(.evidenceUnsupported, "envelope", "\(envelope.format) version \(envelope.version)")])
        }
        switch Evidence.from(envelope) {
        case .failure(let reason): return reject([reason])
        case .success(let evidence): return verify(evidence, expectedNonce: expectedNonce, at: time)
        }
    }

    private func reject(_ reasons: [Reason], _ passed: [String] = []) -> Verdict {
        .reject(format: Self.format, reasons: reasons, passed: passed)
    }

    public func verify(_ evidence: Evidence, expectedNonce: Data?, at time: Date) -> Verdict {
        var passed = [String]()
        let report: SPDMReport
        let chain: [Certificate]
        do throws(SPDMReport.Malformed) {
            report = try SPDMReport(evidence.report)
        } catch {
            return reject([Reason(.evidenceMalformed, "nvgpu.report", error.description)])
        }
        passed.append("nvgpu.report.parse")
        do { chain = try Certificate.chain(pemBytes: evidence.chainPEM) } catch {
            return reject([Reason(.evidenceMalformed, "nvgpu.chain", error.description)], passed)
        }
        if let reason = deviceChain(chain, at: time) { return reject([reason], passed) }
        passed.append("nvgpu.chain")
        guard let leaf = chain.first, leaf.publicKey.kind == .ec(.p384),
            leaf.publicKey.verify(signature: report.signature, message: report.signedBytes, scheme: .ecdsa(.sha384))
        else {
            return reject(
                [
                    Reason(
                        .gpuSignatureInvalid, "nvgpu.signature",
                        "the report is not signed by its device certificate's key")
                ],
                passed)
        }
        passed.append("nvgpu.signature")
        if let expectedNonce {
            guard Data(report.nonce) == expectedNonce else {
                return reject(
                    [
                        Reason(
                            .nonceMismatch, "nvgpu.nonce",
                            "the report answers nonce \(report.nonce.hexString), not \(expectedNonce.hex)")
                    ], passed)
            }
            passed.append("nvgpu.nonce")
        }
        guard let driver = report.opaque.driverVersion, let vbios = report.opaque.vbiosVersion else {
            return reject(
                [Reason(.evidenceMalformed, "nvgpu.opaque", "the report names no driver or VBIOS version")], passed)
        }
        if let reason = Self.fwid(report, leaf: leaf) { return reject([reason], passed) }
        passed.append("nvgpu.opaque")
        let manifests: (driver: ReferenceManifest, vbios: ReferenceManifest)
        switch self.manifests(evidence, driver: driver, vbios: vbios, at: time) {
        case .failure(let reason): return reject([reason], passed)
        case .success(let pair): manifests = pair
        }
        passed.append("nvgpu.rim")
        if let reason = Self.compare(report, manifests.driver, manifests.vbios) { return reject([reason], passed) }
        passed.append("nvgpu.measurements")
        return .accept(
            format: Self.format,
            claims: VerifiedClaims(
                fields: claims(
                    report, leaf: leaf, device: chain[1], driver: driver, vbios: vbios, manifests: manifests)),
            passed: passed)
    }

    /// The device chain, leaf first, ends at a pinned root; a chain without its root (four
    /// certificates) gets the pinned root whose name is its last certificate's issuer.
    func deviceChain(_ chain: [Certificate], at time: Date) -> Reason? {
        var chain = chain
        if let last = chain.last, !options.deviceRoots.contains(last.fingerprint),
            let root = Self.pinnedDeviceRoot,
            options.deviceRoots.contains(root.fingerprint), root.isIssuer(of: last), !last.isIssuer(of: last)
        {
            chain.append(root)
        }
        if let reason = ChainCheck(pinnedFingerprints: options.deviceRoots, sourcePrefix: "nvgpu.chain", maxLength: 6)
            .verify(chain, name: "device", at: time)
        {
            return reason
        }
        // Threat: another device under NVIDIA's device root (a switch, another chip) posing as a
        // Hopper GPU: a Hopper chain has five certificates and an end-entity GH100 leaf.
        guard chain.count == Self.chainLength, let leaf = chain.first, !leaf.isCA,
            leaf.commonName?.hasPrefix(Self.chip) == true
        else {
            return Reason(
                .chainInvalid, "nvgpu.chain.device",
                "the chain is not a \(Self.chip) GPU's (\(chain.count) certificates, leaf '\(chain.first?.subject ?? "")')"
            )
        }
        return nil
    }

    /// NVIDIA's device root, decoded once (chains without their root are completed with it).
    static let pinnedDeviceRoot = try? Certificate.chain(pemBytes: Array(NVIDIARoots.deviceIdentityCAPEM.utf8)).first

    /// The chip the verifier reads reports of (Hopper).
    static let chip = "GH100"
    /// NVIDIA's Hopper device chains: leaf (GSP FMC), GSP BROM, provisioner CA, GH100 identity CA, root.
    static let chainLength = 5

    /// TCG DICE FWID extension of the leaf (`2.23.133.5.4.1`); NVIDIA's Hopper leaves carry the
    /// SHA-384 firmware digest as its last 48 bytes.
    static let fwidOID = "2.23.133.5.4.1"

    /// Threat: a report from one firmware signed by a key certified for another. When the report
    /// names a FWID it must be the one the leaf certificate carries (NVIDIA's rule; older reports
    /// carry none).
    static func fwid(_ report: SPDMReport, leaf: Certificate) -> Reason? {
        guard let reported = report.opaque[.fwid] else { return nil }
        guard let ext = leaf.extensionValue(oid: fwidOID), ext.count >= 48, reported.count == 48,
            Array(ext.suffix(48)) == reported
        else {
            return Reason(
                .gpuFWIDMismatch, "nvgpu.opaque.fwid",
                "the report's firmware identity \(reported.hexString) is not the one its device certificate carries")
        }
        return nil
    }

    /// The driver and VBIOS manifests, each checked (chain, time, signature) and for the report's version.
    func manifests(_ evidence: Evidence, driver: String, vbios: String, at time: Date) -> Result<
        (driver: ReferenceManifest, vbios: ReferenceManifest), Reason
    > {
        var found = [ReferenceManifest]()
        for (kind, bytes, version) in [
            ("driver", evidence.driverManifest, driver), ("VBIOS", evidence.vbiosManifest, vbios),
        ] {
            guard let bytes else {
                return .failure(Reason(.rimMissing, "nvgpu.rim", "no reference manifest for \(kind) \(version)"))
            }
            let manifest: ReferenceManifest
            do throws(Reason) {
                manifest = try ReferenceManifest.verified(bytes, at: time, options: options)
            } catch {
                guard error.code == .evidenceMalformed else { return .failure(error) }
                return .failure(Reason(error.code, error.source, "\(kind) manifest: \(error.message)"))
            }
            guard manifest.name == Self.chip, manifest.product == Self.chip else {
                return .failure(
                    Reason(
                        .rimVersionMismatch, "nvgpu.rim",
                        "the \(kind) manifest is for \(manifest.name) (\(manifest.product)), not \(Self.chip)"))
            }
            guard manifest.version.lowercased() == version.lowercased() else {
                return .failure(
                    Reason(
                        .rimVersionMismatch, "nvgpu.rim",
                        "the \(kind) manifest is for \(manifest.version); the report's \(kind) is \(version)"))
            }
            found.append(manifest)
        }
        return .success((found[0], found[1]))
    }

    /// Every active golden measurement of the two manifests (RIM index i is SPDM block i + 1)
    /// equals one of its values in the report.
    static func compare(_ report: SPDMReport, _ driver: ReferenceManifest, _ vbios: ReferenceManifest) -> Reason? {
        var golden = [Int: ReferenceManifest.Golden]()
        for manifest in [driver, vbios] {
            for (index, value) in manifest.measurements where value.active {
                guard golden.updateValue(value, forKey: index) == nil else {
                    return Reason(
                        .evidenceMalformed, "nvgpu.measurements",
                        "measurement \(index) is golden in both the driver and the VBIOS manifest")
                }
            }
        }
        let differing = golden.keys.sorted().filter { index in
            guard let value = report.measurements[index + 1] else { return true }
            return !golden[index]!.alternatives.contains(value)
        }
        guard differing.isEmpty else {
            let shown = differing.prefix(8).map(String.init).joined(separator: ", ")
            return Reason(
                .gpuMeasurementMismatch, "nvgpu.measurements",
                "\(differing.count) of \(golden.count) golden measurements differ or are missing (indices \(shown)"
                    + (differing.count > 8 ? ", …)" : ")"))
        }
        return nil
    }

    /// The facts of an accepted report. `device`: the GSP BROM certificate, which names this one
    /// GPU whatever its firmware (the leaf changes with the FMC firmware).
    func claims(
        _ report: SPDMReport, leaf: Certificate, device: Certificate, driver: String, vbios: String,
        manifests: (driver: ReferenceManifest, vbios: ReferenceManifest)
    ) -> [String: String] {
        var fields = [
            "gpu.arch": "hopper", "gpu.driver": driver, "gpu.vbios": vbios, "gpu.nonce": report.nonce.hexString,
            "gpu.device.sha256": device.fingerprint,
            "gpu.leaf.sha256": leaf.fingerprint, "gpu.rim.driver.sha256": manifests.driver.sha256,
            "gpu.rim.vbios.sha256": manifests.vbios.sha256,
        ]
        for (name, field) in [
            ("gpu.project", OpaqueData.Field.project), ("gpu.project_sku", .projectSKU), ("gpu.chip_sku", .chipSKU),
        ] {
            if let text = report.opaque.text(field) { fields[name] = text }
        }
        if let fwid = report.opaque[.fwid] { fields["gpu.fwid"] = fwid.hexString }
        return fields
    }
}
