import AttestationCore
import Foundation
import Gateway
import TestSupport
import Testing
import WorkerProtocol

/// Cheap attacks on the gateway's resources: a flood of garbage admissions on the worker port,
/// and idle connections on the front door.
@Suite(.serialized) struct DenialOfServiceTests {
    /// Bytes of the data directory's files.
    static func size(of directory: URL) -> Int {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return files.reduce(0) { total, name in
            let attributes = try? FileManager.default.attributesOfItem(
                atPath: directory.appendingPathComponent(name).path)
            return total + ((attributes?[.size] as? NSNumber)?.intValue ?? 0)
        }
    }

    /// Runs `body(i)` for i in 0..<count on `threads` plain threads (blocking sockets stay off
    /// the cooperative pool the gateway runs on).
    static func onThreads(_ count: Int, threads: Int, _ body: @escaping @Sendable (Int) -> Void) async {
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread {
                DispatchQueue.concurrentPerform(iterations: threads) { t in
                    for i in stride(from: t, to: count, by: threads) { body(i) }
                }
                done.resume()
            }
        }
    }

    /// Threat: a peer with no TPM filling the gateway's disk with rejected evidence (each frame
    /// may carry 2 MiB). 10,000 admissions with 24 KiB of garbage evidence each are all refused
    /// and audited, and grow the data directory by less than 20 MB (the envelopes alone would be
    /// about 330 MB): evidence that does not verify is recorded by digest only.
    @Test func tenThousandGarbageAdmissionsStayWithinTwentyMegabytes() async throws {
        let gateway = try await GatewayHarness(
            policy: GatewayHarness.policy(engine: AdmissionFlowTests.engine, model: AdmissionFlowTests.model))
        defer { Teardown.after { await gateway.stop() } }
        let before = Self.size(of: gateway.dataDirectory)
        let port = gateway.workerPort
        let refused = Counter()
        let total = 10_000
        let noise = Data((0..<24_576).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
        await Self.onThreads(total, threads: 32) { i in
            let junk = String(i) + noise
            let envelope = Data(
                #"{"format":"tpm2-quote","version":1,"ak_public":"\#(junk)","quote":"AAAA","signature":"AAAA","pcrs":{}}"#
                    .utf8)
            let hello = WireMessage.hello(
                .init(workerID: "junk-\(i)", kemPublicKey: Data(repeating: 7, count: 32), models: ["fake"]))
            guard let frames = try? hello.frame() + WireMessage.evidence(.init(envelope: envelope)).frame(),
                // A generous wait: 32 clients at once on a 2-core machine shared with other tests.
                let answer = try? HostileInputTests.raw(frames, port: port, timeout: 120),
                HostileInputTests.errorCode(answer) != nil
            else { return }
            _ = refused.next()
        }
        #expect(refused.next() - 1 == total)
        try await gateway.server.audit.checkpoint()
        let rejections = try gateway.auditEvents().filter {
            $0["event"] as? String == "admission" && $0["decision"] as? String == "reject"
        }
        #expect(rejections.count == total)
        #expect(rejections.allSatisfy { ($0["evidence_sha256"] as? String)?.count == 64 })
        let grown = Self.size(of: gateway.dataDirectory) - before
        #expect(grown < 20_000_000, "the data directory grew by \(grown) bytes")
        // Still serving: an honest worker is admitted afterwards.
        let engine = try await FakeEngine(name: "after")
        let worker = try await TestWorker(
            id: "after-flood", gatewayPort: port, gatewayKey: gateway.pin, enginePort: engine.port,
            engine: AdmissionFlowTests.engine,
            model: AdmissionFlowTests.model)
        defer {
            Teardown.after {
                await worker.stop(); await engine.stop()
            }
        }
        guard case .success = await worker.admitted() else {
            Issue.record("no admission after the flood")
            return
        }
    }

    /// Threat: slowloris on the front door — 1,000 connections opened and left idle, half of them
    /// with a request head that never completes. Requests are served meanwhile, and every idle
    /// connection is closed once the idle timeout passes.
    @Test func thousandIdleConnectionsAreClosedAtTheTimeout() async throws {
        let gateway = try await GatewayHarness(
            policy: GatewayHarness.policy(engine: AdmissionFlowTests.engine, model: AdmissionFlowTests.model)
        ) { c in c.idleTimeout = .seconds(2) }
        let engine = try await FakeEngine(name: "busy")
        let worker = try await TestWorker(
            id: "busy", gatewayPort: gateway.workerPort, gatewayKey: gateway.pin, enginePort: engine.port,
            engine: AdmissionFlowTests.engine,
            model: AdmissionFlowTests.model)
        defer {
            Teardown.after {
                await worker.stop(); await engine.stop(); await gateway.stop()
            }
        }
        guard case .success = await worker.admitted() else {
            Issue.record("not admitted")
            return
        }
        var sockets = [Int32]()
        defer { for fd in sockets { close(fd) } }
        for i in 0..<1_000 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = in_port_t(UInt16(gateway.apiPort).bigEndian)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            try #require(rc == 0, "connection \(i) failed: \(String(cString: strerror(errno)))")
            if i.isMultiple(of: 2) {
                let partial = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                _ = partial.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
            }
            sockets.append(fd)
        }
        let chat = #"{"model":"fake","messages":[{"role":"user","content":"hi"}]}"#
        for _ in 0..<3 {
            #expect(try await gateway.request("/v1/chat/completions", method: "POST", body: chat).status == 200)
        }
        // Closed means: a read returns end of file (or a reset).
        func closed(_ fd: Int32) -> Bool {
            var byte: UInt8 = 0
            let n = recv(fd, &byte, 1, Int32(MSG_DONTWAIT))
            return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
        }
        let deadline = Date() + 30
        var open = sockets.filter { !closed($0) }
        while !open.isEmpty, Date() < deadline {
            try await Task.sleep(for: .milliseconds(250))
            open = open.filter { !closed($0) }
        }
        #expect(open.isEmpty, "\(open.count) of 1000 idle connections are still open")
        #expect(try await gateway.request("/v1/chat/completions", method: "POST", body: chat).status == 200)
    }
}
