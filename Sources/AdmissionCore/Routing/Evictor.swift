import AttestationCore
import AuditLog
import GatewayState
import Foundation
import WorkerProtocol

/// The one place a worker leaves: out of routing, its eviction entry in the audit log, its link
/// ended. Policy apply, the stake monitor, the admin API and a session's own end all come here.
///
/// Threat: an eviction lost from the log, or recorded twice (two causes racing: a policy apply
/// and a disconnect, a stake withdrawal and an admin eviction). Each session's end is claimed
/// once (``WorkerLink/claimEnding(_:)``); only the claim's winner writes the eviction entry, and
/// the session's own end after an audited eviction is recorded as a plain disconnect.
public struct Evictor: Sendable {
    let registry: WorkerRegistry
    let trail: AuditTrail
    let policies: PolicyState

    public init(registry: WorkerRegistry, trail: AuditTrail, policies: PolicyState) {
        self.registry = registry
        self.trail = trail
        self.policies = policies
    }

    /// Why and by whom a worker is evicted.
    public struct Cause: Sendable {
        public let code: String
        public let message: String
        /// `gateway`, `stake-oracle`, `admin`, …
        public let actor: String
        /// More for the entry (stake observations).
        public let detail: [String: String]

        public init(code: String, message: String, actor: String, detail: [String: String] = [:]) {
            self.code = code
            self.message = message
            self.actor = actor
            self.detail = detail
        }
    }

    /// An eviction claimed and out of routing, waiting for its entry to be durable.
    package struct Claimed: Sendable {
        package let link: WorkerLink
        package let cause: Cause
        package let reasons: [String]

        /// The eviction entry, removing the worker's row in the same transaction.
        package func draft(policyVersion: Int?) -> AuditDraft {
            var detail = cause.detail
            detail["session"] = link.sessionID
            detail["message"] = cause.message
            return .event(
                AuditEvent(
                    .eviction, actor: cause.actor, worker: link.workerID, decision: .evicted, reasons: reasons,
                    policyVersion: policyVersion, detail: detail),
                worker: .remove(id: link.workerID, session: link.sessionID))
        }
    }

    /// Claims the evictions (a link whose end is already claimed is skipped: its eviction is
    /// someone else's to record) and takes them out of routing at once: no prompt reaches them
    /// from here on, whatever the disk does. (Removing is fail-safe; a worker wrongly cut off
    /// attests again.)
    package func claim(_ items: [(link: WorkerLink, cause: Cause, reasons: [String])]) -> [Claimed] {
        items.compactMap { item in
            let ending = SessionEnding(
                code: item.cause.code, message: item.cause.message, auditor: .evictor, actor: item.cause.actor,
                detail: item.cause.detail)
            guard item.link.claimEnding(ending) else { return nil }
            registry.remove(workerID: item.link.workerID, sessionID: item.link.sessionID)
            return Claimed(link: item.link, cause: item.cause, reasons: item.reasons)
        }
    }

    /// Ends claimed evictions once their entries are durable. Every claim ends in this or in
    /// ``finishUnrecorded(_:)``: the session's own end waits for one of them.
    package func finish(_ claimed: [Claimed]) {
        for item in claimed {
            item.link.evictionRecorded(true)
            item.link.disconnectNow()
        }
    }

    /// Ends claimed evictions whose entries could not be written: the worker is out either way,
    /// and each session's own loop tries again to record its eviction (same code, actor and
    /// detail) when it finishes; that entry is missing only if the log is still down then.
    package func finishUnrecorded(_ claimed: [Claimed]) {
        for item in claimed {
            item.link.handEndingToSession()
            item.link.evictionRecorded(false)
            item.link.disconnectNow()
        }
    }

    /// Evicts one worker: claimed, out of routing, audited, ended. Returns false when its end
    /// was already claimed (and is recorded by whoever claimed it). A failed audit write is
    /// thrown after the link is ended: the worker is out either way.
    @discardableResult
    public func evict(_ link: WorkerLink, _ cause: Cause, reasons: [String]? = nil) async throws -> Bool {
        let claimed = claim([(link, cause, reasons ?? [cause.code])])
        guard !claimed.isEmpty else { return false }
        do { try await trail.record(claimed.map { $0.draft(policyVersion: policies.current.version) }) } catch {
            finishUnrecorded(claimed)
            throw error
        }
        finish(claimed)
        return true
    }

    /// Records the end of a session whose loop has finished: the eviction entry when the session
    /// ended itself (or nobody claimed its end), else a disconnect that drops the worker's row
    /// after the evictor's entry. Idempotent per link in effect: the loop calls it once.
    public func sessionEnded(_ link: WorkerLink, code: String, message: String) async throws {
        _ = link.claimEnding(SessionEnding(code: code, message: message, auditor: .session))
        var ending = link.ending ?? SessionEnding(code: code, message: message, auditor: .session)
        link.close(reason: ending.message)
        registry.remove(workerID: link.workerID, sessionID: link.sessionID)
        if ending.auditor == .evictor, await !link.evictionRecordWritten() {
            // The evictor could not write its entry and handed the end back: this loop records it.
            ending = link.ending ?? ending
        }
        let change = WorkerChange.remove(id: link.workerID, session: link.sessionID)
        switch ending.auditor {
        case .evictor:
            try await trail.record(
                AuditEvent(
                    .disconnect, worker: link.workerID, decision: .closed, reasons: [ending.code],
                    detail: ["session": link.sessionID]),
                worker: change)
        case .session:
            try await trail.record(
                AuditEvent(
                    .eviction, actor: ending.actor, worker: link.workerID, decision: .evicted, reasons: [ending.code],
                    policyVersion: policies.current.version,
                    detail: ending.detail.merging(["session": link.sessionID, "message": ending.message]) { _, b in b }),
                worker: change)
        }
    }
}
