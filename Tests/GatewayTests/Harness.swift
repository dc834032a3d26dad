import AdmissionCore
import AttestationCore
import AuditLog
import GatewayState
import Foundation
import Gateway
import Hummingbird
import NIOCore
import Policy
import Sealing
import Synchronization
import TestSupport
import WorkerAgent

/// A gateway running in this process on free ports, with a policy allowing exactly the given
/// engine and model digests.
final class GatewayHarness: Sendable {
    let apiPort: Int
    let workerPort: Int
    /// 0 unless the configuration asks for an admin API.
    let adminPort: Int
    let apiKey = "test-key-\(UUID().uuidString)"
    let dataDirectory: URL
    let server: GatewayServer
    private let task: Task<Void, any Error>
    let directory: TemporaryDirectory

    static func policy(engine: Data, model: Data) -> String { policyText(engines: [engine], model: model) }

    /// A TPM policy allowing exactly these engine and model digests.
    static func policyText(engines: [Data], model: Data, name: String = "test") -> String {
        """
        schema: ccgate.policy/v1
        name: \(name)
        evidence:
          formats: [tpm2-quote]
          tpm: {require_restricted_ak: true}
        measurements:
          binaries: [\(engines.enumerated().map { "{name: engine-\($0.offset), sha256: \(HashAlgorithm.sha256.hash($0.element).hex)}" }.joined(separator: ", "))]
          models: [{name: model, names: [fake], sha256: \(HashAlgorithm.sha256.hash(model).hex)}]
          # The engine is a stand-in the worker does not start: it is hashed, not executed from its measured copy.
          allow_unmeasured_engine: true
        """
    }

    /// A gateway whose data directory starts with the policy `policy` (YAML text).
    init(policy: String, reattest: Duration = .seconds(60), adjust: (inout GatewayConfiguration) -> Void = { _ in })
        async throws
    {
        directory = try TemporaryDirectory("gateway")
        dataDirectory = directory.file("data")
        var configuration = GatewayConfiguration()
        configuration.dataDirectory = dataDirectory
        configuration.port = 0
        configuration.workerPort = 0
        configuration.apiKeys = [apiKey]
        configuration.policy = try PolicyDocument.parse(policy)
        configuration.policyText = policy
        // Generous: on a loaded 2-core machine a quote from swtpm, under parallel tests, can take
        // more than ten seconds, and a handshake timeout would then read as a missing rejection.
        configuration.timings = WorkerTimings(handshakeTimeout: .seconds(60), reattestInterval: reattest)
        // The test TPMs' manufacturer: swtpm's local CA, pinned here and nowhere else.
        if let ca = SwtpmLocalCA.shared { configuration.tpmEKRoots.append(try ca.rootDER) }
        adjust(&configuration)
        let server = try await GatewayServer.open(configuration: configuration)
        let (ports, continuation) = AsyncStream<GatewayPorts>.makeStream()
        task = Task { try await server.run(signals: []) { continuation.yield($0) } }
        var iterator = ports.makeAsyncIterator()
        guard let bound = await iterator.next() else { throw CancellationError() }
        self.server = server
        apiPort = bound.api
        workerPort = bound.worker
        adminPort = bound.admin
    }

    /// The gateway's identity key, as a worker pins it.
    var pin: GatewayKeyPin { GatewayKeyPin(key: server.gatewayKey) }

    func stop() async {
        task.cancel()
        _ = try? await task.value
    }

    var baseURL: String { "http://127.0.0.1:\(apiPort)" }

    /// A request through curl (an independent HTTP client); returns status and body.
    /// `seconds`: how long the whole exchange may take (a real model on the CPU device, beside
    /// the rest of the suite, needs minutes).
    func request(
        _ path: String, method: String = "GET", body: String? = nil, key: String? = nil,
        extra: [String] = [], seconds: Int = 120
    ) async throws -> (status: Int, body: String) {
        var args = [
            "-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, baseURL + path, "--max-time", String(seconds),
        ]
        if let k = key ?? Optional(apiKey), !k.isEmpty { args += ["-H", "Authorization: Bearer \(k)"] }
        if let body { args += ["-H", "Content-Type: application/json", "--data-binary", body] }
        args += extra
        let result = try await ProcessRunner.run("curl", args)
        let text = result.stdout
        guard let cut = text.lastIndex(of: "\n") else { return (0, text) }
        return (Int(text[text.index(after: cut)...]) ?? 0, String(text[..<cut]))
    }

