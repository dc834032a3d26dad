import AdmissionCore
import AttestationCore
import AuditLog
import Crypto
import GatewayState
import Foundation
import Sealing
import Testing
import TestSupport
import WorkerProtocol

/// The session runner end to end over an in-memory connection: the ordering guarantees, and the
/// races the socket tests only hit by chance, each forced with a gate.
@Suite struct SessionRunnerTests {
    /// Starts a session on a fresh connection.
    func start(_ core: Core) -> (TestConnection, Task<Void, Never>) {
        let connection = TestConnection()
        let task = Task { await core.runner.run(connection.inbound, on: connection) }
        return (connection, task)
    }

    /// A session on a fresh connection with a worker admitted: the connection, the runner's
    /// task, the session id and key.
    func admitted(_ core: Core) async throws -> (TestConnection, Task<Void, Never>, String, SymmetricKey) {
        let (connection, task) = start(core)
        switch await TestWorker().admit(core, connection) {
        case .success(let (session, key)): return (connection, task, session, key)
        case .failure(let refusal): throw refusal
        }
    }

    @Test func anAdmittedWorkerIsRoutedAndItsDisconnectIsAuditedOnce() async throws {
        let core = try Core()
        let (connection, task, session, _) = try await admitted(core)
        #expect(core.registry.isAdmitted("w1"))
        #expect(try core.store.workers().map(\.id) == ["w1"])
        let kinds = try core.events().map(\.kind)
        #expect(kinds == [.admission, .sessionKey])
        connection.hangUp()
        await task.value
        #expect(!core.registry.isAdmitted("w1"))
        #expect(try core.store.workers().isEmpty)
        let evictions = try core.evictions(session: session)
        #expect(evictions.count == 1)
        #expect(evictions.first?.reasons == [ProtocolErrorCode.disconnected.rawValue])
    }

    @Test func aRefusalIsRecordedBeforeTheWorkerHearsIt() async throws {
        let core = try Core()
        let (connection, task) = start(core)
        let result = await TestWorker().admit(core, connection) { $0.tdAttributes[0] |= 0x01 }
        guard case .failure(let refusal) = result else {
            Issue.record("a debug TD was admitted")
            return
        }
        #expect(refusal.code == ReasonCode.policyDebugNotAllowed.rawValue)
        await task.value
        let events = try core.events()
        #expect(events.map(\.kind) == [.admission])
        #expect(events.first?.decision == "reject")
        #expect(!core.registry.isAdmitted("w1"))
    }

    @Test func aDecisionThatCannotBeRecordedIsNotMade() async throws {
        let core = try Core()
        core.store.failAppends = true
        let (connection, task) = start(core)
        guard case .failure(let refusal) = await TestWorker().admit(core, connection) else {
            Issue.record("admitted without an audit entry")
            return
        }
        #expect(refusal.code == ProtocolErrorCode.auditUnavailable.rawValue)
        await task.value
        #expect(!core.registry.isAdmitted("w1"))
        core.store.failAppends = false
        #expect(try core.events().isEmpty)
    }

    @Test func aPolicyAppliedWhileAnAdmissionIsInFlightStillReachesTheWorker() async throws {
        // The stake read is the admission's last step before its durable commit: hold it there,
        // apply a policy the worker does not meet, then let the admission finish.
        let gate = Gate()
        let stakePolicy =
            Core.tdxPolicy
            + "stake:\n  minimum_ton: 1\n  pool: \"0:\(String(repeating: "cd", count: 32))\"\n  code_hashes: [\"\(String(repeating: "ef", count: 32))\"]\n"
        let core = try Core(policy: stakePolicy, stake: FixedStake(gate: gate))
        let (connection, task) = start(core)
        let worker = TestWorker()
        connection.deliver(worker.hello)
        guard case .challenge(let challenge)? = await connection.next() else {
            Issue.record("no challenge")
            return
        }
        var evidence = core.evidence(nonce: challenge.nonce, key: worker.kem.publicKeyBytes)
        evidence.providerProof = Data("{}".utf8)
        connection.deliver(.evidence(evidence))
        await gate.reached(1)
        try core.apply("schema: ccgate.policy/v1\nname: tpm-only\nevidence:\n  formats: [tpm2-quote]\n")
        gate.open()
        await task.value
        #expect(!core.registry.isAdmitted("w1"))
        let events = try core.events()
        let admission = try #require(events.first { $0.kind == .admission })
        #expect(admission.decision == "admit" && admission.policyVersion == 1)
        let session = try #require(admission.detail["session"])
        let evictions = try core.evictions(session: session)
        #expect(evictions.count == 1)
        #expect(evictions.first?.reasons == [ReasonCode.evidenceUnsupported.rawValue])
        #expect(evictions.first?.policyVersion == 2)
    }

