import AttestationCore
import AuditLog
import Foundation

/// The gateway's durable state: the audit chain and the evidence it refers to, the policy
/// history, the admitted workers and the API keys. One interface, so that a single gateway keeps
/// it in SQLite and several share PostgreSQL with the same behaviour.
///
/// Contract: `append` is the only way into the chain; it assigns sequence numbers and links
/// inside one transaction and returns only once that transaction is durable (a `kill -9` after
/// it returns loses nothing). Entries are never updated or deleted.
public protocol GatewayStore: Sendable {
    /// Appends `drafts` in order, in one durable transaction, stamping them with `time`.
    /// Checkpoint drafts are signed with `checkpointKey` over the chain head they follow.
    func append(_ drafts: [AuditDraft], at time: Date, checkpointKey: Ed25519PrivateKey?) throws -> [AuditEntry]
    func head() throws -> ChainHead
    /// Entries matching `query` in sequence order; `body` returns false to stop.
    func entries(_ query: AuditQuery, _ body: (AuditEntry) throws -> Bool) throws
    /// The same, as the exported bytes of each entry (sequence number, line).
    func lines(_ query: AuditQuery, _ body: (Int, [UInt8]) throws -> Bool) throws
    func count(_ query: AuditQuery) throws -> Int
    func entry(seq: Int) throws -> AuditEntry?
    func evidence(sha256: String) throws -> StoredEvidence?

    func policies() throws -> [PolicyRecord]
    func policy(version: Int) throws -> PolicyRecord?

    /// This gateway's admitted workers (every gateway on a shared database keeps its own rows:
    /// they are its live connections).
    func workers() throws -> [WorkerRecord]
    /// Forgets this gateway's workers (at start: connections do not survive a restart).
    func clearWorkers() throws

    /// Names the gateway that writes through this store: its key's fingerprint goes on the
    /// entries and worker rows it writes from now on, and its public key is listed for
    /// `ccgate audit verify` (the checkpoints it signs).
    func registerGateway(_ key: Ed25519PublicKey, at time: Date) throws
    /// Every gateway that has written to this store.
    func gateways() throws -> [GatewayRecord]

    /// Yields whenever a gateway sharing this store may have recorded something the others act
    /// on (``AuditDraft/concernsOtherGateways``), and once on each (re)connection, when a
    /// notification may have been missed; nil for a store no other gateway writes to.
    func changeNotifications() -> AsyncStream<Void>?

    /// SHA-256 digests (hex) of the accepted API keys.
    func apiKeyDigests() throws -> Set<String>
    /// Replaces the keys that came from `source` (e.g. `config`) with `digests`.
    func replaceAPIKeys(source: String, digests: Set<String>, at time: Date) throws

    /// Writes and commits a row of its own (`meta` key `ready_probe`), durably: whether the store
    /// takes writes now (`/readyz`).
    func probeWrite(at time: Date) throws

    /// The named API keys, revoked ones included, by id.
    func clientKeys() throws -> [ClientKeyRecord]

    /// Adds requests to the usage ledger in one durable transaction, naming this gateway on each
    /// that names none; a request id already there is kept as first written.
    func recordUsage(_ records: [UsageRecord]) throws
    /// Ledger rows matching `query`, oldest first; `body` returns false to stop.
    func usage(_ query: UsageQuery, _ body: (UsageRecord) throws -> Bool) throws
    /// The tokens (prompt and completion) of `keyID`'s rows at or after `since`, summed by the
    /// database (a quota's count: one indexed aggregate, not the rows).
    func usedTokens(keyID: String, since: Date) throws -> Int
}

extension GatewayStore {
    public func changeNotifications() -> AsyncStream<Void>? { nil }
}

/// What `append` writes.
public enum AuditDraft: Sendable {
    /// A decision; `evidence` (the envelope decided on) is stored beside it, once per digest, and
    /// `worker` changes the admitted-workers table in the same transaction.
    case event(AuditEvent, evidence: StoredEvidence? = nil, worker: WorkerChange? = nil)
    /// A new policy version with the entry that records it: the store assigns the next version
    /// number and sets it as the entry's `policy_version`.
    case policy(AuditEvent, NewPolicy)
    /// A signed statement of the chain head so far (``Checkpoint``).
    case checkpoint
    /// A named API key created or changed, with the entry that records why: the key's row is
    /// written in the same transaction, so no key changes without its entry.
    case clientKey(AuditEvent, ClientKeyRecord)
}

extension AuditDraft {
    /// A policy version that must follow a given one (``NewPolicy/after``).
    var isConditional: Bool {
        switch self {
        case .policy(_, let policy): policy.after != nil
        case .clientKey: true
        default: false
        }
    }

