import AttestationCore
import AuditLog
import Foundation
import Gateway
import Hummingbird
import NIOCore
import Policy
import Synchronization
import TestSupport
import WorkerAgent

/// A gateway running in this process on free ports, with a policy allowing exactly the given
/// engine and model digests.
final class GatewayHarness: Sendable {
    let apiPort: Int
    let workerPort: Int
    let apiKey = "test-key-\(UUID().uuidString)"
    let auditURL: URL
    let server: GatewayServer
    private let task: Task<Void, any Error>
    let directory: TemporaryDirectory

    static func policy(engine: Data, model: Data) throws -> PolicyDocument {
        try PolicyDocument.parse("""
            schema: ccgate.policy/v1
            name: test
            evidence:
              formats: [tpm2-quote]
              tpm: {require_restricted_ak: true}
            measurements:
              binaries: [{name: engine, sha256: \(HashAlgorithm.sha256.hash(engine).hex)}]
              models: [{name: model, sha256: \(HashAlgorithm.sha256.hash(model).hex)}]
            """)
    }

    init(policy: PolicyDocument, reattest: Duration = .seconds(60), adjust: (inout GatewayConfiguration) -> Void = { _ in })
        async throws
    {
        directory = try TemporaryDirectory("gateway")
        auditURL = directory.file("audit.jsonl")
        var configuration = GatewayConfiguration()
        configuration.port = 0
        configuration.workerPort = 0
        configuration.apiKeys = [apiKey]
        configuration.policy = policy
        configuration.auditPath = auditURL
        // Generous: on a loaded 2-core machine a quote from swtpm, under parallel tests, can take
        // more than ten seconds, and a handshake timeout would then read as a missing rejection.
        configuration.timings = WorkerTimings(handshakeTimeout: .seconds(60), reattestInterval: reattest)
        adjust(&configuration)
        let server = GatewayServer(configuration: configuration)
        let (ports, continuation) = AsyncStream<(Int, Int)>.makeStream()
        task = Task { try await server.run(signals: []) { api, worker in continuation.yield((api, worker)) } }
        var iterator = ports.makeAsyncIterator()
        guard let (api, worker) = await iterator.next() else { throw CancellationError() }
        self.server = server
        apiPort = api
        workerPort = worker
    }

    func stop() async {
        task.cancel()
        _ = try? await task.value
    }

    var baseURL: String { "http://127.0.0.1:\(apiPort)" }

    /// A request through curl (an independent HTTP client); returns status and body.
    func request(_ path: String, method: String = "GET", body: String? = nil, key: String? = nil,
                 extra: [String] = []) async throws -> (status: Int, body: String) {
        var args = ["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, baseURL + path, "--max-time", "120"]
        if let k = key ?? Optional(apiKey), !k.isEmpty { args += ["-H", "Authorization: Bearer \(k)"] }
        if let body { args += ["-H", "Content-Type: application/json", "--data-binary", body] }
        args += extra
        let result = try await ProcessRunner.run("curl", args)
        let text = result.stdout
        guard let cut = text.lastIndex(of: "\n") else { return (0, text) }
        return (Int(text[text.index(after: cut)...]) ?? 0, String(text[..<cut]))
    }

    func auditEvents() throws -> [[String: Any]] {
        let text = try String(contentsOf: auditURL, encoding: .utf8)
        return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }
}

/// A stand-in for the inference engine (a peer this project does not own): an OpenAI-shaped
/// server on loopback that answers chat completions as JSON or as a slow event stream, and
/// counts what it was asked.
final class FakeEngine: Sendable {
    let port: Int
    let chunkDelay: Duration
    private let task: Task<Void, any Error>

    init(name: String, chunks: Int = 5, chunkDelay: Duration = .milliseconds(20)) async throws {
        let router = Router()
        let counter = Counter()
        router.get("/v1/models") { _, _ in #"{"object":"list","data":[{"id":"fake","object":"model"}]}"# }
        router.post("/v1/chat/completions") { request, _ -> Response in
            counter.increment()
            var request = request
            let body = try await request.collectBody(upTo: 1 << 20)
            let object = (try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any]) ?? [:]
            if object["stream"] as? Bool == true {
                var headers = HTTPFields()
                headers[.contentType] = "text/event-stream"
                return Response(status: .ok, headers: headers, body: ResponseBody { writer in
                    for i in 0..<chunks {
                        try await Task.sleep(for: chunkDelay)
                        try await writer.write(ByteBuffer(string: "data: {\"choices\":[{\"delta\":{\"content\":\"\(name)-\(i) \"}}]}\n\n"))
                    }
                    try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                    try await writer.finish(nil)
                })
            }
            var headers = HTTPFields()
            headers[.contentType] = "application/json"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string:
                #"{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hello from \#(name)"}}]}"#)))
        }
        (port, task) = await serveOnLoopback(router)
        self.chunkDelay = chunkDelay
        self.counter = counter
    }

    private let counter: Counter
    var requestCount: Int { counter.value }

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

    convenience init(id: String, gatewayPort: Int, enginePort: Int, engine: Data, model: Data, modelName: String = "fake") async throws {
        let files = try TemporaryDirectory("worker")
        try engine.write(to: files.file("engine"))
        try model.write(to: files.file("model.gguf"))
        try await self.init(id: id, gatewayPort: gatewayPort, enginePort: enginePort,
                            measured: [files.file("engine"), files.file("model.gguf")], modelName: modelName, files: files)
    }

    init(id: String, gatewayPort: Int, enginePort: Int, measured: [URL], modelName: String, files: TemporaryDirectory? = nil) async throws {
        self.id = id
        tpm = try Swtpm.start()
        self.files = try files ?? TemporaryDirectory("worker")
        let attestor = try Attestor(tcti: tpm.tcti, files: measured)
        let (events, continuation) = AsyncStream<GatewayClient.Event>.makeStream()
        self.events = events
        let client = GatewayClient(configuration: .init(host: "127.0.0.1", port: gatewayPort, workerID: id, models: [modelName]),
                                   attestor: attestor, engine: EngineClient(port: enginePort),
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
        tpm.stop()
    }
}

/// A router served on a free loopback port: its port and the task running it.
func serveOnLoopback(_ router: Router<BasicRequestContext>) async -> (Int, Task<Void, any Error>) {
    let (ports, continuation) = AsyncStream<Int>.makeStream()
    let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                          onServerRunning: { continuation.yield($0.localAddress?.port ?? 0) })
    let task = Task { try await app.runService(gracefulShutdownSignals: []) }
    var iterator = ports.makeAsyncIterator()
    return (await iterator.next() ?? 0, task)
}

/// Waits for a worker's admission; the error if its connection ended first (rejected).
func admission(_ events: AsyncStream<GatewayClient.Event>, _ task: Task<Void, any Error>) async -> Result<String, any Error> {
    for await event in events {
        if case .admitted(let session) = event { return .success(session) }
    }
    do {
        try await task.value
        return .failure(CancellationError())
    } catch { return .failure(error) }
}
