import AttestationCore
import Foundation
import NVGPUVerifier
import TestSupport
import Testing

/// Real NVIDIA H100 evidence: the report in `../shared/testdata/nvidia/` (driver 550.90.07) and
/// the 2023 report NVIDIA's `test_no_gpu` manifests were made for (`Vectors/nvtrust-2023`).
enum NVIDIAVectors {
    static let vectors = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Vectors")

    static func hexFile(_ url: URL) throws -> [UInt8] {
        let text = try String(contentsOf: url, encoding: .utf8).filter { !$0.isWhitespace }
        return [UInt8](try #require(Data(hex: text)))
    }

    static func shared(_ name: String) throws -> [UInt8] { [UInt8](try SharedTestData.data("nvidia/\(name)")) }

    /// The current sample, its chain, and its nonce.
    static func current() throws -> NVGPUReportVerifier.Evidence {
        .init(
            report: try hexFile(SharedTestData.url("nvidia/hopperAttestationReport.txt")),
            chainPEM: try shared("hopperCertChain.txt"))
    }
    static let currentNonce = Data(hex: "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")!

    /// The 2023 sample with the no-GPU test manifests.
    static func sample2023(vbios: String = "1010_0200_882_96005E0001_test_no_gpu.swidtag") throws
        -> NVGPUReportVerifier.Evidence
    {
        .init(
            report: try hexFile(vectors.appendingPathComponent("nvtrust-2023/attestationReport.txt")),
            chainPEM: [UInt8](try Data(contentsOf: vectors.appendingPathComponent("nvtrust-2023/gpuAkCertChain.txt"))),
            driverManifest: try shared("Driver_RIM_test_no_gpu.swidtag"), vbiosManifest: try shared(vbios))
    }
    static let nonce2023 = Data(hex: "4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e")!

    /// Inside every manifest signer's validity window.
    static let manifestTime = Date.rfc3339("2024-07-01T00:00:00Z")!
}

@Suite struct NVGPUReportTests {
    let verifier = NVGPUReportVerifier()

    @Test func theCurrentSampleIsGenuineAndFreshButHasNoManifests() throws {
        let verdict = verifier.verify(
            try NVIDIAVectors.current(), expectedNonce: NVIDIAVectors.currentNonce, at: Date())
        #expect(verdict.reason == .rimMissing, "\(verdict.reasons)")
        #expect(
            verdict.passedChecks == [
                "nvgpu.report.parse", "nvgpu.chain", "nvgpu.signature", "nvgpu.nonce", "nvgpu.opaque",
            ])
    }

    @Test func theTestManifestsAreForAnotherVersionThanTheCurrentSample() throws {
        var evidence = try NVIDIAVectors.current()
        evidence.driverManifest = try NVIDIAVectors.shared("Driver_RIM_test_no_gpu.swidtag")
        evidence.vbiosManifest = try NVIDIAVectors.shared("1010_0200_882_96005E0001_test_no_gpu.swidtag")
        let verdict = verifier.verify(
            evidence, expectedNonce: NVIDIAVectors.currentNonce, at: NVIDIAVectors.manifestTime)
        #expect(verdict.reason == .rimVersionMismatch, "\(verdict.reasons)")
        #expect(verdict.reasons.first?.message.contains("550.90.07") == true)
    }

    @Test func theTestManifestsSampleIsAcceptedInsideTheirWindows() throws {
        let verdict = verifier.verify(
            try NVIDIAVectors.sample2023(), expectedNonce: NVIDIAVectors.nonce2023, at: NVIDIAVectors.manifestTime)
        #expect(verdict.isAccepted, "\(verdict.reasons)")
        let fields = try #require(verdict.claims?.fields)
        #expect(fields["gpu.driver"] == "545.00")
        #expect(fields["gpu.vbios"] == "96.00.5e.00.01")
        #expect(fields["gpu.project"] == "1010" && fields["gpu.chip_sku"] == "882")
        #expect(fields["gpu.nonce"] == NVIDIAVectors.nonce2023.hex)
        #expect(verdict.passedChecks.last == "nvgpu.measurements")
    }