    /// The audit log's entries, as the JSON objects an export holds.
    func auditEvents() throws -> [[String: Any]] {
        var out = [[String: Any]]()
        try server.store.lines(AuditQuery()) { _, line in
            if let o = try JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] { out.append(o) }
            return true
        }
        return out
    }

    /// Signs a checkpoint and verifies the whole chain as `ccgate audit verify` would.
    func verifiedChain() async throws -> AuditVerifier.Summary {
        try await server.audit.checkpoint()
        var export = Data()
        try AuditExport.write(from: server.store, query: AuditQuery(), format: .jsonl, to: { export.append($0) })
        return try AuditVerifier.verify(export, key: server.audit.key.publicKey)
    }

    /// A request to the admin API through curl, with the gateway's admin token unless `token` says otherwise.
    func admin(_ path: String, method: String = "GET", json: [String: Any]? = nil, token: String? = nil) async throws
        -> (status: Int, body: [String: Any])
    {
        var args = [
            "-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, "http://127.0.0.1:\(adminPort)" + path, "--max-time",
            "60",
        ]
        args += ["-H", "Authorization: Bearer \(token ?? server.adminToken)"]
        if let json {
            let body = String(decoding: try JSONSerialization.data(withJSONObject: json), as: UTF8.self)
            args += ["-H", "Content-Type: application/json", "--data-binary", body]
        }
        let text = try await ProcessRunner.run("curl", args).stdout
        guard let cut = text.lastIndex(of: "\n") else { return (0, [:]) }
        let object = (try? JSONSerialization.jsonObject(with: Data(text[..<cut].utf8))) as? [String: Any] ?? [:]
        return (Int(text[text.index(after: cut)...]) ?? 0, object)
    }
}

/// A stand-in for the inference engine (a peer this project does not own): an OpenAI-shaped
/// server on loopback that answers chat completions as JSON or as a slow event stream, and
/// counts what it was asked.
final class FakeEngine: Sendable {
    let port: Int
    let chunkDelay: Duration
    private let task: Task<Void, any Error>

