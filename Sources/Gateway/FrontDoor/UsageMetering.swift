import AttestationCore
import Foundation
import GatewayState
import HTTPTypes
import Hummingbird
import Logging
import Synchronization
import WorkerProtocol

/// One request on its way to the usage ledger: who asked, what served it, when the first byte
/// came, and what the engine counted.
///
/// Threat: a provider (root on its worker host) reporting more tokens than were served, to be
/// paid more. The counts come from the attested engine, and are held to sanity bounds the bytes
/// give (not a proof of the count): a prompt has at most as many tokens as its request has bytes
/// (plus a chat template's), a plain answer at most as many as its bytes, a stream at most 16 per
/// event; counts beyond that are cut to the bound and the row is marked `capped`.
///
/// Threat: a client using tokens unrecorded by leaving before the counts arrive (they come last).
/// Such a request is `estimated`, and the estimate is an upper bound (a prompt token per request
/// byte, a completion token per event), so leaving early never costs less.
final class UsageMeter: @unchecked Sendable {
    // Used by one request at a time: the handler, then its response body writer.
    let requestID: String
    let keyID: String
    let model: String
    let requestBytes: Int
    let started = ContinuousClock.now
    let time: Date
    var worker: String?
    var provider: String?
    var firstByte: Duration?
    var responseBytes = 0
    var events = 0
    private var done = false
    private let sink: (UsageRecord) -> Void

    /// Tokens a chat template may add around a prompt's text.
    static let templateAllowance = 512

    init(
        requestID: String, keyID: String, model: String, requestBytes: Int, time: Date,
        sink: @escaping (UsageRecord) -> Void
    ) {
        self.requestID = requestID
        self.keyID = keyID
        self.model = model
        self.requestBytes = requestBytes
        self.time = time
        self.sink = sink
    }

    /// Notes bytes sent to the client (the first one starts the time to first token).
    func sent(_ bytes: Data) {
        if firstByte == nil, !bytes.isEmpty { firstByte = ContinuousClock.now - started }
        responseBytes += bytes.count
        events += Self.dataLines(bytes)
    }

    private static let eventMarker: [UInt8] = Array("data: ".utf8)

    /// How many lines of `bytes` start with `data: ` (one pass, no copies: it runs on every chunk).
    static func dataLines(_ bytes: Data) -> Int {
        bytes.withUnsafeBytes { (raw: UnsafeRawBufferPointer) -> Int in
            let marker = eventMarker
            var count = 0
            var lineStart = 0
            while lineStart + marker.count <= raw.count {
                if raw[lineStart..<(lineStart + marker.count)].elementsEqual(marker) { count += 1 }
                guard let newline = raw[lineStart...].firstIndex(of: 0x0A) else { break }
                lineStart = newline + 1
            }
            return count
        }
    }

    /// Records the request once: its status and the engine's counts (nil when it reported none).
    /// `estimate`: count what was sent when the engine reported nothing (by default for a 2xx
    /// answer; also for one cut short after the worker produced it, as an oversized answer).
    func finish(status: Int, usage: UsageScan.Counts?, streamed: Bool, estimate: Bool? = nil) {
        guard !done else { return }
        done = true
        var prompt = 0
        var completion = 0
        var source = "none"
        let completionBound = streamed ? min(max(1, events) * 16, responseBytes) : responseBytes
        // Counts in an error answer are not taken: a client is not billed for what it was refused.
        if let usage, (200..<300).contains(status) {
            // Counts are 0…10^9 (UsageScan), so none of this overflows.
            prompt = usage.promptTokens ?? 0
            completion = usage.completionTokens ?? max(0, (usage.totalTokens ?? 0) - prompt)
            source = "engine"
            let promptBound = requestBytes + Self.templateAllowance
            if prompt > promptBound || completion > completionBound {
                prompt = min(prompt, promptBound)
                completion = min(completion, completionBound)
                source = "capped"
            }
        } else if estimate ?? (200..<300).contains(status), responseBytes > 0 {
            prompt = requestBytes
            completion = streamed ? events : responseBytes
            source = "estimated"
        }
        let elapsed = ContinuousClock.now - started
        sink(
            UsageRecord(
                requestID: requestID, time: time, keyID: keyID, model: model, worker: worker, provider: provider,
                promptTokens: prompt, completionTokens: completion,
                timeToFirstTokenMs: firstByte.map(Self.milliseconds), durationMs: Self.milliseconds(elapsed),
                status: status, source: source))
    }

    /// A meter dropped unfinished (a response body never written): the request still counts.
    deinit { finish(status: 499, usage: nil, streamed: true, estimate: true) }

    static func milliseconds(_ d: Duration) -> Int {
        Int(d.components.seconds) * 1000 + Int(d.components.attoseconds / 1_000_000_000_000_000)
    }
}