    @Test func anAdminEvictionDuringReattestationWinsAndTheLateVerdictIsDropped() async throws {
        let gate = Gate()
        // The second evidence (the re-attestation) is held before verification.
        let core = try Core(
            preparer: HoldingPreparer(gate: gate, hold: 2),
            timings: .init(handshakeTimeout: .seconds(30), reattestInterval: .milliseconds(50)))
        let (connection, task) = start(core)
        let worker = TestWorker()
        guard case .success(let (session, key)) = await worker.admit(core, connection) else {
            Issue.record("not admitted")
            return
        }
        let opener = ChannelOpener(sessionKey: key, sessionID: session, direction: .gatewayToWorker)
        // Sealed: after admission the gateway says nothing in the clear.
        guard case .sealed(let box)? = await connection.next(),
            case .challenge(let nonce)? = try? ChannelPayload(decoding: opener.open(box))
        else {
            Issue.record("no sealed re-attestation challenge")
            return
        }
        connection.deliver(.evidence(core.evidence(nonce: nonce, key: worker.kem.publicKeyBytes)))
        await gate.reached(1)
        let link = try #require(core.registry.link("w1"))
        let evicted = try await core.runner.evictor.evict(
            link, .init(code: ProtocolErrorCode.adminEvicted.rawValue, message: "evicted by admin", actor: "admin"))
        #expect(evicted)
        gate.open()
        await task.value
        let events = try core.events().filter { $0.detail["session"] == session || $0.worker == "w1" }
        #expect(events.filter { $0.kind == AuditEventKind.reattestation }.isEmpty)
        let evictions = try core.evictions(session: session)
        #expect(evictions.count == 1)
        #expect(
            evictions.first?.actor == "admin" && evictions.first?.reasons == [ProtocolErrorCode.adminEvicted.rawValue])
        #expect(events.filter { $0.kind == AuditEventKind.disconnect }.count == 1)
        #expect(try core.store.workers().isEmpty)
    }

    @Test func aStakeEvictionAndADisconnectAtOnceAreAuditedOnce() async throws {
        for round in 0..<20 {
            let core = try Core()
            let (connection, task, session, _) = try await admitted(core)
            let link = try #require(core.registry.link("w1"))
            async let evicted = try core.runner.evictor.evict(
                link, .init(code: "stake.below-minimum", message: "withdrawn", actor: "stake-oracle"))
            if round % 2 == 0 { await Task.yield() }
            connection.hangUp()
            let won = try await evicted
            await task.value
            let evictions = try core.evictions(session: session)
            #expect(evictions.count == 1, "round \(round)")
            #expect(evictions.first?.reasons == [won ? "stake.below-minimum" : ProtocolErrorCode.disconnected.rawValue])
            #expect(try core.events().filter { $0.kind == AuditEventKind.disconnect }.count == (won ? 1 : 0))
            #expect(!core.registry.isAdmitted("w1"))
        }
    }

    @Test func aFailureMidResponseFailsTheRequestAndEndsTheSessionOnce() async throws {
        let core = try Core()
        let (connection, task, session, key) = try await admitted(core)
        let link = try #require(core.registry.pick(model: "m"))
        let (id, stream) = try link.startRequest(method: "POST", path: "/v1/completions", body: Data("{}".utf8))
        guard case .sealed(let box)? = await connection.next() else {
            Issue.record("request not forwarded")
            return
        }
        let opener = ChannelOpener(sessionKey: key, sessionID: session, direction: .gatewayToWorker)
        let request = try ChannelPayload(decoding: try opener.open(box))
        #expect(
            request == .request(id: id, method: "POST", path: "/v1/completions", body: Data("{}".utf8), requestID: ""))
        let sealer = ChannelSealer(sessionKey: key, sessionID: session, direction: .workerToGateway)
        for payload in [
            ChannelPayload.head(id: id, status: 200, contentType: "text/event-stream"),
            .data(id: id, bytes: Data("data: 1\n\n".utf8)),
        ] {
            try sealer.seal(payload.encoded()) { connection.deliver(.sealed($0)) }
        }
        // A forged frame: the channel refuses it, and the session ends.
        connection.deliver(.sealed(Data(repeating: 0xAA, count: 64)))
        var received = [ChannelPayload]()
        do {
            for try await part in stream { received.append(part) }
            Issue.record("the request finished although its worker failed")
        } catch {
            #expect(error is WorkerFailure)
        }
        #expect(received.count == 2)
        await task.value
        let evictions = try core.evictions(session: session)
        #expect(evictions.count == 1)
        #expect(evictions.first?.reasons == [ProtocolErrorCode.channelAuthentication.rawValue])
        // Told inside the channel: nobody else can end a worker's session.
        guard case .sealed(let farewell)? = await connection.next(),
            case .ended(let code, _, _)? = try? ChannelPayload(decoding: opener.open(farewell))
        else {
            Issue.record("the worker was not told, sealed")
            return
        }
        #expect(code == ProtocolErrorCode.channelAuthentication.rawValue)
    }

    @Test func aFrameErrorIsAuditedByCodeAndAnsweredWithIt() async throws {
        let core = try Core()
        let connection = TestConnection()
        let task = Task { await core.runner.run(connection.inbound, on: connection) }
        connection.deliver(TestWorker().hello)
        _ = await connection.next()
        connection.fail(FrameError.tooLarge(1 << 30))
        await task.value
        guard case .error(let error)? = await connection.next() else {
            Issue.record("not answered")
            return
        }
        #expect(error.code == ProtocolErrorCode.frameTooLarge.rawValue)
        let events = try core.events()
        #expect(events.map(\.kind) == [.protocolError])
        #expect(events.first?.reasons == [ProtocolErrorCode.frameTooLarge.rawValue])
    }

    @Test func aConnectionThatFailsAsItHearsAdmittedLeavesNoWorkerBehind() async throws {
        let core = try Core()
        let connection = TestConnection { message in
            if case .admitted = message { return true }
            return false
        }
        let task = Task { await core.runner.run(connection.inbound, on: connection) }
        let worker = TestWorker()
        connection.deliver(worker.hello)
        guard case .challenge(let challenge)? = await connection.next() else {
            Issue.record("no challenge")
            return
        }
        connection.deliver(.evidence(core.evidence(nonce: challenge.nonce, key: worker.kem.publicKeyBytes)))
        await task.value
        #expect(!core.registry.isAdmitted("w1"))
        #expect(core.registry.pick(model: "m") == nil)
        #expect(try core.store.workers().isEmpty)
        let admission = try #require(try core.events().first { $0.kind == .admission })
        let evictions = try core.evictions(session: try #require(admission.detail["session"]))
        #expect(evictions.count == 1)
        #expect(evictions.first?.reasons == [ProtocolErrorCode.disconnected.rawValue])
    }

    @Test func anEvictionWhoseEntryCannotBeWrittenIsRecordedByTheSessionOnce() async throws {
        let core = try Core()
        let (connection, task, session, _) = try await admitted(core)
        let link = try #require(core.registry.link("w1"))
        core.store.failNextAppends(1)
        defer { #expect(connection.closes.withLock { $0 } >= 1, "the evicted worker's connection was not closed") }
        await #expect(throws: StoreError.self) {
            try await core.runner.evictor.evict(
                link, .init(code: "stake.below-minimum", message: "withdrawn", actor: "stake-oracle"))
        }
        #expect(!core.registry.isAdmitted("w1"))
        await task.value
        // The session's own end records it, with the eviction's code and actor.
        let evictions = try core.evictions(session: session)
        #expect(evictions.count == 1)
        #expect(evictions.first?.reasons == ["stake.below-minimum"])
        #expect(evictions.first?.actor == "stake-oracle")
        #expect(try core.events().filter { $0.kind == AuditEventKind.disconnect }.isEmpty)
        #expect(try core.store.workers().isEmpty)
    }

    @Test func aReattestationKeepsWhatItProvedForTheNextPolicyAndAPolicyAppliedMeanwhileReachesIt() async throws {
        let gate = Gate()
        let lenient = Core.tdxPolicy + "  tdx:\n    accepted_tcb_statuses: [UpToDate, OutOfDate]\n"
        let core = try Core(
            policy: lenient, preparer: HoldingPreparer(gate: gate, hold: 2),
            timings: .init(handshakeTimeout: .seconds(30), reattestInterval: .milliseconds(50)))
        let (connection, task) = start(core)
        let worker = TestWorker()
        guard case .success(let (session, key)) = await worker.admit(core, connection) else {
            Issue.record("not admitted")
            return
        }
        let opener = ChannelOpener(sessionKey: key, sessionID: session, direction: .gatewayToWorker)
        #expect(core.registry.admission(workerID: "w1", sessionID: session)?.facts.tcbStatus == "UpToDate")
        // Sealed: after admission the gateway says nothing in the clear.
        guard case .sealed(let box)? = await connection.next(),
            case .challenge(let nonce)? = try? ChannelPayload(decoding: opener.open(box))
        else {
            Issue.record("no sealed re-attestation challenge")
            return
        }
        // The platform re-attests from an out-of-date TCB level, which the lenient policy accepts.
        let outOfDate = core.evidence(nonce: nonce, key: worker.kem.publicKeyBytes) {
            $0.cpuSVN = [2, 2, 2, 2, 3, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0]
            $0.pceSVN = 11
        }
        connection.deliver(.evidence(outOfDate))
        await gate.reached(1)
        // Judged under the lenient policy; a strict one is applied before it is recorded.
        try core.apply(Core.tdxPolicy)
        gate.open()
        await task.value
        let events = try core.events()
        let pass = try #require(events.first { $0.kind == .reattestation })
        #expect(pass.decision == "pass", "\(pass)")
        #expect(pass.policyVersion == 1)
        let evictions = try core.evictions(session: session)
        #expect(evictions.count == 1)
        #expect(evictions.first?.reasons == [ReasonCode.tcbStatusNotAllowed.rawValue])
        #expect(evictions.first?.policyVersion == 2)
    }
}

