import Foundation
import Policy

/// The stake a provider was admitted on: which wallet, and where its stake is held.
public struct ProviderStake: Sendable, Equatable {
    /// The provider wallet (raw form), shown per worker.
    public let provider: String
    /// The jetton wallet or Cocoon proxy holding the stake (raw form), for those sources.
    public let stakeAccount: String?
    /// The stake oracle's key: the wallet and the account holding the stake.
    public var key: String { provider + (stakeAccount.map { "|" + $0 } ?? "") }

    public init(provider: String, stakeAccount: String?) {
        self.provider = provider
        self.stakeAccount = stakeAccount
    }
}

/// What a stake check decided: admitted (with the stake the worker record keeps) or refused,
/// and for the audit log the source, block and observed amount.
public struct StakeOutcome: Sendable {
    public let stake: ProviderStake?
    public let refusal: (code: String, message: String)?
    public let detail: [String: String]
    /// Whether this outcome rests on a new chain observation (else: the cached one).
    public let fresh: Bool

    public init(stake: ProviderStake?, refusal: (code: String, message: String)?, detail: [String: String], fresh: Bool)
    {
        self.stake = stake
        self.refusal = refusal
        self.detail = detail
        self.fresh = fresh
    }

    /// `detail` as admission entries carry it (`stake.source`, `stake.block_seqno`, …).
    public var auditDetail: [String: String] {
        Dictionary(uniqueKeysWithValues: detail.map { ("stake." + $0.key, $0.value) })
    }

    public static func refused(_ code: String, _ message: String, _ detail: [String: String] = [:]) -> StakeOutcome {
        StakeOutcome(stake: nil, refusal: (code, message), detail: detail, fresh: true)
    }
}

/// Reads a provider's stake for admission (the chain access lives outside the core).
public protocol StakeChecking: Sendable {
    /// The id provider proofs must name.
    var gatewayID: String { get }
    /// The admission check: the proof `proofData`, for this worker's KEM key, under `rules`.
    func admit(proofData: Data?, workerKey: Data, rules: PolicyDocument.StakeRules) async -> StakeOutcome
}
