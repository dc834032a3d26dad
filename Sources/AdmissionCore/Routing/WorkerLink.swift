import Foundation
import Sealing
import Synchronization
import WorkerProtocol

/// An error delivered to a request whose worker failed.
public struct WorkerFailure: Error, CustomStringConvertible {
    public let message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}

/// The gateway's side of one admitted worker: its sealed channel, its outbox (drained in order by
/// one writer, which seals each payload as it writes it, so sequence numbers follow the wire),
/// and the requests in flight on it.
public final class WorkerLink: Sendable {
    public let workerID: String
    public let sessionID: String
    public let models: [String]
    public let kemPublicKey: Data
    let sealer: ChannelSealer
    package let opener: ChannelOpener
    private let outbox: AsyncStream<ChannelPayload>.Continuation

    private struct State {
        var nextRequestID: UInt64 = 1
        var pending: [UInt64: AsyncThrowingStream<ChannelPayload, any Error>.Continuation] = [:]
        var closed: String?
        /// Why the session is ending, once something has claimed its end.
        var ending: SessionEnding?
    }
    private let state = Mutex(State())
    /// Closes the worker's connection if the writer has not done so after the farewell.
    let disconnect: @Sendable () -> Void

    package init(
        workerID: String, sessionID: String, models: [String], kemPublicKey: Data, sealer: ChannelSealer,
        opener: ChannelOpener, outbox: AsyncStream<ChannelPayload>.Continuation,
        disconnect: @escaping @Sendable () -> Void
    ) {
        self.disconnect = disconnect
        self.workerID = workerID
        self.sessionID = sessionID
        self.models = models
        self.kemPublicKey = kemPublicKey
        self.sealer = sealer
        self.opener = opener
        self.outbox = outbox
    }

    /// Queues a payload for the writer.
    package func send(_ payload: ChannelPayload) throws {
        let size = payload.encodedSize
        guard size <= ChannelSealer.maxMessageSize else { throw SealingError.tooLarge(size) }
        outbox.yield(payload)
    }

    /// Seals a payload as the writer puts it on the wire: the next sequence number.
    package func seal(_ payload: ChannelPayload) throws -> Data {
        var sealed = Data()
        try sealer.seal(payload.encoded()) { sealed = $0 }
        return sealed
    }

    /// Whether the writer may still send `payload`: once the session is ending, requests queued
    /// before it are dropped (threat: prompts reaching a worker already evicted); the farewell
    /// and cancellations still go.
    package func mayStillSend(_ payload: ChannelPayload) -> Bool {
        guard ending != nil || isClosed else { return true }
        switch payload {
        case .request, .sealedRequest: return false
        default: return true
        }
    }

    /// The session's last word, queued before the outbox closes: why it ended, and the digest of
    /// the evidence whose judgement ended it.
    package func farewell(code: String, message: String, judged: Data? = nil) {
        outbox.yield(.ended(code: code, message: message, judged: judged))
    }

    /// Starts a request; the returned stream yields `head`, `data`… and finishes at `end`, or
    /// throws when the worker fails or goes away.
    public func startRequest(method: String, path: String, body: Data, requestID: String = "") throws -> (
        UInt64, AsyncThrowingStream<ChannelPayload, any Error>
    ) {
        try start { .request(id: $0, method: method, path: path, body: body, requestID: requestID) }
    }

    /// Starts a gateway-blind request: `envelope` is the client's sealed request, passed on as is.
    public func startSealedRequest(path: String, envelope: Data, requestID: String = "") throws -> (
        UInt64, AsyncThrowingStream<ChannelPayload, any Error>
    ) {
        try start { .sealedRequest(id: $0, path: path, envelope: envelope, requestID: requestID) }
    }

    func start(_ payload: (UInt64) -> ChannelPayload) throws -> (
        UInt64, AsyncThrowingStream<ChannelPayload, any Error>
    ) {
        let (stream, continuation) = AsyncThrowingStream<ChannelPayload, any Error>.makeStream()
        let id: UInt64 = try state.withLock { s in
            if let reason = s.closed { throw WorkerFailure(message: reason) }
            let id = s.nextRequestID
            s.nextRequestID += 1
            s.pending[id] = continuation
            return id
        }
        do {
            try send(payload(id))
        } catch {
            _ = state.withLock { $0.pending.removeValue(forKey: id) }
            throw error
        }
        return (id, stream)
    }

    /// Tells the worker a client went away, and forgets the request.
    public func cancel(_ id: UInt64) {
        let had = state.withLock { $0.pending.removeValue(forKey: id) } != nil
        if had { try? send(.cancel(id: id)) }
    }

