import AttestationCore
import EventLog
import Foundation
import Synchronization
import TDXVerifier

/// A directory laid out like a TDX guest's kernel interfaces, answered by a stand-in for the TDX
/// module and quoting enclave (there is no TDX hardware here):
///
/// - `tsm/` like `/sys/kernel/config/tsm/report`: for each entry whose `inblob` holds 64 bytes,
///   a DCAP quote over them is written to `outblob`, signed by the `DCAPWorld` test PKI;
/// - `measurements/rtmr3:sha384`, a FIFO: every 48-byte write extends RTMR3, as the guest
///   driver's register does;
/// - `ccel`, a firmware event log (header only: RTMR0–2 stay zero).
public final class FakeTDXModule: @unchecked Sendable {
    public let directory: TemporaryDirectory
    public var tsm: URL { directory.file("tsm") }
    public var measurements: URL { directory.file("measurements") }
    public var ccel: URL { directory.file("ccel") }
    public private(set) var world: DCAPWorld
    private let rtmr3 = Mutex(Data(count: 48))
    private let stopped = Atomic<Bool>(false)
    private var threads = [Thread]()
    private let fifo: Int32
    /// Quotes written so far.
    public var quotes: Int { quoteCount.load(ordering: .relaxed) }
    private let quoteCount = Atomic<Int>(0)

    public init(world: DCAPWorld) throws {
        self.world = world
        directory = try TemporaryDirectory("tdx")
        try FileManager.default.createDirectory(at: directory.file("tsm"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: directory.file("measurements"), withIntermediateDirectories: true)
        try CCELEncoder.header().write(to: directory.file("ccel"))
        let path = directory.file("measurements/rtmr3:sha384").path
        guard mkfifo(path, 0o600) == 0 else {
            throw TDXFakeError("mkfifo \(path): \(String(cString: strerror(errno)))")
        }
        // Read-write: opening never blocks, and the FIFO stays open between the worker's writes.
        fifo = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC)
        guard fifo >= 0 else { throw TDXFakeError("open \(path): \(String(cString: strerror(errno)))") }
        let reader = Thread { [unowned self] in self.readExtensions() }
        let responder = Thread { [unowned self] in self.answerReports() }
        threads = [reader, responder]
        threads.forEach { $0.start() }
    }

    public struct TDXFakeError: Error, CustomStringConvertible {
        public let description: String
        init(_ d: String) { description = d }
    }

    public var currentRTMR3: Data { rtmr3.withLock { $0 } }

    public func stop() {
        stopped.store(true, ordering: .relaxed)
        while threads.contains(where: { !$0.isFinished }) { usleep(2_000) }
        close(fifo)
    }

    deinit { if !stopped.load(ordering: .relaxed) { stop() } }

    private func readExtensions() {
        var pending = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !stopped.load(ordering: .relaxed) {
            var p = pollfd(fd: fifo, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 20) > 0 else { continue }
            // Read and extend under the register's lock: a quote never sees a write half-applied.
            rtmr3.withLock { register in
                let n = read(fifo, &buffer, buffer.count)
                guard n > 0 else { return }
                pending += buffer[0..<n]
                while pending.count >= 48 {
                    register = HashAlgorithm.sha384.extend(register, with: Data(pending.prefix(48)))
                    pending.removeFirst(48)
                }
            }
        }
    }

    /// Bytes written to the register file and not read yet (FIONREAD).
    private var unreadExtensionBytes: Int32 {
        var available: Int32 = 0
        _ = ioctl(fifo, 0x541B, &available)
        return available
    }

    private func answerReports() {
        while !stopped.load(ordering: .relaxed) {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: tsm.path)) ?? []
            for name in entries {
                let entry = tsm.appendingPathComponent(name)
                let inblob = entry.appendingPathComponent("inblob").path
                let outblob = entry.appendingPathComponent("outblob").path
                guard let data = FileManager.default.contents(atPath: inblob), data.count == 64,
                    (FileManager.default.contents(atPath: outblob) ?? Data()).isEmpty
                else { continue }
                // The guest driver extends synchronously: the writes made before this quote was
                // asked for are in the register before it is read (a loaded machine may not have
                // run the reader yet).
                while unreadExtensionBytes > 0 { usleep(1_000) }
                var w = world
                w.reportData = [UInt8](data)
                w.rtmrs = [
                    [UInt8](repeating: 0, count: 48), [UInt8](repeating: 0, count: 48),
                    [UInt8](repeating: 0, count: 48),
                    [UInt8](currentRTMR3),
                ]
                let quote = Data(w.quote())
                // Write under a temporary name and rename: the reader never sees half a quote.
                let temporary = entry.appendingPathComponent(".outblob")
                if (try? quote.write(to: temporary)) != nil, rename(temporary.path, outblob) == 0 {
                    quoteCount.add(1, ordering: .relaxed)
                }
            }
            usleep(5_000)
        }
    }
}