    /// A policy version, or an eviction by an admin: what every gateway on a shared store follows.
    public var concernsOtherGateways: Bool {
        switch self {
        case .policy, .clientKey: true
        case .event(let e, _, _): e.isAdminEviction
        case .checkpoint: false
        }
    }
}

extension AuditEvent {
    /// An eviction of a worker by name that an admin asked for (`ccgate workers evict`: actor
    /// `admin:…`, reason `admin.evicted`), as opposed to one a policy or the gateway decided.
    public var isAdminEviction: Bool {
        event == "eviction" && actor.hasPrefix("admin") && reasons == ["admin.evicted"]
    }
}

/// A change to the admitted-workers table that goes with a decision.
public enum WorkerChange: Sendable, Equatable {
    /// An admission: the worker's row, replacing any earlier session's.
    case upsert(WorkerRecord)
    /// A re-attestation: the row of this same session, if it is still there (an eviction that
    /// removed it is never undone by a later update).
    case update(WorkerRecord)
    case remove(id: String, session: String)
}

/// Evidence as it was decided on: the envelope and the binding it was checked against (the
/// verifier's expected nonce), so the decision can be re-derived later.
public struct StoredEvidence: Sendable, Equatable {
    public let sha256: String
    public let envelope: Data
    public let binding: Data
    public init(envelope: Data, binding: Data) {
        self.sha256 = HashAlgorithm.sha256.hash(envelope).hex
        self.envelope = envelope
        self.binding = binding
    }
    init(sha256: String, envelope: Data, binding: Data) {
        self.sha256 = sha256
        self.envelope = envelope
        self.binding = binding
    }
}

/// A policy about to become a version.
public struct NewPolicy: Sendable, Equatable {
    public let name: String
    /// The document, byte for byte as signed.
    public let text: String
    /// The detached signature document (JSON), empty when unsigned.
    public let signature: String
    public let signer: String?
    public let note: String
    /// When set, the version this one must follow: the append fails with
    /// ``PolicyVersionConflict`` if the newest stored version is another (another gateway on a
    /// shared store recorded one since this one was checked against `after`).
    public var after: Int?
    public init(name: String, text: String, signature: String, signer: String?, note: String) {
        self.name = name
        self.text = text
        self.signature = signature
        self.signer = signer
        self.note = note
    }
}

/// One version of the policy history.
public struct PolicyRecord: Sendable, Equatable {
    public let version: Int
    public let policy: NewPolicy
    public let appliedAt: Date
    public let actor: String
    public var sha256: String { HashAlgorithm.sha256.hash(Data(policy.text.utf8)).hex }
}

/// Which entries an export or count covers.
public struct AuditQuery: Sendable, Equatable {
    public var since: Date?
    public var until: Date?
    public var worker: String?
    public var fromSeq: Int?
    public init(since: Date? = nil, until: Date? = nil, worker: String? = nil, fromSeq: Int? = nil) {
        self.since = since
        self.until = until
        self.worker = worker
        self.fromSeq = fromSeq
    }
}

/// An admitted worker as the admin API lists it.
public struct WorkerRecord: Sendable, Equatable, Codable {
    public var id: String
    public var session: String
    public var provider: String?
    public var models: [String]
    public var format: String
    /// A few claims worth showing (`mrtd`, `tcb_status`, `engine`, `model`, `ak`).
    public var claims: [String: String]
    public var admittedAt: Date
    public var lastAttested: Date
    public var evidenceSHA256: String
    public var policyVersion: Int

    public init(
        id: String, session: String, provider: String?, models: [String], format: String, claims: [String: String],
        admittedAt: Date, lastAttested: Date, evidenceSHA256: String, policyVersion: Int
    ) {
        self.id = id
        self.session = session
        self.provider = provider
        self.models = models
        self.format = format
        self.claims = claims
        self.admittedAt = admittedAt
        self.lastAttested = lastAttested
        self.evidenceSHA256 = evidenceSHA256
        self.policyVersion = policyVersion
    }
}

/// An append that depended on what another writer changed first: it wrote nothing, and the
/// drafts batched with it are written again without it.
public protocol AppendConflict: Error {}

/// A named key changed by someone else since this change was made from it: nothing was written.
public struct ClientKeyConflict: AppendConflict, CustomStringConvertible {
    public let id: String
    public let expected: Int
    public let found: Int
    public var description: String {
        "key \(id) is at revision \(found) in the store, and this change was made from revision \(expected)"
    }
}

/// A policy version recorded by someone else first: the append wrote nothing.
public struct PolicyVersionConflict: AppendConflict, CustomStringConvertible {
    public let expected: Int
    public let found: Int
    public var description: String {
        "policy version \(found) was recorded meanwhile (this one was checked against version \(expected))"
    }
}

/// A storage failure (the disk, the database), as opposed to a bad input.
public struct StoreError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
