import AdmissionCore
import AttestationCore
import AuditLog
import GatewayState
import Foundation
import Gateway
import Policy
import TPMVerifier
import TestSupport
import Testing

/// Policy administration through the admin API against real swtpm workers: applying a signed
/// policy re-evaluates every admitted worker at once, refusals are refused, everything is audited.
@Suite(.serialized) struct PolicyAdminTests {
    static let engineA = Data("engine A 1.1 — the fixed release".utf8)
    static let engineB = Data("engine B 1.0 — pulled for a vulnerability".utf8)
    static let model = Data("model weights v1".utf8)

    /// A gateway with an admin API, one pinned admin key, and a signed policy allowing `engines`.
    static func gateway(admin: Ed25519PrivateKey, engines: [Data]) async throws -> GatewayHarness {
        let text = GatewayHarness.policyText(engines: engines, model: model, name: "v1")
        return try await GatewayHarness(policy: text) { c in
            c.adminPort = 0
            c.adminKeys = [admin.publicKey]
            c.policySignature = PolicySignature.sign(Data(text.utf8), with: admin).json
        }
    }

    static func signed(_ text: String, _ key: Ed25519PrivateKey, dryRun: Bool = false) -> [String: Any] {
        ["policy": text, "signature": PolicySignature.sign(Data(text.utf8), with: key).json, "dry_run": dryRun]
    }

    /// Waits (up to `limit`) for a worker's connection to end; returns how long it took.
    static func disconnected(_ worker: TestWorker, limit: Duration = .seconds(20)) async -> Duration? {
        let clock = ContinuousClock()
        let start = clock.now
        return await withTaskGroup(of: Duration?.self) { group in
            group.addTask {
                _ = await worker.outcome()
                return clock.now - start
            }
            group.addTask {
                try? await Task.sleep(for: limit)
                return nil
            }
            let first = await group.next()!
            group.cancelAll()
            return first
        }
    }

    /// Must show: a policy that removes a worker's binary digest evicts it at once (before the
    /// apply call returns; its connection closes right after), without a restart, audited with
    /// the new version; the other worker keeps serving. A dry run first names it and changes nothing.
    @Test func applyingAPolicyEvictsTheWorkersItNoLongerAdmits() async throws {
        let admin = Ed25519PrivateKey.generate()
        let gateway = try await Self.gateway(admin: admin, engines: [Self.engineA, Self.engineB])
        let engine = try await FakeEngine(name: "a")
        let a = try await TestWorker(
            id: "worker-a", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: engine.port,
            engine: Self.engineA,
            model: Self.model)
        let b = try await TestWorker(
            id: "worker-b", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: engine.port,
            engine: Self.engineB,
            model: Self.model)
        defer {
            Teardown.after {
                await a.stop(); await b.stop(); await engine.stop(); await gateway.stop()
            }
        }
        guard case .success = await a.admitted(), case .success = await b.admitted() else {
            Issue.record("workers not admitted")
            return
        }
        let v2 = GatewayHarness.policyText(engines: [Self.engineA], model: Self.model, name: "v2")

        let dry = try await gateway.admin(
            "/v1/admin/policy/apply", method: "POST", json: Self.signed(v2, admin, dryRun: true))
        #expect(dry.status == 200)
        let wouldEvict = dry.body["evictions"] as? [[String: Any]] ?? []
        #expect(wouldEvict.map { $0["worker"] as? String } == ["worker-b"])
        #expect((wouldEvict.first?["reasons"] as? [String])?.first == "policy.measurement-not-allowed")
        #expect(
            (dry.body["changes"] as? [String])?.contains { $0.hasPrefix("- measurements.binaries: engine-1") } == true)
        #expect(gateway.server.registry.isAdmitted("worker-b"))
        #expect(gateway.server.policies.current.version == 1)

        let clock = ContinuousClock()
        let start = clock.now
        // Watches the registry while the call runs: when does worker-b stop being routable?
        let registry = gateway.server.registry
        let watcher = Task { () -> Duration? in
            while !Task.isCancelled {
                if !registry.isAdmitted("worker-b") { return clock.now - start }
                try? await Task.sleep(for: .milliseconds(1))
            }
            return nil
        }
        let applied = try await gateway.admin("/v1/admin/policy/apply", method: "POST", json: Self.signed(v2, admin))
        let answered = clock.now - start
        let unroutable = await watcher.value
        #expect(applied.status == 200, "\(applied.body)")
        #expect(applied.body["version"] as? Int == 2)
        #expect((applied.body["evictions"] as? [[String: Any]])?.map { $0["worker"] as? String } == ["worker-b"])
        // Evicted when the call returns: no longer routable, no restart.
        #expect(!gateway.server.registry.isAdmitted("worker-b"))
        #expect(gateway.server.registry.isAdmitted("worker-a"))
        let closed = await Self.disconnected(b)
        #expect(closed != nil, "worker-b's connection was not closed")
        print(
            "policy apply: worker-b out of routing after \(unroutable.map { "\($0)" } ?? "?"), call answered after \(answered), connection closed \(closed.map { "\($0)" } ?? "never") after that"
        )

