import ArgumentParser
import CommandLineSupport
import Foundation
import Gateway

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Where the admin API is and how to authenticate to it; shared by every admin subcommand.
struct AdminOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "The gateway's admin API (default $CCGATE_ADMIN_URL, else http://127.0.0.1:8445).", valueName: "URL"))
    var adminURL: String?
    @Option(
        help: ArgumentHelp(
            "File holding the admin token (default: $CCGATE_ADMIN_TOKEN if set, else data/admin.token).",
            valueName: "FILE"))
    var tokenFile: String?

    func client() throws -> AdminClient {
        let env = ProcessInfo.processInfo.environment
        let urlText = adminURL ?? env["CCGATE_ADMIN_URL"] ?? "http://127.0.0.1:8445"
        guard let url = URL(string: urlText), url.scheme == "http" || url.scheme == "https" else {
            throw failure("--admin-url must be an http(s) URL")
        }
        let token: String
        if tokenFile == nil, let t = env["CCGATE_ADMIN_TOKEN"], !t.isEmpty {
            token = t
        } else {
            let path = tokenFile ?? "data/admin.token"
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw failure(
                    "cannot read the admin token from \(path) (give --token-file FILE or set CCGATE_ADMIN_TOKEN)")
            }
            token = text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        return AdminClient(base: url, token: token)
    }
}

/// A blocking client for the admin API: JSON calls, and streamed downloads with progress.
struct AdminClient {
    let base: URL
    let token: String

    func request(_ method: String, _ path: String, query: [URLQueryItem] = []) -> URLRequest {
        var components = URLComponents(url: base.appendingPathComponent(path), resolvingAgainstBaseURL: false)!
        if !query.isEmpty { components.queryItems = query }
        var request = URLRequest(url: components.url!)
        request.httpMethod = method
        request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization")
        request.timeoutInterval = 120
        return request
    }

    /// Calls the API with an optional JSON body; decodes a 2xx answer as `T`, and turns an error
    /// answer into a failure naming its code (exit 1 for a refusal, 2 for bad usage or an
    /// unreachable gateway).
    func call<T: Decodable>(
        _ method: String, _ path: String, query: [URLQueryItem] = [], body: (any Encodable)? = nil, as type: T.Type
    ) throws -> T {
        var request = self.request(method, path, query: query)
        if let body {
            request.httpBody = try JSONEncoder().encode(body)
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        }
        let (status, data) = try Self.send(request)
        guard (200..<300).contains(status) else { throw Self.refusal(status: status, body: data) }
        do { return try JSONDecoder().decode(T.self, from: data) } catch {
            throw failure("\(path): the gateway's answer is not the expected JSON: \(error)", status: 1)
        }
    }

    static func refusal(status: Int, body: Data) -> ReportedFailure {
        let error = (try? JSONDecoder().decode(AdminMessage.ErrorResponse.self, from: body))?.error
        var message = "\(error?.code ?? "http.\(status)"): \(error?.message ?? "HTTP \(status)")"
        for detail in error?.details ?? [] { message += "\n  " + detail }
        // Refusals by the gateway are status 1; usage and authentication problems 2.
        return failure(message, status: status == 401 || status == 400 || status == 404 ? 2 : 1)
    }

    /// `value` as sorted, indented JSON (what `--json` prints).
    static func printJSON(_ value: some Encodable) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        print(String(decoding: (try? encoder.encode(value)) ?? Data(), as: UTF8.self))
    }

    static func send(_ request: URLRequest) throws -> (Int, Data) {
        let done = DispatchSemaphore(value: 0)
        let box = Box<(Int, Data)>()
        URLSession.shared.dataTask(with: request) { data, response, error in
            if let error {
                box.fail(failure("\(request.url?.absoluteString ?? "admin API"): \(error.localizedDescription)"))
            } else {
                box.set(((response as? HTTPURLResponse)?.statusCode ?? 0, data ?? Data()))
            }
            done.signal()
        }.resume()
        done.wait()
        return try box.get()
    }

    /// Streams a download into `sink` as it arrives; `progress` gets (bytes, total entries if known).
    func download(
        _ path: String, query: [URLQueryItem], sink: @escaping @Sendable (Data) -> Void,
        progress: @escaping @Sendable (Int, Int?) -> Void
    ) throws -> Int {
        let delegate = StreamingDelegate(sink: sink, progress: progress)
        let session = URLSession(configuration: .default, delegate: delegate, delegateQueue: nil)
        defer { session.finishTasksAndInvalidate() }
        session.dataTask(with: request("GET", path, query: query)).resume()
        delegate.done.wait()
        return try delegate.result()
    }

    final class StreamingDelegate: NSObject, URLSessionDataDelegate, @unchecked Sendable {
        // Callbacks arrive one at a time on the session's serial delegate queue; `lock` guards the
        // result read by the waiting thread.
        let sink: @Sendable (Data) -> Void
        let progress: @Sendable (Int, Int?) -> Void
        let done = DispatchSemaphore(value: 0)
        private let lock = NSLock()
        private var status = 0
        private var total: Int?
        private var bytes = 0
        private var errorBody = Data()
        private var failureMessage: String?

        init(sink: @escaping @Sendable (Data) -> Void, progress: @escaping @Sendable (Int, Int?) -> Void) {
            self.sink = sink
            self.progress = progress
        }

        func urlSession(
            _ session: URLSession, dataTask: URLSessionDataTask, didReceive response: URLResponse,
            completionHandler: @escaping (URLSession.ResponseDisposition) -> Void
        ) {
            let http = response as? HTTPURLResponse
            lock.withLock {
                status = http?.statusCode ?? 0
                total = (http?.value(forHTTPHeaderField: "ccgate-audit-entries")).flatMap { Int($0) }
            }
            completionHandler(.allow)
        }

        func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive data: Data) {
            let (ok, count, known) = lock.withLock { () -> (Bool, Int, Int?) in
                if status != 200 {
                    errorBody.append(data)
                    return (false, bytes, total)
                }
                bytes += data.count
                return (true, bytes, total)
            }
            guard ok else { return }
            sink(data)
            progress(count, known)
        }

        func urlSession(_ session: URLSession, task: URLSessionTask, didCompleteWithError error: (any Error)?) {
            lock.withLock { if let error { failureMessage = error.localizedDescription } }
            done.signal()
        }

        func result() throws -> Int {
            try lock.withLock {
                if let failureMessage { throw failure("admin API: \(failureMessage)") }
                guard status == 200 else {
                    throw AdminClient.refusal(status: status, body: errorBody)
                }
                return total ?? -1
            }
        }
    }
}

/// A value set once from a callback and read after it.
final class Box<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Result<T, any Error>?
    func set(_ v: T) { lock.withLock { value = .success(v) } }
    func fail(_ e: any Error) { lock.withLock { value = .failure(e) } }
    func get() throws -> T {
        try lock.withLock {
            guard let value else { throw failure("no answer") }
            return try value.get()
        }
    }
}