    /// `reportsUsage`: answers carry `usage` (JSON answers always, streams when asked with
    /// `stream_options.include_usage`), with counts that depend on the request; each request's
    /// counts are kept by the first `[tag]` in its text (``reported``).
    /// `usageText`: a `usage` object to report (verbatim) in place of the computed one.
    init(
        name: String, chunks: Int = 5, chunkDelay: Duration = .milliseconds(20), reportsUsage: Bool = false,
        usageText: String? = nil, status: Int = 200
    ) async throws {
        let router = Router()
        let counter = Counter()
        let sent = Counter()
        let reported = UsageBook()
        let askedForUsage = Counter()
        router.get("/v1/models") { _, _ in #"{"object":"list","data":[{"id":"fake","object":"model"}]}"# }
        router.post("/v1/chat/completions") { request, _ -> Response in
            counter.increment()
            var request = request
            let body = try await request.collectBody(upTo: 1 << 20)
            let object =
                (try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any]) ?? [:]
            let text = String(decoding: body.readableBytesView, as: UTF8.self)
            let tag = text.firstRange(of: /\[[a-z0-9-]+\]/).map { String(text[$0]) } ?? ""
            let stream = object["stream"] as? Bool == true
            let prompt = 7 + text.utf8.count / 9
            let completion = stream ? chunks : 2 + text.utf8.count % 4
            if reportsUsage { reported.counts.withLock { $0[tag] = (prompt, completion) } }
            let computed =
                #"{"prompt_tokens":\#(prompt),"completion_tokens":\#(completion),"total_tokens":\#(prompt + completion)}"#
            let usage = #""usage":"# + (usageText ?? computed)
            let includeUsage = (object["stream_options"] as? [String: Any])?["include_usage"] as? Bool == true
            if includeUsage { askedForUsage.increment() }
            if status != 200 {
                var headers = HTTPFields()
                headers[.contentType] = "application/json"
                return Response(
                    status: HTTPResponse.Status(code: status), headers: headers,
                    body: .init(
                        byteBuffer: ByteBuffer(
                            string: #"{"error":{"message":"busy","type":"server_error","code":null,"param":null}}"#)))
            }
            if stream {
                var headers = HTTPFields()
                headers[.contentType] = "text/event-stream"
                return Response(
                    status: .ok, headers: headers,
                    body: ResponseBody { writer in
                        for i in 0..<chunks {
                            try await Task.sleep(for: chunkDelay)
                            try await writer.write(
                                ByteBuffer(
                                    string: "data: {\"choices\":[{\"delta\":{\"content\":\"\(name)-\(i) \"}}]}\n\n"))
                            sent.increment()
                        }
                        if reportsUsage, includeUsage {
                            try await writer.write(ByteBuffer(string: "data: {\"choices\":[],\(usage)}\n\n"))
                        }
                        try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                        try await writer.finish(nil)
                    })
            }
            var headers = HTTPFields()
            headers[.contentType] = "application/json"
            return Response(
                status: .ok, headers: headers,
                body: .init(
                    byteBuffer: ByteBuffer(
                        string:
                            #"{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hello from \#(name)"}}]\#(reportsUsage ? "," + usage : "")}"#
                    )))
        }
        (port, task) = await serveOnLoopback(router)
        self.chunkDelay = chunkDelay
        self.counter = counter
        self.sent = sent
        self.reportedUsage = reported
        self.askedForUsage = askedForUsage
    }

    private let reportedUsage: UsageBook
    private let askedForUsage: Counter
    /// The counts reported for each tagged request.
    var reported: [String: (prompt: Int, completion: Int)] { reportedUsage.counts.withLock { $0 } }

    final class UsageBook: Sendable {
        let counts = Mutex<[String: (prompt: Int, completion: Int)]>([:])
    }
    /// Requests that asked for a stream's usage.
    var usageRequests: Int { askedForUsage.value }

    private let counter: Counter
    private let sent: Counter
    var requestCount: Int { counter.value }
    /// Stream chunks written so far, over all requests.
    var chunksSent: Int { sent.value }

    final class Counter: Sendable {
        private let count = Mutex<Int>(0)
        func increment() { count.withLock { $0 += 1 } }
        var value: Int { count.withLock { $0 } }
    }

    func stop() async {
        task.cancel()
        _ = try? await task.value
    }
}

/// A worker in this process: its own swtpm, measured files, and a gateway connection.
final class TestWorker: Sendable {
    let tpm: Swtpm
    let files: TemporaryDirectory
    let events: AsyncStream<GatewayClient.Event>
    private let task: Task<Void, any Error>
    let id: String

    convenience init(
        id: String, gatewayPort: Int, gatewayKey: GatewayKeyPin, enginePort: Int, engine: Data, model: Data,
        modelName: String = "fake",
        provider: GatewayClient.ProviderIdentity? = nil, ca: SwtpmLocalCA? = .shared,
        attestor: (Attestor) throws -> any EvidenceSource = { $0 }
    ) async throws {
        let files = try TemporaryDirectory("worker")
        try engine.write(to: files.file("engine"))
        try model.write(to: files.file("model.gguf"))
        try await self.init(
            id: id, gatewayPort: gatewayPort, gatewayKey: gatewayKey, enginePort: enginePort,
            measured: [files.file("engine"), files.file("model.gguf")], modelName: modelName, files: files,
            provider: provider, ca: ca, attestor: attestor)
    }

    init(
        id: String, gatewayPort: Int, gatewayKey: GatewayKeyPin, enginePort: Int, measured: [URL], modelName: String,
        files: TemporaryDirectory? = nil,
        provider: GatewayClient.ProviderIdentity? = nil, ca: SwtpmLocalCA? = .shared,
        executable: SealedExecutable? = nil, engine: EngineClient? = nil,
        attestor makeAttestor: (Attestor) throws -> any EvidenceSource = { $0 }
    ) async throws {
        self.id = id
        tpm = try await Swtpm.start(ca: ca)
        self.files = try files ?? TemporaryDirectory("worker")
        // Making the attestor creates keys in the TPM (blocking I/O): off the cooperative pool.
        let tcti = tpm.tcti
        let attestor = try makeAttestor(
            try await onOwnThread {
                try Attestor(
                    tcti: tcti, files: measured, ekChain: try ca.map { try $0.chainDER }, executable: executable)
            })
        let (events, continuation) = AsyncStream<GatewayClient.Event>.makeStream()
        self.events = events
        let client = GatewayClient(
            configuration: .init(
                host: "127.0.0.1", port: gatewayPort, gatewayKey: gatewayKey, workerID: id, models: [modelName],
                provider: provider),
            attestor: attestor, engine: engine ?? EngineClient(port: enginePort),
            onEvent: { continuation.yield($0) })
        task = Task {
            defer { continuation.finish() }
            try await client.runOnce()
        }
    }

    /// Waits for admission; the error if the connection ended first (rejected).
    func admitted() async -> Result<String, any Error> { await admission(events, task) }

    func outcome() async -> (any Error)? {
        do { try await task.value; return nil } catch { return error }
    }

    /// Kills the worker: its connection drops at once.
    func kill() {
        task.cancel()
    }

    func stop() async {
        task.cancel()
        _ = try? await task.value
        let tpm = tpm
        await onOwnThread { tpm.stop() }
    }
}

/// A router served on a free loopback port: its port and the task running it.
func serveOnLoopback(_ router: Router<BasicRequestContext>) async -> (Int, Task<Void, any Error>) {
    let (ports, continuation) = AsyncStream<Int>.makeStream()
    let app = Application(
        router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
        onServerRunning: { continuation.yield($0.localAddress?.port ?? 0) })
    let task = Task { try await app.runService(gracefulShutdownSignals: []) }
    var iterator = ports.makeAsyncIterator()
    return (await iterator.next() ?? 0, task)
}

/// Waits for a worker's admission; the error if its connection ended first (rejected).
func admission(_ events: AsyncStream<GatewayClient.Event>, _ task: Task<Void, any Error>) async -> Result<
    String, any Error
> {
    for await event in events {
        if case .admitted(let session) = event { return .success(session) }
    }
    do {
        try await task.value
        return .failure(CancellationError())
    } catch { return .failure(error) }
}

/// An attestor on `tpm` (with the test CA's EK chain) that measured `engine` and `model`, written
/// to a new directory (kept alive by the caller).
func measuredAttestor(on tpm: Swtpm, engine: Data, model: Data) throws -> (Attestor, TemporaryDirectory) {
    let dir = try TemporaryDirectory()
    try engine.write(to: dir.file("engine"))
    try model.write(to: dir.file("model"))
    let attestor = try Attestor(
        tcti: tpm.tcti, files: [dir.file("engine"), dir.file("model")], ekChain: try SwtpmLocalCA.shared?.chainDER)
    return (attestor, dir)
}