        let events = try gateway.auditEvents()
        let eviction = events.first { $0["event"] as? String == "eviction" && $0["worker"] as? String == "worker-b" }
        #expect(eviction?["policy_version"] as? Int == 2)
        #expect((eviction?["reasons"] as? [String])?.first == "policy.measurement-not-allowed")
        #expect((eviction?["actor"] as? String)?.hasPrefix("admin:") == true)
        #expect(events.contains { $0["event"] as? String == "policy-applied" && $0["policy_version"] as? Int == 2 })
        #expect(
            events.filter { $0["event"] as? String == "eviction" && $0["worker"] as? String == "worker-b" }.count == 1)

        let reply = try await gateway.request(
            "/v1/chat/completions", method: "POST",
            body: #"{"model":"fake","messages":[{"role":"user","content":"hi"}]}"#)
        #expect(reply.status == 200 && reply.body.contains("hello from a"))

        // History and rollback: version 1 again, as version 3, re-checked under today's keys.
        let history = try await gateway.admin("/v1/admin/policy/history")
        #expect((history.body["versions"] as? [[String: Any]])?.count == 2)
        // Version 1's own signature is older than the one in force: refused without a fresh one.
        let replayed = try await gateway.admin("/v1/admin/policy/rollback", method: "POST", json: ["version": 1])
        #expect(replayed.status == 403)
        #expect(
            (replayed.body["error"] as? [String: Any])?["code"] as? String == "policy.signature-stale",
            "\(replayed.body)")
        let v1 = try #require(try gateway.server.store.policy(version: 1)).policy.text
        let back = try await gateway.admin(
            "/v1/admin/policy/rollback", method: "POST",
            json: ["version": 1, "signature": PolicySignature.sign(Data(v1.utf8), with: admin).json])
        #expect(back.body["version"] as? Int == 3)
        #expect(gateway.server.policies.current.document.name == "v1")
        let shown = try await gateway.admin("/v1/admin/policy?version=2")
        #expect(shown.body["text"] as? String == v2)
        let workers = try await gateway.admin("/v1/admin/workers")
        let listed = workers.body["workers"] as? [[String: Any]] ?? []
        #expect(listed.map { $0["id"] as? String } == ["worker-a"])
        #expect(listed.first?["format"] as? String == "tpm2-quote")
        #expect((listed.first?["claims"] as? [String: String])?["ak.sha256"] != nil)

        let chain = try await gateway.verifiedChain()
        #expect(chain.unsignedTail == 0)
    }

    /// Threat: a policy nobody with an admin key approved, or a stranger on the admin port.
    @Test func unsignedOrWronglySignedPoliciesAndBadTokensAreRefused() async throws {
        let admin = Ed25519PrivateKey.generate()
        let gateway = try await Self.gateway(admin: admin, engines: [Self.engineA])
        defer { Teardown.after { await gateway.stop() } }
        let text = GatewayHarness.policyText(engines: [Self.engineB], model: Self.model, name: "evil")

        let unsigned = try await gateway.admin("/v1/admin/policy/apply", method: "POST", json: ["policy": text])
        #expect(unsigned.status == 403)
        #expect((unsigned.body["error"] as? [String: Any])?["code"] as? String == "policy.unsigned")

        let stranger = try await gateway.admin(
            "/v1/admin/policy/apply", method: "POST", json: Self.signed(text, Ed25519PrivateKey.generate()))
        #expect((stranger.body["error"] as? [String: Any])?["code"] as? String == "policy.signer-not-pinned")

        var altered = Self.signed(
            GatewayHarness.policyText(engines: [Self.engineA], model: Self.model, name: "ok"), admin)
        altered["policy"] = text
        let mismatch = try await gateway.admin("/v1/admin/policy/apply", method: "POST", json: altered)
        #expect((mismatch.body["error"] as? [String: Any])?["code"] as? String == "policy.signature-invalid")

        let invalid = try await gateway.admin(
            "/v1/admin/policy/apply", method: "POST",
            json: Self.signed("schema: ccgate.policy/v1\nname: x\nbogus: 1\n", admin))
        #expect(invalid.status == 422)
        #expect(
            ((invalid.body["error"] as? [String: Any])?["details"] as? [String])?.first?.contains("unknown key 'bogus'")
                == true)

        let noToken = try await gateway.admin(
            "/v1/admin/policy/apply", method: "POST", json: Self.signed(text, admin), token: "wrong-token-wrong")
        #expect(noToken.status == 401)
        let garbage = try await gateway.admin("/v1/admin/policy/rollback", method: "POST", json: ["version": "x"])
        #expect(garbage.status == 400)
        let missing = try await gateway.admin("/v1/admin/policy/rollback", method: "POST", json: ["version": 99])
        #expect(missing.status == 404)
        let unknown = try await gateway.admin("/v1/admin/nothing-here")
        #expect(unknown.status == 404)
        #expect((unknown.body["error"] as? [String: Any])?["code"] as? String == "admin.not-found")
        let wrongShape = try await gateway.admin("/v1/admin/policy/apply", method: "POST", json: ["policy": 5])
        #expect(wrongShape.status == 400)
        let badVersion = try await gateway.admin("/v1/admin/policy?version=-3")
        #expect(badVersion.status == 400)

        #expect(gateway.server.policies.current.version == 1)
        let events = try gateway.auditEvents()
        let refused = events.filter {
            $0["event"] as? String == "policy-apply" && $0["decision"] as? String == "refused"
        }
        #expect(
            Set(refused.compactMap { ($0["reasons"] as? [String])?.first }) == [
                "policy.unsigned", "policy.signer-not-pinned", "policy.signature-invalid", "policy.invalid",
            ])
        #expect(events.contains { $0["event"] as? String == "admin-login" && $0["decision"] as? String == "reject" })
        #expect(events.contains { $0["event"] as? String == "admin-login" && $0["decision"] as? String == "accept" })
    }

    /// Without pinned admin keys no policy can be applied at all; a signed initial policy is
    /// required once keys are pinned.
    @Test func noAdminKeysMeansNoPolicyChanges() async throws {
        let gateway = try await GatewayHarness(policy: GatewayHarness.policy(engine: Self.engineA, model: Self.model)) {
            $0.adminPort = 0
        }
        defer { Teardown.after { await gateway.stop() } }
        let admin = Ed25519PrivateKey.generate()
        let r = try await gateway.admin(
            "/v1/admin/policy/apply", method: "POST",
            json: Self.signed(GatewayHarness.policy(engine: Self.engineB, model: Self.model), admin))
        #expect((r.body["error"] as? [String: Any])?["code"] as? String == "policy.no-admin-keys")

        var c = GatewayConfiguration()
        c.dataDirectory = try TemporaryDirectory("data").url
        c.policyText = GatewayHarness.policy(engine: Self.engineA, model: Self.model)
        c.policy = try PolicyDocument.parse(c.policyText!)
        c.adminKeys = [admin.publicKey]
        await #expect(throws: GatewayStartError.self) { _ = try await GatewayServer.open(configuration: c) }
    }

    /// Replay re-derives admissions and rejections from the stored evidence and policy; the same
    /// evidence under a policy that no longer allows it does not match.
    @Test func replayRederivesDecisionsAndEvictionByHand() async throws {
        let admin = Ed25519PrivateKey.generate()
        let gateway = try await Self.gateway(admin: admin, engines: [Self.engineA])
        let engine = try await FakeEngine(name: "a")
        let good = try await TestWorker(
            id: "good", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: engine.port,
            engine: Self.engineA,
            model: Self.model)
        let bad = try await TestWorker(
            id: "bad", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: engine.port,
            engine: Self.engineB, model: Self.model
        )
        defer {
            Teardown.after {
                await good.stop(); await bad.stop(); await engine.stop(); await gateway.stop()
            }
        }
        guard case .success = await good.admitted() else { Issue.record("not admitted"); return }
        guard case .failure = await bad.admitted() else { Issue.record("bad worker admitted"); return }

        let store = gateway.server.store
        var admissions = [AuditEntry]()
        try store.entries(AuditQuery()) { entry in
            if entry.event.event == "admission" { admissions.append(entry) }
            return true
        }
        #expect(admissions.count == 2)
        var roots = EKRoots.pinnedDER
        roots.append(try #require(SwtpmLocalCA.shared).rootDER)
        let replay = AuditReplay(
            tpmIdentity: TPMIdentityTrust(
                ekRoots: roots, activation: .records(trustedKeys: [gateway.server.audit.key.publicKey])))
        for entry in admissions {
            let evidence = try store.evidence(sha256: try #require(entry.event.evidenceSHA256))
            let policy = try store.policy(version: try #require(entry.event.policyVersion))
            let outcome = try replay.replay(entry, evidence: evidence, policyText: policy?.policy.text, now: Date())
            #expect(outcome.matches, "entry \(entry.seq)")
            #expect(outcome.replayed.isAccepted == (entry.event.decision == "admit"))
        }
        let admit = try #require(admissions.first { $0.event.decision == "admit" })
        let stricter = GatewayHarness.policyText(engines: [Self.engineB], model: Self.model)
        let evidence = try store.evidence(sha256: admit.event.evidenceSHA256!)
        #expect(try !replay.replay(admit, evidence: evidence, policyText: stricter, now: Date()).matches)
        #expect(throws: AuditReplay.Failure.self) {
            try replay.replay(admit, evidence: nil, policyText: stricter, now: Date())
        }

        let evicted = try await gateway.admin("/v1/admin/workers/good/evict", method: "POST")
        #expect(evicted.status == 200)
        #expect(!gateway.server.registry.isAdmitted("good"))
        #expect(await Self.disconnected(good) != nil)
        #expect(try await gateway.admin("/v1/admin/workers/nobody/evict", method: "POST").status == 404)
        #expect(
            try gateway.auditEvents().contains {
                $0["event"] as? String == "eviction" && ($0["reasons"] as? [String]) == ["admin.evicted"]
            })
        #expect(try store.workers().isEmpty)
    }
}

