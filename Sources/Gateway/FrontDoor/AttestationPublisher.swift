import AdmissionCore
import AttestationCore
import AuditLog
import Foundation
import GatewayState
import HTTPTypes
import Policy

/// What clients are told about who serves them: `GET /v1/attestation`, the `ccgate-worker` and
/// `ccgate-policy` headers on every relayed response, and the receipt signed for it.
///
/// Threat: a client that must take the gateway's word for which worker, evidence and policy
/// served it. The document lists each admitted worker with its evidence digest (and, asked, the
/// evidence itself) so a client can verify the evidence with its own verifier and policy; each
/// response then names the worker and carries a receipt the gateway signed, binding the bytes to
/// that worker's evidence digest, the policy digest and the admission's audit entry.
public struct AttestationPublisher: Sendable {
    let key: Ed25519PrivateKey
    let policies: PolicyState
    let registry: WorkerRegistry
    let trail: AuditTrail
    let clock: any AttestationClock

    public init(
        key: Ed25519PrivateKey, policies: PolicyState, registry: WorkerRegistry, trail: AuditTrail,
        clock: any AttestationClock
    ) {
        self.key = key
        self.policies = policies
        self.registry = registry
        self.trail = trail
        self.clock = clock
    }

    /// The facts a response is signed over, taken when its worker was picked.
    struct Served: Sendable {
        let worker: String
        let session: String
        let evidenceSHA256: String
        let admissionSeq: Int
        /// The policy version the worker was last judged under, and its digest.
        let policyVersion: Int
        let policySHA256: String
        /// The provider wallet the worker proved it is paid to (nil: none proved).
        var provider: String? = nil
    }

    func served(_ link: WorkerLink) -> Served? {
        guard let (record, seq) = registry.served(workerID: link.workerID, sessionID: link.sessionID) else {
            return nil
        }
        let current = policies.current
        let digest =
            record.policyVersion == current.version
            ? current.sha256 : ((try? trail.store.policy(version: record.policyVersion))??.sha256 ?? "unknown")
        return Served(
            worker: link.workerID, session: link.sessionID, evidenceSHA256: record.evidenceSHA256, admissionSeq: seq,
            policyVersion: record.policyVersion, policySHA256: digest, provider: record.provider)
    }

    static let workerHeader = HTTPField.Name("ccgate-worker")!
    static let policyHeader = HTTPField.Name("ccgate-policy")!
    static let receiptHeader = HTTPField.Name(SignedReceipt.headerName)!

    /// `ccgate-worker: ID` and `ccgate-policy: VERSION sha256:HEX`.
    func name(_ served: Served, in headers: inout HTTPFields) {
        headers[Self.workerHeader] = served.worker
        headers[Self.policyHeader] = "\(served.policyVersion) sha256:\(served.policySHA256)"
    }

    func receipt(
        _ served: Served, path: String, request: String, response: String, status: Int, model: String,
        usage: JSONValue
    ) -> SignedReceipt {
        Receipt(
            gateway: key.publicKey.fingerprint, path: path, requestSHA256: request, responseSHA256: response,
            status: status, model: model, usage: usage, worker: served.worker, session: served.session,
            evidenceSHA256: served.evidenceSHA256, policyVersion: served.policyVersion,
            policySHA256: served.policySHA256, admissionSeq: served.admissionSeq,
            time: Int(clock.now().timeIntervalSince1970)
        ).signed(by: key)
    }

    /// Most envelopes one `?evidence=full` answer carries; beyond, ask per worker.
    static let maxFullEnvelopes = 16

    /// The `GET /v1/attestation` document; `full`: with each worker's evidence envelope (only
    /// `worker` when given).
    func document(full: Bool, worker only: String? = nil) throws(AttestationDocumentError) -> Data {
        let policy = policies.current
        var models = [String: [JSONValue]]()
        let published = registry.published().filter { only == nil || $0.link.workerID == only }
        if full, published.count > Self.maxFullEnvelopes {
            throw AttestationDocumentError(
                "\(published.count) workers: ask for the evidence of one at a time (?evidence=full&worker=ID)")
        }
        for (link, record, seq, nonce, facts) in published {
            var worker: [String: JSONValue] = [
                "worker": .string(link.workerID), "session": .string(link.sessionID), "format": .string(facts.format),
                "tier": .string(facts.tier.rawValue), "confidential": .bool(facts.tier.isConfidential),
                "evidence_sha256": .string(record.evidenceSHA256),
                "e2e_public_key": .string(link.kemPublicKey.base64EncodedString()),
                // The evidence binds SHA-256(nonce ‖ e2e_public_key): a client recomputes it.
                "nonce": .string(nonce.base64EncodedString()),
                "admission_seq": .int(seq), "admitted_at": .string(record.admittedAt.rfc3339),
                "last_attested": .string(record.lastAttested.rfc3339), "policy_version": .int(record.policyVersion),
                "tcb_status": facts.tcbStatus.map(JSONValue.string) ?? .null,
                "measurements": .object(Self.measurements(facts)),
            ]
            if let provider = record.provider { worker["provider"] = .string(provider) }
            if full {
                let envelope = try? trail.store.evidence(sha256: record.evidenceSHA256)?.envelope
                worker["evidence"] = envelope.map { .string($0.base64EncodedString()) } ?? .null
            }
            for model in link.models { models[model, default: []].append(.object(worker)) }
        }
        var document: [String: JSONValue] = [
            "object": .string("ccgate.attestation"),
            "gateway": .object([
                "id": .string(key.publicKey.fingerprint), "public_key": .string(key.publicKey.pem),
            ]),
            "policy": .object([
                "version": .int(policy.version), "sha256": .string(policy.sha256),
                "name": .string(policy.document.name),
            ]),
            "models": .array(
                models.keys.sorted().map { .object(["id": .string($0), "workers": .array(models[$0] ?? [])]) }),
        ]
        if let checkpoint = trail.latestCheckpoint,
            let line = try? JSONDecoder().decode(JSONValue.self, from: Data(checkpoint.line))
        {
            document["checkpoint"] = line
        } else {
            document["checkpoint"] = .null
        }
        return Data(CanonicalJSON.encode(.object(document)))
    }

    /// The claims that decide trust: TDX/SGX registers, TPM identity and quoted PCRs, and the
    /// measured files by path.
    static func measurements(_ facts: AttestedFacts) -> [String: JSONValue] {
        var out = [String: JSONValue]()
        for key in [
            "mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrenclave", "mrsigner", "ak.sha256", "ek.sha256",
            "ak.activation", "cocoon_image_hash", "debug",
        ] {
            if let v = facts.claims.fields[key] { out[key] = .string(v) }
        }
        var files = [String: JSONValue]()
        for file in facts.claims.measuredFiles.prefix(64) { files[file.path] = .string(file.digestHex) }
        out["files"] = .object(files)
        if facts.claims.measuredFiles.count > 64 { out["files_total"] = .int(facts.claims.measuredFiles.count) }
        return out
    }
}

/// A `/v1/attestation` request that cannot be answered as asked.
struct AttestationDocumentError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
