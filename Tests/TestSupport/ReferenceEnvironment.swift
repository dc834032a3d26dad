import Foundation

/// The independent references `scripts/reference-env` prepares (cached under ~/.cache/ccgate):
/// a Python virtual environment with llama-cpp-python and the openai SDK, one with pytoniq-core and pytvm,
/// and the SmolLM2 model.
public struct ReferenceEnvironment: Sendable {
    public let venv: URL
    public let model: URL
    /// A virtual environment with pytoniq-core (TON cells, BoCs, addresses) and pytvm (the TON VM emulator).
    public let tonVenv: URL
    public var python: URL { venv.appendingPathComponent("bin/python") }
    public var tonPython: URL { tonVenv.appendingPathComponent("bin/python") }

    public struct SetupError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Prepared once per test process.
    public static let shared: Result<ReferenceEnvironment, SetupError> = {
        do {
            let result = try ProcessRunner.runBlocking(
                SharedTestData.packageRoot.appendingPathComponent("scripts/reference-env").path, [])
            guard result.status == 0 else {
                return .failure(SetupError(description: "scripts/reference-env failed: \(result.stderr)"))
            }
            var values = [String: String]()
            for line in result.stdout.split(separator: "\n") {
                let parts = line.split(separator: "=", maxSplits: 1)
                if parts.count == 2 { values[String(parts[0])] = String(parts[1]) }
            }
            guard let venv = values["VENV"], let model = values["MODEL"], let ton = values["TON_VENV"] else {
                return .failure(SetupError(description: "scripts/reference-env printed \(result.stdout)"))
            }
            return .success(
                ReferenceEnvironment(
                    venv: URL(fileURLWithPath: venv), model: URL(fileURLWithPath: model),
                    tonVenv: URL(fileURLWithPath: ton)))
        } catch {
            return .failure(SetupError(description: "\(error)"))
        }
    }()
}
