import Foundation
import TestSupport
import Testing

/// The measured engine can be rebuilt bit for bit: two checkouts of the same commit, in
/// different directories, built by scripts/build-ccinfer, give binaries with the same SHA-256.
@Suite struct ReproducibleBuildTests {
    @Test func twoCheckoutsBuildTheSameBinary() async throws {
        let root = SharedTestData.packageRoot
        let head = try await ProcessRunner.run("git", ["-C", root.path, "rev-parse", "HEAD"])
        try #require(head.status == 0, "the package is not a git checkout: \(head.stderr)")
        let work = try TemporaryDirectory("repro")
        var digests = [String]()
        for name in ["first-checkout", "second/nested/checkout"] {
            let checkout = work.file(name)
            try FileManager.default.createDirectory(
                at: checkout.deletingLastPathComponent(), withIntermediateDirectories: true)
            let clone = try await ProcessRunner.run("git", ["clone", "-q", "--no-hardlinks", root.path, checkout.path])
            try #require(clone.status == 0, "\(clone.stderr)")
            _ = try await ProcessRunner.run(
                "git",
                ["-C", checkout.path, "checkout", "-q", head.stdout.trimmingCharacters(in: .whitespacesAndNewlines)])
            let build = try await ProcessRunner.run(
                checkout.appendingPathComponent("scripts/build-ccinfer").path,
                ["--clean", "--out", work.file("out-\(digests.count)").path],
                environment: ["CCINFER_BUILD_ROOT": work.file("build-root").path])
            try #require(build.status == 0, "\(build.stderr)")
            let digest = build.stdout.split(separator: "\n").first { $0.hasPrefix("SHA256=") }.map {
                String($0.dropFirst(7))
            }
            digests.append(try #require(digest))
        }
        #expect(digests[0] == digests[1], "two builds of \(head.stdout.prefix(12)) differ: \(digests)")
        #expect(digests[0].count == 64)
        // And the binary is the engine.
        let version = try await ProcessRunner.run(work.file("out-1/ccinfer").path, ["version"])
        #expect(version.status == 0 && version.stdout.contains("shaderc"))
    }
}