/// The state a gateway starts from cannot be swapped underneath it.
@Suite(.serialized) struct StateIntegrityTests {
    /// Threat: someone with write access to the data directory edits the `policies` row in force
    /// to weaken it before the next start. The gateway refuses to start, naming the problem;
    /// with admin keys pinned, the signature check refuses it as well.
    @Test func editedPolicyRowStopsTheGatewayAtStart() async throws {
        let admin = Ed25519PrivateKey.generate()
        for pinned in [false, true] {
            let text = GatewayHarness.policyText(engines: [PolicyAdminTests.engineA], model: PolicyAdminTests.model)
            let gateway = try await GatewayHarness(policy: text) { c in
                if pinned {
                    c.adminKeys = [admin.publicKey]
                    c.policySignature = PolicySignature.sign(Data(text.utf8), with: admin).json
                }
            }
            let configuration = gateway.server.configuration
            await gateway.stop()
            // The untouched directory starts again.
            _ = try await GatewayServer.open(configuration: configuration)
            let db = gateway.dataDirectory.appendingPathComponent("ccgate.db").path
            let edit = try await ProcessRunner.run(
                "sqlite3",
                [db, "UPDATE policies SET text = text || char(10) || 'workers: {reattest_interval_seconds: 31536000}'"])
            #expect(edit.status == 0, "\(edit.stderr)")
            do {
                _ = try await GatewayServer.open(configuration: configuration)
                Issue.record("the gateway started on an edited policy row (pinned keys: \(pinned))")
            } catch let error as GatewayStartError {
                #expect(error.message.contains("was edited"), "\(error.message)")
            }
        }
    }

