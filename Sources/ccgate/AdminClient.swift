import ArgumentParser
import CommandLineSupport
import Foundation
import Gateway
import HTTPFetch

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
    @Option(
        help: ArgumentHelp(
            "The CA certificate (PEM) that issued the admin API's TLS certificate (default $CCGATE_ADMIN_CA; else the system's trust store).",
            valueName: "PEM"))
    var adminCA: String?

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
        return AdminClient(base: url, token: token, caFile: adminCA ?? env["CCGATE_ADMIN_CA"])
    }
}

/// A client for the admin API: JSON calls, and streamed downloads with progress, each with a
/// deadline.
struct AdminClient {
    let base: URL
    let token: String
    /// A private CA the admin API's certificate chains to.
    var caFile: String?

    /// Admin answers other than exports: a policy document and its history, a worker list.
    static let maxAnswer = 16 << 20
    static let timeout: Duration = .seconds(120)

    func url(_ path: String, query: [URLQueryItem] = []) throws -> URL {
        var components = URLComponents(url: base.appendingPathComponent(path), resolvingAgainstBaseURL: false)
        if !query.isEmpty { components?.queryItems = query }
        guard let url = components?.url else { throw failure("\(base.absoluteString)\(path): not a URL") }
        return url
    }

    var authorization: (String, String) { ("Authorization", "Bearer \(token)") }

    /// Calls the API with an optional JSON body; decodes a 2xx answer as `T`, and turns an error
    /// answer into a failure naming its code (exit 1 for a refusal, 2 for bad usage or an
    /// unreachable gateway).
    func call<T: Decodable>(
        _ method: String, _ path: String, query: [URLQueryItem] = [], body: (any Encodable)? = nil, as type: T.Type
    ) async throws -> T {
        var headers = [authorization]
        var bytes: Data?
        if let body {
            bytes = try JSONEncoder().encode(body)
            headers.append(("Content-Type", "application/json"))
        }
        let answer: HTTPFetch.Response
        do {
            let target = try url(path, query: query)
            answer = try await HTTPFetch.withClient(trusting: caFile) { client in
                try await HTTPFetch.send(
                    method, target, headers: headers, body: bytes, timeout: Self.timeout, maxBody: Self.maxAnswer,
                    client: client)
            }
        } catch {
            throw failure("admin API: \(error)")
        }
        guard (200..<300).contains(answer.status) else { throw Self.refusal(status: answer.status, body: answer.body) }
        do { return try JSONDecoder().decode(T.self, from: answer.body) } catch {
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

    /// Streams a download into `sink` as it arrives (the next chunk is read once `sink` returned);
    /// `progress` gets (bytes, total entries if the gateway said). Returns the total, or -1.
    func download(
        _ path: String, query: [URLQueryItem], sink: (Data) throws -> Void, progress: (Int, Int?) -> Void
    ) async throws -> Int {
        var bytes = 0
        var errorBody = Data()
        let answer: (status: Int, headers: [(name: String, value: String)])
        do {
            let target = try url(path, query: query)
            answer = try await HTTPFetch.withClient(trusting: caFile) { client in
                try await HTTPFetch.stream(
                    "GET", target, headers: [authorization], timeout: Self.timeout, client: client
                ) { status, headers, data in
                    guard status == 200 else {
                        // An error answer is a small JSON document; more is not read.
                        if errorBody.count < 1 << 16 { errorBody.append(data.prefix((1 << 16) - errorBody.count)) }
                        return
                    }
                    bytes += data.count
                    try sink(data)
                    progress(bytes, Self.entries(headers))
                }
            }
        } catch let reported as ReportedFailure {
            throw reported
        } catch {
            throw failure("admin API: \(error)")
        }
        guard answer.status == 200 else { throw Self.refusal(status: answer.status, body: errorBody) }
        return Self.entries(answer.headers) ?? -1
    }

    static func entries(_ headers: [(name: String, value: String)]) -> Int? {
        headers.first { $0.name.lowercased() == "ccgate-audit-entries" }.flatMap { Int($0.value) }
    }
}
