import Foundation

/// The admin API's request and response bodies, shared by the gateway that answers and the CLI
/// that asks, so that neither reads the other's JSON by hand. Keys are snake_case on the wire.
/// A policy's `signer` and a worker's `provider` are always present (`null` when there is none);
/// other optional fields are left out when absent.
public enum AdminMessage {
    /// Every refusal: `{"error": {"code", "message", "details"?}}`.
    public struct ErrorResponse: Codable, Sendable {
        public struct Body: Codable, Sendable {
            public let code: String
            public let message: String
            public let details: [String]?
        }
        public let error: Body

        public init(code: String, message: String, details: [String]) {
            error = Body(code: code, message: message, details: details.isEmpty ? nil : details)
        }
    }

    /// `POST policy/apply`.
    public struct ApplyRequest: Codable, Sendable {
        public let policy: String
        public let signature: String?
        public let dryRun: Bool?
        enum CodingKeys: String, CodingKey {
            case policy, signature
            case dryRun = "dry_run"
        }
        public init(policy: String, signature: String?, dryRun: Bool) {
            self.policy = policy
            self.signature = signature
            self.dryRun = dryRun
        }
    }

    /// `POST policy/rollback`.
    public struct RollbackRequest: Codable, Sendable {
        public let version: Int
        public let dryRun: Bool?
        /// A fresh signature over the old version's text (its own signature's serial is below the
        /// one in force, so it cannot be applied again).
        public let signature: String?
        enum CodingKeys: String, CodingKey {
            case version, signature
            case dryRun = "dry_run"
        }
        public init(version: Int, dryRun: Bool, signature: String? = nil) {
            self.version = version
            self.dryRun = dryRun
            self.signature = signature
        }
    }

    /// One policy version (`GET policy` adds its text and signature).
    public struct PolicyVersion: Codable, Sendable {
        public let version: Int
        public let name: String
        public let sha256: String
        public let signer: String?
        public let note: String
        public let appliedAt: String
        public let actor: String
        public let active: Bool
        public let text: String?
        public let signature: String?

        enum CodingKeys: String, CodingKey {
            case version, name, sha256, signer, note, actor, active, text, signature
            case appliedAt = "applied_at"
        }

        public init(
            version: Int, name: String, sha256: String, signer: String?, note: String, appliedAt: String, actor: String,
            active: Bool, text: String? = nil, signature: String? = nil
        ) {
            self.version = version
            self.name = name
            self.sha256 = sha256
            self.signer = signer
            self.note = note
            self.appliedAt = appliedAt
            self.actor = actor
            self.active = active
            self.text = text
            self.signature = signature
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(version, forKey: .version)
            try c.encode(name, forKey: .name)
            try c.encode(sha256, forKey: .sha256)
            try c.encode(signer, forKey: .signer)
            try c.encode(note, forKey: .note)
            try c.encode(appliedAt, forKey: .appliedAt)
            try c.encode(actor, forKey: .actor)
            try c.encode(active, forKey: .active)
            try c.encodeIfPresent(text, forKey: .text)
            try c.encodeIfPresent(signature, forKey: .signature)
        }
    }

    /// `GET policy/history`.
    public struct PolicyHistory: Codable, Sendable {
        public let active: Int
        public let versions: [PolicyVersion]
    }

    /// An admitted worker as `GET workers` lists it.
    public struct Worker: Codable, Sendable {
        public let id: String
        public let session: String
        public let provider: String?
        public let models: [String]
        public let format: String
        public let claims: [String: String]
        public let admittedAt: String
        public let lastAttested: String
        public let evidenceSHA256: String
        public let policyVersion: Int
        public let inFlight: Int

        enum CodingKeys: String, CodingKey {
            case id, session, provider, models, format, claims
            case admittedAt = "admitted_at"
            case lastAttested = "last_attested"
            case evidenceSHA256 = "evidence_sha256"
            case policyVersion = "policy_version"
            case inFlight = "in_flight"
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(id, forKey: .id)
            try c.encode(session, forKey: .session)
            try c.encode(provider, forKey: .provider)
            try c.encode(models, forKey: .models)
            try c.encode(format, forKey: .format)
            try c.encode(claims, forKey: .claims)
            try c.encode(admittedAt, forKey: .admittedAt)
            try c.encode(lastAttested, forKey: .lastAttested)
            try c.encode(evidenceSHA256, forKey: .evidenceSHA256)
            try c.encode(policyVersion, forKey: .policyVersion)
            try c.encode(inFlight, forKey: .inFlight)
        }
    }

    /// `GET workers`.
    public struct WorkerList: Codable, Sendable {
        public let workers: [Worker]
    }

    /// `GET audit/key`.
    public struct AuditKey: Codable, Sendable {
        public let publicKey: String
        public let fingerprint: String
        enum CodingKeys: String, CodingKey {
            case fingerprint
            case publicKey = "public_key"
        }
    }
}

extension AdminMessage {
    /// `GET audit/entries/N`: the entry's exported line, the evidence it decided on and the
    /// policy text in force, so that a decision can be replayed away from the gateway.
    public struct AuditEntryRecord: Codable, Sendable {
        public struct Evidence: Codable, Sendable {
            /// Base64.
            public let envelope: String
            /// Base64.
            public let binding: String
        }
        public struct PolicyText: Codable, Sendable {
            public let version: Int
            public let text: String
        }
        public let line: String
        public let evidence: Evidence?
        public let policy: PolicyText?
    }
}