    @Test func theManifestsAreRefusedTodayAsExpired() throws {
        let verdict = verifier.verify(
            try NVIDIAVectors.sample2023(), expectedNonce: NVIDIAVectors.nonce2023, at: Date())
        #expect(verdict.reason == .rimExpired, "\(verdict.reasons)")
    }

    @Test func aWrongNonceIsRefused() throws {
        var nonce = NVIDIAVectors.currentNonce
        nonce[0] ^= 1
        let verdict = verifier.verify(try NVIDIAVectors.current(), expectedNonce: nonce, at: Date())
        #expect(verdict.reason == .nonceMismatch, "\(verdict.reasons)")
    }

    /// One flipped byte in each signed region: the request's nonce, a measurement value, the
    /// responder's nonce, opaque values (the driver version, the FWID), the signature itself.
    @Test func aFlippedByteInAnySignedRegionIsRefused() throws {
        let evidence = try NVIDIAVectors.current()
        let offsets = [
            ("request nonce", 10), ("measurement 2", 45 + 55 + 7 + 5), ("responder nonce", 3565 + 3),
            ("driver version", 3599 + 66 + 4 + 1), ("FWID", 3964 + 4 + 7), ("signature r", 4021 + 5),
            ("signature s", 4116),
        ]
        for (region, offset) in offsets {
            var flipped = evidence
            flipped.report[offset] ^= 0x01
            let verdict = verifier.verify(flipped, expectedNonce: nil, at: Date())
            #expect(verdict.reason == .gpuSignatureInvalid, "\(region): \(verdict.reasons)")
        }
    }

    /// A chain ending at a look-alike of NVIDIA's CA (same name, another key) is refused, as is
    /// the genuine chain when another root is the one pinned.
    @Test func aChainToAnotherRootIsRefused() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("nvgpu-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let made = try await ProcessRunner.run(
            "openssl",
            [
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-nodes", "-days", "30",
                "-subj", "/CN=NVIDIA Device Identity CA/O=NVIDIA", "-keyout",
                directory.appendingPathComponent("k").path,
                "-out", directory.appendingPathComponent("root.pem").path,
            ])
        #expect(made.status == 0, "\(made.stderr)")
        var evidence = try NVIDIAVectors.current()
        let text = String(decoding: evidence.chainPEM, as: UTF8.self)
        let blocks = text.components(separatedBy: "-----END CERTIFICATE-----").dropLast()
        let lookalike = try String(contentsOf: directory.appendingPathComponent("root.pem"), encoding: .utf8)
        evidence.chainPEM = Array(
            (blocks.dropLast().map { $0 + "-----END CERTIFICATE-----" }.joined() + "\n" + lookalike).utf8)
        #expect(verifier.verify(evidence, expectedNonce: nil, at: Date()).reason == .chainUntrustedRoot)

