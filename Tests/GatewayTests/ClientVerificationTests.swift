import AttestationCore
import AuditLog
import Foundation
import Gateway
import NIOCore
import Policy
import Sealing
import TestSupport
import Testing

/// What a client can check about what served it: `GET /v1/attestation`, the worker and policy
/// headers, and receipts that verify offline and fail on any changed byte.
@Suite(.serialized) struct ClientVerificationTests {
    /// A request through curl with the response body and headers kept as bytes.
    static func exchange(_ gateway: GatewayHarness, _ path: String, body: String? = nil) async throws -> (
        status: Int, headers: [String: String], body: Data
    ) {
        let dir = try TemporaryDirectory("exchange")
        var args = [
            "-s", "-o", dir.file("body").path, "-D", dir.file("headers").path, "-w", "%{http_code}",
            gateway.baseURL + path, "--max-time", "120", "-H", "Authorization: Bearer \(gateway.apiKey)",
        ]
        if let body { args += ["-H", "Content-Type: application/json", "--data-binary", body] }
        let result = try await ProcessRunner.run("curl", args)
        var headers = [String: String]()
        for line in (try String(contentsOf: dir.file("headers"), encoding: .utf8)).split(separator: "\r\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(
                in: .whitespaces)
        }
        return (Int(result.stdout) ?? 0, headers, (try? Data(contentsOf: dir.file("body"))) ?? Data())
    }

    /// A gateway with one admitted worker on a fake engine, and what stops them (for the test's
    /// `defer`); throws when the worker is not admitted.
    static func admitted(_ id: String, engine name: String) async throws -> (
        GatewayHarness, FakeEngine, String, @Sendable () async -> Void
    ) {
        let policy = GatewayHarness.policy(engine: AdmissionFlowTests.engine, model: AdmissionFlowTests.model)
        let gateway = try await GatewayHarness(policy: policy)
        let engine = try await FakeEngine(name: name)
        let worker = try await TestWorker(
            id: id, gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: engine.port,
            engine: AdmissionFlowTests.engine, model: AdmissionFlowTests.model)
        let stop: @Sendable () async -> Void = {
            await worker.stop(); await engine.stop(); await gateway.stop()
        }
        guard case .success = await worker.admitted() else {
            Teardown.after(stop)
            throw NotAdmitted()
        }
        return (gateway, engine, policy, stop)
    }

    struct NotAdmitted: Error {}

    @Test func theAttestationDocumentListsEachWorkerWithItsEvidence() async throws {
        let (gateway, _, policy, stop) = try await Self.admitted("listed", engine: "listed")
        defer { Teardown.after(stop) }
        #expect(try await gateway.request("/v1/attestation", key: "wrong").status == 401)
        try await gateway.server.audit.checkpoint()
        let plain = try await Self.exchange(gateway, "/v1/attestation")
        let document = try #require(try JSONSerialization.jsonObject(with: plain.body) as? [String: Any])
        let gatewayInfo = try #require(document["gateway"] as? [String: Any])
        #expect(gatewayInfo["id"] as? String == gateway.server.gatewayKey.fingerprint)
        let policyInfo = try #require(document["policy"] as? [String: Any])
        #expect(policyInfo["sha256"] as? String == HashAlgorithm.sha256.hash(Data(policy.utf8)).hex)
        let models = try #require(document["models"] as? [[String: Any]])
        #expect(models.map { $0["id"] as? String } == ["fake"])
        let listed = try #require((models.first?["workers"] as? [[String: Any]])?.first)
        #expect(listed["worker"] as? String == "listed")
        #expect(listed["tier"] as? String == "tpm-agent-log" && listed["confidential"] as? Bool == false)
        #expect(Data(base64Encoded: listed["e2e_public_key"] as? String ?? "")?.count == 32)
        #expect(listed["evidence"] == nil)
        let admission = try #require(
            try gateway.auditEvents().first {
                $0["event"] as? String == "admission" && $0["decision"] as? String == "admit"
            })
        #expect(listed["admission_seq"] as? Int == admission["seq"] as? Int)
        #expect(listed["evidence_sha256"] as? String == admission["evidence_sha256"] as? String)
        let checkpoint = try #require(document["checkpoint"] as? [String: Any])
        #expect(checkpoint["event"] as? String == "checkpoint")

        // With the evidence itself, a client can verify it independently: it hashes to the digest.
        let full = try await Self.exchange(gateway, "/v1/attestation?evidence=full")
        let fullDocument = try #require(try JSONSerialization.jsonObject(with: full.body) as? [String: Any])
        let fullWorker = try #require(
            ((fullDocument["models"] as? [[String: Any]])?.first?["workers"] as? [[String: Any]])?.first)
        let envelope = try #require(Data(base64Encoded: fullWorker["evidence"] as? String ?? ""))
        #expect(HashAlgorithm.sha256.hash(envelope).hex == listed["evidence_sha256"] as? String)
    }

    /// Must show: receipts verify offline; a changed byte in the response or the receipt fails.
    @Test func receiptsVerifyOfflineAndFailOnAnyChangedByte() async throws {
        let (gateway, _, policy, stop) = try await Self.admitted("receipted", engine: "receipt")
        defer { Teardown.after(stop) }
        let key = gateway.server.gatewayKey
        let request = AdmissionFlowTests.chat
        let plain = try await Self.exchange(gateway, "/v1/chat/completions", body: request)
        #expect(plain.status == 200)
        #expect(plain.headers["ccgate-worker"] == "receipted")
        #expect(plain.headers["ccgate-policy"] == "1 sha256:\(HashAlgorithm.sha256.hash(Data(policy.utf8)).hex)")
        let receipt = try SignedReceipt(text: try #require(plain.headers["ccgate-receipt"]))
        try receipt.verify(key: key, response: plain.body, request: Data(request.utf8))
        let record = try #require(gateway.server.registry.workers.first?.record)
        #expect(receipt.receipt.worker == "receipted" && receipt.receipt.evidenceSHA256 == record.evidenceSHA256)
        #expect(receipt.receipt.status == 200 && receipt.receipt.model == "fake")

        var changed = plain.body
        changed[changed.count / 2] ^= 0x01
        #expect(throws: ReceiptError.responseMismatch("the response is not the one the receipt names")) {
            try receipt.verify(key: key, response: changed)
        }
        #expect(throws: ReceiptError.self) { try receipt.verify(key: key, request: Data("{}".utf8)) }
        // A receipt edited to name another worker, or re-signed by another key, fails.
        var forged = try #require(String(bytes: receipt.json, encoding: .utf8))
        forged = forged.replacingOccurrences(of: "\"receipted\"", with: "\"elsewhere\"")
        #expect(throws: ReceiptError.self) { try SignedReceipt(text: forged).verify(key: key) }
        var flipped = Data(receipt.json)
        flipped[flipped.count - 10] ^= 0x01
        #expect(throws: ReceiptError.self) {
            try SignedReceipt(text: String(decoding: flipped, as: UTF8.self)).verify(key: key)
        }
        #expect(throws: ReceiptError.self) {
            try receipt.verify(key: Ed25519PrivateKey.generate().publicKey, response: plain.body)
        }

        // A stream ends with its receipt after [DONE], covering every byte before it.
        let streamed = try await Self.exchange(gateway, "/v1/chat/completions", body: AdmissionFlowTests.streamingChat)
        #expect(streamed.status == 200 && streamed.headers["ccgate-worker"] == "receipted")
        let (body, streamReceipt) = try #require(SignedReceipt.split(stream: streamed.body))
        #expect(String(decoding: body, as: UTF8.self).hasSuffix("data: [DONE]\n\n"))
        try streamReceipt.verify(key: key, response: body, request: Data(AdmissionFlowTests.streamingChat.utf8))
        var cut = body
        cut.removeLast()
        #expect(throws: ReceiptError.self) { try streamReceipt.verify(key: key, response: cut) }
    }

    /// A gateway-blind request goes only to the worker session whose key it is sealed to; the
    /// gateway refuses anything else without trying another worker.
    @Test func sealedRequestsGoOnlyToTheKeyTheyAreSealedTo() async throws {
        let (gateway, engine, _, stop) = try await Self.admitted("blind", engine: "blind")
        defer { Teardown.after(stop) }
        let (elsewhere, _) = try EndToEnd.seal(
            Data(AdmissionFlowTests.chat.utf8), path: "/v1/chat/completions", model: "fake", stream: false,
            worker: "blind", workerKey: WorkerKEMKey().publicKeyBytes)
        let body = String(decoding: try JSONEncoder().encode(elsewhere), as: UTF8.self)
        let e2e = ["-H", "ccgate-e2e: v1"]
        let wrongKey = try await gateway.request("/v1/chat/completions", method: "POST", body: body, extra: e2e)
        #expect(wrongKey.status == 503 && wrongKey.body.contains("e2e_worker_unavailable"), "\(wrongKey.body)")
        let garbage = try await gateway.request(
            "/v1/chat/completions", method: "POST", body: AdmissionFlowTests.chat, extra: e2e)
        #expect(garbage.status == 400)
        #expect(engine.requestCount == 0, "a request reached the engine")
    }

    /// A request may require a minimum assurance tier: only workers whose evidence proves it serve.
    @Test func requestsCanRequireAMinimumTier() async throws {
        let (gateway, engine, _, stop) = try await Self.admitted("tiered", engine: "tiered")
        defer { Teardown.after(stop) }
        let chat = AdmissionFlowTests.chat
        let tdx = try await gateway.request(
            "/v1/chat/completions", method: "POST", body: chat, extra: ["-H", "ccgate-min-tier: tdx"])
        #expect(tdx.status == 503 && tdx.body.contains("meets the tier tdx"), "\(tdx.body)")
        let agent = try await gateway.request(
            "/v1/chat/completions", method: "POST", body: chat, extra: ["-H", "ccgate-min-tier: tpm-agent-log"])
        #expect(agent.status == 200)
        let bad = try await gateway.request(
            "/v1/chat/completions", method: "POST", body: chat, extra: ["-H", "ccgate-min-tier: gold"])
        #expect(bad.status == 400)
        #expect(engine.requestCount == 1)
    }

    /// Threat: a worker planting a receipt event of its own in its stream (a replayed stream and
    /// its genuine receipt), split across chunks however it likes, or with CR line ends.
    @Test func aWorkersOwnReceiptEventIsSeenAcrossAnyChunking() {
        func sees(_ text: String, chunk size: Int) -> Bool {
            var watch = ReceiptEventGuard()
            let bytes = Data(text.utf8)
            var i = 0
            while i < bytes.count {
                if watch.namesReceipt(in: bytes.subdata(in: i..<min(i + size, bytes.count))) { return true }
                i += size
            }
            return watch.unterminatedLineNamesReceipt
        }
        for size in [1, 2, 3, 7, 1000] {
            #expect(sees("data: x\n\nevent: ccgate-receipt\ndata: {}\n\n", chunk: size), "chunks of \(size)")
            #expect(sees("data: x\r\n\r\nevent:ccgate-receipt\r\ndata: {}\r\n\r\n", chunk: size))
            #expect(sees("data: x\n\nevent: ccgate-receipt", chunk: size))
            // Inside a JSON data line it is text, not an event.
            #expect(!sees(#"data: {"content":"event: ccgate-receipt"}"# + "\n\n", chunk: size))
            #expect(!sees("data: x\n\nevent: ccgate-receipts\n\n", chunk: size))
        }
        var watch = ReceiptEventGuard()
        _ = watch.namesReceipt(in: Data("data: x\n".utf8))
        #expect(!watch.endsAnEvent)
        _ = watch.namesReceipt(in: Data("\n".utf8))
        #expect(watch.endsAnEvent)
    }

    /// Plain HTTP is allowed without a flag only on addresses that are loopback as addresses.
    @Test func loopbackIsDecidedByAddressNotByName() {
        for host in ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"] { #expect(isLoopback(host), "\(host)") }
        for host in ["0.0.0.0", "10.0.0.1", "127.evil.example", "::", "::ffff:127.0.0.1", "example.com", ""] {
            #expect(!isLoopback(host), "\(host)")
        }
    }

    @Test func tiersFollowWhatTheEvidenceProves() {
        let agent = VerifiedClaims(pcrs: ["sha256": [23: "00"]], measuredFiles: [], fields: [:])
        #expect(AssuranceTier(format: "tpm2-quote", claims: agent) == .tpmAgentLog)
        let boot = VerifiedClaims(
            pcrs: ["sha256": Dictionary(uniqueKeysWithValues: (0...10).map { ($0, "00") })],
            measuredFiles: [MeasuredFile(path: "/usr/bin/ccinfer", algorithm: "sha256", digestHex: "00", pcr: 10)],
            fields: [AssuranceTier.bootReplayedField: "replayed"])
        #expect(AssuranceTier(format: "tpm2-quote", claims: boot) == .tpmMeasuredBoot)
        // The same files without the firmware log replayed over PCRs 0–7: the agent tier.
        let noBoot = VerifiedClaims(pcrs: boot.pcrs, measuredFiles: boot.measuredFiles, fields: [:])
        #expect(AssuranceTier(format: "tpm2-quote", claims: noBoot) == .tpmAgentLog)
        // Files measured by the agent into its own PCR keep the agent tier, event log or not.
        let mixed = VerifiedClaims(
            pcrs: boot.pcrs,
            measuredFiles: [MeasuredFile(path: "engine", algorithm: "sha256", digestHex: "00", pcr: 23)],
            fields: [AssuranceTier.bootReplayedField: "replayed"])
        #expect(AssuranceTier(format: "tpm2-quote", claims: mixed) == .tpmAgentLog)
        let td = VerifiedClaims(pcrs: [:], measuredFiles: [], fields: ["debug": "false"])
        #expect(AssuranceTier(format: "tdx-quote", claims: td) == .tdx)
        // A debug TD can be read by its host: never a confidential tier.
        let debugTD = VerifiedClaims(pcrs: [:], measuredFiles: [], fields: ["debug": "true"])
        #expect(!AssuranceTier(format: "tdx-quote", claims: debugTD).isConfidential)
        #expect(AssuranceTier.tdx.meets(.tpmMeasuredBoot) && !AssuranceTier.tpmAgentLog.meets(.tpmMeasuredBoot))
        #expect(AssuranceTier.tdx.isConfidential && !AssuranceTier.tpmMeasuredBoot.isConfidential)
    }
}

