/// Why the engine refused something. The code is stable (tests, logs and API error bodies use
/// it); the message is for people. Equality is by code, so a test can ask for "this kind of
/// failure" without pinning the wording.
public struct InferenceError: Error, Equatable, CustomStringConvertible, Sendable {
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// The file is not a GGUF model, or is truncated or inconsistent.
        public static let modelMalformed = Code(rawValue: "model.malformed")
        /// The file parses, but uses an architecture, tensor type or tokenizer the engine lacks.
        public static let modelUnsupported = Code(rawValue: "model.unsupported")
        /// The model's bytes do not hash to the digest the worker measured (`--model-sha256`).
        public static let modelDigestMismatch = Code(rawValue: "model.digest-mismatch")
        /// The model file cannot be opened or mapped.
        public static let modelUnreadable = Code(rawValue: "model.unreadable")
        /// No Vulkan loader or driver is usable.
        public static let vulkanNoDriver = Code(rawValue: "vulkan.no-driver")
        /// The requested device does not exist or cannot run compute work.
        public static let vulkanNoDevice = Code(rawValue: "vulkan.no-device")
        /// A Vulkan call failed (out of device memory, device lost, …).
        public static let vulkanFailed = Code(rawValue: "vulkan.failed")
        /// The prompt plus the requested tokens do not fit the context.
        public static let contextExceeded = Code(rawValue: "request.context-exceeded")
        /// A request parameter is out of range or of the wrong type.
        public static let invalidRequest = Code(rawValue: "request.invalid")
        /// The chat template uses a construct the template engine does not support, or failed.
        public static let templateFailed = Code(rawValue: "template.failed")
    }

    public let code: Code
    public let message: String
    public let file: String
    public let line: Int

    public init(_ code: Code, _ message: String, file: String = #fileID, line: Int = #line) {
        self.code = code
        self.message = message
        self.file = file
        self.line = line
    }

    public var description: String { "\(message) [\(code)]" }

    public static func == (a: InferenceError, b: InferenceError) -> Bool { a.code == b.code }
}
