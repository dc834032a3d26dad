// Admission latency and proxy throughput: requests per second through the gateway against the
// same requests sent straight to the engine, in the same run.
import AttestationCore
import Foundation
import Gateway
import HTTPTypes
import Hummingbird
import NIOCore
import Policy
import Sealing
import Synchronization
import WorkerAgent

/// An engine stand-in that answers at once, so that the figure is the gateway's own cost.
func startStubEngine() async throws -> (port: Int, task: Task<Void, any Error>) {
    let router = Router()
    router.get("/v1/models") { _, _ in #"{"object":"list","data":[]}"# }
    router.post("/v1/chat/completions") { request, _ -> Response in
        var request = request
        _ = try await request.collectBody(upTo: 1 << 20)
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(
            status: .ok, headers: headers,
            body: .init(
                byteBuffer: ByteBuffer(
                    string:
                        #"{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"}}]}"#
                )))
    }
    let (ports, continuation) = AsyncStream<Int>.makeStream()
    let app = Application(
        router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
        onServerRunning: { continuation.yield($0.localAddress?.port ?? 0) })
    let task = Task { try await app.runService(gracefulShutdownSignals: []) }
    var iterator = ports.makeAsyncIterator()
    return (await iterator.next() ?? 0, task)
}

/// Requests per second with `concurrency` clients for `duration`, one connection per request.
func throughput(port: Int, body: Data, headers: [(String, String)], concurrency: Int, duration: Duration) async -> (
    rate: Double, errors: Int
) {
    let client = EngineClient(port: port)
    let clock = ContinuousClock()
    let deadline = clock.now + duration
    let start = clock.now
    let counts = await withTaskGroup(of: (Int, Int).self) { group in
        for _ in 0..<concurrency {
            group.addTask {
                var ok = 0
                var failed = 0
                while clock.now < deadline {
                    var status = 0
                    do {
                        try await client.send(
                            method: "POST", path: "/v1/chat/completions", body: body, headers: headers,
                            onHead: { code, _ in status = code }, onData: { _ in })
                        if status == 200 { ok += 1 } else { failed += 1 }
                    } catch { failed += 1 }
                }
                return (ok, failed)
            }
        }
        var total = (0, 0)
        for await c in group { total = (total.0 + c.0, total.1 + c.1) }
        return total
    }
    let elapsed = clock.now - start
    let secs = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    return (Double(counts.0) / secs, counts.1)
}

func gatewayBench() async throws {
    guard let tpm = BenchSwtpm.start(manufactured: true), let caRoot = tpm.caRootDER else {
        print("\nccgate bench: gateway: skipped (swtpm not available)")
        return
    }
    defer { tpm.stop() }
    let engineFile = tpm.directory.appendingPathComponent("engine")
    let modelFile = tpm.directory.appendingPathComponent("model")
    try Data("bench engine".utf8).write(to: engineFile)
    try Data("bench model".utf8).write(to: modelFile)
    let policyText = """
        schema: ccgate.policy/v1
        name: bench
        measurements:
          binaries: [{name: engine, sha256: \(try FileMeasurer.digest(of: engineFile).hex)}]
          models: [{name: model, names: [bench], sha256: \(try FileMeasurer.digest(of: modelFile).hex)}]
          # The engine is a stub the worker does not start: hashed, not executed from a sealed copy.
          allow_unmeasured_engine: true
        """
    let policy = try PolicyDocument.parse(policyText)
    var configuration = GatewayConfiguration()
    configuration.port = 0
    configuration.workerPort = 0
    configuration.apiKeys = ["bench-key"]
    configuration.policy = policy
    configuration.policyText = policyText
    configuration.dataDirectory = tpm.directory.appendingPathComponent("gateway-data")
    // Admission here includes what it costs in production: the EK chain and credential activation
    // the first time; later rounds reconnect the same TPM, which the gateway remembers.
    configuration.tpmEKRoots.append(caRoot)
    let server = try await GatewayServer.open(configuration: configuration)
    let (ports, portsContinuation) = AsyncStream<GatewayPorts>.makeStream()
    let gatewayTask = Task { try await server.run(signals: []) { portsContinuation.yield($0) } }
    defer { gatewayTask.cancel() }
    var portIterator = ports.makeAsyncIterator()
    guard let bound = await portIterator.next() else { return }
    let (apiPort, workerPort) = (bound.api, bound.worker)
    let (enginePort, engineTask) = try await startStubEngine()
    defer { engineTask.cancel() }

    // Admission latency: connect → admitted, over fresh connections of one worker.
    let attestor = try Attestor(tcti: tpm.tcti, files: [engineFile, modelFile], ekChain: tpm.caChainDER)
    var latencies = [Double]()
    let rounds = Int(ProcessInfo.processInfo.environment["CCGATE_BENCH_ADMISSIONS"] ?? "") ?? 20
    var keep: Task<Void, any Error>?
    for i in 0..<rounds {
        let (events, continuation) = AsyncStream<GatewayClient.Event>.makeStream()
        let client = GatewayClient(
            configuration: .init(
                host: "127.0.0.1", port: workerPort, gatewayKey: GatewayKeyPin(key: server.gatewayKey),
                workerID: "bench-\(i)", models: ["bench"]),
            attestor: attestor, engine: EngineClient(port: enginePort), onEvent: { continuation.yield($0) })
        let start = ContinuousClock.now
        let task = Task { try await client.runOnce() }
        for await event in events {
            if case .admitted = event { break }
        }
        let elapsed = ContinuousClock.now - start
        latencies.append(Double(elapsed.components.attoseconds) / 1e15 + Double(elapsed.components.seconds) * 1000)
        if i == rounds - 1 { keep = task } else { task.cancel() }
    }
    defer { keep?.cancel() }
    let first = latencies.first ?? 0
    latencies.sort()
    let median = latencies[latencies.count / 2]
    let p90 = latencies[min(latencies.count - 1, latencies.count * 9 / 10)]

    let body = Data(#"{"model":"bench","messages":[{"role":"user","content":"hi"}]}"#.utf8)
    let duration = Duration.milliseconds(Int(seconds * 1000))
    let concurrency = 8
    let direct = await throughput(
        port: enginePort, body: body, headers: [], concurrency: concurrency, duration: duration)
    let proxied = await throughput(
        port: apiPort, body: body, headers: [("Authorization", "Bearer bench-key")], concurrency: concurrency,
        duration: duration)

    print("")
    print("ccgate bench: gateway (swtpm worker, ECDSA P-256 AK, stub engine answering at once)")
    print(
        String(
            format:
                "admission latency (connect → admitted, %d rounds of one TPM): median %.1f ms, p90 %.1f ms; the first (EK chain and credential activation) %.1f ms",
            rounds, median, p90, first))
    print(
        "baseline: the same chat requests sent straight to the engine, \(concurrency) concurrent clients, \(seconds) s each"
    )
    print(String(format: "  direct to engine     %8.0f req/s  (%d errors)", direct.rate, direct.errors))
    print(
        String(
            format: "  through the gateway  %8.0f req/s  (%d errors)   gateway/direct %.3f", proxied.rate,
            proxied.errors, proxied.rate / direct.rate))
}
