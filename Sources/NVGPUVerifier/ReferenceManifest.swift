import AttestationCore
import CRIMSignature
import Foundation
import TDXVerifier

/// One of NVIDIA's reference integrity manifests (a TCG RIM as an ISO 19770-2 SWID tag, signed
/// with an enveloped XML-DSig signature): the firmware version it is for and the golden
/// measurements a GPU's report must hold.
///
/// Every value comes from the one parsed document whose signature libxmlsec1 checked (see
/// `rim_signature.c` for the threats that reading answers).
public struct ReferenceManifest: Sendable {
    /// `SoftwareIdentity@name` (`GH100`).
    public let name: String
    /// `Meta@product` (`GH100`).
    public let product: String
    /// `Meta@colloquialVersion`: the driver version (`550.90.07`) or VBIOS version (`96.00.9F.00.01`).
    public let version: String
    /// Measurements by RIM index (0-based; SPDM block index − 1).
    public let measurements: [Int: Golden]
    /// The signer chain the manifest carries (leaf first).
    let chain: [Certificate]
    /// The certificate whose key libxmlsec1 verified the signature with (valid signatures only).
    let signer: [UInt8]?
    /// What libxmlsec1 said of the signature under the pinned root at the verification time.
    let signature: SignatureStatus
    /// SHA-256 of the manifest's bytes.
    public let sha256: String

    public struct Golden: Sendable, Equatable {
        public let active: Bool
        public let size: Int
        /// The values any one of which is right.
        public let alternatives: [[UInt8]]
    }

    enum SignatureStatus: Sendable, Equatable {
        case valid
        case invalid(String)
        case unverifiable(String)
    }

    /// Largest manifest read; NVIDIA's are about 20 KiB.
    public static let maxSize = 1 << 20

