import Foundation

/// Where a provider's stake is held, as a policy names it: a nominator pool position, a jetton
/// wallet of a master, or a Cocoon proxy. Plain data; reading it from the chain is TONStake's.
public enum StakeSourceKind: Sendable, Equatable {
    /// A position in this nominator pool (`get_nominator_data`).
    case nominatorPool(pool: TONAddress)
    /// A jetton wallet of this master (`get_wallet_data`), owned by the provider.
    case jetton(master: TONAddress)
    /// A Cocoon proxy contract (`get_cocoon_proxy_data`) owned by the provider; `root` pins its Cocoon root.
    case cocoonProxy(root: TONAddress?)

    public var name: String {
        switch self {
        case .nominatorPool: "nominator-pool"
        case .jetton: "jetton"
        case .cocoonProxy: "cocoon-proxy"
        }
    }

    /// Whether the contract's TON balance must cover the stake (a jetton balance is not in TON).
    package var coveredByAccountBalance: Bool { if case .jetton = self { false } else { true } }
}
