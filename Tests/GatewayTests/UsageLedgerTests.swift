import AttestationCore
import Foundation
import Gateway
import GatewayState
import TestSupport
import Testing
import TONKit
import TONStake

/// The usage ledger end to end: two staked providers' swtpm workers behind one gateway, two named
/// keys, streamed and plain requests; the ledger's totals against what the engines reported.
@Suite(.serialized) struct UsageLedgerTests {
    /// Must show: after 100 mixed streamed and non-streamed requests, per-key and per-provider
    /// totals equal the sum of the engines' reported usage; a statement verifies, and a changed
    /// number fails.
    @Test func ledgerTotalsEqualTheEnginesCountsAndStatementsVerify() async throws {
        let chain = try await offPool { try TONChain() }
        let gateway = try await GatewayHarness(policy: StakeAdmissionTests.policy(refresh: 60)) { c in
            c.toncenter = chain.ports.indices.map {
                ToncenterEndpoint(base: chain.url($0), apiKey: chain.apiKey, requestsPerSecond: 200)
            }
            c.adminPort = 0
        }
        let engines = [
            try await FakeEngine(name: "a", chunks: 4, chunkDelay: .milliseconds(2), reportsUsage: true),
            try await FakeEngine(name: "b", chunks: 6, chunkDelay: .milliseconds(2), reportsUsage: true),
        ]
        var providers = [String]()
        var workers = [TestWorker]()
        for (i, engine) in engines.enumerated() {
            let provider = try await StakeAdmissionTests.provider(chain, stake: 12_000)
            providers.append(provider.wallet.raw)
            workers.append(try await StakeAdmissionTests.worker("ledger-\(i)", gateway, engine, provider))
        }
        let running = workers
        defer {
            Teardown.after {
                for w in running { await w.stop() }
                for e in engines { await e.stop() }
                await gateway.stop()
            }
        }
        for w in running {
            guard case .success = await w.admitted() else { Issue.record("a staked worker was not admitted"); return }
        }
        let keys = [
            try await ClientKeyTests.create(gateway, ["name": "team-a"]),
            try await ClientKeyTests.create(gateway, ["name": "team-b", "tokens_per_minute": 1_000_000]),
        ]
        let started = Date()

        // 100 requests, four at a time (so both workers serve): plain, streamed without and with usage asked.
        var tagsByKey = [String: [String]]()
        for batch in stride(from: 0, to: 100, by: 4) {
            try await withThrowingTaskGroup(of: (String, String, Int, ClientKeyTests.Answer).self) { group in
                for i in batch..<batch + 4 {
                    let key = keys[(i / 4) % 2]
                    let tag = "[req-\(i)]"
                    let (stream, extra) =
                        switch i % 4 {
                        case 1: (true, "")
                        case 2: (true, #","stream_options":{"include_usage":true}"#)
                        default: (false, "")
                        }
                    group.addTask {
                        let answer = try await ClientKeyTests.chat(
                            gateway, key: key.secret, tag: tag, stream: stream, extra: extra)
                        return (key.id, tag, i % 4, answer)
                    }
                }
                for try await (keyID, tag, mode, answer) in group {
                    #expect(answer.status == 200, "\(tag): \(answer.status) \(answer.body.prefix(200))")
                    tagsByKey[keyID, default: []].append(tag)
                    let events = answer.body.components(separatedBy: "data: [DONE]").first ?? ""
                    if mode == 2 {
                        #expect(events.contains(#""usage":{"#), "\(tag) asked for usage and got none")
                    } else if mode == 1 {
                        #expect(!events.contains(#""usage""#), "\(tag) did not ask for usage and got it: \(events)")
                    }
                }
            }
        }
        #expect(engines.reduce(0) { $0 + $1.usageRequests } == 50, "every stream should ask its engine for usage")

        await gateway.server.ledger.flush()
        let store = gateway.server.store
        let byKey = try UsageTotals(store: store, query: UsageQuery(since: started), by: .key, hourly: false)
        let byProvider = try UsageTotals(store: store, query: UsageQuery(since: started), by: .provider, hourly: false)
        var reported = [String: (prompt: Int, completion: Int)]()
        for e in engines { reported.merge(e.reported) { a, _ in a } }
        #expect(reported.count == 100)
        for key in keys {
            let tags = tagsByKey[key.id] ?? []
            let line = byKey.lines.first { $0.group == key.id }
            #expect(line?.requests == tags.count)
            #expect(line?.promptTokens == tags.reduce(0) { $0 + (reported[$1]?.prompt ?? 0) })
            #expect(line?.completionTokens == tags.reduce(0) { $0 + (reported[$1]?.completion ?? 0) })
        }
        for (provider, engine) in zip(providers, engines) {
            let line = byProvider.lines.first { $0.group == provider }
            let counts = engine.reported.values
            #expect(line?.requests == counts.count && counts.count > 0, "provider \(provider) served \(counts.count)")
            #expect(line?.promptTokens == counts.reduce(0) { $0 + $1.prompt })
            #expect(line?.completionTokens == counts.reduce(0) { $0 + $1.completion })
        }
        var rows = [UsageRecord]()
        try store.usage(UsageQuery(since: started)) {
            rows.append($0); return true
        }
        #expect(rows.allSatisfy { $0.source == "engine" && $0.status == 200 && $0.worker != nil })

        // The first provider's statement verifies under the gateway key, with its totals; a changed number does not.
        let secret = try KeyHashingSecret.read(gateway.dataDirectory.appendingPathComponent("api-keys.secret"))
        #expect(rows.allSatisfy { secret.isGenuine($0) }, "a row the gateway wrote fails its MAC")
        let (since, until) = (started.addingTimeInterval(-3600), Date().addingTimeInterval(3600))
        let statement = try UsageStatement.make(
            store: store, provider: providers[0], since: since, until: until, key: gateway.server.audit.key,
            at: Date(), secret: secret)
        let summary = try UsageStatement.verify(statement, key: gateway.server.gatewayKey)
        let expected = engines[0].reported.values
        #expect(summary.requests == expected.count)
        #expect(summary.completionTokens == expected.reduce(0) { $0 + $1.completion })
        let text = String(decoding: statement, as: UTF8.self)
        let total = summary.promptTokens
        let changed = text.replacingOccurrences(
            of: #""prompt_tokens":\#(total),"#, with: #""prompt_tokens":\#(total + 1000),"#)
        #expect(changed != text)
        #expect(throws: UsageStatement.Refusal.self) {
            try UsageStatement.verify(Data(changed.utf8), key: gateway.server.gatewayKey)
        }
        #expect(throws: UsageStatement.Refusal.self) {
            try UsageStatement.verify(statement, key: Ed25519PrivateKey.generate().publicKey)
        }

        // Threat: a writer of the database moving another provider's tokens to this one, or
        // raising a count: the changed row fails its MAC and nothing is signed.
        let db = gateway.dataDirectory.appendingPathComponent("ccgate.db").path
        let moved = try await ProcessRunner.run(
            "/usr/bin/python3",
            [
                "-c",
                "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('UPDATE usage_ledger SET provider=? WHERE request_id=(SELECT request_id FROM usage_ledger WHERE provider=? LIMIT 1)', (sys.argv[2], sys.argv[3])); c.commit()",
                db, providers[0], providers[1],
            ])
        #expect(moved.status == 0, "\(moved.stderr)")
        #expect(throws: UsageStatement.UnauthenticRows.self) {
            try UsageStatement.make(
                store: store, provider: providers[0], since: since, until: until, key: gateway.server.audit.key,
                at: Date(), secret: secret)
        }
    }
}
