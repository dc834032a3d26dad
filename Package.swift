// swift-tools-version:6.0
import PackageDescription

let strict: [SwiftSetting] = [.enableUpcomingFeature("ExistentialAny")]

let package = Package(
    name: "ccgate",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "ccgate", targets: ["ccgate"]),
        .executable(name: "ccworker", targets: ["ccworker"]),
        .library(name: "AttestationCore", targets: ["AttestationCore"]),
        .library(name: "TPMVerifier", targets: ["TPMVerifier"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // System-library shims.
        .systemLibrary(
            name: "COpenSSL", pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]),
        .systemLibrary(
            name: "CTSS2", pkgConfig: "tss2-esys",
            providers: [.apt(["libtss2-dev"])]),
        .systemLibrary(
            name: "CVulkan", pkgConfig: "vulkan",
            providers: [.apt(["libvulkan-dev"])]),

        // Verification core: no I/O.
        .target(name: "AttestationCore", dependencies: ["COpenSSL"], swiftSettings: strict),
        .target(name: "EventLog", dependencies: ["AttestationCore"], swiftSettings: strict),
        .target(
            name: "TPMVerifier", dependencies: ["AttestationCore", "EventLog", "CTSS2"],
            swiftSettings: strict),
        .target(
            name: "Policy",
            dependencies: ["AttestationCore", .product(name: "Yams", package: "Yams")],
            swiftSettings: strict),

        // Adapters.
        .target(
            name: "CommandLineSupport",
            dependencies: [.product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: strict),
        .target(
            name: "WorkerAgent", dependencies: ["AttestationCore", "EventLog", "CTSS2"],
            swiftSettings: strict),
        .executableTarget(
            name: "ccgate",
            dependencies: [
                "AttestationCore", "TPMVerifier", "Policy", "CommandLineSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "ccworker",
            dependencies: [
                "AttestationCore", "WorkerAgent", "CommandLineSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "ccgate-bench",
            dependencies: ["AttestationCore", "TPMVerifier", "WorkerAgent"],
            path: "Benchmarks/ccgate-bench",
            swiftSettings: strict),

        // Tests.
        .target(
            name: "TestSupport", dependencies: ["AttestationCore"], path: "Tests/TestSupport",
            swiftSettings: strict),
        .testTarget(
            name: "AttestationCoreTests", dependencies: ["AttestationCore", "TestSupport"],
            swiftSettings: strict),
        .testTarget(
            name: "EventLogTests", dependencies: ["EventLog", "TestSupport"],
            swiftSettings: strict),
        .testTarget(
            name: "TPMVerifierTests",
            dependencies: ["TPMVerifier", "Policy", "WorkerAgent", "TestSupport"],
            swiftSettings: strict),
        .testTarget(name: "PolicyTests", dependencies: ["Policy", "TestSupport"], swiftSettings: strict),
        .testTarget(name: "CLITests", dependencies: ["TestSupport", "WorkerAgent"], swiftSettings: strict),
    ]
)
