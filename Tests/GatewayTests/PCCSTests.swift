import AdmissionCore
import AttestationCore
import Foundation
import Gateway
import HTTPTypes
import Hummingbird
import Policy
import Synchronization
import TDXVerifier
import TestSupport
import Testing

/// Online collateral: a PCCS-compatible server on loopback (written for the tests, serving the
/// real collateral of the shared Cocoon vector in Intel's PCS v4 shapes) fills the cache for a
/// quote that carries none; a broken PCCS never admits anything.
@Suite(.serialized) struct PCCSTests {
    static let at = Date.rfc3339("2026-03-01T00:00:00Z")!

    final class FakePCCS: Sendable {
        let port: Int
        let counter: Counter
        var requests: Int { counter.value.withLock { $0 } }

        final class Counter: Sendable { let value = Mutex(0) }
        private let task: Task<Void, any Error>

        init(collateral: Collateral, broken: Bool = false) async throws {
            let router = Router()
            let counter = Counter()
            self.counter = counter
            let encoded: @Sendable (String) -> String = {
                $0.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
            }
            let respond: @Sendable (Data, [(String, String)]) -> Response = { body, headers in
                counter.value.withLock { $0 += 1 }
                if broken { return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: "{not json"))) }
                var fields = HTTPFields()
                for (k, v) in headers { fields[HTTPField.Name(k)!] = v }
                return Response(status: .ok, headers: fields, body: .init(byteBuffer: ByteBuffer(bytes: body)))
            }
            router.get("/tdx/certification/v4/tcb") { request, _ -> Response in
                guard request.uri.queryParameters["fmspc"].map(String.init)?.uppercased() == "90C06F000000" else {
                    return Response(status: .notFound)
                }
                let body =
                    #"{"tcbInfo":\#(collateral.tcbInfo),"signature":"\#(Data(collateral.tcbInfoSignature).hex)"}"#
                return respond(Data(body.utf8), [("TCB-Info-Issuer-Chain", encoded(collateral.tcbInfoIssuerChain))])
            }
            router.get("/tdx/certification/v4/qe/identity") { _, _ -> Response in
                let body =
                    #"{"enclaveIdentity":\#(collateral.qeIdentity),"signature":"\#(Data(collateral.qeIdentitySignature).hex)"}"#
                return respond(
                    Data(body.utf8), [("SGX-Enclave-Identity-Issuer-Chain", encoded(collateral.qeIdentityIssuerChain))])
            }
            router.get("/sgx/certification/v4/pckcrl") { _, _ -> Response in
                respond(Data(collateral.pckCRL), [("SGX-PCK-CRL-Issuer-Chain", encoded(collateral.pckCRLIssuerChain))])
            }
            router.get("/sgx/certification/v4/rootcacrl") { _, _ -> Response in
                respond(Data(Data(collateral.rootCACRL).hex.utf8), [])
            }
            (port, task) = await serveOnLoopback(router)
        }

        var base: URL { URL(string: "http://127.0.0.1:\(port)")! }
        func stop() async {
            task.cancel()
            _ = try? await task.value
        }
    }

    /// An empty online-mode cache fed from `base`. The default timeout is generous: on a loaded
    /// 2-core machine running the whole suite, a loopback answer can take many seconds, and a
    /// timeout would then read as a failed fetch.
    static func online(_ base: URL, timeout: TimeInterval = 90) throws -> (
        CollateralCache, CollateralPrefetcher, TemporaryDirectory
    ) {
        let dir = try TemporaryDirectory("pccs")
        let cache = try CollateralCache(directory: dir.url, mode: "online")
        return (cache, CollateralPrefetcher(cache: cache, client: PCCSClient(base: base, timeout: timeout)), dir)
    }

    static func cocoonCollateral() throws -> Collateral {
        try CollateralCache.readBundle(try SharedTestData.data("tdx/cocoon-quote-d5-collateral.json"))[0]
    }

    @Test func missingCollateralIsFetchedOnceAndTheQuoteVerifies() async throws {
        let pccs = try await FakePCCS(collateral: try Self.cocoonCollateral())
        defer { Teardown.after { await pccs.stop() } }
        let (cache, prefetcher, dir) = try Self.online(pccs.base)
        defer { _ = dir }
        let envelope = try SharedTestData.data("tdx/cocoon-quote-no-collateral.json")

        let note = await prefetcher.prepare(envelope: envelope, at: Self.at)
        #expect(note?.hasPrefix("fetched") == true, "\(note ?? "nil")")
        #expect(pccs.requests == 4)
        let verification = EvidenceVerification(
            policy: .handVerification, applyMeasurementRules: false, collateralSource: cache)
        let verdict = verification.verify(envelopeData: envelope, expectedNonce: nil, at: Self.at)
        #expect(verdict.isAccepted, "\(verdict.reasons)")
        #expect(verdict.claims?.fields["collateral.source"] == "online")

        // Fresh items are not fetched again.
        #expect(await prefetcher.prepare(envelope: envelope, at: Self.at) == nil)
        #expect(pccs.requests == 4)
    }

    /// Threat: a PCCS that answers garbage. Nothing is stored, the quote is rejected, nothing crashes.
    @Test func brokenPCCSAdmitsNothing() async throws {
        let pccs = try await FakePCCS(collateral: try Self.cocoonCollateral(), broken: true)
        defer { Teardown.after { await pccs.stop() } }
        let (cache, prefetcher, dir) = try Self.online(pccs.base)
        defer { _ = dir }
        let envelope = try SharedTestData.data("tdx/cocoon-quote-no-collateral.json")
        let note = await prefetcher.prepare(envelope: envelope, at: Self.at)
        #expect(note?.contains("failed") == true)
        #expect(cache.all.isEmpty)
        let verdict = EvidenceVerification(
            policy: .handVerification, applyMeasurementRules: false, collateralSource: cache
        )
        .verify(envelopeData: envelope, expectedNonce: nil, at: Self.at)
        #expect(verdict.reason == .collateralMissing)
    }

    @Test func unreachablePCCSIsAFailureNote() async throws {
        let (_, prefetcher, dir) = try Self.online(URL(string: "http://127.0.0.1:1")!, timeout: 2)
        defer { _ = dir }
        let note = await prefetcher.prepare(
            envelope: try SharedTestData.data("tdx/cocoon-quote-no-collateral.json"), at: Self.at)
        #expect(note?.contains("failed") == true)
    }

    @Test func rawValueKeepsTheExactSignedText() {
        let body = Data(#"{ "signature" : "00", "tcbInfo" : {"a":"}\"{","b":[1,{"c":2}]} , "x":1}"#.utf8)
        #expect(PCCSClient.rawValueForTests(of: "tcbInfo", in: body) == #"{"a":"}\"{","b":[1,{"c":2}]}"#)
        #expect(PCCSClient.rawValueForTests(of: "missing", in: body) == nil)
    }
}