/// The writer of an admitted session's outbox.
@Suite struct WorkerLinkOutboxTests {
    /// Threat: prompts queued for a worker reaching it after it was evicted. Once the session is
    /// ending, queued requests are dropped; the sealed farewell and cancellations still go, in
    /// order, each sealed as it is written (so the farewell's sequence number is the next one).
    @Test func anEndingSessionSendsItsFarewellButNoQueuedPrompt() async throws {
        let (outbox, continuation) = AsyncStream<ChannelPayload>.makeStream()
        let key = SymmetricKey(size: .bits256)
        let link = WorkerLink(
            workerID: "w", sessionID: "s", models: ["m"], kemPublicKey: Data(count: 32),
            sealer: ChannelSealer(sessionKey: key, sessionID: "s", direction: .gatewayToWorker),
            opener: ChannelOpener(sessionKey: key, sessionID: "s", direction: .workerToGateway),
            outbox: continuation, disconnect: {})
        let (id, _) = try link.startRequest(method: "POST", path: "/v1/completions", body: Data("{}".utf8))
        #expect(id == 1)
        link.end(code: "admin.evicted", message: "bye")
        // The session's own writer drains the outbox onto a connection, then closes it.
        let connection = TestConnection()
        await WorkerSessionRunner.writer(link, outbox, connection).value
        #expect(connection.closes.withLock { $0 } == 1)
        let opener = ChannelOpener(sessionKey: key, sessionID: "s", direction: .gatewayToWorker)
        var written = [ChannelPayload]()
        while let message = await connection.nextSent() {
            guard case .sealed(let box) = message else { continue }
            written.append(try ChannelPayload(decoding: opener.open(box)))
        }
        #expect(written == [.ended(code: "admin.evicted", message: "bye", judged: nil)])
    }
}
