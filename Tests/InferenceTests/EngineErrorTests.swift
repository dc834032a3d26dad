import Foundation
@testable import Inference
import TestSupport
import Testing

/// Failures a GPU owner or a client can cause, each a clear error with its code.
@Suite struct EngineErrorTests {
    static var ccinfer: String {
        Bundle.main.executableURL!.deletingLastPathComponent().appendingPathComponent("ccinfer").path
    }

    @Test func aMissingVulkanDriverIsExplained() async throws {
        var env = Lavapipe.environment
        env["VK_ICD_FILENAMES"] = "/nonexistent/icd.json"
        env["VK_DRIVER_FILES"] = "/nonexistent/icd.json"
        let devices = try await ProcessRunner.run(Self.ccinfer, ["devices"], environment: env)
        #expect(devices.status == 1)
        #expect(devices.stderr.contains("vulkan.no-driver"), "\(devices.stderr)")
        #expect(devices.stderr.contains("mesa-vulkan-drivers"))
        let model = try References.environment.get().model.path
        let serve = try await ProcessRunner.run(
            Self.ccinfer, ["serve", "--model", model, "--port", "0"], environment: env)
        #expect(serve.status == 1)
        #expect(serve.stderr.contains("vulkan.no-driver"))
    }

    @Test func devicesAreListedWithTypeDriverAndMemory() async throws {
        let result = try await ProcessRunner.run(Self.ccinfer, ["devices"], environment: Lavapipe.environment)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.hasPrefix("0: llvmpipe"))
        #expect(
            result.stdout.contains("CPU") && result.stdout.contains("driver llvmpipe") && result.stdout.contains("GiB"))
        let missing = try await ProcessRunner.run(
            Self.ccinfer,
            ["generate", "--model", try References.environment.get().model.path, "--device", "7", "--prompt", "x"],
            environment: Lavapipe.environment)
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("vulkan.no-device") && missing.stderr.contains("no Vulkan device 7"))
    }

    @Test func aPromptLongerThanTheContextIsRefused() async throws {
        let outcome: (InferenceError?, InferenceError?, Int) = try await SharedModel.run { model in
            let long = model.tokenizer.encode(String(repeating: "many words here ", count: 1000))
            var first: InferenceError?
            do {
                _ = try Generator(model: model).generate(
                    prompt: long, parameters: SamplingParameters(temperature: 0, maxTokens: 4))
            } catch { first = error as? InferenceError }
            var second: InferenceError?
            do {
                _ = try Generator(model: model).generate(
                    prompt: [1, 2, 3], parameters: SamplingParameters(temperature: 0, maxTokens: model.contextLength))
            } catch { second = error as? InferenceError }
            return (first, second, long.count)
        }
        #expect(outcome.2 > 2048)
        #expect(outcome.0?.code == .contextExceeded)
        #expect(outcome.0?.message.contains("\(outcome.2) tokens") == true)
        #expect(outcome.1?.code == .contextExceeded)
    }

    @Test func usageErrorsExitTwo() async throws {
        for args in [
            ["serve"], ["serve", "--model", "/nonexistent.gguf"], ["generate", "--model", "/dev/null"], ["frobnicate"],
            ["serve", "--model", try References.environment.get().model.path, "--port", "70000"],
        ] {
            let r = try await ProcessRunner.run(Self.ccinfer, args, environment: Lavapipe.environment)
            #expect(r.status == 2, "\(args): \(r.status) \(r.stderr)")
        }
        let help = try await ProcessRunner.run(Self.ccinfer, ["serve", "--help"])
        #expect(help.status == 0 && help.stdout.contains("EXAMPLE") || help.stdout.contains("Example"))
        let version = try await ProcessRunner.run(Self.ccinfer, ["version"])
        #expect(version.stdout.contains("shaderc 2023.2") && version.stdout.contains("matmul_q4_1"))
    }

    @Test func aCorruptModelIsAnErrorFromTheCLI() async throws {
        let dir = try TemporaryDirectory("corrupt")
        try Data("GGUF this is not really a model".utf8).write(to: dir.file("bad.gguf"))
        let r = try await ProcessRunner.run(
            Self.ccinfer, ["generate", "--model", dir.file("bad.gguf").path, "--prompt", "x"],
            environment: Lavapipe.environment)
        #expect(r.status == 1)
        #expect(r.stderr.contains("model."), "\(r.stderr)")
    }
}
