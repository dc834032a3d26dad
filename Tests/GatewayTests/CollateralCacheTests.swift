import AttestationCore
import Foundation
import Gateway
import TDXVerifier
import TestSupport
import Testing

/// The on-disk collateral cache: per-item storage, newer issues replace older ones, unreadable
/// files never break it, and lookups assemble a full set or nothing.
@Suite struct CollateralCacheTests {
    /// Both shared collateral sets' certificates are valid then, and both sets are issued by then.
    static let at = Date.rfc3339("2026-03-01T00:00:00Z")!
    func bundle(_ envelope: String) throws -> [Collateral] {
        try CollateralCache.readBundle(try SharedTestData.data(envelope))
    }

    @Test func itemsAreStoredPerKeyAndSurviveReopening() throws {
        let dir = try TemporaryDirectory()
        let cache = try CollateralCache(directory: dir.url)
        let results = try cache.store(
            try bundle("tdx/d1-dcapqvl-sample.json") + (try bundle("tdx/cocoon-quote-d5-collateral.json")),
            roots: PinnedRoots.production, at: Self.at)
        // Two TCB infos (two FMSPCs); QE identity, PCK CRL and root CRL: the newer issue wins.
        let keys = Set(try CollateralCache(directory: dir.url).all.map(\.key))
        #expect(
            keys == [
                "tcb-info/tdx/b0c06f000000", "tcb-info/tdx/90c06f000000", "qe-identity/tdx", "pck-crl/platform",
                "root-ca-crl",
            ])
        // The second set's QE identity and PCK CRL are newer; both sets carry the same root CA CRL.
        #expect(results.filter { $0.1 == .replaced }.map(\.0.key).sorted() == ["pck-crl/platform", "qe-identity/tdx"])
        #expect(results.filter { $0.1 == .kept }.map(\.0.key) == ["root-ca-crl"])
        let qe = try #require(cache.all.first { $0.key == "qe-identity/tdx" })
        #expect(qe.issueDate == Date.rfc3339("2026-02-18T10:42:15Z"))
        // Importing the older set again keeps the newer items.
        let again = try cache.store(
            try bundle("tdx/d1-dcapqvl-sample.json"), roots: PinnedRoots.production, at: Self.at)
        #expect(again.filter { $0.1 == .kept }.count == 4)
    }

    @Test func unreadableFilesAreSkippedNotFatal() throws {
        let dir = try TemporaryDirectory()
        try Data("{\"torn".utf8).write(to: dir.file("tcb-info_tdx_000000000000.json"))
        let cache = try CollateralCache(directory: dir.url)
        #expect(cache.skipped == ["tcb-info_tdx_000000000000.json"])
        #expect(cache.all.isEmpty)
        _ = try cache.store(
            try bundle("tdx/cocoon-quote-d5-collateral.json"), roots: PinnedRoots.production, at: Self.at)
        #expect(cache.all.count == 4)
    }

    @Test func lookupNeedsEveryItem() throws {
        let dir = try TemporaryDirectory()
        let cache = try CollateralCache(directory: dir.url)
        _ = try cache.store(
            try bundle("tdx/cocoon-quote-d5-collateral.json"), roots: PinnedRoots.production, at: Self.at)
        let at = Date.rfc3339("2026-03-01T00:00:00Z")!
        let issuer = "/CN=Intel SGX PCK Platform CA/O=Intel Corporation/L=Santa Clara/ST=CA/C=US"
        let hit = CollateralKey(tee: .tdx, fmspc: [0x90, 0xC0, 0x6F, 0, 0, 0], pceID: [0, 0], pckIssuer: issuer)
        #expect(cache.collateral(for: hit, at: at) != nil)
        let otherFamily = CollateralKey(
            tee: .tdx, fmspc: [0xB0, 0xC0, 0x6F, 0, 0, 0], pceID: [0, 0], pckIssuer: issuer)
        #expect(cache.collateral(for: otherFamily, at: at) == nil)
        let sgx = CollateralKey(tee: .sgx, fmspc: [0x90, 0xC0, 0x6F, 0, 0, 0], pceID: [0, 0], pckIssuer: issuer)
        #expect(cache.collateral(for: sgx, at: at) == nil)
    }
}