    /// Threat: a writer of the store re-inserts an older signed policy as the newest version,
    /// with a matching audit entry (entries need no key). Its signature is genuine, but its serial
    /// is below the version applied after it: the gateway refuses to start.
    @Test func anOlderSignedPolicyPutBackStopsTheGatewayAtStart() async throws {
        let admin = Ed25519PrivateKey.generate()
        let gateway = try await PolicyAdminTests.gateway(admin: admin, engines: [PolicyAdminTests.engineA])
        let v2 = GatewayHarness.policyText(
            engines: [PolicyAdminTests.engineA, PolicyAdminTests.engineB], model: PolicyAdminTests.model, name: "v2")
        let applied = try await gateway.admin(
            "/v1/admin/policy/apply", method: "POST", json: PolicyAdminTests.signed(v2, admin))
        #expect(applied.status == 200)
        let configuration = gateway.server.configuration
        await gateway.stop()
        let store = try SQLiteStore(url: gateway.dataDirectory.appendingPathComponent("ccgate.db"))
        let v1 = try #require(try store.policy(version: 1)).policy
        _ = try store.append(
            [
                .policy(
                    AuditEvent(
                        .policyApplied, actor: "admin:forged", decision: .applied,
                        detail: ["sha256": HashAlgorithm.sha256.hash(Data(v1.text.utf8)).hex]),
                    NewPolicy(name: v1.name, text: v1.text, signature: v1.signature, signer: nil, note: "forged"))
            ], at: Date(), checkpointKey: nil)
        do {
            _ = try await GatewayServer.open(configuration: configuration)
            Issue.record("the gateway started on an older policy put back as the newest")
        } catch let error as GatewayStartError {
            #expect(error.message.contains("an older policy was put back"), "\(error.message)")
        }
    }

