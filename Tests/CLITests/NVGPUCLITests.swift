import Foundation
import TestSupport
import Testing

/// `ccgate evidence wrap nvgpu` and `ccgate evidence verify` on NVIDIA's own files: anyone can
/// check a GPU report from the files NVIDIA's tools write.
@Suite struct NVGPUCLITests {
    static var ccgate: String { EvidenceVerifyCLITests.ccgate }
    static let nvidia = SharedTestData.url("nvidia")
    static let vectors = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("NVGPUVerifierTests/Vectors/nvtrust-2023")

    func verdict(_ result: ProcessResult) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: result.stdoutData) as? [String: Any], "\(result.stdout)")
    }

    @Test func wrappedFilesVerifyAndRefuseAsTheyShould() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("nvgpu-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let current = directory.appendingPathComponent("current.json").path
        let wrapped = try await ProcessRunner.run(
            Self.ccgate,
            [
                "evidence", "wrap", "nvgpu", "--report",
                Self.nvidia.appendingPathComponent("hopperAttestationReport.txt").path,
                "--cert-chain", Self.nvidia.appendingPathComponent("hopperCertChain.txt").path, "--out", current,
            ])
        #expect(wrapped.status == 0, "\(wrapped.stderr)")
        #expect(wrapped.stderr.contains("driver 550.90.07, VBIOS 96.00.9f.00.01"), "\(wrapped.stderr)")
        let nonce = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"
        let checked = try await ProcessRunner.run(
            Self.ccgate, ["evidence", "verify", current, "--nonce", nonce, "--json"])
        #expect(checked.status == 1)
        #expect(try verdict(checked)["reason"] as? String == "rim.missing")
        let wrongNonce = try await ProcessRunner.run(
            Self.ccgate, ["evidence", "verify", current, "--nonce", String(nonce.reversed()), "--json"])
        #expect(try verdict(wrongNonce)["reason"] as? String == "nonce.mismatch")

        // The 2023 report with NVIDIA's test manifests, given in either order.
        let old = directory.appendingPathComponent("old.json").path
        let oldWrapped = try await ProcessRunner.run(
            Self.ccgate,
            [
                "evidence", "wrap", "nvgpu", "--report",
                Self.vectors.appendingPathComponent("attestationReport.txt").path,
                "--cert-chain", Self.vectors.appendingPathComponent("gpuAkCertChain.txt").path,
                "--rim", Self.nvidia.appendingPathComponent("1010_0200_882_96005E0001_test_no_gpu.swidtag").path,
                "--rim", Self.nvidia.appendingPathComponent("Driver_RIM_test_no_gpu.swidtag").path, "--out", old,
            ])
        #expect(oldWrapped.status == 0, "\(oldWrapped.stderr)")
        let accepted = try await ProcessRunner.run(
            Self.ccgate,
            [
                "evidence", "verify", old, "--nonce",
                "4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e",
                "--at", "2024-07-01T00:00:00Z", "--json",
            ])
        #expect(accepted.status == 0, "\(accepted.stdout)")
        let claims = try #require(try verdict(accepted)["claims"] as? [String: Any])
        #expect(claims["gpu.driver"] as? String == "545.00" && claims["gpu.vbios"] as? String == "96.00.5e.00.01")
        let today = try await ProcessRunner.run(Self.ccgate, ["evidence", "verify", old, "--json"])
        #expect(try verdict(today)["reason"] as? String == "rim.expired")

        // Not a report: a clear refusal with the reason code, exit 2, nothing written.
        let bad = directory.appendingPathComponent("bad.json").path
        let refused = try await ProcessRunner.run(
            Self.ccgate,
            [
                "evidence", "wrap", "nvgpu", "--report", Self.nvidia.appendingPathComponent("README.md").path,
                "--cert-chain", Self.nvidia.appendingPathComponent("hopperCertChain.txt").path, "--out", bad,
            ])
        #expect(refused.status == 2)
        #expect(refused.stderr.contains("evidence.malformed"), "\(refused.stderr)")
        #expect(!FileManager.default.fileExists(atPath: bad))
    }
}
