import AttestationCore
import Foundation
import Synchronization

/// A real software TPM (swtpm, TCG TPM 2.0) started for one test and stopped when released.
public final class Swtpm: @unchecked Sendable {
    public let port: Int
    public let stateDirectory: TemporaryDirectory
    private let process: Process

    /// The TCTI configuration for tss2 and tpm2-tools.
    public var tcti: String { "swtpm:host=127.0.0.1,port=\(port)" }

    public enum StartError: Error, CustomStringConvertible {
        case notInstalled
        case didNotStart(String)
        public var description: String {
            switch self {
            case .notInstalled: "swtpm is not installed (scripts/setup installs it)"
            case .didNotStart(let s): "swtpm did not start: \(s)"
            }
        }
    }

    /// Starts a TPM. `ca`: manufacture it first with `swtpm_setup`, its EK certificates issued
    /// by that local CA (nil: a bare TPM with no EK certificate).
    /// (The start waits on processes and polls: it runs on a thread of its own, never on the
    /// cooperative pool.)
    public static func start(ca: SwtpmLocalCA? = .shared) async throws -> Swtpm {
        try await offPool { try startBlocking(ca: ca) }
    }

    private static func startBlocking(ca: SwtpmLocalCA?) throws -> Swtpm {
        guard ProcessRunner.available("swtpm") else { throw StartError.notInstalled }
        var lastError = ""
        // Ports are picked at random from a high range; a clash makes swtpm exit, and we retry.
        for _ in 0..<20 {
            let port = Int.random(in: 20_000..<60_000) & ~1
            // A port something already listens on would answer the connection check below for
            // the other listener (two workers on one TPM): skip it.
            if canConnect(port: port) || canConnect(port: port + 1) { continue }
            let dir = try TemporaryDirectory("swtpm")
            if let ca { try ca.manufacture(dir.url) }
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = [
                "swtpm", "socket", "--tpm2", "--server", "type=tcp,port=\(port),bindaddr=127.0.0.1",
                "--ctrl", "type=tcp,port=\(port + 1),bindaddr=127.0.0.1", "--tpmstate", "dir=\(dir.url.path)",
                "--flags", "not-need-init,startup-clear",
            ]
            let err = Pipe()
            process.standardError = err
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            let deadline = Date().addingTimeInterval(10)
            while Date() < deadline, process.isRunning {
                // Still running a moment after the port answers: the listener is this swtpm (one
                // that lost the port to a concurrent start exits at once).
                if canConnect(port: port), stillRunning(process) {
                    Running.add(process.processIdentifier)
                    return Swtpm(port: port, stateDirectory: dir, process: process)
                }
                usleep(20_000)
            }
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
            lastError = String(decoding: err.fileHandleForReading.availableData, as: UTF8.self)
        }
        throw StartError.didNotStart(lastError)
    }

    private init(port: Int, stateDirectory: TemporaryDirectory, process: Process) {
        self.port = port
        self.stateDirectory = stateDirectory
        self.process = process
    }

