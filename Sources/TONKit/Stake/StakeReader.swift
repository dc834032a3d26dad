import AttestationCore
import Foundation

/// What the chain says about a provider's stake.
public enum StakeReading: Sendable, Equatable {
    /// Every endpoint answered and they agree: the lowest amount seen.
    case observed(StakeObservation)
    /// A definite no: the contract is not an allowed one, or the account is not active.
    case refused(code: String, message: String)
    /// Not known now (endpoints down, rate-limited, disagreeing, or answering garbage).
    case unknown(String)
}

public struct StakeObservation: Sendable, Equatable {
    public let source: String
    /// In nanotons.
    public let amount: UInt128
    /// The highest masterchain block any endpoint reported, when they report one.
    public let blockSeqno: Int?
    public let endpoints: [String]

    public init(source: String, amount: UInt128, blockSeqno: Int?, endpoints: [String]) {
        self.source = source
        self.amount = amount
        self.blockSeqno = blockSeqno
        self.endpoints = endpoints
    }
}

/// Reads a nominator-pool position from every configured endpoint and decides conservatively.
///
/// Threats: one lying or broken endpoint (each decision needs all endpoints to answer, the lowest
/// amount counts, and a spread beyond `tolerance` makes the stake unknown rather than trusted);
/// a look-alike contract that reports any stake it likes (its code hash must be on the policy's
/// allowlist, read from the account itself); a stake that the account's balance cannot cover.
public struct StakeReader: Sendable {
    public let clients: [ToncenterClient]
    /// Nanotons two endpoints may differ by (balances move between blocks).
    public let tolerance: UInt128

    public init(clients: [ToncenterClient], tolerance: UInt128 = 1_000_000_000) {
        self.clients = clients
        self.tolerance = tolerance
    }

    /// The amount `nominator` holds in the pool at `pool` (`get_nominator_data`; exit 86, "not a
    /// nominator", is an amount of 0).
    public func nominatorStake(pool: TONAddress, nominator: TONAddress, allowedCodeHashes: Set<String>) async -> StakeReading {
        guard clients.count >= 2 else { return .unknown("at least two toncenter endpoints are needed for a stake decision") }
        var amounts = [UInt128](), seqnos = [Int]()
        for client in clients {
            let host = client.endpoint.base.absoluteString
            do {
                let account = try await client.addressInformation(pool)
                guard account.state == "active", let code = account.code else {
                    return .refused(code: "stake.account-inactive", message: "\(pool.raw) is \(account.state) at \(host)")
                }
                let codeHash = Data(code.representationHash).hex
                guard allowedCodeHashes.contains(codeHash) else {
                    return .refused(code: "stake.code-not-allowed", message: "\(pool.raw) runs code \(codeHash.prefix(16))…, which the policy does not allow")
                }
                let result = try await client.runGetMethod(
                    pool, method: "get_nominator_data", arguments: [TVMInteger(negative: false, magnitude: nominator.hash)])
                let amount: UInt128
                switch result.exitCode {
                case 86: amount = 0
                case 0:
                    guard let a = result.stack.first?.integer?.uint128 else {
                        return .unknown("\(host): get_nominator_data did not return an amount")
                    }
                    amount = a
                default: return .unknown("\(host): get_nominator_data exited with \(result.exitCode)")
                }
                guard amount <= account.balance else {
                    return .unknown("\(host): a stake of \(amount) is more than the pool's balance \(account.balance)")
                }
                amounts.append(amount)
                if let s = result.blockSeqno ?? account.blockSeqno { seqnos.append(s) }
            } catch {
                return .unknown("\(host): \(error)")
            }
        }
        let low = amounts.min()!, high = amounts.max()!
        guard high - low <= tolerance else { return .unknown("endpoints disagree: \(low) to \(high) nanotons") }
        return .observed(
            StakeObservation(
                source: "nominator-pool:\(pool.raw)", amount: low, blockSeqno: seqnos.max(),
                endpoints: clients.map(\.endpoint.base.absoluteString)))
    }
}