    /// Routes a payload from the worker to its request.
    package func deliver(_ payload: ChannelPayload) {
        let id = payload.id
        let continuation: AsyncThrowingStream<ChannelPayload, any Error>.Continuation? = state.withLock { s in
            switch payload {
            case .end, .failure: s.pending.removeValue(forKey: id)
            default: s.pending[id]
            }
        }
        guard let continuation else { return }
        switch payload {
        case .failure(_, let message): continuation.finish(throwing: WorkerFailure(message: message))
        case .end:
            continuation.yield(payload)
            continuation.finish()
        default: continuation.yield(payload)
        }
    }

    /// Ends the link: every request in flight fails with `reason`, nothing more is sent.
    package func close(reason: String) {
        let pending = state.withLock { s -> [AsyncThrowingStream<ChannelPayload, any Error>.Continuation] in
            if s.closed == nil { s.closed = reason }
            defer { s.pending.removeAll() }
            return Array(s.pending.values)
        }
        for c in pending { c.finish(throwing: WorkerFailure(message: reason)) }
        outbox.finish()
    }

    /// Claims the end of this session for `ending`; only the first claim wins, so that whoever
    /// wins alone audits it. Returns whether this claim won.
    package func claimEnding(_ ending: SessionEnding) -> Bool {
        state.withLock { s in
            guard s.ending == nil else { return false }
            s.ending = ending
            return true
        }
    }

    /// Whether the evictor's entry for this session's end was written (nil: not yet).
    private let evictionRecord = Mutex<(written: Bool?, waiters: [CheckedContinuation<Bool, Never>])>((nil, []))

    /// The evictor reports whether its eviction entry is durable; the session's own end waits for
    /// this, so that its `disconnect` entry never comes before (or instead of) the eviction.
    package func evictionRecorded(_ written: Bool) {
        let waiters = evictionRecord.withLock { state in
            state.written = written
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume(returning: written) }
    }

    /// Waits until the evictor reported its entry (see ``evictionRecorded(_:)``).
    package func evictionRecordWritten() async -> Bool {
        await withCheckedContinuation { continuation in
            let written = evictionRecord.withLock { state -> Bool? in
                if state.written == nil { state.waiters.append(continuation) }
                return state.written
            }
            if let written { continuation.resume(returning: written) }
        }
    }

    /// Hands the end of this session back to its own loop (an eviction whose entry could not be
    /// written): the loop then records it, with the eviction's own code, actor and detail.
    package func handEndingToSession() {
        state.withLock { s in
            guard let e = s.ending else { return }
            s.ending = SessionEnding(
                code: e.code, message: e.message, auditor: .session, actor: e.actor, detail: e.detail)
        }
    }

    /// Ends the session from the gateway's side for a reason its own loop records (key lifetime,
    /// an unanswered challenge, a newer session, a policy applied mid-admission): requests in
    /// flight fail, the worker is told why (sealed), the connection closes.
    package func end(code: String, message: String) {
        _ = claimEnding(SessionEnding(code: code, message: message, auditor: .session))
        disconnectNow()
    }

    /// Fails the requests in flight, tells the worker why (sealed, the outbox's last message; the
    /// writer closes the connection after it) for an end already claimed.
    package func disconnectNow() {
        let first = state.withLock { s -> Bool in s.closed == nil }
        if first, let ending { farewell(code: ending.code, message: ending.message) }
        close(reason: ending?.message ?? "the session ended")
        disconnect()
    }

    /// Why the session is ending, once something claimed it.
    package var ending: SessionEnding? { state.withLock { $0.ending } }

    public var inFlight: Int { state.withLock { $0.pending.count } }
    public var isClosed: Bool { state.withLock { $0.closed != nil } }
}

/// Why a session ends, and who writes its eviction entry.
package struct SessionEnding: Sendable, Equatable {
    package enum Auditor: Sendable, Equatable {
        /// The ``Evictor`` audits it (policy apply, stake monitor, admin): the session's own end
        /// is then a plain disconnect.
        case evictor
        /// The session's loop audits it when it finishes (failed re-attestation, key lifetime,
        /// unanswered challenge, replaced, disconnect).
        case session
    }
    package let code: String
    package let message: String
    package let auditor: Auditor
    /// Who ended it and what the entry carries besides (an eviction's actor and observations).
    package let actor: String
    package let detail: [String: String]

    package init(
        code: String, message: String, auditor: Auditor, actor: String = "gateway", detail: [String: String] = [:]
    ) {
        self.code = code
        self.message = message
        self.auditor = auditor
        self.actor = actor
        self.detail = detail
    }
}
