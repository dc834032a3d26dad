import AttestationCore
import Crypto
import Foundation
import Gateway
import GatewayState
import Testing
import TestSupport

/// Named API keys on a running gateway: created, limited, rotated and revoked through the admin
/// API, with real swtpm workers behind it.
@Suite(.serialized) struct ClientKeyTests {
    static let engine = Data("keys engine 1.0".utf8)
    static let model = Data("keys model v1".utf8)

    /// A response with its headers (lower-cased names), through curl.
    struct Answer {
        let status: Int
        let headers: [String: String]
        let body: String
        var json: [String: Any] {
            (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any] ?? [:]
        }
        var errorCode: String? { (json["error"] as? [String: Any])?["code"] as? String }
    }

    static func chat(_ gateway: GatewayHarness, key: String, tag: String, stream: Bool = false, extra: String = "")
        async throws -> Answer
    {
        let body =
            #"{"model":"fake","messages":[{"role":"user","content":"say hello \#(tag)"}],"stream":\#(stream)\#(extra)}"#
        let result = try await ProcessRunner.run(
            "curl",
            [
                "-s", "-D", "-", "-o", "-", "-X", "POST", gateway.baseURL + "/v1/chat/completions", "--max-time", "60",
                "-H", "Authorization: Bearer \(key)", "-H", "Content-Type: application/json", "--data-binary", body,
            ])
        let text = result.stdout
        guard let split = text.range(of: "\r\n\r\n") else { return Answer(status: 0, headers: [:], body: text) }
        let head = text[..<split.lowerBound].components(separatedBy: "\r\n")
        var headers = [String: String]()
        for line in head.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(
                in: .whitespaces)
        }
        let status = Int(head.first?.split(separator: " ").dropFirst().first ?? "") ?? 0
        return Answer(status: status, headers: headers, body: String(text[split.upperBound...]))
    }

    static func create(_ gateway: GatewayHarness, _ settings: [String: Any]) async throws -> (
        id: String, secret: String
    ) {
        let answer = try await gateway.admin("/v1/admin/keys", method: "POST", json: settings)
        #expect(answer.status == 201, "key creation answered \(answer.status): \(answer.body)")
        let key = answer.body["key"] as? [String: Any]
        return (key?["id"] as? String ?? "", answer.body["secret"] as? String ?? "")
    }

    static func setUp() async throws -> (GatewayHarness, FakeEngine, TestWorker) {
        let gateway = try await GatewayHarness(policy: GatewayHarness.policy(engine: engine, model: model)) {
            $0.adminPort = 0
        }
        let fake = try await FakeEngine(name: "keys", reportsUsage: true)
        let worker = try await TestWorker(
            id: "keys-1", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: fake.port,
            engine: engine, model: model)
        guard case .success = await worker.admitted() else { throw StoreError("the worker was not admitted") }
        return (gateway, fake, worker)
    }

    /// Must show: the request over the RPM limit gets 429 with Retry-After; an exhausted quota
    /// gets insufficient_quota; a revoked key is refused at once on a running gateway; rotation
    /// keeps the old secret valid for its grace period only. And each change is in the audit log.
    @Test func limitsRevocationAndRotationOnARunningGateway() async throws {
        let (gateway, fake, worker) = try await Self.setUp()
        defer {
            Task {
                await worker.stop(); await fake.stop(); await gateway.stop()
            }
        }

        // Requests per minute: two go, the third is refused with a wait.
        let limited = try await Self.create(gateway, ["name": "rpm-two", "requests_per_minute": 2])
        #expect(limited.secret.hasPrefix("sk-ccg-"))
        for i in 0..<2 {
            let ok = try await Self.chat(gateway, key: limited.secret, tag: "[rpm-\(i)]")
            #expect(ok.status == 200, "request \(i) within the limit: \(ok.status) \(ok.body)")
        }
        let over = try await Self.chat(gateway, key: limited.secret, tag: "[rpm-2]")
        #expect(over.status == 429)
        #expect(over.errorCode == "rate_limit_exceeded")
        let wait = Int(over.headers["retry-after"] ?? "") ?? 0
        #expect((1...60).contains(wait), "Retry-After was \(over.headers["retry-after"] ?? "absent")")

        // A quota of 10 tokens a day: the first request uses more, the next is refused.
        let quota = try await Self.create(gateway, ["name": "small-quota", "quota_tokens": 10, "quota_period": "day"])
        #expect(try await Self.chat(gateway, key: quota.secret, tag: "[quota-0]").status == 200)
        let exhausted = try await Self.chat(gateway, key: quota.secret, tag: "[quota-1]")
        #expect(exhausted.status == 429)
        #expect(exhausted.errorCode == "insufficient_quota")
        #expect(exhausted.json["error"].flatMap { ($0 as? [String: Any])?["type"] as? String } == "insufficient_quota")
        #expect(exhausted.headers["retry-after"] != nil)

        // Revocation: refused on the very next request.
        let revoked = try await Self.create(gateway, ["name": "to-revoke"])
        #expect(try await Self.chat(gateway, key: revoked.secret, tag: "[rev-0]").status == 200)
        let revocation = try await gateway.admin("/v1/admin/keys/\(revoked.id)/revoke", method: "POST")
        #expect(revocation.status == 200)
        let refused = try await Self.chat(gateway, key: revoked.secret, tag: "[rev-1]")
        #expect(refused.status == 401)
        #expect(refused.errorCode == "invalid_api_key")

        // Rotation with a two-second grace: both secrets work, then only the new one.
        let rotating = try await Self.create(gateway, ["name": "rotating"])
        let rotation = try await gateway.admin(
            "/v1/admin/keys/\(rotating.id)/rotate", method: "POST", json: ["grace_seconds": 2])
        let newSecret = rotation.body["secret"] as? String ?? ""
        #expect(rotation.status == 200 && newSecret != rotating.secret)
        #expect(try await Self.chat(gateway, key: rotating.secret, tag: "[rot-old]").status == 200)
        #expect(try await Self.chat(gateway, key: newSecret, tag: "[rot-new]").status == 200)
        try await Task.sleep(for: .milliseconds(2500))
        #expect(try await Self.chat(gateway, key: rotating.secret, tag: "[rot-old-late]").status == 401)
        #expect(try await Self.chat(gateway, key: newSecret, tag: "[rot-new-late]").status == 200)

        // A revocation and a rotation at once: whichever lands second is refused (key.conflict),
        // and a revocation that was answered 200 is never undone.
        for round in 0..<3 {
            let raced = try await Self.create(gateway, ["name": "raced-\(round)"])
            async let revoke = gateway.admin("/v1/admin/keys/\(raced.id)/revoke", method: "POST")
            async let rotate = gateway.admin(
                "/v1/admin/keys/\(raced.id)/rotate", method: "POST", json: ["grace_seconds": 0])
            let (revoked, rotated) = try await (revoke, rotate)
            #expect([200, 409].contains(revoked.status) && [200, 409].contains(rotated.status))
            let shown = try await gateway.admin("/v1/admin/keys/\(raced.id)")
            if revoked.status == 200 {
                #expect(shown.body["status"] as? String == "revoked", "round \(round): a revocation was undone")
                let newSecret = rotated.body["secret"] as? String ?? raced.secret
                #expect(try await Self.chat(gateway, key: newSecret, tag: "[raced-\(round)]").status == 401)
            }
        }

        // Models and tiers the key does not allow.
        let narrow = try await Self.create(gateway, ["name": "narrow", "models": ["other-model"]])
        let forbidden = try await Self.chat(gateway, key: narrow.secret, tag: "[narrow]")
        #expect(forbidden.status == 403 && forbidden.errorCode == "model_not_allowed")
        let strict = try await Self.create(gateway, ["name": "tdx-only", "minimum_tier": "tdx"])
        #expect(try await Self.chat(gateway, key: strict.secret, tag: "[tdx]").status == 503)

        // Bad settings get a reason.
        let bad = try await gateway.admin(
            "/v1/admin/keys", method: "POST", json: ["name": "x", "quota_period": "week"])
        #expect(bad.status == 400)
        #expect((bad.body["error"] as? [String: Any])?["code"] as? String == "admin.bad-request")

        // Every change is an entry, and the chain still verifies.
        let events = try gateway.auditEvents().compactMap { $0["event"] as? String }
        #expect(events.filter { $0 == "key-created" }.count == 9)
        #expect(events.contains("key-rotated") && events.contains("key-revoked"))
        _ = try await gateway.verifiedChain()
    }

    /// Threat: a writer of the store adding a key, raising a key's limits or putting back a row
    /// from before its revocation: without the key-hashing secret the row's MAC fails, and an
    /// older revision is refused by a keyring that has seen a newer one.
    @Test func keyRowsChangedOutsideTheGatewayAreRefused() throws {
        let dir = try TemporaryDirectory("keyring")
        let secretKey = SymmetricKey(size: .bits256)
        let ring = try ClientKeyring(
            secret: KeyHashingSecret(secretKey), configKeys: [], ledger: nil, revisionsFile: dir.file("revisions.json"))
        let secret = ClientKeyring.newSecret()
        let now = Date()
        var record = ClientKeyRecord(
            id: ClientKeyring.newID(), name: "a",
            secrets: [.init(hash: ring.hash(secret: secret), hint: "x", createdAt: now)],
            createdAt: now)
        record.requestsPerMinute = 5
        let v1 = try ring.seal(record, after: nil)
        #expect(ring.load([v1]).isEmpty)
        #expect((try? ring.authenticate("Bearer \(secret)"))?.keyID == v1.id)

        var raised = v1
        raised.requestsPerMinute = 5000
        #expect(ring.load([raised]) == [v1.id], "a row with limits changed outside the gateway was accepted")
        #expect(ring.key(id: v1.id)?.requestsPerMinute == 5)

        let other = try ClientKeyring(
            secret: KeyHashingSecret(SymmetricKey(size: .bits256)), configKeys: [], ledger: nil)
        let forged = try other.seal(record, after: nil)
        #expect(ring.load([forged]) == [forged.id], "a row sealed under another secret was accepted")

        var revokedRecord = v1
        revokedRecord.revokedAt = now
        let v2 = try ring.seal(revokedRecord, after: v1)
        #expect(ring.load([v2]).isEmpty)
        #expect(ring.load([v1]) == [v1.id], "the row from before the revocation was put back")
        #expect(throws: OpenAIError.self) { try ring.authenticate("Bearer \(secret)") }
        #expect(throws: OpenAIError.self) { try ring.authenticate("Bearer sk-ccg-guess") }

        // After a restart (a new keyring on the same data directory) the put-back is still refused.
        let restarted = try ClientKeyring(
            secret: KeyHashingSecret(secretKey), configKeys: [], ledger: nil, revisionsFile: dir.file("revisions.json"))
        #expect(restarted.load([v1]) == [v1.id], "a restarted gateway took the row from before the revocation")
        #expect(throws: OpenAIError.self) { try restarted.authenticate("Bearer \(secret)") }
    }
}