/// The client proxy's reading of a gateway-blind answer: only sealed frames, token counts and
/// the receipt are taken, and the receipt must be the pinned gateway's over exactly these bytes,
/// for this worker, path and model.
@Suite struct SealedAnswerTests {
    let gatewayKey = Ed25519PrivateKey.generate()
    let workerKey = WorkerKEMKey()
    let path = "/v1/chat/completions"

    /// An answer as the gateway writes it; `tamper` edits the events before the receipt is signed
    /// (what a gateway could do), `signer` and `worker` choose what the receipt says.
    func answer(
        extra: String = "", final: Bool = true, signer: Ed25519PrivateKey? = nil, worker: String = "w1"
    ) throws -> (SealedAnswer, EndToEnd.Request) {
        let (request, opener) = try EndToEnd.seal(
            Data(#"{"model":"m"}"#.utf8), path: path, model: "m", stream: true, worker: "w1",
            workerKey: workerKey.publicKeyBytes)
        let (_, sealer) = try EndToEnd.open(request, path: path, privateKey: workerKey.privateKey)
        var frames = [
            sealer.head(status: 200, contentType: "text/event-stream"), sealer.seal(Data("hi".utf8), final: false),
        ]
        if final { frames.append(sealer.seal(Data(), final: true)) }
        var body = extra
        for frame in frames { body += "event: ccgate-e2e\ndata: \(frame.base64EncodedString())\n\n" }
        body += "event: ccgate-usage\ndata: {\"total_tokens\":3}\n\n"
        let sealedBody = try JSONEncoder().encode(request)
        let receipt = Receipt(
            gateway: gatewayKey.publicKey.fingerprint, path: path,
            requestSHA256: HashAlgorithm.sha256.hash(sealedBody).hex,
            responseSHA256: HashAlgorithm.sha256.hash(Data(body.utf8)).hex, status: 200, model: "m", usage: .null,
            worker: worker, session: "s", evidenceSHA256: "e", policyVersion: 1, policySHA256: "p", admissionSeq: 1,
            time: 0
        ).signed(by: signer ?? gatewayKey)
        let bytes = Data(body.utf8) + receipt.event
        // Delivered in small pieces, as a network would.
        let pieces = stride(from: 0, to: bytes.count, by: 13).map {
            ByteBuffer(bytes: bytes.subdata(in: $0..<min($0 + 13, bytes.count)))
        }
        let stream = AsyncStream<ByteBuffer> { c in
            for piece in pieces { c.yield(piece) }
            c.finish()
        }
        return (
            SealedAnswer(
                opener: opener, request: sealedBody, key: gatewayKey.publicKey, body: stream,
                expected: .init(worker: "w1", path: path, model: "m")), request
        )
    }

    func read(_ answer: SealedAnswer) async throws -> Data {
        _ = try await answer.head()
        var plain = Data()
        while let chunk = try await answer.next() { plain.append(chunk) }
        try answer.finish(status: 200)
        return plain
    }

    @Test func anHonestAnswerOpensAndVerifies() async throws {
        #expect(try await read(try answer().0) == Data("hi".utf8))
    }

    /// Threat: a gateway writing a made-up answer (and its `[DONE]`) ahead of the sealed frames.
    @Test func anInventedEventEndsTheAnswer() async throws {
        let (injected, _) = try answer(
            extra: "data: {\"choices\":[{\"delta\":{\"content\":\"fake\"}}]}\n\ndata: [DONE]\n\n")
        await #expect(throws: (any Error).self) { _ = try await read(injected) }
    }

    @Test func receiptsOfAnotherKeyOrWorkerAndCutAnswersFail() async throws {
        let cases = [
            try answer(signer: .generate()).0, try answer(worker: "w2").0, try answer(final: false).0,
        ]
        for answer in cases {
            await #expect(throws: (any Error).self) { _ = try await read(answer) }
        }
    }
}
