import AdmissionCore
import AsyncHTTPClient
import AttestationCore
import AuditLog
import Foundation
import HTTPFetch
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Policy
import Sealing
import Synchronization
import TDXVerifier
import TPMVerifier
import WorkerProtocol

/// `ccgate client proxy`: a plain OpenAI API on loopback that sends every request end to end to
/// a worker the *client* has verified. It fetches `/v1/attestation` with the evidence, verifies
/// each worker locally with ccgate's own verifiers under the client's policy (which may be
/// stricter than the gateway's), seals each request with HPKE to the chosen worker's attested
/// key, opens the sealed answer, and checks the gateway's receipt.
///
/// Threat: a gateway (or its operator) that admits workers under a laxer policy than the client
/// wants, reads prompts, or swaps answers. The proxy sends nothing to a worker its own policy
/// refuses; the gateway sees only ciphertext; an answer that does not open, ends early, or comes
/// with a receipt that does not verify is refused (plain answers) or ends with an error event
/// (streams, whose bytes went out as they were opened).
public final class ClientProxy: Sendable {
    public struct Configuration: Sendable {
        /// The gateway's API, e.g. `https://gw.example:8080`.
        public var gateway: URL
        /// The gateway's identity key: the attestation document, activation records and receipts
        /// must be its.
        public var gatewayKey: Ed25519PublicKey
        /// The API key sent to the gateway when the local client sends none.
        public var apiKey: String?
        /// A private CA the gateway's TLS certificate chains to.
        public var caFile: String?
        /// The client's policy: only workers whose evidence it accepts are used.
        public var policy: PolicyDocument
        public var tpmEKRoots: [Data] = EKRoots.pinnedDER
        public var dcapRoots: Set<String> = PinnedRoots.production
        public var refresh: Duration = .seconds(30)
        /// Only workers whose evidence proves at least this tier are used.
        public var minimumTier: AssuranceTier?
        /// Believe the gateway's credential-activation records for TPM workers. Off by default: a
        /// gateway that signs a record for a key of its own could pass a software AK off as a
        /// TPM's and have prompts sealed to itself; TEE evidence needs no such statement.
        public var trustGatewayActivation = false
        public var clock: any AttestationClock = SystemClock()

        public init(gateway: URL, gatewayKey: Ed25519PublicKey, policy: PolicyDocument) {
            self.gateway = gateway
            self.gatewayKey = gatewayKey
            self.policy = policy
        }
    }

    /// A worker the client's policy accepted, for one model.
    public struct VerifiedWorker: Sendable, Equatable {
        public let worker: String
        public let key: Data
        public let tier: String
    }

    public let configuration: Configuration
    let http: HTTPClient
    let ownsClient: Bool
    let logger: Logger
    private let catalog = Mutex<[String: [VerifiedWorker]]>([:])
    /// Why each refused worker was refused, at the last refresh (worker → reason).
    private let refusals = Mutex<[String: String]>([:])
    /// When the worker list was last refreshed because the gateway said a worker was gone.
    private let lastEarlyRefresh = Mutex<ContinuousClock.Instant?>(nil)

    public init(configuration: Configuration, logger: Logger = Logger(label: "ccgate.client")) throws {
        self.configuration = configuration
        self.logger = logger
        if let caFile = configuration.caFile {
            http = try HTTPFetch.client(trusting: caFile)
            ownsClient = true
        } else {
            http = .shared
            ownsClient = false
        }
    }

    public func shutdown() async {
        if ownsClient { try? await http.shutdown() }
    }

    public var verified: [String: [VerifiedWorker]] { catalog.withLock { $0 } }
    public var refused: [String: String] { refusals.withLock { $0 } }

    /// Refreshes the worker list now unless that was done in the last 5 seconds (a gateway cannot
    /// make every request cost a full verification round).
    func refreshSoon() async {
        let now = ContinuousClock.now
        let due = lastEarlyRefresh.withLock { last -> Bool in
            guard last.map({ now - $0 > .seconds(5) }) ?? true else { return false }
            last = now
            return true
        }
        if due { try? await refresh() }
    }

