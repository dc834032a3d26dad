import AttestationCore
import EventLog
import Foundation

/// A file's SHA-256, taken once and recorded as it was read (so that what a log says and what a
/// consumer is told to expect are the same read).
public struct FileMeasurement: Sendable {
    public let path: String
    public let sha256: Data
    public init(path: String, sha256: Data) {
        self.path = path
        self.sha256 = sha256
    }
}

/// Measures files into an `ima-ng` log and a TPM PCR, the way the kernel's IMA would: the file's
/// SHA-256 goes into the entry, the entry's template hash is extended into the PCR of every bank.
public struct FileMeasurer {
    public let pcr: Int
    public let banks: [HashAlgorithm]

    public init(pcr: Int = 23, banks: [HashAlgorithm] = [.sha1, .sha256]) {
        self.pcr = pcr
        self.banks = banks
    }

    /// SHA-256 of a file, read in 1 MiB chunks (model files are hundreds of MiB).
    public static func digest(of url: URL, algorithm: HashAlgorithm = .sha256) throws -> Data {
        let handle = try FileHandle(forReadingFrom: url)
        defer { try? handle.close() }
        let hasher = IncrementalHash(algorithm)
        while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
            chunk.withUnsafeBytes { hasher.update($0) }
        }
        return hasher.finalize()
    }

    /// Measures `url` into `device` and returns the log entry to append.
    public func measure(_ url: URL, into device: TPMDevice) throws -> IMALog.Entry {
        try measure(digest: try Self.digest(of: url), path: url.path, into: device)
    }

    /// Records a SHA-256 already taken (a sealed executable's) under `path`.
    public func measure(digest: Data, path: String, into device: TPMDevice) throws -> IMALog.Entry {
        let entry = IMALog.Entry(pcr: pcr, fileAlgorithm: .sha256, fileDigest: digest, path: path)
        try device.extend(
            pcr: pcr, digests: Dictionary(uniqueKeysWithValues: banks.map { ($0, entry.extendValue(for: $0)) }))
        return entry
    }
}
