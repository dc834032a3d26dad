import AdmissionCore
import AttestationCore
import Crypto
import Foundation
import NVGPUVerifier
import Sealing
import TestSupport
import Testing
import WorkerProtocol

/// A stand-in GPU: NVIDIA's recorded 2023 H100 report (the one the `test_no_gpu` manifests were
/// made for), its nonce replaced and signed again by a P-384 device key under a test device root,
/// and NVIDIA's test manifests signed again (xmlsec1) under a test RIM root; both roots made by
/// openssl now. Everything else (parsing, chain, signature, nonce, manifests, measurements) is
/// the production verifier's.
struct StandInGPU: Sendable {
    let options: NVGPUReportVerifier.Options
    /// Two devices (GPUs), each its chain (leaf first, root last) and its leaf's key.
    let chainPEMs: [String]
    let keys: [P384.Signing.PrivateKey]
    var chainPEM: String { chainPEMs[0] }
    /// The report the stand-in answers with (its nonce and signature replaced).
    var recorded: [UInt8]
    let driverManifest: [UInt8]
    let vbiosManifest: [UInt8]

    static let template =
        #"<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo>"#
        + #"<ds:CanonicalizationMethod Algorithm="http://www.w3.org/2006/12/xml-c14n11"/>"#
        + #"<ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384"/>"#
        + #"<ds:Reference URI=""><ds:Transforms>"#
        + #"<ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>"#
        + #"<ds:Transform Algorithm="http://www.w3.org/2006/12/xml-c14n11"/></ds:Transforms>"#
        + #"<ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#sha384"/><ds:DigestValue/>"#
        + #"</ds:Reference></ds:SignedInfo><ds:SignatureValue/><ds:KeyInfo><ds:X509Data/></ds:KeyInfo></ds:Signature>"#

    /// One stand-in for the whole test run (making one launches twenty tools).
    static let once = Task<StandInGPU, any Error> { try await make() }
    static func shared() async throws -> StandInGPU { try await once.value }

