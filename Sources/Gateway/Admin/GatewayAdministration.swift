import AdmissionCore
import AttestationCore
import AuditLog
import GatewayState
import Foundation
import Policy
import WorkerProtocol

/// A refused admin request: an HTTP status, a stable code and a message.
public struct AdminError: Error, CustomStringConvertible {
    public let httpStatus: Int
    public let code: String
    public let message: String
    public let details: [String]

    public init(_ status: Int, _ code: String, _ message: String, details: [String] = []) {
        self.httpStatus = status
        self.code = code
        self.message = message
        self.details = details
    }

    public var description: String {
        "\(code): \(message)" + (details.isEmpty ? "" : "\n" + details.joined(separator: "\n"))
    }
}

/// What applying (or dry-running) a policy does.
public struct ApplyOutcome: Sendable, Codable, Equatable {
    public struct Eviction: Sendable, Codable, Equatable {
        public let worker: String
        public let session: String
        public let reasons: [String]
        public let message: String
    }
    public let dryRun: Bool
    /// The new version (nil for a dry run).
    public let version: Int?
    public let name: String
    public let sha256: String
    public let signer: String?
    /// `policy diff` lines against the policy in force.
    public let changes: [String]
    /// Workers evicted (or, for a dry run, that would be).
    public let evictions: [Eviction]

    enum CodingKeys: String, CodingKey {
        case version, name, sha256, signer, changes, evictions
        case dryRun = "dry_run"
    }
}

