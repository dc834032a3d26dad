import Foundation

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// A loopback TON chain for the tests: `toncenter_tvm.py` (pytvm, the official TON VM emulator)
/// serving toncenter v2 on several endpoints over one shared state that starts with the real
/// nominator-pool code and the synthetic pool of `../shared/testdata/ton/contracts/getters.json`.
/// Stopped (SIGKILL) when the value goes away.
public final class TONChain: @unchecked Sendable {
    /// The pool of `getters.json` (real code, synthetic data: two nominators, state 0).
    public static let pool = "-1:771873c7f9aea5f657c6138fd15840c70004b4bc89f6126698e384d6bf0a4227"
    public static let poolCodeHash = "9a3ec14bc098f6b44064c305222caea2800f17dda85ee6a8198a7095ede10dcf"
    public static let walletCodeHash = "feb5ff6820e2ff0d9483e7e0d62c817d846789fb4ae580c878866d959dabd5c0"

    let process = Process()
    public let ports: [Int]
    public let apiKey: String
    let directory: TemporaryDirectory

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    public init(endpoints: Int = 2, apiKey: String = "chain-key") throws {
        let reference = try ReferenceEnvironment.shared.get()
        directory = try TemporaryDirectory("ton-chain")
        let portFile = directory.file("ports")
        process.executableURL = reference.tonPython
        process.arguments = [
            "-W", "ignore",
            SharedTestData.packageRoot.appendingPathComponent("Tests/TestSupport/toncenter_tvm.py").path,
            portFile.path, SharedTestData.url("ton").path, "\(endpoints)", apiKey,
        ]
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        self.apiKey = apiKey
        let ports = LoopbackServer.ports(in: portFile, of: process, timeout: 60)
        guard ports.count == endpoints else {
            kill(process.processIdentifier, SIGKILL)
            throw Failure(
                description:
                    "toncenter_tvm.py did not start (exit \(process.isRunning ? "-" : "\(process.terminationStatus)"))")
        }
        self.ports = ports
    }

    deinit { kill(process.processIdentifier, SIGKILL) }

    public func url(_ endpoint: Int) -> URL { URL(string: "http://127.0.0.1:\(ports[endpoint])")! }

    @discardableResult
    func control(_ path: String, _ body: [String: Any], endpoint: Int = 0) async throws -> [String: Any] {
        var request = URLRequest(url: url(endpoint).appendingPathComponent("_test/" + path))
        request.httpMethod = "POST"
        request.httpBody = try JSONSerialization.data(withJSONObject: body)
        request.timeoutInterval = 60
        let (data, response) = try await URLSession.shared.data(for: request)
        guard (response as? HTTPURLResponse)?.statusCode == 200,
            let json = try JSONSerialization.jsonObject(with: data) as? [String: Any]
        else {
            throw Failure(description: "\(path): \(String(decoding: data, as: UTF8.self))")
        }
        return json
    }

    /// Deploys a wallet v4r2 holding `publicKey`; returns its raw address.
    public func wallet(publicKey: Data, balance: UInt64) async throws -> String {
        let json = try await control(
            "wallet", ["public_key": publicKey.map { String(format: "%02x", $0) }.joined(), "balance": balance])
        return json["address"] as! String
    }

    /// Delivers an internal message with a text comment (`d` deposits to the pool, `w` withdraws);
    /// the contract's code runs it. Returns the compute phase's exit code and the block it is in.
    @discardableResult
    public func send(from: String, to: String, value: UInt64, comment: String) async throws -> (
        exitCode: Int, blockSeqno: Int
    ) {
        let json = try await control("message", ["from": from, "to": to, "value": value, "comment": comment])
        guard json["aborted"] as? Bool == false else { throw Failure(description: "the transaction aborted: \(json)") }
        return (json["exit_code"] as? Int ?? -1, json["seqno"] as? Int ?? 0)
    }

    /// Switches one endpoint: ok, down (503), ratelimit (429) or garbage (unparseable JSON).
    public func mode(_ mode: String, endpoint: Int) async throws {
        try await control("mode", ["mode": mode], endpoint: endpoint)
    }
}