    /// Threat: a data directory others can read (the gateway key, the admin token).
    @Test func openDataDirectoryIsRefused() async throws {
        let dir = try TemporaryDirectory("open-data")
        let data = dir.file("data")
        try FileManager.default.createDirectory(at: data, withIntermediateDirectories: true)
        chmod(data.path, 0o755)
        var configuration = GatewayConfiguration()
        configuration.dataDirectory = data
        do {
            _ = try await GatewayServer.open(configuration: configuration)
            Issue.record("the gateway started on a data directory open to others")
        } catch let error as GatewayStartError {
            #expect(error.message.contains("chmod 700"), "\(error.message)")
        }
        chmod(data.path, 0o700)
        let server = try await GatewayServer.open(configuration: configuration)
        var info = stat()
        #expect(stat(data.appendingPathComponent("gateway.key").path, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o600)
        #expect(stat(data.appendingPathComponent("admin.token").path, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o600)
        _ = server
    }
}

/// More ways the stored state could be swapped underneath a gateway.
@Suite(.serialized) struct StoredPolicyTests {
    /// Threat: deleting the newest policy versions so that an older (weaker, validly signed) one
    /// is in force at the next start, or deleting them all so that the seed is used again.
    @Test func removedPolicyVersionsStopTheGatewayAtStart() async throws {
        let admin = Ed25519PrivateKey.generate()
        let gateway = try await PolicyAdminTests.gateway(admin: admin, engines: [PolicyAdminTests.engineA])
        let v2 = GatewayHarness.policyText(
            engines: [PolicyAdminTests.engineA, PolicyAdminTests.engineB], model: PolicyAdminTests.model, name: "v2")
        let applied = try await gateway.admin(
            "/v1/admin/policy/apply", method: "POST", json: PolicyAdminTests.signed(v2, admin))
        #expect(applied.status == 200, "\(applied.body)")
        let configuration = gateway.server.configuration
        await gateway.stop()
        let db = gateway.dataDirectory.appendingPathComponent("ccgate.db").path
        for (statement, expected) in [
            ("DELETE FROM policies WHERE version = 2", "were removed"), ("DELETE FROM policies", "is empty"),
        ] {
            let edit = try await ProcessRunner.run("sqlite3", [db, statement])
            #expect(edit.status == 0, "\(edit.stderr)")
            do {
                _ = try await GatewayServer.open(configuration: configuration)
                Issue.record("the gateway started after '\(statement)'")
            } catch let error as GatewayStartError {
                #expect(error.message.contains(expected), "\(error.message)")
            }
        }
    }

    /// A seed policy that pins nothing about a TDX guest is refused before it is recorded, so a
    /// corrected one can seed the same data directory.
    @Test func aSeedFailingLintIsNotRecorded() async throws {
        let dir = try TemporaryDirectory("seed")
        var configuration = GatewayConfiguration()
        configuration.dataDirectory = dir.file("data")
        let loose = "schema: ccgate.policy/v1\nname: loose\nevidence: {formats: [tdx-quote]}\n"
        configuration.policy = try PolicyDocument.parse(loose)
        configuration.policyText = loose
        do {
            _ = try await GatewayServer.open(configuration: configuration)
            Issue.record("the gateway started with a TDX policy that pins nothing")
        } catch let error as GatewayStartError {
            #expect(error.message.contains("pins too little"), "\(error.message)")
        }
        let pinned = loose.replacingOccurrences(
            of: "{formats: [tdx-quote]}",
            with: "{formats: [tdx-quote], tdx: {image_hashes: [\(String(repeating: "ab", count: 32))]}}")
        configuration.policy = try PolicyDocument.parse(pinned)
        configuration.policyText = pinned
        let server = try await GatewayServer.open(configuration: configuration)
        #expect(server.policies.current.document.name == "loose" && server.policies.current.version == 1)
    }
}