/// Policy administration and worker control for the admin API: signed policies become new
/// versions, every admitted worker is re-evaluated against a new version at once, and every
/// step is audited.
public actor GatewayAdministration {
    let trail: AuditTrail
    let policies: PolicyState
    let registry: WorkerRegistry
    /// Keys whose signature makes a policy applicable. None: no policy can be applied.
    let adminKeys: [Ed25519PublicKey]
    let clock: any AttestationClock
    let evictor: Evictor
    /// Versions from a shared store that were refused here (version and digest): each is
    /// audited once, not at every re-read.
    var refusedVersions: Set<String> = []
    /// The last chain entry looked at for other gateways' admin evictions (nil: not following).
    var followedSeq: Int?
    /// Runs after each re-read of a shared store (the named API keys and quota counts follow it).
    let afterSync: (@Sendable () async -> Void)?

    /// Policy documents are a few KiB; the cap is the document loader's.
    static let maxPolicySize = 1 << 20

    init(
        trail: AuditTrail, policies: PolicyState, registry: WorkerRegistry, adminKeys: [Ed25519PublicKey],
        clock: any AttestationClock, afterSync: (@Sendable () async -> Void)? = nil
    ) {
        self.afterSync = afterSync
        self.trail = trail
        self.policies = policies
        self.registry = registry
        self.adminKeys = adminKeys
        self.clock = clock
        evictor = Evictor(registry: registry, trail: trail, policies: policies)
    }

    /// Checks, and unless `dryRun` applies, a signed policy. Refusals are audited too.
    public func apply(text: String, signature: String?, dryRun: Bool, actor: String, note: String = "apply")
        async throws(AdminError) -> ApplyOutcome
    {
        // Another gateway on a shared store may have applied a version since: in force here
        // first, so the serial and the changes are judged against the newest version.
        await syncFromStore()
        let digest = HashAlgorithm.sha256.hash(Data(text.utf8)).hex
        let document: PolicyDocument
        let signer: Ed25519PublicKey
        do {
            (document, signer) = try check(text: text, signature: signature)
        } catch {
            if !dryRun {
                _ = try? await trail.record(
                    AuditEvent(
                        .policyApply, actor: actor, decision: .refused, reasons: [error.code],
                        detail: ["sha256": digest, "message": error.message, "note": note]))
            }
            throw error
        }
        let changes = policies.current.document.changes(to: document).map(\.description)
        let evictions: [ApplyOutcome.Eviction]
        let version: Int?
        if dryRun {
            version = nil
            evictions = failing(under: document, at: clock.now()).map { item in
                ApplyOutcome.Eviction(
                    worker: item.link.workerID, session: item.link.sessionID,
                    reasons: item.reasons.map(\.code.rawValue),
                    message: item.reasons[0].message)
            }
        } else {
            let signed = NewPolicy(
                name: document.name, text: text, signature: signature ?? "", signer: signer.fingerprint, note: note)
            (version, evictions) = try await commit(
                document, signed, digest: digest, changes: changes.count, actor: actor)
        }
        return ApplyOutcome(
            dryRun: dryRun, version: version, name: document.name, sha256: digest, signer: signer.fingerprint,
            changes: changes, evictions: evictions)
    }

    /// Makes `document` the next version: the workers it no longer admits leave routing at once,
    /// the version and their evictions are recorded in one transaction, then the policy is in
    /// force and their links end.
    func commit(_ document: PolicyDocument, _ signed: NewPolicy, digest: String, changes: Int, actor: String)
        async throws(AdminError) -> (Int, [ApplyOutcome.Eviction])
    {
        // Versions are assigned by the store; the version in force is the latest, applies are
        // serialized by this actor, and the store refuses the record when another gateway on a
        // shared store added a version since this one was checked (`NewPolicy.after`).
        let current = policies.current
        let version = current.version + 1
        // Before any worker is claimed: a version another gateway recorded since the check is
        // refused here without cutting anyone off (the store refuses the narrower race below).
        if (try? trail.store.policy(version: version)) ?? nil != nil {
            await syncFromStore()
            throw AdminError(
                409, "policy.conflict",
                "policy version \(version) was recorded by another gateway meanwhile: nothing was applied; check the policy in force and apply again"
            )
        }
        var signed = signed
        signed.after = current.version
        let claimed = evictor.claim(
            failing(under: document, at: clock.now()).map { item in
                let message = "policy version \(version) ('\(document.name)'): \(item.reasons[0].message)"
                let cause = Evictor.Cause(code: item.reasons[0].code.rawValue, message: message, actor: actor)
                return (item.link, cause, item.reasons.map(\.code.rawValue))
            })
        let applied = AuditEvent(
            .policyApplied, actor: actor, decision: .applied,
            detail: [
                "name": document.name, "sha256": digest, "signer": signed.signer ?? "", "note": signed.note,
                "previous_version": String(current.version), "changes": String(changes),
                "evictions": String(claimed.count),
            ])
        let entries: [AuditEntry]
        do {
            entries = try await trail.record(
                [.policy(applied, signed)] + claimed.map { $0.draft(policyVersion: version) })
        } catch let conflict as PolicyVersionConflict {
            evictor.finishUnrecorded(claimed)
            await syncFromStore()
            throw AdminError(
                409, "policy.conflict",
                "\(conflict): the policy was not applied (the workers it would have evicted were disconnected and attest again under the policy in force); check the policy in force and apply again"
            )
        } catch {
            evictor.finishUnrecorded(claimed)
            throw AdminError(
                503, ProtocolErrorCode.auditUnavailable.rawValue, "the policy could not be recorded: \(error)")
        }
        guard entries.first?.event.policyVersion == version else {
            // Recorded, but under another version: the evictions stand; the policy is not put in force.
            evictor.finish(claimed)
            throw AdminError(
                500, "gateway.internal",
                "the policy was recorded as version \(entries.first?.event.policyVersion ?? 0), not \(version)")
        }
        policies.replace(
            with: ActivePolicy(
                version: version, document: document, text: signed.text,
                serial: PolicySignature.serial(of: signed.signature)))
        evictor.finish(claimed)
        var evictions = claimed.map {
            ApplyOutcome.Eviction(
                worker: $0.link.workerID, session: $0.link.sessionID, reasons: $0.reasons, message: $0.cause.message)
        }
        // Workers admitted while the transaction ran were decided under the old version.
        for item in failing(under: document, at: clock.now()) where !claimed.contains(where: { $0.link === item.link })
        {
            let message = "policy version \(version) ('\(document.name)'): \(item.reasons[0].message)"
            let cause = Evictor.Cause(code: item.reasons[0].code.rawValue, message: message, actor: actor)
            let reasons = item.reasons.map(\.code.rawValue)
            // Out of routing and disconnected either way; an entry that fails is written by the
            // session's own end, and the worker is listed here all the same.
            if (try? await evictor.evict(item.link, cause, reasons: reasons)) != false {
                evictions.append(
                    .init(worker: item.link.workerID, session: item.link.sessionID, reasons: reasons, message: message))
            }
        }
        return (version, evictions)
    }

    /// Makes an earlier version the policy in force again, as a new version. It needs a fresh
    /// signature over that version's text (`signature`): the one it was applied with has a serial
    /// below the policy in force, and the admin token alone must not bring back a weaker policy.
    public func rollback(to version: Int, signature fresh: String? = nil, dryRun: Bool, actor: String)
        async throws(AdminError) -> ApplyOutcome
    {
        let record: PolicyRecord?
        do { record = try trail.store.policy(version: version) } catch {
            throw AdminError(500, "gateway.store", "\(error)")
        }
        guard let record else {
            throw AdminError(404, "policy.no-such-version", "there is no policy version \(version)")
        }
        let signature = fresh ?? (record.policy.signature.isEmpty ? nil : record.policy.signature)
        do {
            return try await apply(
                text: record.policy.text, signature: signature, dryRun: dryRun, actor: actor,
                note: "rollback to version \(version)")
        } catch  where error.code == "policy.signature-stale" && fresh == nil {
            throw AdminError(
                403, error.code,
                error.message
                    + "; to roll back, sign version \(version)'s text again: ccgate policy show --version \(version) > v\(version).yaml; ccgate policy sign v\(version).yaml --key KEY; ccgate policy rollback \(version) --signature v\(version).yaml.sig"
            )
        }
    }

    /// Evicts one worker by hand.
    public func evict(workerID: String, actor: String) async throws(AdminError) -> ApplyOutcome.Eviction {
        guard let link = registry.link(workerID) else {
            throw AdminError(404, "worker.not-admitted", "no admitted worker '\(workerID)'")
        }
        let message = "evicted by \(actor)"
        do {
            guard
                try await evictor.evict(
                    link, .init(code: ProtocolErrorCode.adminEvicted.rawValue, message: message, actor: actor))
            else {
                throw AdminError(409, "worker.leaving", "worker '\(workerID)' is already leaving")
            }
        } catch let error as AdminError {
            throw error
        } catch {
            // Out of routing and disconnected already; only the entry is missing.
            throw AdminError(
                503, ProtocolErrorCode.auditUnavailable.rawValue, "the eviction could not be recorded: \(error)")
        }
        return .init(
            worker: workerID, session: link.sessionID, reasons: [ProtocolErrorCode.adminEvicted.rawValue],
            message: message)
    }

    /// Parses and checks the signature of a policy document.
    func check(text: String, signature: String?) throws(AdminError) -> (PolicyDocument, Ed25519PublicKey) {
        guard text.utf8.count <= Self.maxPolicySize else {
            throw AdminError(413, "policy.invalid", "the policy is larger than 1 MiB")
        }
        let document: PolicyDocument
        do throws(PolicyLoadErrors) { document = try PolicyDocument.parse(text, file: "policy") } catch {
            throw AdminError(
                422, "policy.invalid", "the policy does not load", details: error.errors.map(\.description))
        }
        let lint = document.lint
        guard lint.errors.isEmpty else {
            throw AdminError(422, "policy.invalid", "the policy pins too little to admit safely", details: lint.errors)
        }
        guard !adminKeys.isEmpty else {
            throw AdminError(
                403, "policy.no-admin-keys",
                "no admin keys are pinned: start the gateway with --admin-key to apply policies")
        }
        guard let signature, !signature.isEmpty else {
            throw AdminError(403, "policy.unsigned", "the policy is not signed (ccgate policy sign FILE --key KEY)")
        }
        let current = try currentSerial()
        do throws(PolicySignatureError) {
            let parsed = try PolicySignature.parse(signature)
            let signer = try parsed.verify(Data(text.utf8), pinned: adminKeys)
            try parsed.checkApplicable(gatewayID: trail.key.publicKey.fingerprint, at: clock.now(), after: current)
            return (document, signer)
        } catch {
            throw AdminError(403, error.code, error.description)
        }
    }

    /// The serial of the signature the policy in force was verified with (0: unsigned or v1),
    /// as held in memory since it was put in force (never re-read from the store).
    func currentSerial() throws(AdminError) -> Int64 { policies.current.serial }

    /// Admitted workers that `document` no longer admits, with why.
    func failing(under document: PolicyDocument, at time: Date) -> [(link: WorkerLink, reasons: [Reason])] {
        registry.admitted().compactMap { item in
            let reasons = item.admission.reasons(under: document, at: time)
            return reasons.isEmpty ? nil : (item.link, reasons)
        }
    }
}