    // MARK: Verification

    /// Fetches the attestation document and each worker's evidence, and keeps the workers the
    /// client's policy accepts.
    public func refresh() async throws {
        let document = try await getJSON("v1/attestation")
        guard (document["gateway"]?.object?["id"]?.string) == configuration.gatewayKey.fingerprint else {
            throw ClientProxyError("the attestation document is not the pinned gateway's")
        }
        var accepted = [String: [VerifiedWorker]]()
        var refused = [String: String]()
        for model in document["models"]?.array ?? [] {
            guard let name = model.object?["id"]?.string else { continue }
            for entry in model.object?["workers"]?.array ?? [] {
                guard let worker = entry.object?["worker"]?.string else { continue }
                switch await verify(worker: worker) {
                case .success(let verified): accepted[name, default: []].append(verified)
                case .failure(let reason): refused[worker] = reason.description
                }
            }
        }
        catalog.withLock { $0 = accepted }
        refusals.withLock { $0 = refused }
        for (worker, reason) in refused {
            logger.notice(
                "worker refused by the client policy", metadata: ["worker": "\(worker)", "reason": "\(reason)"])
        }
    }

    /// One worker's evidence, verified here: bound to its end-to-end key by the published nonce,
    /// anchored (TPM activation records signed by the pinned gateway key), judged by the client's
    /// policy.
    func verify(worker: String) async -> Result<VerifiedWorker, ClientProxyError> {
        let query =
            "evidence=full&worker=" + (worker.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? worker)
        guard let document = try? await getJSON("v1/attestation?" + query),
            let entry = document["models"]?.array?.lazy.compactMap({ $0.object?["workers"]?.array?.first?.object })
                .first(where: { $0["worker"]?.string == worker }),
            let envelope = entry["evidence"]?.string.flatMap({ Data(base64Encoded: $0) }),
            let nonce = entry["nonce"]?.string.flatMap({ Data(base64Encoded: $0) }),
            let key = entry["e2e_public_key"]?.string.flatMap({ Data(base64Encoded: $0) }), key.count == 32
        else { return .failure(ClientProxyError("its evidence could not be fetched")) }
        guard HashAlgorithm.sha256.hash(envelope).hex == entry["evidence_sha256"]?.string else {
            return .failure(ClientProxyError("the evidence does not hash to its published digest"))
        }
        let verification = EvidenceVerification(
            policy: configuration.policy, scope: .all, dcapRoots: configuration.dcapRoots,
            tpmIdentity: TPMIdentityTrust(
                ekRoots: configuration.tpmEKRoots,
                activation: .records(
                    trustedKeys: configuration.trustGatewayActivation ? [configuration.gatewayKey] : [])))
        let verdict = verification.verify(
            envelopeData: envelope, expectedNonce: attestationBinding(nonce: nonce, workerPublicKeys: key),
            at: configuration.clock.now())
        guard verdict.isAccepted, let facts = AttestedFacts(verdict) else {
            let reason = verdict.reasons.first.map { "\($0.code.rawValue): \($0.message)" } ?? "rejected"
            return .failure(ClientProxyError(reason))
        }
        if let minimum = configuration.minimumTier, !facts.tier.meets(minimum) {
            return .failure(ClientProxyError("tier \(facts.tier.rawValue) is below the required \(minimum.rawValue)"))
        }
        return .success(VerifiedWorker(worker: worker, key: key, tier: facts.tier.rawValue))
    }

    func getJSON(_ path: String) async throws -> [String: JSONValue] {
        var request = HTTPClientRequest(url: configuration.gateway.absoluteString + "/" + path)
        if let apiKey = configuration.apiKey { request.headers.add(name: "Authorization", value: "Bearer \(apiKey)") }
        let response = try await http.execute(request, timeout: .seconds(30))
        let body = try await response.body.collect(upTo: 64 << 20)
        guard response.status == .ok, let object = try JSONDecoder().decode(JSONValue.self, from: body).object else {
            throw ClientProxyError("\(path): HTTP \(response.status.code)")
        }
        return object
    }
}

public struct ClientProxyError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
