import AttestationCore
import Foundation
import Synchronization

/// Bounded, process-wide memo tables that make re-verifying a known platform cheap: parsed
/// certificates, CRLs and collateral documents by the SHA-256 of their bytes, and signatures that
/// verified by the SHA-256 of (key, message, signature).
///
/// Threat: a cache that lets unverified data through. Nothing here records trust: parse results
/// are the same bytes parsed again, and a signature is remembered only after OpenSSL verified it,
/// under a key naming the exact key, message and signature (a collision would need SHA-256
/// broken). Time checks (validity windows, nextUpdate) are never cached; they run every time.
enum Memo {
    /// Entries per table; a gateway sees a few dozen platform families. Past this, start over.
    static let capacity = 2048

    final class Table<Value: Sendable>: Sendable {
        private let entries = Mutex<[Data: Value]>([:])
        let capacity: Int

        init(capacity: Int = Memo.capacity) { self.capacity = capacity }

        func value(_ key: Data, _ make: () throws(Certificate.DecodeError) -> Value) throws(Certificate.DecodeError)
            -> Value
        {
            if let hit = entries.withLock({ $0[key] }) { return hit }
            let made = try make()
            entries.withLock { e in
                if e.count >= capacity { e.removeAll(keepingCapacity: true) }
                e[key] = made
            }
            return made
        }

        func get(_ key: Data) -> Value? { entries.withLock { $0[key] } }

        func set(_ key: Data, _ value: Value) {
            entries.withLock { e in
                if e.count >= capacity { e.removeAll(keepingCapacity: true) }
                e[key] = value
            }
        }

        func removeAll() { entries.withLock { $0.removeAll() } }
    }

    static let chains = Table<[Certificate]>()
    /// CRLs are the large items (up to 1 MiB each); a gateway needs a handful (root, platform, processor).
    static let crls = Table<RevocationList>(capacity: 64)
    static let tcbInfos = Table<TCBInfo>()
    static let qeIdentities = Table<QEIdentity>()
    static let verified = Table<Bool>()

    static func key(_ parts: [UInt8]...) -> Data { IncrementalHash.framed(.sha256, parts) }

    static func chain(pem: String) throws(Certificate.DecodeError) -> [Certificate] {
        try chain(pemBytes: Array(pem.utf8))
    }

    static func chain(pemBytes: [UInt8]) throws(Certificate.DecodeError) -> [Certificate] {
        try chains.value(key(pemBytes)) { () throws(Certificate.DecodeError) in
            try Certificate.chain(pemBytes: pemBytes)
        }
    }

    static func crl(der: [UInt8]) throws(Certificate.DecodeError) -> RevocationList {
        try crls.value(key(der)) { () throws(Certificate.DecodeError) in try RevocationList(der: der) }
    }

    /// A collateral document parsed once per distinct text; failures are not remembered.
    static func parsed<T: Sendable>(_ text: String, _ table: Table<T>, _ parse: (String) -> Result<T, Reason>)
        -> Result<T, Reason>
    {
        let k = key(Array(text.utf8))
        if let hit = table.get(k) { return .success(hit) }
        let result = parse(text)
        if case .success(let value) = result { table.set(k, value) }
        return result
    }

    /// `check` run once per distinct (kind, key, message, signature) that passes.
    static func signature(_ kind: String, key: PublicKey, message: [UInt8], signature: [UInt8], _ check: () -> Bool)
        -> Bool
    {
        let k = Self.key(Array(kind.utf8), [UInt8](key.spkiDER), message, signature)
        if verified.get(k) == true { return true }
        guard check() else { return false }
        verified.set(k, true)
        return true
    }

    /// Forgets everything (benchmarks measuring a cold verifier).
    static func reset() {
        chains.removeAll()
        crls.removeAll()
        tcbInfos.removeAll()
        qeIdentities.removeAll()
        verified.removeAll()
        PublicKey.clearCache()
    }
}

extension TDXQuoteVerifier {
    /// Drops every memoized parse and signature, so the next verification runs cold.
    public static func resetCaches() { Memo.reset() }
}