    static func make() async throws -> StandInGPU {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("standin-gpu-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        func path(_ name: String) -> String { dir.appendingPathComponent(name).path }
        func run(_ tool: String, _ arguments: [String]) async throws {
            let result = try await ProcessRunner.run(tool, arguments, currentDirectory: dir)
            guard result.status == 0 else { throw Failure("\(tool) \(arguments.first ?? ""): \(result.stderr)") }
        }
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-nodes"]
        try Data("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n".utf8)
            .write(to: dir.appendingPathComponent("leaf.ext"))
        try Data("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\n".utf8)
            .write(to: dir.appendingPathComponent("ca.ext"))
        /// `name`.pem and .key, issued by `issuer` (self-signed when nil).
        func certificate(_ name: String, _ subject: String, issuer: String?, ca: Bool) async throws {
            guard let issuer else {
                try await run(
                    "openssl",
                    ["req", "-x509"] + ec + [
                        "-days", "30", "-subj", "/CN=\(subject)", "-keyout", path("\(name).key"), "-out",
                        path("\(name).pem"),
                    ])
                return
            }
            try await run(
                "openssl",
                ["req"] + ec + ["-subj", "/CN=\(subject)", "-keyout", path("\(name).key"), "-out", path("\(name).csr")])
            try await run(
                "openssl",
                [
                    "x509", "-req", "-in", path("\(name).csr"), "-CA", path("\(issuer).pem"), "-CAkey",
                    path("\(issuer).key"),
                    "-CAcreateserial", "-days", "30", "-extfile", path(ca ? "ca.ext" : "leaf.ext"), "-out",
                    path("\(name).pem"),
                ])
        }
        // A device chain shaped like NVIDIA's: root, identity CA, provisioner CA, BROM, FMC leaf.
        try await certificate("device-root", "Test Device Identity CA", issuer: nil, ca: true)
        try await certificate("identity", "Test GH100 Identity", issuer: "device-root", ca: true)
        try await certificate("provisioner", "Test GH100 Provisioner ICA", issuer: "identity", ca: true)
        for device in 0..<2 {
            try await certificate(
                "brom\(device)", "GH100 A01 GSP BROM (test \(device))", issuer: "provisioner", ca: true)
            try await certificate(
                "device\(device)", "GH100 A01 GSP FMC LF (test \(device))", issuer: "brom\(device)", ca: false)
        }
        try await certificate("rim-root", "Test CoRIM Root", issuer: nil, ca: true)
        try await certificate("rim", "Test RIM Signer", issuer: "rim-root", ca: false)
        var signed = [[UInt8]]()
        for name in ["Driver_RIM_test_no_gpu.swidtag", "1010_0200_882_96005E0001_test_no_gpu.swidtag"] {
            let text = String(decoding: try NVIDIAFiles.shared(name), as: UTF8.self)
            let start = try #require(text.range(of: "<ds:Signature"))
            let end = try #require(text.range(of: "</ds:Signature>"))
            try Data(text.replacingCharacters(in: start.lowerBound..<end.upperBound, with: template).utf8)
                .write(to: dir.appendingPathComponent("template.xml"))
            try await run(
                "xmlsec1",
                [
                    "--sign", "--privkey-pem", "\(path("rim.key")),\(path("rim.pem")),\(path("rim-root.pem"))",
                    "--output", path("signed.xml"), path("template.xml"),
                ])
            signed.append([UInt8](try Data(contentsOf: dir.appendingPathComponent("signed.xml"))))
        }
        func read(_ name: String) throws -> String { try String(contentsOfFile: path(name), encoding: .utf8) }
        var options = NVGPUReportVerifier.Options()
        let deviceRoot = try read("device-root.pem")
        let rimRoot = try read("rim-root.pem")
        options.deviceRoots = [try Self.fingerprint(deviceRoot)]
        options.rimRoots = [try Self.fingerprint(rimRoot)]
        options.rimRootPEM = rimRoot
        return StandInGPU(
            options: options,
            chainPEMs: try (0..<2).map { device in
                try ["device\(device).pem", "brom\(device).pem", "provisioner.pem", "identity.pem"].map(read).joined()
                    + deviceRoot
            },
            keys: try (0..<2).map { try P384.Signing.PrivateKey(pemRepresentation: try read("device\($0).key")) },
            recorded: try NVIDIAFiles.report2023(), driverManifest: signed[0], vbiosManifest: signed[1])
    }

    static func fingerprint(_ pem: String) throws -> String {
        HashAlgorithm.sha256.hash(try #require(PEMBlock.first(in: pem, label: "CERTIFICATE"))).hex
    }

    /// The recorded report answering `nonce`, signed by `device`'s key.
    func report(nonce: Data, device: Int = 0) -> Data {
        var bytes = recorded
        bytes.replaceSubrange(4..<36, with: nonce)
        let signed = Array(bytes.dropLast(96))
        return Data(signed) + (try! keys[device].signature(for: Data(signed))).rawRepresentation
    }

    /// The `gpus` rows of `count` GPUs answering the nonces derived from `binding`, GPU i being
    /// `devices[i]` (by default device i).
    func rows(binding: Data, count: Int = 1, devices: [Int]? = nil) -> [(
        row: [String: String], piece: GPUEvidenceBinding.Piece
    )] {
        (0..<count).map { index in
            let device = devices?[index] ?? index
            let report = self.report(nonce: GPUEvidenceBinding.nonce(binding: binding, index: index), device: device)
            let row = [
                "report": report.base64EncodedString(), "cert_chain": chainPEMs[device],
                "rim_driver": Data(driverManifest).base64EncodedString(),
                "rim_vbios": Data(vbiosManifest).base64EncodedString(),
            ]
            return (
                row,
                GPUEvidenceBinding.Piece(
                    report: report, chain: Data(chainPEMs[device].utf8), driverManifest: Data(driverManifest),
                    vbiosManifest: Data(vbiosManifest))
            )
        }
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }
}

/// NVIDIA's files: the shared testdata and the 2023 vector beside the GPU verifier's tests.
enum NVIDIAFiles {
    static func shared(_ name: String) throws -> [UInt8] { [UInt8](try SharedTestData.data("nvidia/\(name)")) }
    static func report2023() throws -> [UInt8] {
        let url = SharedTestData.packageRoot.appendingPathComponent(
            "Tests/NVGPUVerifierTests/Vectors/nvtrust-2023/attestationReport.txt")
        let text = try String(contentsOf: url, encoding: .utf8).filter { !$0.isWhitespace }
        return [UInt8](try #require(Data(hex: text)))
    }
}

/// A TDX worker with GPUs: the TD's quote commits to its GPUs' evidence, each GPU answers the
/// nonce derived from this admission, and the policy may require GPUs.
@Suite struct GPUAdmissionTests {
    let nonce = Data(repeating: 0x42, count: 32)
    let worker = TestWorker()
    var hello: WireMessage.Hello {
        guard case .hello(let h) = worker.hello else { fatalError() }
        return h
    }
    static let gpuPolicy =
        Core.tdxPolicy + "  gpu:\n    required: true\n    drivers: ['545.00']\n    architectures: [hopper]\n"

    func core(_ gpu: StandInGPU, policy: String = gpuPolicy) throws -> Core {
        try Core(policy: policy, time: Date(), gpuOptions: gpu.options)
    }

    /// A TDX envelope bound to this admission, REPORTDATA committing to `bound` and the
    /// envelope carrying `carried` (both default to the same rows).
    func evidence(
        _ core: Core, gpus: [(row: [String: String], piece: GPUEvidenceBinding.Piece)],
        bound: [GPUEvidenceBinding.Piece]? = nil
    ) throws -> WireMessage.EvidenceMessage {
        var world = core.world
        let binding = attestationBinding(nonce: nonce, workerPublicKeys: worker.kem.publicKeyBytes)
        world.reportData = [UInt8](
            GPUEvidenceBinding.reportData(binding: binding, gpus: bound ?? gpus.map(\.piece)))
        var object = try #require(
            try JSONSerialization.jsonObject(with: world.envelope(collateral: world.collateral())) as? [String: Any])
        if !gpus.isEmpty {
            object["gpus"] = Dictionary(
                uniqueKeysWithValues: gpus.enumerated().map { (String($0.offset), $0.element.row) })
        }
        return .init(envelope: try JSONSerialization.data(withJSONObject: object))
    }

    func binding() -> Data { attestationBinding(nonce: nonce, workerPublicKeys: worker.kem.publicKeyBytes) }

    @Test func aTDXWorkerWithBoundGPUsIsAdmittedWithTheirFacts() async throws {
        let gpu = try await StandInGPU.shared()
        let core = try core(gpu)
        let decision = await core.coordinator.admit(
            hello: hello, nonce: nonce, evidence: try evidence(core, gpus: gpu.rows(binding: binding(), count: 2)))
        #expect(decision.refusal == nil, "\(decision.verdict.reasons)")
        let fields = try #require(decision.verdict.claims?.fields)
        #expect(fields["gpu.count"] == "2")
        #expect(fields["gpu.0.driver"] == "545.00" && fields["gpu.1.vbios"] == "96.00.5e.00.01")
        #expect(fields["gpu.1.nonce"] == GPUEvidenceBinding.nonce(binding: binding(), index: 1).hex)
        #expect(fields["gpu.0.device.sha256"] != nil && fields["gpu.0.device.sha256"] != fields["gpu.1.device.sha256"])
        #expect(decision.verdict.passedChecks.contains("gpu.binding"))
    }

    @Test func gpuEvidenceBoundToAnotherAdmissionIsRefused() async throws {
        let gpu = try await StandInGPU.shared()
        let core = try core(gpu)
        // Reports answering another admission's nonces, committed to by this TD's quote.
        let stale = gpu.rows(binding: Data(repeating: 9, count: 32))
        let replayed = await core.coordinator.admit(
            hello: hello, nonce: nonce, evidence: try evidence(core, gpus: stale))
        #expect(replayed.refusal?.code == ReasonCode.nonceMismatch.rawValue, "\(replayed.verdict.reasons)")
        #expect(replayed.verdict.reasons.first?.source == "gpu.0.nvgpu.nonce")
        // Fresh reports the quote does not commit to (it commits to other GPU evidence).
        let fresh = gpu.rows(binding: binding())
        let unbound = await core.coordinator.admit(
            hello: hello, nonce: nonce,
            evidence: try evidence(core, gpus: fresh, bound: stale.map(\.piece)))
        #expect(unbound.refusal?.code == ReasonCode.nonceMismatch.rawValue, "\(unbound.verdict.reasons)")
        #expect(unbound.verdict.reasons.first?.source == "tdx.nonce")
        // NVIDIA's own recorded report (genuine, its own nonce) under NVIDIA's roots.
        let recorded = try SharedTestData.data("nvidia/hopperAttestationReport.txt")
        let real = try #require(Data(hex: String(decoding: recorded, as: UTF8.self).filter { !$0.isWhitespace }))
        let chain = try SharedTestData.data("nvidia/hopperCertChain.txt")
        let nvidia = try Core(policy: Self.gpuPolicy, time: Date())
        let row = ["report": real.base64EncodedString(), "cert_chain": String(decoding: chain, as: UTF8.self)]
        let genuine = await nvidia.coordinator.admit(
            hello: hello, nonce: nonce,
            evidence: try evidence(nvidia, gpus: [(row, GPUEvidenceBinding.Piece(report: real, chain: chain))]))
        #expect(genuine.refusal?.code == ReasonCode.nonceMismatch.rawValue, "\(genuine.verdict.reasons)")
    }

    @Test func aPolicyRequiringGPUsRefusesATDWithoutOneOrWithAnotherDriver() async throws {
        let gpu = try await StandInGPU.shared()
        let core = try core(gpu)
        let none = await core.coordinator.admit(hello: hello, nonce: nonce, evidence: try evidence(core, gpus: []))
        #expect(none.refusal?.code == ReasonCode.policyGPUNotAllowed.rawValue, "\(none.verdict.reasons)")
        let other = try self.core(gpu, policy: Core.tdxPolicy + "  gpu:\n    drivers: ['550.90.07']\n")
        let driver = await other.coordinator.admit(
            hello: hello, nonce: nonce, evidence: try evidence(other, gpus: gpu.rows(binding: binding())))
        #expect(driver.refusal?.code == ReasonCode.policyGPUNotAllowed.rawValue, "\(driver.verdict.reasons)")
        // Without the rule, a TD without GPUs is admitted as before.
        let plain = try self.core(gpu, policy: Core.tdxPolicy)
        let admitted = await plain.coordinator.admit(
            hello: hello, nonce: nonce, evidence: try evidence(plain, gpus: []))
        #expect(admitted.refusal == nil, "\(admitted.verdict.reasons)")
        #expect(admitted.verdict.claims?.fields["gpu.count"] == "0")
    }

    /// A GPU whose manifest was altered, or whose report is not its device key's, is refused.
    @Test func aBrokenGPUInTheEnvelopeRefusesTheWorker() async throws {
        let gpu = try await StandInGPU.shared()
        let core = try core(gpu)
        var rows = gpu.rows(binding: binding(), count: 2)
        var report = try #require(Data(base64Encoded: rows[1].row["report"]!))
        report[120] ^= 1  // a byte of measurement 2's value
        rows[1].row["report"] = report.base64EncodedString()
        rows[1].piece.report = report
        let decision = await core.coordinator.admit(
            hello: hello, nonce: nonce, evidence: try evidence(core, gpus: rows))
        #expect(decision.refusal?.code == ReasonCode.gpuSignatureInvalid.rawValue, "\(decision.verdict.reasons)")
        #expect(decision.verdict.reasons.first?.source == "gpu.1.nvgpu.signature")
    }

    /// Pinned manifests take the choice of manifest from the worker.
    @Test func pinnedManifestsAdmitThoseAndRefuseOthers() async throws {
        let gpu = try await StandInGPU.shared()
        let pins = [gpu.driverManifest, gpu.vbiosManifest].map { "'\(HashAlgorithm.sha256.hash($0).hex)'" }
        let pinned = try core(
            gpu, policy: Core.tdxPolicy + "  gpu:\n    manifests: [\(pins.joined(separator: ", "))]\n")
        let admitted = await pinned.coordinator.admit(
            hello: hello, nonce: nonce, evidence: try evidence(pinned, gpus: gpu.rows(binding: binding())))
        #expect(admitted.refusal == nil, "\(admitted.verdict.reasons)")
        let other = try core(gpu, policy: Core.tdxPolicy + "  gpu:\n    manifests: [\(pins[0])]\n")
        let refused = await other.coordinator.admit(
            hello: hello, nonce: nonce, evidence: try evidence(other, gpus: gpu.rows(binding: binding())))
        #expect(refused.refusal?.code == ReasonCode.policyGPUNotAllowed.rawValue, "\(refused.verdict.reasons)")
        #expect(refused.verdict.reasons.first?.message.contains("vbios manifest") == true)
    }

    /// A report naming a firmware identity its device certificate does not carry (NVIDIA's 2025
    /// report, which names one, signed by the stand-in's leaf, which carries none) is refused.
    @Test func aReportWhoseFWIDIsNotItsLeafsIsRefused() async throws {
        var gpu = try await StandInGPU.shared()
        let text = String(decoding: try NVIDIAFiles.shared("hopperAttestationReport.txt"), as: UTF8.self)
        gpu.recorded = [UInt8](try #require(Data(hex: text.filter { !$0.isWhitespace })))
        let nonce = Data(repeating: 3, count: 32)
        let evidence = NVGPUReportVerifier.Evidence(
            report: [UInt8](gpu.report(nonce: nonce)), chainPEM: Array(gpu.chainPEM.utf8))
        let verdict = NVGPUReportVerifier(options: gpu.options).verify(evidence, expectedNonce: nonce, at: Date())
        #expect(verdict.reason == .gpuFWIDMismatch, "\(verdict.reasons)")
        #expect(verdict.passedChecks.contains("nvgpu.signature"))
    }

    /// One GPU cannot stand for two: the same device under two indices is refused, even with a
    /// report of its own for each (a GPU signs any nonce it is asked for).
    @Test func oneDeviceShownTwiceIsRefused() async throws {
        let gpu = try await StandInGPU.shared()
        let core = try core(gpu)
        let twice = gpu.rows(binding: binding(), count: 2, devices: [0, 0])
        let decision = await core.coordinator.admit(
            hello: hello, nonce: nonce, evidence: try evidence(core, gpus: twice))
        #expect(decision.refusal?.code == ReasonCode.gpuBindingMismatch.rawValue, "\(decision.verdict.reasons)")
        #expect(decision.verdict.reasons.first?.source == "gpu.1.device")
    }

    /// A manifest swapped after the quote was made (for another NVIDIA-signed one) breaks the
    /// commitment; naming drivers without `required` still needs a GPU.
    @Test func manifestsAreCommittedToAndListsNeedAGPU() async throws {
        let gpu = try await StandInGPU.shared()
        let core = try core(gpu)
        var rows = gpu.rows(binding: binding())
        let bound = rows.map(\.piece)
        rows[0].row["rim_vbios"] = Data(try NVIDIAFiles.shared("1010_0200_882_96005E0001_PROD.swidtag"))
            .base64EncodedString()
        let swapped = await core.coordinator.admit(
            hello: hello, nonce: nonce, evidence: try evidence(core, gpus: rows, bound: bound))
        #expect(swapped.refusal?.code == ReasonCode.nonceMismatch.rawValue, "\(swapped.verdict.reasons)")
        let listing = try self.core(gpu, policy: Core.tdxPolicy + "  gpu:\n    drivers: ['545.00']\n")
        let none = await listing.coordinator.admit(
            hello: hello, nonce: nonce, evidence: try evidence(listing, gpus: []))
        #expect(none.refusal?.code == ReasonCode.policyGPUNotAllowed.rawValue, "\(none.verdict.reasons)")
    }
}
