// swift-tools-version:6.1
import PackageDescription

let strict: [SwiftSetting] = [.enableUpcomingFeature("ExistentialAny")]

let nio: [Target.Dependency] = [
    .product(name: "NIOCore", package: "swift-nio"),
    .product(name: "NIOPosix", package: "swift-nio"),
]

/// libxmlsec1's compile-time settings on Debian 12 (`pkg-config --cflags xmlsec1-openssl`).
let xmlsecDefines: [(name: String, value: String?)] = [
    ("__XMLSEC_FUNCTION__", "__func__"), ("XMLSEC_NO_SIZE_T", nil), ("XMLSEC_OPENSSL3_ENGINES", "1"),
    ("XMLSEC_NO_GOST", "1"), ("XMLSEC_NO_GOST2012", "1"), ("XMLSEC_NO_CRYPTO_DYNAMIC_LOADING", "1"),
    ("XMLSEC_CRYPTO_OPENSSL", "1"),
]

let package = Package(
    name: "ccgate",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "ccgate", targets: ["ccgate"]),
        .executable(name: "ccworker", targets: ["ccworker"]),
        .executable(name: "ccinfer", targets: ["ccinfer"]),
        .library(name: "AttestationCore", targets: ["AttestationCore"]),
        .library(name: "TPMVerifier", targets: ["TPMVerifier"]),
        .library(name: "TDXVerifier", targets: ["TDXVerifier"]),
        .library(name: "TONKit", targets: ["TONKit"]),
        .library(name: "TONStake", targets: ["TONStake"]),
    ],
    dependencies: [
        // ccinfer's only package dependency: pinned exactly, so that the measured engine binary a
        // policy pins can be rebuilt from the same commit and toolchain (docs/INFERENCE.md).
        .package(url: "https://github.com/apple/swift-argument-parser", exact: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        // The worker's engine supervisor: staged teardown (SIGTERM, then SIGKILL) and an async wait.
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        // Outbound HTTP (PCCS, toncenter, the admin CLI): deadlines and capped, streamed bodies.
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        // Traits off: no swift-configuration, no full-Foundation extras.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1", traits: []),
        // TLS on the front door and the admin API (Hummingbird's own TLS support builds on it).
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        // The shared store of several gateways (PostgreSQL's wire protocol on SwiftNIO).
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        // `/metrics` in Prometheus's text format, from a registry each gateway owns.
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // System-library shims.
        .systemLibrary(name: "COpenSSL", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CTSS2", pkgConfig: "tss2-esys", providers: [.apt(["libtss2-dev"])]),
        .systemLibrary(name: "CVulkan", pkgConfig: "vulkan", providers: [.apt(["libvulkan-dev"])]),
        .target(name: "CLinuxShims"),
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),
        // XML-DSig for NVIDIA's reference integrity manifests: libxmlsec1 (Debian's libxmlsec1-dev)
        // on libxml2 and OpenSSL, reached only through this C target. Its defines are what
        // `pkg-config --cflags xmlsec1-openssl` says (they change xmlsec's struct layouts; SwiftPM
        // refuses -D flags from pkg-config); a test holds them equal.
        .target(
            name: "CRIMSignature",
            cSettings: xmlsecDefines.map { .define($0.name, to: $0.value) } + [
                .unsafeFlags(["-I/usr/include/xmlsec1", "-I/usr/include/libxml2"])
            ],
            linkerSettings: ["xmlsec1-openssl", "xmlsec1", "xml2", "ssl", "crypto"].map { .linkedLibrary($0) }),

        // Verification core: no I/O.
        .target(
            name: "AttestationCore",
            dependencies: ["COpenSSL", .product(name: "Crypto", package: "swift-crypto")], swiftSettings: strict),
        .target(name: "EventLog", dependencies: ["AttestationCore"], swiftSettings: strict),
        .target(
            name: "TPMVerifier",
            dependencies: [
                "AttestationCore", "EventLog", "CTSS2", "COpenSSL", .product(name: "Crypto", package: "swift-crypto"),
            ], swiftSettings: strict),
        .target(name: "TDXVerifier", dependencies: ["AttestationCore", "EventLog", "COpenSSL"], swiftSettings: strict),
        // NVIDIA GPU attestation: SPDM measurement reports, the device chain, signed reference manifests.
        .target(
            name: "NVGPUVerifier", dependencies: ["AttestationCore", "TDXVerifier", "COpenSSL", "CRIMSignature"],
            swiftSettings: strict),
        .target(
            name: "Policy", dependencies: ["AttestationCore", "TONKit", .product(name: "Yams", package: "Yams")],
            swiftSettings: strict),
        .target(
            name: "Sealing",
            dependencies: ["AttestationCore", "WorkerProtocol", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: strict),
        // The worker protocol's messages (no I/O) and their NIO framing.
        .target(name: "WorkerProtocol", dependencies: ["AttestationCore"], swiftSettings: strict),
        .target(
            name: "WorkerFraming", dependencies: ["WorkerProtocol", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: strict),
        // The audit chain's format: entries, canonical JSON, checkpoints, offline verification.
        .target(name: "AuditLog", dependencies: ["AttestationCore"], swiftSettings: strict),
        // The gateway's durable state: the store interface (workers, API keys, policy history and
        // the audit chain), its SQLite, PostgreSQL and in-memory stores, schema migrations, the
        // group-committing audit trail, export.
        .target(
            name: "GatewayState",
            dependencies: [
                "AuditLog", "AttestationCore", "CSQLite", .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"), .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
            ] + nio, swiftSettings: strict),
        // TON: addresses, cells, bags of cells.
        .target(name: "TONKit", dependencies: ["AttestationCore"], swiftSettings: strict),
        // Outbound HTTP on AsyncHTTPClient.
        .target(
            name: "HTTPFetch",
            dependencies: [
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: strict),
        // TON on the chain: the toncenter v2 client, stake readers, provider proofs, the stake oracle.
        .target(name: "TONStake", dependencies: ["TONKit", "AttestationCore", "HTTPFetch"], swiftSettings: strict),

        // The inference engine: GGUF, tokenizer, chat templates, Vulkan kernels, OpenAI server.
        // Kept free of package dependencies so that its measured binary stays small and its
        // reproducible build quick.
        .executableTarget(name: "spirv-embed", swiftSettings: strict),
        .plugin(name: "SPIRVShaders", capability: .buildTool(), dependencies: ["spirv-embed"]),
        .target(
            name: "Inference", dependencies: ["CVulkan"], exclude: ["Shaders"], swiftSettings: strict,
            plugins: ["SPIRVShaders"]),

        // The gateway's decisions without transport: the worker session state machine and its
        // runner, the admission coordinator, routing and the evictor. No NIO, no HTTP, no sockets.
        .target(
            name: "AdmissionCore",
            dependencies: [
                "AttestationCore", "TPMVerifier", "TDXVerifier", "NVGPUVerifier", "Policy", "Sealing", "WorkerProtocol",
                "AuditLog", "GatewayState",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),

        // Adapters.
        .target(
            name: "Gateway",
            dependencies: [
                "AttestationCore", "TPMVerifier", "TDXVerifier", "Policy", "Sealing", "WorkerProtocol", "WorkerFraming",
                "AuditLog", "GatewayState",
                "TONKit", "TONStake", "AdmissionCore", "HTTPFetch",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ] + nio,
            swiftSettings: strict),
        .target(
            name: "WorkerAgent",
            dependencies: [
                "AttestationCore", "EventLog", "CTSS2", "CLinuxShims", "Sealing", "WorkerProtocol", "WorkerFraming",
                "TONKit",
                "TONStake",
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ] + nio,
            swiftSettings: strict),
        .target(
            name: "CommandLineSupport",
            dependencies: [.product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: strict),
        // The long-running commands' logs (`--log-format`, `--log-level`) and config files
        // (`--config`); not linked into the engine.
        .target(
            name: "ServiceSupport",
            dependencies: [
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"), .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "ccgate",
            dependencies: [
                "AttestationCore", "TPMVerifier", "TDXVerifier", "NVGPUVerifier", "Policy", "Gateway", "AdmissionCore",
                "AuditLog", "GatewayState",
                "CommandLineSupport", "ServiceSupport",
                "TONKit", "TONStake", "HTTPFetch", .product(name: "Yams", package: "Yams"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "ccworker",
            dependencies: [
                "AttestationCore", "WorkerAgent", "CommandLineSupport", "ServiceSupport", "TONKit", "TONStake",
                "Sealing",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "ccinfer",
            dependencies: [
                "Inference", "CommandLineSupport", .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "ccgate-bench",
            dependencies: [
                "AttestationCore", "TPMVerifier", "TDXVerifier", "WorkerAgent", "Gateway", "AdmissionCore", "Policy",
                "Inference", "Sealing",
                "AuditLog", "GatewayState",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/ccgate-bench",
            exclude: ["llama_bench.py", "engine_compare.py", "synthetic_model.py"],
            swiftSettings: strict),

        // libFuzzer target for the DCAP parsers (`make fuzz`); a corpus replayer otherwise.
        .executableTarget(
            name: "dcap-fuzz", dependencies: ["TDXVerifier", "AttestationCore"], path: "Fuzz/dcap-fuzz",
            swiftSettings: strict),
        // libFuzzer target for NVIDIA GPU reports and reference manifests (`make fuzz`); a replayer otherwise.
        .executableTarget(
            name: "nvgpu-fuzz", dependencies: ["NVGPUVerifier", "AttestationCore"], path: "Fuzz/nvgpu-fuzz",
            swiftSettings: strict),
        // libFuzzer target for the engine's HTTP and JSON parsers (`make fuzz`); a replayer otherwise.
        .executableTarget(
            name: "engine-fuzz", dependencies: ["Inference"], path: "Fuzz/engine-fuzz", swiftSettings: strict),

        // Tests.
        .target(
            name: "TestSupport",
            dependencies: [
                "AttestationCore", "TDXVerifier", "EventLog", "COpenSSL",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            path: "Tests/TestSupport", exclude: ["toncenter_tvm.py"], swiftSettings: strict),
        .testTarget(
            name: "AttestationCoreTests",
            dependencies: ["AttestationCore", "TestSupport", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: strict),
        .testTarget(
            name: "TONKitTests", dependencies: ["TONKit", "TONStake", "AttestationCore", "TestSupport"],
            exclude: ["pytoniq_corpus.py", "toncenter_stub.py"],
            swiftSettings: strict),
        .testTarget(
            name: "AuditLogTests", dependencies: ["AuditLog", "GatewayState", "AttestationCore", "TestSupport"],
            swiftSettings: strict),
        .testTarget(name: "EventLogTests", dependencies: ["EventLog", "TestSupport"], swiftSettings: strict),
        .testTarget(
            name: "TPMVerifierTests", dependencies: ["TPMVerifier", "Policy", "WorkerAgent", "TestSupport"],
            swiftSettings: strict),
        .testTarget(
            name: "TDXVerifierTests",
            dependencies: [
                "TDXVerifier", "EventLog", "TestSupport", .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strict),
        .testTarget(
            name: "NVGPUVerifierTests", dependencies: ["NVGPUVerifier", "AttestationCore", "TestSupport"],
            exclude: ["Vectors"], swiftSettings: strict),
        .testTarget(name: "PolicyTests", dependencies: ["Policy", "TestSupport"], swiftSettings: strict),
        .testTarget(name: "SealingTests", dependencies: ["Sealing"], swiftSettings: strict),
        .testTarget(
            name: "WorkerAgentTests",
            dependencies: ["WorkerAgent", "WorkerProtocol", "Sealing", "AttestationCore", "TestSupport"],
            swiftSettings: strict),
        .testTarget(
            name: "AdmissionCoreTests",
            dependencies: [
                "AdmissionCore", "AuditLog", "GatewayState", "AttestationCore", "Policy", "Sealing", "WorkerProtocol",
                "TestSupport", "NVGPUVerifier",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strict),
        .testTarget(
            name: "GatewayTests",
            dependencies: [
                "Gateway", "AdmissionCore", "WorkerAgent", "WorkerProtocol", "WorkerFraming", "AuditLog",
                "GatewayState", "Sealing",
                "Policy",
                "TestSupport", "TONKit", "TONStake",
                .product(name: "Hummingbird", package: "hummingbird"),
            ] + nio,
            exclude: ["openai_sdk_check.py"],
            swiftSettings: strict),
        .testTarget(
            name: "InferenceTests", dependencies: ["Inference", "TestSupport"], exclude: ["reference_llama.py"],
            swiftSettings: strict),
        .testTarget(
            name: "CLITests",
            dependencies: [
                "AttestationCore", "TestSupport", "WorkerAgent", "TDXVerifier", "TPMVerifier", "TONKit", "TONStake",
                "Sealing", "AuditLog",
            ],
            exclude: ["e2e_sdk_check.py", "Fixtures"],
            swiftSettings: strict),
    ]
)
