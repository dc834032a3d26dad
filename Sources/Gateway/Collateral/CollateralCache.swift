import AdmissionCore
import AttestationCore
import Foundation
import Synchronization
import TDXVerifier

/// Intel collateral kept on disk, one file per item (TCB info per FMSPC, QE identity, PCK CRL per
/// CA, root CA CRL), each kept until a newer issue of the same item replaces it. Verifiers look
/// items up in memory; nothing here is trusted, since every use re-checks signatures and windows.
///
/// Files are written to a temporary name, flushed and renamed, so a crash leaves either the old
/// item or the new one, never a torn file.
public final class CollateralCache: CollateralSource, Sendable {
    public let directory: URL
    public let mode: String
    private let items: Mutex<[String: CollateralItem]>
    /// Serializes stores: compare and write as one step, so an older issue never overwrites a newer one.
    private let writer = Mutex(())

    public enum CacheError: Error, CustomStringConvertible {
        case unreadable(String)
        public var description: String {
            switch self {
            case .unreadable(let s): s
            }
        }
    }

    /// Opens (creating if needed) a cache directory. Unreadable item files are skipped and named
    /// in `skipped`, never fatal: the cache only ever holds data that is checked again on use.
    public init(directory: URL, mode: String = "cache") throws(CacheError) {
        self.directory = directory
        self.mode = mode
        do { try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true) } catch {
            throw .unreadable("\(directory.path): cannot create: \(error.localizedDescription)")
        }
        var loaded = [String: CollateralItem]()
        var skipped = [String]()
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        for name in names.sorted() where name.hasSuffix(".json") {
            let url = directory.appendingPathComponent(name)
            guard let data = try? Data(contentsOf: url),
                let item = try? Self.decoder.decode(CollateralItem.self, from: data)
            else {
                skipped.append(name)
                continue
            }
            loaded[item.key] = item
        }
        items = Mutex(loaded)
        self.skipped = skipped
    }

    /// Files found unreadable when the cache was opened.
    public let skipped: [String]

    public func collateral(for key: CollateralKey, at time: Date) -> Collateral? {
        let needed = CollateralItem.keys(for: key)
        let found = items.withLock { all in needed.compactMap { all[$0] } }
        guard found.count == needed.count else { return nil }
        return CollateralItem.assemble(found)
    }

    /// Whether any item the key needs is missing or past its `nextUpdate` at `time`.
    public func needsRefresh(for key: CollateralKey, at time: Date) -> Bool {
        let needed = CollateralItem.keys(for: key)
        return items.withLock { all in needed.contains { all[$0] == nil || all[$0]!.nextUpdate < time } }
    }

    public var all: [CollateralItem] { items.withLock { Array($0.values) }.sorted { $0.key < $1.key } }

    public enum Outcome: String, Sendable { case added, replaced, kept }

    /// Stores each item of the collateral sets, once verified to `roots` at `time` (see
    /// `CollateralItem.verifiedSplit`), unless the cache already holds a newer or equal issue of it.
    public func store(_ sets: [Collateral], roots: Set<String>, at time: Date) throws(CacheError) -> [(
        CollateralItem, Outcome
    )] {
        var verified = [[CollateralItem]]()
        for set in sets {
            switch CollateralItem.verifiedSplit(set, roots: roots, at: time) {
            case .success(let p): verified.append(p)
            case .failure(let r): throw .unreadable("\(r.code): \(r.message)")
            }
        }
        return try writer.withLock { _ throws(CacheError) in
            var results = [(CollateralItem, Outcome)]()
            for item in verified.joined() {
                let existing = items.withLock { $0[item.key] }
                if let existing, existing.issueDate >= item.issueDate {
                    results.append((item, .kept))
                    continue
                }
                try write(item)
                items.withLock { $0[item.key] = item }
                results.append((item, existing == nil ? .added : .replaced))
            }
            return results
        }
    }

    /// Reads an offline bundle: one collateral object with Intel's field names, an array of them,
    /// `{"collateral": …}` of either, or an evidence envelope (its `collateral` is taken).
    public static func readBundle(_ data: Data) throws(CacheError) -> [Collateral] {
        guard data.count <= 64 << 20 else { throw .unreadable("bundle is larger than 64 MiB") }
        guard let json = try? JSONSerialization.jsonObject(with: data) else { throw .unreadable("bundle is not JSON") }
        var objects = [Any]()
        if let dict = json as? [String: Any], let inner = dict["collateral"] {
            objects = (inner as? [Any]) ?? [inner]
        } else if let array = json as? [Any] {
            objects = array
        } else {
            objects = [json]
        }
        guard !objects.isEmpty else { throw .unreadable("bundle holds no collateral") }
        var sets = [Collateral]()
        for (i, object) in objects.enumerated() {
            guard let dict = object as? [String: Any] else { throw .unreadable("bundle entry \(i) is not an object") }
            var fields = [String: String]()
            for (k, v) in dict { if let s = v as? String { fields[k] = s } }
            switch Collateral.read(fields) {
            case .success(let c): sets.append(c)
            case .failure(let r): throw .unreadable("bundle entry \(i): \(r.message)")
            }
        }
        return sets
    }

    private func write(_ item: CollateralItem) throws(CacheError) {
        let name = item.key.replacingOccurrences(of: "/", with: "_") + ".json"
        let target = directory.appendingPathComponent(name)
        let temporary = directory.appendingPathComponent(
            ".\(name).\(getpid()).\(UInt64.random(in: 0...UInt64.max)).tmp")
        do {
            let data = try Self.encoder.encode(item)
            guard FileManager.default.createFile(atPath: temporary.path, contents: nil) else {
                throw CacheError.unreadable("\(temporary.path): cannot create")
            }
            let handle = try FileHandle(forWritingTo: temporary)
            try handle.write(contentsOf: data)
            try handle.synchronize()
            try handle.close()
            guard rename(temporary.path, target.path) == 0 else {
                throw CacheError.unreadable("\(target.path): rename failed: \(String(cString: strerror(errno)))")
            }
        } catch let error as CacheError {
            try? FileManager.default.removeItem(at: temporary)
            throw error
        } catch {
            try? FileManager.default.removeItem(at: temporary)
            throw .unreadable("\(target.path): \(error.localizedDescription)")
        }
    }

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .iso8601
        e.outputFormatting = [.sortedKeys, .prettyPrinted]
        return e
    }()

    static let decoder: JSONDecoder = {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }()

    /// `$CCGATE_COLLATERAL_DIR`, else `$XDG_DATA_HOME/ccgate/collateral`, else
    /// `~/.local/share/ccgate/collateral`.
    public static var defaultDirectory: URL {
        let env = ProcessInfo.processInfo.environment
        if let dir = env["CCGATE_COLLATERAL_DIR"], !dir.isEmpty { return URL(fileURLWithPath: dir) }
        let base =
            env["XDG_DATA_HOME"].flatMap { $0.isEmpty ? nil : URL(fileURLWithPath: $0) }
            ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".local/share")
        return base.appendingPathComponent("ccgate/collateral")
    }
}

