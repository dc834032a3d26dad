import Foundation

/// Linux's configfs-tsm report interface (`/sys/kernel/config/tsm/report`,
/// Documentation/ABI/testing/configfs-tsm): make an entry directory, write the 64 report-data
/// bytes to `inblob`, read the quote from `outblob`. `generation` counts writes to the entry, so
/// a quote read after someone else's write is detected and retried.
public struct ConfigfsTSM: Sendable {
    public static let defaultRoot = URL(fileURLWithPath: "/sys/kernel/config/tsm/report")
    public let root: URL
    /// How long to wait for `outblob` (the kernel answers at once; a slow quoting service may not).
    public let timeout: Duration

    public init(root: URL = Self.defaultRoot, timeout: Duration = .seconds(30)) {
        self.root = root
        self.timeout = timeout
    }

    /// A DCAP quote over `reportData` (64 bytes).
    public func quote(reportData: Data) throws(TDXError) -> Data {
        guard reportData.count == 64 else {
            throw TDXError("TDX report data must be 64 bytes, not \(reportData.count)")
        }
        let entry = root.appendingPathComponent("ccworker-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        guard mkdir(entry.path, 0o700) == 0 else {
            throw TDXError(
                "\(entry.path): cannot create the report entry: \(String(cString: strerror(errno))) (is this a TDX guest with configfs-tsm mounted?)"
            )
        }
        defer {
            // configfs removes the attributes with the directory; a plain directory needs them removed first.
            if rmdir(entry.path) != 0 { try? FileManager.default.removeItem(at: entry) }
        }
        if let provider = read(entry, "provider"),
            provider.trimmingCharacters(in: .whitespacesAndNewlines) != "tdx_guest"
        {
            throw TDXError(
                "configfs-tsm provider is '\(provider.trimmingCharacters(in: .whitespacesAndNewlines))', not tdx_guest")
        }
        for _ in 0..<3 {
            try write(reportData, to: entry.appendingPathComponent("inblob"))
            let generation = read(entry, "generation")
            let quote = try waitForOutblob(entry)
            if read(entry, "generation") == generation { return quote }
        }
        throw TDXError("\(entry.path): another writer kept changing the report entry")
    }

    private func waitForOutblob(_ entry: URL) throws(TDXError) -> Data {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        let path = entry.appendingPathComponent("outblob").path
        while true {
            if let data = FileManager.default.contents(atPath: path), !data.isEmpty { return data }
            guard clock.now < deadline else { throw TDXError("\(path): no quote within \(timeout)") }
            usleep(5_000)
        }
    }

    private func read(_ entry: URL, _ name: String) -> String? {
        FileManager.default.contents(atPath: entry.appendingPathComponent(name).path).map {
            String(decoding: $0, as: UTF8.self)
        }
    }
}

/// Writes bytes to a sysfs/configfs attribute in one `write(2)` (attributes take a whole value per write).
func write(_ data: Data, to url: URL) throws(TDXError) {
    // O_CREAT is harmless on configfs/sysfs attributes, which exist already.
    let fd = open(url.path, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw TDXError("\(url.path): cannot open: \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    let written = data.withUnsafeBytes { Foundation.write(fd, $0.baseAddress, $0.count) }
    guard written == data.count else {
        throw TDXError("\(url.path): write failed: \(String(cString: strerror(errno)))")
    }
}