        var options = NVGPUReportVerifier.Options()
        options.deviceRoots = [String(repeating: "0", count: 64)]
        let other = NVGPUReportVerifier(options: options)
        #expect(other.verify(try NVIDIAVectors.current(), expectedNonce: nil, at: Date()).reason == .chainUntrustedRoot)
    }

    /// The device chain without its root (what some tools keep) is completed with the pinned root.
    @Test func aChainWithoutItsRootIsCompletedWithThePinnedOne() throws {
        var evidence = try NVIDIAVectors.current()
        let text = String(decoding: evidence.chainPEM, as: UTF8.self)
        let blocks = text.components(separatedBy: "-----END CERTIFICATE-----").dropLast()
        evidence.chainPEM = Array(blocks.dropLast().map { $0 + "-----END CERTIFICATE-----\n" }.joined().utf8)
        let verdict = verifier.verify(evidence, expectedNonce: nil, at: Date())
        #expect(verdict.passedChecks.contains("nvgpu.signature"), "\(verdict.reasons)")
    }

    @Test func aManifestWithABrokenSignatureIsRefused() throws {
        var evidence = try NVIDIAVectors.sample2023()
        let text = String(decoding: try #require(evidence.vbiosManifest), as: UTF8.self)
        let range = try #require(text.range(of: #"active="False""#))
        evidence.vbiosManifest = Array(text.replacingCharacters(in: range, with: #"active="True" "#).utf8)
        let verdict = verifier.verify(evidence, expectedNonce: nil, at: NVIDIAVectors.manifestTime)
        #expect(verdict.reason == .rimSignatureInvalid, "\(verdict.reasons)")
    }

    /// The production VBIOS manifest of the same version holds other golden values than the test
    /// GPU's firmware measured: every active one is compared.
    @Test func aMeasurementThatDiffersFromItsGoldenValueIsRefused() throws {
        let evidence = try NVIDIAVectors.sample2023(vbios: "1010_0200_882_96005E0001_PROD.swidtag")
        let verdict = verifier.verify(evidence, expectedNonce: nil, at: NVIDIAVectors.manifestTime)
        #expect(verdict.reason == .gpuMeasurementMismatch, "\(verdict.reasons)")
    }

    /// Every manifest at hand (production ones included) verifies to the pinned RIM root inside
    /// its signers' windows, and none does today.
    @Test func theProductionManifestsVerifyToTheRIMRoot() throws {
        for name in [
            "1010_0200_882_96005E0001_PROD.swidtag", "1010_0205_862_96005E0002_PROD.swidtag",
            "Driver_RIM_test_no_gpu.swidtag", "1010_0200_882_96005E0001_test_no_gpu.swidtag",
        ] {
            let manifest = try ReferenceManifest.verified(
                try NVIDIAVectors.shared(name), at: NVIDIAVectors.manifestTime)
            #expect(manifest.name == "GH100", "\(name)")
            #expect(manifest.measurements.values.contains { $0.active }, "\(name)")
            #expect(throws: Reason.self, "\(name) today") {
                try ReferenceManifest.verified(try NVIDIAVectors.shared(name), at: Date())
            }
        }
    }

    /// xmlsec1's command line (an independent reading of the same XML-DSig) agrees on every
    /// manifest, genuine and tampered, at the same instant.
    @Test func xmlsec1AgreesOnEveryManifest() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("rim-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let root = SharedTestData.packageRoot.appendingPathComponent("certs/nvidia/nvidia-corim-signing-root-ca.pem")
        for name in [
            "1010_0200_882_96005E0001_PROD.swidtag", "1010_0205_862_96005E0002_PROD.swidtag",
            "Driver_RIM_test_no_gpu.swidtag", "1010_0200_882_96005E0001_test_no_gpu.swidtag",
        ] {
            let genuine = String(decoding: try NVIDIAVectors.shared(name), as: UTF8.self)
            // (Spacing inside a tag is not tampering: canonical XML drops it, and both agree on that.)
            let spaced = genuine.replacingOccurrences(of: #"alternatives="1""#, with: #"alternatives="1" "#)
            #expect((try? ReferenceManifest.verified(Array(spaced.utf8), at: NVIDIAVectors.manifestTime)) != nil)
            let range = try #require(genuine.range(of: #"active="False""#))
            let tampered = genuine.replacingCharacters(in: range, with: #"active="True""#)
            #expect(tampered != genuine)
            for (label, text) in [("genuine", genuine), ("tampered", tampered)] {
                let file = directory.appendingPathComponent("\(label)-\(name)")
                try Data(text.utf8).write(to: file)
                let theirs = try await ProcessRunner.run(
                    "xmlsec1",
                    [
                        "--verify", "--trusted-pem", root.path, "--verification-time", "2024-07-01 00:00:00",
                        file.path,
                    ])
                let ours = (try? ReferenceManifest.verified(Array(text.utf8), at: NVIDIAVectors.manifestTime)) != nil
                #expect(ours == (theirs.status == 0), "\(label) \(name): xmlsec1 \(theirs.status) \(theirs.stderr)")
                #expect(ours == (label == "genuine"), "\(label) \(name)")
            }
        }
    }
}
