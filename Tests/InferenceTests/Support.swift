import Foundation
@testable import Inference
import TestSupport

/// The references the engine is checked against (scripts/reference-env): llama-cpp-python in a
/// virtual environment, and the SmolLM2 model.
enum References {
    static var environment: Result<ReferenceEnvironment, ReferenceEnvironment.SetupError> {
        ReferenceEnvironment.shared
    }

    static var script: String {
        SharedTestData.packageRoot.appendingPathComponent("Tests/InferenceTests/reference_llama.py").path
    }

    /// Runs the reference script; throws with its output when it fails.
    static func run(_ arguments: [String]) async throws {
        let env = try environment.get()
        let result = try await ProcessRunner.run(env.python.path, [script] + arguments)
        guard result.status == 0 else {
            throw SetupError("reference_llama.py \(arguments.first ?? "") failed:\n\(result.stderr)")
        }
    }
}

struct SetupError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// Pins the CPU Vulkan device (lavapipe) for every test, so results do not depend on which GPU
/// a machine has; gives the loader a private runtime directory.
enum Lavapipe {
    static let icd: String? = {
        let dir = "/usr/share/vulkan/icd.d"
        let files = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return files.first { $0.hasPrefix("lvp_icd") && $0.hasSuffix(".json") }.map { "\(dir)/\($0)" }
    }()

    static let runtimeDirectory: String = {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ccinfer-tests-\(getuid())")
        try? FileManager.default.createDirectory(
            at: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        return dir.path
    }()

    /// Environment for child processes.
    static var environment: [String: String] {
        var env = ["XDG_RUNTIME_DIR": runtimeDirectory]
        if let icd { env["VK_ICD_FILENAMES"] = icd }
        return env
    }

    static let configured: Void = {
        for (k, v) in environment { setenv(k, v, 1) }
    }()

    static func device() throws -> VulkanDevice {
        _ = configured
        guard icd != nil else {
            throw SetupError("lavapipe is not installed (mesa-vulkan-drivers; scripts/setup installs it)")
        }
        return try VulkanDevice(instance: try VulkanInstance())
    }
}

/// One SmolLM2 engine on lavapipe shared by the tests that need the real model. Work on it runs
/// on one serial queue of its own: never two tests at once, and never on Swift's cooperative
/// threads, which the in-process servers of other tests need.
enum SharedModel {
    static let queue = DispatchQueue(label: "ccinfer.tests.model")
    nonisolated(unsafe) static var loaded: Result<Transformer, any Error>?

    static func run<T: Sendable>(_ body: @escaping @Sendable (Transformer) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            queue.async {
                if loaded == nil {
                    loaded = Result {
                        let env = try References.environment.get()
                        return try Transformer(url: env.model, device: try Lavapipe.device(), contextLength: 2048)
                    }
                }
                continuation.resume(with: Result { try body(try loaded!.get()) })
            }
        }
    }
}

/// Float32 values of a little-endian file.
func readFloats(_ url: URL) throws -> [Float] {
    let data = try Data(contentsOf: url)
    return data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
}

func jsonObject(_ url: URL) throws -> Any {
    try JSONSerialization.jsonObject(with: Data(contentsOf: url))
}