/// Online mode: before a DCAP quote without collateral is verified, fetch what the cache lacks
/// (or holds only expired) from a PCCS, and store it. Verification itself stays offline.
public struct CollateralPrefetcher: EvidencePreparing {
    public let cache: CollateralCache
    public let client: PCCSClient
    /// Roots fetched collateral (and the quote's PCK chain, before anything is fetched) must chain to.
    public let roots: Set<String>

    public init(cache: CollateralCache, client: PCCSClient, roots: Set<String> = PinnedRoots.production) {
        self.cache = cache
        self.client = client
        self.roots = roots
    }

    /// Returns what happened, for logs: nil when nothing was needed.
    @discardableResult
    public func prepare(envelope: Data, at time: Date) async -> String? {
        guard case .success(let parsed) = EvidenceEnvelope.parse(envelope),
            let key = CollateralKey.needed(by: parsed, roots: roots, at: time), cache.needsRefresh(for: key, at: time)
        else { return nil }
        do {
            let collateral = try await client.fetch(key)
            let stored = try cache.store([collateral], roots: roots, at: time)
            return "fetched \(key): " + stored.map { "\($0.0.key) \($0.1.rawValue)" }.joined(separator: ", ")
        } catch {
            return "collateral fetch for \(key) failed: \(error)"
        }
    }
}
