import Foundation
import TestSupport
import Testing
import TONKit
import TONStake

/// The stake reader against loopback toncenter stand-ins serving the recorded bodies: agreement
/// gives the lowest amount; a look-alike contract is refused; rate limits, garbage, disagreement,
/// a wrong API key or a single endpoint give "unknown" — never a stake.
@Suite struct StakeReaderTests {
    static let pool = try! TONAddress.parse("Ef93GHPH-a6l9lfGE4_RWEDHAAS0vIn2EmaY44TWvwpCJ2rD").address
    static let nominator = try! TONAddress.parseRaw(
        "0:2cf55953e92efbeadab7ba725c3f93a0b23f842cbba72d7b8e6f510a70e422e3")
    static let poolCode: Set<String> = ["9a3ec14bc098f6b44064c305222caea2800f17dda85ee6a8198a7095ede10dcf"]

    /// A stub server process; stopped when the value goes away.
    final class Stub: @unchecked Sendable {
        let process = Process()
        let port: Int
        init(mode: String, walletKey: String? = nil) throws {
            let dir = try TemporaryDirectory("toncenter")
            let portFile = dir.file("port")
            process.executableURL = LoopbackServer.systemPython
            process.arguments =
                [
                    SharedTestData.packageRoot.appendingPathComponent("Tests/TONKitTests/toncenter_stub.py").path,
                    portFile.path, SharedTestData.url("ton/toncenter").path, mode,
                ] + (walletKey.map { [$0] } ?? [])
            try process.run()
            port = LoopbackServer.ports(in: portFile, of: process, timeout: 30).first ?? 0
            _ = dir
        }
        func client(key: String = "stub-key") -> ToncenterClient {
            ToncenterClient(
                endpoint: ToncenterEndpoint(
                    base: URL(string: "http://127.0.0.1:\(port)")!, apiKey: key, requestsPerSecond: 50),
                maxAttempts: 2, backoff: .milliseconds(10))
        }
        deinit {
            // Not waited for: a blocked cooperative thread would stall the other tests.
            kill(process.processIdentifier, SIGKILL)
        }
    }

    @Test func agreeingEndpointsGiveTheStake() async throws {
        let a = try await onOwnThread { try Stub(mode: "ok") }, b = try await onOwnThread { try Stub(mode: "ok") }
        let reader = StakeReader(clients: [a.client(), b.client()])
        let reading = await reader.nominatorStake(
            pool: Self.pool, nominator: Self.nominator, allowedCodeHashes: Self.poolCode)
        guard case .observed(let o) = reading else { Issue.record("\(reading)"); return }
        #expect(o.amount == 20_000_000_000_000)
        #expect(o.endpoints.count == 2)
        #expect(o.blockSeqno != nil)
        let stranger = try TONAddress.parseRaw("0:83dfd552e63729b472fcbcc8c45ebcc6691702558b68ec7527e1ba403a0f31a8")
        let none = await reader.nominatorStake(pool: Self.pool, nominator: stranger, allowedCodeHashes: Self.poolCode)
        guard case .observed(let zero) = none else { Issue.record("\(none)"); return }
        #expect(zero.amount == 0 && zero.source == "nominator-pool:\(Self.pool.raw)" && zero.note == "not a nominator")
    }

    /// A position with a withdrawal requested leaves the pool at the next round: it counts as no stake.
    @Test func aWithdrawalRequestCountsAsNoStake() async throws {
        let a = try await onOwnThread { try Stub(mode: "leaving") },
            b = try await onOwnThread { try Stub(mode: "leaving") }
        let reading = await StakeReader(clients: [a.client(), b.client()])
            .nominatorStake(pool: Self.pool, nominator: Self.nominator, allowedCodeHashes: Self.poolCode)
        guard case .observed(let o) = reading else { Issue.record("\(reading)"); return }
        #expect(o.amount == 0 && o.note == "withdraw requested")
    }

    /// Threat: a contract that merely answers `get_nominator_data` like a pool.
    @Test func unknownCodeHashIsRefused() async throws {
        let a = try await onOwnThread { try Stub(mode: "ok") }, b = try await onOwnThread { try Stub(mode: "ok") }
        let reading = await StakeReader(clients: [a.client(), b.client()])
            .nominatorStake(
                pool: Self.pool, nominator: Self.nominator, allowedCodeHashes: [String(repeating: "0", count: 64)])
        guard case .refused(let code, _) = reading else { Issue.record("\(reading)"); return }
        #expect(code == "stake.code-not-allowed")
        // Any other account is uninitialized on the stand-in.
        let empty = Self.nominator
        let inactive = await StakeReader(clients: [a.client(), b.client()]).nominatorStake(
            pool: empty, nominator: Self.nominator, allowedCodeHashes: Self.poolCode)
        #expect({ if case .refused("stake.account-inactive", _) = inactive { true } else { false } }())
    }

    @Test(arguments: ["ratelimit", "garbage", "other-amount"])
    func oneBadEndpointMeansUnknown(_ mode: String) async throws {
        let good = try await onOwnThread { try Stub(mode: "ok") }, bad = try await onOwnThread { try Stub(mode: mode) }
        let reading = await StakeReader(clients: [good.client(), bad.client()])
            .nominatorStake(pool: Self.pool, nominator: Self.nominator, allowedCodeHashes: Self.poolCode)
        guard case .unknown(let why) = reading else { Issue.record("\(mode): \(reading)"); return }
        if mode == "other-amount" { #expect(why.contains("disagree")) }
        if mode == "ratelimit" { #expect(why.contains("toncenter.rate-limited")) }
        if mode == "garbage" { #expect(why.contains("toncenter.malformed")) }
    }

    @Test func wrongKeyAndSingleEndpointMeanUnknown() async throws {
        let a = try await onOwnThread { try Stub(mode: "ok") }, b = try await onOwnThread { try Stub(mode: "ok") }
        let wrong = await StakeReader(clients: [a.client(), b.client(key: "wrong")])
            .nominatorStake(pool: Self.pool, nominator: Self.nominator, allowedCodeHashes: Self.poolCode)
        guard case .unknown(let why) = wrong else { Issue.record("\(wrong)"); return }
        #expect(why.contains("toncenter.rejected"))
        let single = await StakeReader(clients: [a.client()]).nominatorStake(
            pool: Self.pool, nominator: Self.nominator, allowedCodeHashes: Self.poolCode)
        #expect({ if case .unknown = single { true } else { false } }())
    }

    @Test func tokenBucketSpacesRequests() {
        let bucket = TokenBucket(rate: 2, capacity: 2, now: 100)
        #expect(bucket.reserve(at: 100) == 0)
        #expect(bucket.reserve(at: 100) == 0)
        #expect(bucket.reserve(at: 100) == 0.5)
        #expect(bucket.reserve(at: 100) == 1.0)
        // After 10 s the bucket is full again, never fuller than its capacity.
        #expect(bucket.reserve(at: 110) == 0)
        #expect(bucket.reserve(at: 110) == 0)
        #expect(bucket.reserve(at: 110) == 0.5)
    }
}
