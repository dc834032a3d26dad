import AdmissionCore
import AttestationCore
import AuditLog
import Foundation
import GatewayState
import Policy
import WorkerProtocol

extension GatewayAdministration {
    /// Puts in force a policy version that another gateway on the same store applied (several
    /// gateways on one PostgreSQL database), and evicts this gateway's workers it no longer
    /// admits, each eviction audited once, by this gateway. Returns whether the version is now
    /// in force here.
    ///
    /// Threat: a writer of the shared database who adds a `policies` row to weaken the policy on
    /// every gateway. The row is adopted only if it loads and lints, the chain records its digest
    /// under that version, and its signature verifies under this gateway's own pinned admin keys,
    /// with a serial above the one in force (held in memory, never re-read from the store) and for
    /// any gateway (`*`) or this one — as at start. A version that fails is refused, audited once,
    /// and the policy in force stays. The digest check stops an edited row, not a writer who can
    /// also append entries: the admin signature and the serial are what such a writer cannot forge.
    public func adopt(_ record: PolicyRecord) async -> Bool {
        let current = policies.current
        guard record.version > current.version else { return record.version == current.version }
        // A version refused here stays refused (its row, signature and serial do not change):
        // not checked again, not audited again.
        let refusal = "\(record.version) \(record.sha256)"
        guard !refusedVersions.contains(refusal) else { return false }
        let document: PolicyDocument
        let serial: Int64
        do throws(AdminError) { (document, serial) = try checkAdopted(record) } catch {
            // Marked before the await (the actor is re-entered meanwhile), unmarked if unrecorded.
            refusedVersions.insert(refusal)
            let recorded = try? await trail.record(
                AuditEvent(
                    .policyAdopted, decision: .refused, reasons: [error.code], policyVersion: current.version,
                    detail: ["version": String(record.version), "sha256": record.sha256, "message": error.message]))
            if recorded == nil { refusedVersions.remove(refusal) }
            return false
        }
        policies.replace(
            with: ActivePolicy(version: record.version, document: document, text: record.policy.text, serial: serial))
        let failing = failing(under: document, at: clock.now())
        _ = try? await trail.record(
            AuditEvent(
                .policyAdopted, decision: .applied, policyVersion: record.version,
                detail: [
                    "name": document.name, "sha256": record.sha256, "previous_version": String(current.version),
                    "evictions": String(failing.count),
                ]))
        for item in failing {
            let message = "policy version \(record.version) ('\(document.name)'): \(item.reasons[0].message)"
            let cause = Evictor.Cause(code: item.reasons[0].code.rawValue, message: message, actor: "gateway")
            _ = try? await evictor.evict(item.link, cause, reasons: item.reasons.map(\.code.rawValue))
        }
        return true
    }

    /// Checks a stored version written by another gateway (see ``adopt(_:)``).
    func checkAdopted(_ record: PolicyRecord) throws(AdminError) -> (PolicyDocument, Int64) {
        let document: PolicyDocument
        do throws(PolicyLoadErrors) {
            document = try PolicyDocument.parse(record.policy.text, file: "policy version \(record.version)")
        } catch {
            throw AdminError(422, "policy.invalid", "version \(record.version) does not load: \(error)")
        }
        guard document.lint.errors.isEmpty else {
            throw AdminError(422, "policy.invalid", "version \(record.version) pins too little to admit safely")
        }
        var recorded: String?
        do {
            try trail.store.entries(AuditQuery()) { entry in
                if entry.event.event == AuditEventKind.policyApplied.rawValue,
                    entry.event.policyVersion == record.version
                {
                    recorded = entry.event.detail["sha256"]
                }
                return recorded == nil
            }
        } catch { throw AdminError(503, "gateway.store", "\(error)") }
        guard recorded == record.sha256 else {
            throw AdminError(
                409, "policy.not-recorded",
                "version \(record.version) in the store is not the policy the audit chain records for it")
        }
        guard !adminKeys.isEmpty else {
            throw AdminError(403, "policy.no-admin-keys", "no admin keys are pinned here to check its signature")
        }
        let serial = try currentSerial()
        do throws(PolicySignatureError) {
            let signature = try PolicySignature.parse(record.policy.signature)
            _ = try signature.verify(Data(record.policy.text.utf8), pinned: adminKeys)
            try signature.checkApplicable(gatewayID: trail.key.publicKey.fingerprint, at: clock.now(), after: serial)
            return (document, signature.serial)
        } catch {
            throw AdminError(403, error.code, error.description)
        }
    }
}

extension GatewayAdministration {
    /// Adopts the newest stored version when another gateway recorded it (nothing to do on a
    /// store no other gateway writes to).
    public func syncFromStore() async {
        // One small read when nothing is new; the whole history only when a version follows ours.
        guard (try? trail.store.policy(version: policies.current.version + 1)) ?? nil != nil,
            let latest = try? trail.store.policies().last, latest.version > policies.current.version
        else { return }
        _ = await adopt(latest)
    }

    /// Keeps this gateway in step with the other gateways on a shared store — their policy
    /// versions and their admins' evictions — on each notification from the store and, as a
    /// safety net for a lost notification, every `interval`. Returns at once for a store no
    /// other gateway writes to.
    func followStore(every interval: Duration) async {
        guard let notifications = trail.store.changeNotifications() else { return }
        followedSeq = (try? trail.store.head().count) ?? 0
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await _ in notifications { await self.syncWithStore() }
            }
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval)
                    await self.syncWithStore()
                }
            }
            await group.waitForAll()
        }
    }

    func syncWithStore() async {
        await syncFromStore()
        await followEvictions()
        await afterSync?()
    }

    /// Evicts here the workers an admin evicted on another gateway since the last look: the
    /// eviction of a worker means its sessions on every gateway. Each is audited by this gateway
    /// for its own session, as the gateway's decision at the admin's request (not as an admin
    /// eviction, which the others would follow in turn). A session admitted here after the
    /// admin's entry is left alone.
    func followEvictions() async {
        guard let from = followedSeq else { return }
        var requests = [(worker: String, seq: Int, actor: String, gateway: String)]()
        var last = from
        let me = trail.key.publicKey.fingerprint
        try? trail.store.entries(AuditQuery(fromSeq: from + 1)) { entry in
            last = entry.seq
            if entry.event.isAdminEviction, let gateway = entry.event.gateway, gateway != me,
                let worker = entry.event.worker
            {
                requests.append((worker, entry.seq, entry.event.actor, gateway))
            }
            return true
        }
        followedSeq = last
        guard !requests.isEmpty else { return }
        // Threat: a writer of the database who adds eviction entries: only gateways the store
        // lists are followed (a writer can list one too; the worst it buys is an eviction, after
        // which the worker attests again).
        let listed = Set(((try? trail.store.gateways()) ?? []).map(\.id))
        for request in requests where listed.contains(request.gateway) {
            guard let link = registry.link(request.worker),
                let (_, admitted) = registry.served(workerID: link.workerID, sessionID: link.sessionID),
                admitted < request.seq
            else { continue }
            let cause = Evictor.Cause(
                code: ProtocolErrorCode.adminEvicted.rawValue,
                message: "evicted by \(request.actor) on gateway \(request.gateway.prefix(16))…", actor: "gateway",
                detail: [
                    "requested_by": request.actor, "requested_on": request.gateway, "request_seq": String(request.seq),
                ])
            _ = try? await evictor.evict(link, cause)
        }
    }

}
