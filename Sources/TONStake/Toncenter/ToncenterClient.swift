import AttestationCore
import Foundation
import HTTPFetch
import TONKit
import Synchronization

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// One toncenter v2 endpoint: a base URL (`https://toncenter.com`), an optional API key, and the
/// request rate it allows.
public struct ToncenterEndpoint: Sendable, Equatable {
    public let base: URL
    public let apiKey: String?
    public let requestsPerSecond: Double

    public init(base: URL, apiKey: String? = nil, requestsPerSecond: Double = 1) {
        self.base = base
        self.apiKey = apiKey
        self.requestsPerSecond = max(0.1, requestsPerSecond)
    }
}

/// Sends HTTP requests; injectable so the client runs against loopback servers in tests.
public protocol HTTPTransport: Sendable {
    func send(_ request: URLRequest) async throws -> (status: Int, body: Data)
}

/// toncenter over AsyncHTTPClient: the request's own timeout as its deadline, answers capped.
public struct FetchTransport: HTTPTransport {
    /// toncenter answers are JSON of a few KiB; an account state with its code and data a few
    /// hundred KiB. Anything far beyond is not an answer.
    static let maxBody = 8 << 20

    public init() {}

    public func send(_ request: URLRequest) async throws -> (status: Int, body: Data) {
        guard let url = request.url else { throw HTTPFetch.Failure(description: "a request without a URL") }
        let headers = (request.allHTTPHeaderFields ?? [:]).sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        let timeout = request.timeoutInterval > 0 ? request.timeoutInterval : 15
        let response = try await HTTPFetch.send(
            request.httpMethod ?? "GET", url, headers: headers, body: request.httpBody,
            timeout: .milliseconds(Int64(timeout * 1000)), maxBody: Self.maxBody)
        return (response.status, response.body)
    }
}

/// A token bucket: `rate` requests a second on average, bursts of `capacity`. Time is passed in,
/// so the arithmetic is tested without sleeping.
public final class TokenBucket: Sendable {
    private struct State {
        var tokens: Double
        var last: Double
    }
    private let state: Mutex<State>
    let rate: Double
    let capacity: Double

    public init(rate: Double, capacity: Double? = nil, now: Double) {
        self.rate = rate
        self.capacity = max(1, capacity ?? rate)
        state = Mutex(State(tokens: max(1, capacity ?? rate), last: now))
    }

    /// Takes a token; returns how many seconds the caller must wait before using it.
    public func reserve(at now: Double) -> Double {
        state.withLock { s in
            s.tokens = min(capacity, s.tokens + max(0, now - s.last) * rate)
            s.last = max(s.last, now)
            s.tokens -= 1
            return s.tokens >= 0 ? 0 : -s.tokens / rate
        }
    }
}

/// A toncenter v2 client for one endpoint: `getAddressInformation` and `runGetMethod`, the API key
/// in `X-API-Key`, the endpoint's rate kept by a token bucket, and retries with exponential
/// backoff (and jitter) on 429 and 5xx. Other failures are not retried.
public final class ToncenterClient: Sendable {
    public let endpoint: ToncenterEndpoint
    let transport: any HTTPTransport
    let bucket: TokenBucket
    public let maxAttempts: Int
    let backoff: Duration

    public init(
        endpoint: ToncenterEndpoint, transport: any HTTPTransport = FetchTransport(), maxAttempts: Int = 4,
        backoff: Duration = .milliseconds(250)
    ) {
        self.endpoint = endpoint
        self.transport = transport
        self.maxAttempts = max(1, maxAttempts)
        self.backoff = backoff
        bucket = TokenBucket(rate: endpoint.requestsPerSecond, now: Self.now())
    }

    static func now() -> Double { Date().timeIntervalSince1970 }

    func request(_ path: String, query: [URLQueryItem] = [], json: [String: Any]? = nil) -> URLRequest {
        var components = URLComponents(
            url: endpoint.base.appendingPathComponent("api/v2/" + path), resolvingAgainstBaseURL: false)!
        if !query.isEmpty { components.queryItems = query }
        var r = URLRequest(url: components.url!)
        r.timeoutInterval = 15
        if let key = endpoint.apiKey { r.setValue(key, forHTTPHeaderField: "X-API-Key") }
        if let json {
            r.httpMethod = "POST"
            r.httpBody = try? JSONSerialization.data(withJSONObject: json)
            r.setValue("application/json", forHTTPHeaderField: "Content-Type")
        }
        return r
    }

    /// Sends with rate limiting and retries; `decode` classifies the answer.
    func call<T>(_ request: URLRequest, _ decode: (Data, Int) throws(ToncenterError) -> T) async throws(ToncenterError)
        -> T
    {
        var last = ToncenterError(.unavailable, status: 0, "no attempt made")
        for attempt in 0..<maxAttempts {
            let wait = bucket.reserve(at: Self.now())
            if wait > 0 { try? await Task.sleep(for: .milliseconds(Int(wait * 1000))) }
            let status: Int, body: Data
            do { (status, body) = try await transport.send(request) } catch {
                last = ToncenterError(
                    .unavailable, status: 0, "\(endpoint.base.host ?? "endpoint"): \(error.localizedDescription)")
                try? await Task.sleep(for: backoff * (1 << attempt))
                continue
            }
            do { return try decode(body, status) } catch {
                last = error
                guard error.kind == .rateLimited || error.kind == .unavailable else { throw error }
                // Exponential backoff with up to 50% jitter, so that callers do not retry in step.
                let base = backoff * (1 << attempt)
                try? await Task.sleep(for: base + base * Double.random(in: 0..<0.5))
            }
        }
        throw last
    }

    public func addressInformation(_ address: TONAddress) async throws(ToncenterError) -> AccountInformation {
        let friendly = address.friendly(bounceable: true) ?? address.raw
        return try await call(request("getAddressInformation", query: [URLQueryItem(name: "address", value: friendly)]))
        {
            (body, status) throws(ToncenterError) in try ToncenterDecoding.addressInformation(body, status: status)
        }
    }

    /// Runs a get-method with integer arguments (toncenter's legacy stack: `["num", "0x…"]`).
    public func runGetMethod(_ address: TONAddress, method: String, arguments: [TVMInteger] = [])
        async throws(ToncenterError)
        -> RunGetMethodResult
    {
        let stack = arguments.map {
            ["num", ($0.negative ? "-0x" : "0x") + ($0.magnitude.isEmpty ? "0" : Data($0.magnitude).hex)]
        }
        let body: [String: Any] = [
            "address": address.friendly(bounceable: true) ?? address.raw, "method": method, "stack": stack,
        ]
        return try await call(request("runGetMethod", json: body)) { (body, status) throws(ToncenterError) in
            try ToncenterDecoding.runGetMethod(body, status: status)
        }
    }
}