    /// Stops the TPM: SIGTERM, then SIGKILL if it is still serving a client after two seconds.
    public func stop() {
        defer { Running.remove(process.processIdentifier) }
        guard process.isRunning else { return }
        process.terminate()
        let deadline = Date().addingTimeInterval(2)
        while process.isRunning, Date() < deadline { usleep(10_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    deinit { stop() }

    /// TPMs still running when the test process exits (a test that never released its TPM) are
    /// killed then, so no swtpm outlives the run.
    enum Running {
        nonisolated(unsafe) static var pids = Set<Int32>()
        static let lock = NSLock()
        static let installed: Void = {
            atexit {
                Running.lock.lock()
                for pid in Running.pids { kill(pid, SIGKILL) }
                Running.lock.unlock()
            }
        }()

        static func add(_ pid: Int32) {
            _ = installed
            lock.withLock { _ = pids.insert(pid) }
        }

        static func remove(_ pid: Int32) { lock.withLock { _ = pids.remove(pid) } }
    }

    /// Whether `process` is still running a moment from now.
    static func stillRunning(_ process: Process) -> Bool {
        usleep(50_000)
        return process.isRunning
    }

    static func canConnect(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        return rc == 0
    }

    /// Runs a tpm2-tools command against this TPM, throwing with its stderr on failure.
    @discardableResult
    public func tool(_ name: String, _ arguments: [String], in dir: URL) async throws -> ProcessResult {
        let result = try await ProcessRunner.run(
            name, arguments, environment: ["TPM2TOOLS_TCTI": tcti], currentDirectory: dir)
        guard result.status == 0 else {
            throw StartError.didNotStart(
                "\(name) \(arguments.joined(separator: " ")) exited \(result.status): \(result.stderr)")
        }
        return result
    }
}

/// A local certificate authority that issues swtpm EK certificates (swtpm_localca), as a TPM
/// manufacturer would. Tests pin its root explicitly (`--tpm-ek-root`); nothing else trusts it.
public final class SwtpmLocalCA: Sendable {
    public let directory: URL
    /// The self-signed root to pin.
    public var rootCertificate: URL { directory.appendingPathComponent("swtpm-localca-rootca-cert.pem") }
    /// The intermediate that signs EK certificates (the worker presents it as `ek_chain`).
    public var issuerCertificate: URL { directory.appendingPathComponent("issuercert.pem") }
    let configDirectory: URL

    /// One CA per test process.
    public static let shared: SwtpmLocalCA? = try? SwtpmLocalCA()

    /// A new CA (its keys are made when the first TPM is manufactured).
    public init() throws {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent(
            "ccgate-swtpm-ca-\(getpid())-\(UUID().uuidString.prefix(8))")
        directory = base.appendingPathComponent("ca")
        configDirectory = base
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let localca = """
            statedir = \(directory.path)
            signingkey = \(directory.path)/signkey.pem
            issuercert = \(directory.path)/issuercert.pem
            certserial = \(directory.path)/certserial

            """
        try localca.write(to: base.appendingPathComponent("swtpm-localca.conf"), atomically: true, encoding: .utf8)
        try "--platform-manufacturer ccgate-tests\n--platform-version 1\n--platform-model swtpm\n".write(
            to: base.appendingPathComponent("swtpm-localca.options"), atomically: true, encoding: .utf8)
        let setup = """
            create_certs_tool = /usr/bin/swtpm_localca
            create_certs_tool_config = \(base.path)/swtpm-localca.conf
            create_certs_tool_options = \(base.path)/swtpm-localca.options

            """
        try setup.write(to: base.appendingPathComponent("swtpm_setup.conf"), atomically: true, encoding: .utf8)
        _ = Self.cleanup
        Self.made.withLock { $0.append(base) }
        // The CA's keys and certificates are made with the first TPM: make one now, so that the
        // root exists before anyone pins it.
        let first = base.appendingPathComponent("first-tpm")
        try FileManager.default.createDirectory(at: first, withIntermediateDirectories: true)
        try manufacture(first)
    }

    /// The root certificate (DER), for a verifier to pin.
    public var rootDER: Data { get throws { try Self.der(rootCertificate) } }
    /// The intermediate (DER), as a worker presents it in `ek_chain`.
    public var chainDER: Data { get throws { try Self.der(issuerCertificate) } }

    static func der(_ pem: URL) throws -> Data {
        let text = try String(contentsOf: pem, encoding: .utf8)
        guard let der = PEMBlock.first(in: text, label: "CERTIFICATE") else {
            throw Swtpm.StartError.didNotStart("\(pem.path) holds no certificate")
        }
        return der
    }

    /// Writes a manufactured TPM state (EKs, EK certificates in NV) into `state`.
    public func manufacture(_ state: URL) throws {
        let result = try ProcessRunner.runBlocking(
            "swtpm_setup",
            [
                "--tpm2", "--tpmstate", state.path, "--create-ek-cert", "--overwrite",
                "--config", configDirectory.appendingPathComponent("swtpm_setup.conf").path,
            ], environment: [:], currentDirectory: state)
        guard result.status == 0 else {
            throw Swtpm.StartError.didNotStart("swtpm_setup exited \(result.status): \(result.stderr)\(result.stdout)")
        }
    }

    static let made = Mutex<[URL]>([])
    static let cleanup: Void = {
        atexit { for url in SwtpmLocalCA.made.withLock({ $0 }) { try? FileManager.default.removeItem(at: url) } }
    }()
}