/// One request's identity as the front door's handlers pass it on: its id (sent back as
/// `x-request-id`, passed to the worker and its engine), the note the access log is written from,
/// and the logger.
struct RequestTrace: Sendable {
    let id: String
    /// The usage ledger's id for it (``FrontDoorContext/ledgerID``).
    let ledgerID: String
    let note: AccessNote
    let logger: Logger

    /// The access log line of a request that reached a worker (or was meant to): who, what, how
    /// long and how many tokens. Never the prompt or the answer.
    func access(_ row: UsageRecord) {
        var metadata: Logger.Metadata = [
            "ccgate.request_id": "\(id)", "ccgate.ledger_id": "\(row.requestID)", "ccgate.key": "\(row.keyID)",
            "ccgate.model": "\(row.model)",
            "ccgate.status": "\(row.status)", "ccgate.duration_ms": "\(row.durationMs)",
            "ccgate.prompt_tokens": "\(row.promptTokens)", "ccgate.completion_tokens": "\(row.completionTokens)",
            "ccgate.usage_source": "\(row.source)",
        ]
        if let worker = row.worker { metadata["ccgate.worker.id"] = "\(worker)" }
        if let provider = row.provider { metadata["ccgate.provider"] = "\(provider)" }
        if let ttft = row.timeToFirstTokenMs { metadata["ccgate.ttft_ms"] = "\(ttft)" }
        logger.info("access", metadata: metadata)
    }
}

/// What the access log needs from further in: the key (once authenticated), and whether a usage
/// meter took the request over (it then writes the line when the response ends).
public final class AccessNote: Sendable {
    private let state = Mutex<(keyID: String?, metered: Bool)>((nil, false))
    public init() {}
    var keyID: String? {
        get { state.withLock { $0.keyID } }
        set { state.withLock { $0.keyID = newValue } }
    }
    func metered() { state.withLock { $0.metered = true } }
    var isMetered: Bool { state.withLock { $0.metered } }
}

/// The front door's outermost step: gives each request its id (the client's `x-request-id` when
/// it is a short token, else a new UUID) and sends it back; writes the access log line of every
/// request no usage meter took over (refusals, `/v1/models`, `/v1/attestation`, health checks),
/// and counts refusals.
struct FrontDoorAccess: RouterMiddleware {
    let metrics: GatewayMetrics?

    func handle(
        _ request: Request, context: FrontDoorContext, next: (Request, FrontDoorContext) async throws -> Response
    ) async throws -> Response {
        var context = context
        context.requestID = FrontDoor.requestID(request)
        // The ledger's id is the gateway's own: a client's id is only a label (clients may reuse one).
        context.ledgerID =
            request.headers[FrontDoor.requestIDHeader] == context.requestID
            ? UUID().uuidString.lowercased() : context.requestID
        let started = ContinuousClock.now
        let note = context.note
        do {
            var response = try await next(request, context)
            response.headers[FrontDoor.requestIDHeader] = context.requestID
            response.headers[FrontDoor.ledgerIDHeader] = context.ledgerID
            if !note.isMetered { log(request, context, status: Int(response.status.code), code: nil, started) }
            return response
        } catch let error as OpenAIError {
            metrics?.refused(status: Int(error.status.code), code: error.code ?? error.type)
            if !note.isMetered { log(request, context, status: Int(error.status.code), code: error.code, started) }
            // Answered here, with this context: Hummingbird would build the answer from the
            // context before this step, which has no ids.
            return try error.response(from: request, context: context)
        }
    }

    func log(
        _ request: Request, _ context: FrontDoorContext, status: Int, code: String?, _ started: ContinuousClock.Instant
    ) {
        var metadata: Logger.Metadata = [
            "ccgate.request_id": "\(context.requestID)", "ccgate.method": "\(request.method)",
            "ccgate.path": "\(request.uri.path)", "ccgate.status": "\(status)",
            "ccgate.duration_ms": "\(UsageMeter.milliseconds(ContinuousClock.now - started))",
        ]
        if let key = context.note.keyID { metadata["ccgate.key"] = "\(key)" }
        if let code { metadata["ccgate.error"] = "\(code)" }
        context.logger.info("access", metadata: metadata)
    }
}

extension FrontDoor {
    static let requestIDHeader = HTTPField.Name("x-request-id")!
    /// The usage ledger's id for the request (its row's `request_id`), on every answer.
    static let ledgerIDHeader = HTTPField.Name("ccgate-request-id")!

    /// The request's id: the client's `x-request-id` when it is a short printable token (1–128
    /// characters of letters, digits and `-_.:`), else a new UUID.
    static func requestID(_ request: Request) -> String {
        if let given = request.headers[requestIDHeader], RequestID.isValid(given) { return given }
        return UUID().uuidString.lowercased()
    }
}
