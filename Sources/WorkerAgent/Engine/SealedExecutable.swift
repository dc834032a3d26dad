import AttestationCore
import CLinuxShims
import Foundation

/// The engine binary, copied into a sealed memory file (memfd with every write, grow, shrink
/// and seal seal set), measured there, and executed from there.
///
/// Threat: a provider with root on the worker host replacing the engine file after it was
/// measured, or serving from an engine other than the measured one. The bytes that are
/// measured are the sealed copy's, and the engine is started from that copy
/// (`/proc/<ccworker>/fd/<n>`), so replacing or editing the file on disk changes neither what
/// was measured nor what runs. The measurement log names the copy `ccworker-exec:<path>`, which
/// is how a policy tells a measured-and-executed engine from a file that was only hashed.
public final class SealedExecutable: Sendable {
    /// Log path prefix of an engine executed from its sealed, measured copy.
    public static let logPrefix = MeasuredFile.executedPrefix

    public let source: URL
    let fd: Int32
    /// SHA-256 of the sealed copy.
    public let digest: Data

    /// The path the engine is executed through: this process's descriptor of the sealed copy.
    public var executablePath: String { "/proc/\(getpid())/fd/\(fd)" }
    /// The path the measurement log records.
    public var logPath: String { Self.logPrefix + source.path }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    public init(copying url: URL) throws(Failure) {
        source = url
        let memfd = ccgate_memfd_create(url.lastPathComponent)
        guard memfd >= 0 else { throw Failure(description: "memfd_create: \(String(cString: strerror(errno)))") }
        do throws(Failure) {
            try Self.copy(url, into: memfd)
            guard ccgate_seal_all(memfd) == 0, ccgate_is_sealed(memfd) == 1 else {
                throw Failure(description: "cannot seal the engine copy: \(String(cString: strerror(errno)))")
            }
            digest = try Self.digest(of: memfd)
        } catch {
            close(memfd)
            throw error
        }
        fd = memfd
    }

    deinit { close(fd) }

    static func copy(_ url: URL, into memfd: Int32) throws(Failure) {
        let input = open(url.path, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw Failure(description: "\(url.path): \(String(cString: strerror(errno)))") }
        defer { close(input) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = read(input, &buffer, buffer.count)
            if n == 0 { break }
            guard n > 0 else { throw Failure(description: "\(url.path): \(String(cString: strerror(errno)))") }
            var offset = 0
            while offset < n {
                let written = buffer.withUnsafeBytes { write(memfd, $0.baseAddress! + offset, n - offset) }
                guard written > 0 else { throw Failure(description: "memfd: \(String(cString: strerror(errno)))") }
                offset += written
            }
        }
    }

    /// SHA-256 of the sealed copy, read back from the copy itself.
    static func digest(of memfd: Int32) throws(Failure) -> Data {
        let hasher = IncrementalHash(.sha256)
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var offset: off_t = 0
        while true {
            let n = pread(memfd, &buffer, buffer.count, offset)
            if n == 0 { break }
            guard n > 0 else { throw Failure(description: "memfd: \(String(cString: strerror(errno)))") }
            buffer.withUnsafeBytes { hasher.update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            offset += off_t(n)
        }
        return hasher.finalize()
    }
}