    /// Reads a manifest and checks its signature under `rootPEM` at `time`. Throws (as
    /// `evidence.malformed`) only when the text is not a manifest; a bad signature or chain is
    /// left for ``check(pinnedRoots:at:)`` to report.
    static func read(_ xml: [UInt8], rootPEM: String, at time: Date) throws(SPDMReport.Malformed) -> ReferenceManifest {
        guard xml.count <= maxSize else { throw .init("a manifest of \(xml.count) bytes; limit \(maxSize)") }
        let root = Array(rootPEM.utf8)
        var out = [CChar](repeating: 0, count: 1 << 20)
        var message = [CChar](repeating: 0, count: 256)
        var length = 0
        let when = Int64(max(1, time.timeIntervalSince1970.rounded(.down)))
        let status = ccgate_rim_read(xml, xml.count, root, root.count, when, &out, out.count, &length, &message, 256)
        guard status == 0 else {
            let text = String(decoding: message.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw .init("not a reference integrity manifest: \(text)")
        }
        let lines = String(decoding: out.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            .split(separator: "\n").map { $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init) }
        return try ReferenceManifest(lines: lines, sha256: HashAlgorithm.sha256.hash(xml).hex)
    }

    private init(lines: [[String]], sha256: String) throws(SPDMReport.Malformed) {
        var name: String?
        var product: String?
        var signer: [UInt8]?
        var version: String?
        var signature: SignatureStatus?
        var certificates = [Certificate]()
        var measurements = [Int: Golden]()
        for fields in lines {
            switch (fields.first, fields.count) {
            case ("signature", 3):
                signature =
                    fields[1] == "0" ? .valid : fields[1] == "1" ? .invalid(fields[2]) : .unverifiable(fields[2])
            case ("name", 2): name = fields[1]
            case ("product", 2): product = fields[1]
            case ("signer", 2): signer = Data(base64Encoded: fields[1]).map { [UInt8]($0) }
            case ("version", 2): version = fields[1]
            case ("cert", 2):
                guard let der = Data(base64Encoded: fields[1]), let cert = try? Certificate(der: [UInt8](der)),
                    certificates.count < 8
                else { throw .init("a manifest's signer certificate is unreadable") }
                certificates.append(cert)
            case ("m", 5...):
                let (index, golden) = try Self.golden(fields)
                guard measurements.updateValue(golden, forKey: index) == nil else {
                    throw .init("manifest measurement \(index) occurs twice")
                }
            default: throw .init("unexpected manifest line '\(fields.first ?? "")'")
            }
        }
        guard let name, let product, let version, let signature else {
            throw .init("a manifest without a name, product or version")
        }
        self.name = name
        self.product = product
        self.signer = signer
        self.version = version
        self.signature = signature
        self.chain = certificates
        self.measurements = measurements
        self.sha256 = sha256
    }

    /// `m index active alternatives size hash…`: the hashes counted by `alternatives`, each
    /// `size` bytes of hex.
    static func golden(_ fields: [String]) throws(SPDMReport.Malformed) -> (Int, Golden) {
        guard let index = Int(fields[1]), (0..<256).contains(index), let count = Int(fields[3]),
            (1...64).contains(count), let size = Int(fields[4]), (1...64).contains(size)
        else { throw .init("a manifest measurement has an unusable index, count or size") }
        let active: Bool
        switch fields[2].lowercased() {
        case "true": active = true
        case "false": active = false
        default: throw .init("manifest measurement \(index) is neither active nor inactive")
        }
        let hashes = fields.dropFirst(5)
        guard hashes.count == count else {
            throw .init("manifest measurement \(index) lists \(hashes.count) values, not \(count)")
        }
        var alternatives = [[UInt8]]()
        for text in hashes {
            guard let value = Data(hex: text), value.count == size else {
                throw .init("manifest measurement \(index) has a value that is not \(size) bytes of hex")
            }
            alternatives.append([UInt8](value))
        }
        return (index, Golden(active: active, size: size, alternatives: alternatives))
    }

    /// The version a manifest says it is for, its signature not yet checked (for tools that
    /// sort manifests; verification reads them again).
    public static func statedVersion(_ xml: [UInt8]) throws(Reason) -> String {
        do throws(SPDMReport.Malformed) {
            return try read(xml, rootPEM: NVIDIARoots.rimSigningRootCAPEM, at: Date()).version
        } catch {
            throw Reason(.evidenceMalformed, "nvgpu.rim", error.description)
        }
    }

    /// Whether a manifest version is a VBIOS's (`96.00.9F.00.01`: five groups of two hex
    /// digits) rather than a driver's (`550.90.07`).
    public static func isVBIOSVersion(_ version: String) -> Bool {
        let groups = version.split(separator: ".", omittingEmptySubsequences: false)
        return groups.count == 5 && groups.allSatisfy { $0.count == 2 && $0.allSatisfy(\.isHexDigit) }
    }

    /// A manifest whose signature and signer chain (to `options`' RIM roots) hold at `time`.
    public static func verified(
        _ xml: [UInt8], at time: Date, options: NVGPUReportVerifier.Options = .init()
    ) throws(Reason) -> ReferenceManifest {
        let manifest: ReferenceManifest
        do throws(SPDMReport.Malformed) {
            manifest = try read(xml, rootPEM: options.rimRootPEM, at: time)
        } catch {
            throw Reason(.evidenceMalformed, "nvgpu.rim", error.description)
        }
        if let reason = manifest.check(pinnedRoots: options.rimRoots, at: time) { throw reason }
        return manifest
    }

    /// The signer chain and the signature, at `time`: the chain must end at a pinned RIM root
    /// (`chain.untrusted-root`), be signed link by link (`chain.invalid`), and every certificate
    /// be valid then (`rim.expired`); then the XML signature (`rim.signature-invalid`).
    func check(pinnedRoots: Set<String>, at time: Date) -> Reason? {
        let source = "nvgpu.rim"
        // The links are judged at an instant inside every window (when one exists), so that an
        // expired but genuine chain is told apart from a forged one.
        let latestStart = chain.map(\.notBefore).max() ?? time
        let earliestEnd = chain.map(\.notAfter).min() ?? time
        let inside = latestStart <= earliestEnd ? latestStart : time
        let links = ChainCheck(pinnedFingerprints: pinnedRoots, sourcePrefix: "nvgpu.rim.chain", maxLength: 6)
        if let reason = links.verify(chain, name: version, at: inside) { return reason }
        if let stale = chain.first(where: { !$0.isValid(at: time) }) {
            return Reason(
                .rimExpired, source,
                "manifest \(version): '\(stale.subject)' is valid \(stale.notBefore.rfc3339) to "
                    + "\(stale.notAfter.rfc3339), not at \(time.rfc3339)")
        }
        switch signature {
        case .valid:
            // Threat: a key libxmlsec1 took from somewhere else than the chain checked above.
            guard let signer, signer == chain.first?.der else {
                return Reason(
                    .rimSignatureInvalid, source,
                    "manifest \(version): the signing certificate is not the first of the chain checked")
            }
            return nil
        case .invalid(let why), .unverifiable(let why):
            return Reason(.rimSignatureInvalid, source, "manifest \(version): \(why)")
        }
    }
}
