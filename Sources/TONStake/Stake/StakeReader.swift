import AttestationCore
import Foundation
import TONKit

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
    /// Why the counted amount is lower than the position (a withdrawal requested, a proxy closing).
    public let note: String?

    public init(source: String, amount: UInt128, blockSeqno: Int?, endpoints: [String], note: String? = nil) {
        self.source = source
        self.amount = amount
        self.blockSeqno = blockSeqno
        self.endpoints = endpoints
        self.note = note
    }
}

/// Reads a provider's stake (a nominator-pool position, a jetton balance or a Cocoon proxy's stake)
/// from every configured endpoint and decides conservatively.
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
    public func nominatorStake(pool: TONAddress, nominator: TONAddress, allowedCodeHashes: Set<String>) async
        -> StakeReading
    {
        await stake(
            StakeQuery(
                kind: .nominatorPool(pool: pool), provider: nominator, stakeAccount: nil,
                allowedCodeHashes: allowedCodeHashes))
    }

    /// The provider's stake as `query` describes it, read from every endpoint.
    public func stake(_ query: StakeQuery) async -> StakeReading {
        guard clients.count >= 2 else {
            return .unknown("at least two toncenter endpoints are needed for a stake decision")
        }
        guard let contract = query.contract else {
            return .refused(
                code: "stake.no-stake-account",
                message: "a \(query.kind.name) stake names its contract in the provider proof (stake_account)")
        }
        var amounts = [UInt128](), seqnos = [Int](), notes = Set<String>()
        for client in clients {
            let host = client.endpoint.base.absoluteString
            do {
                let account = try await client.addressInformation(contract)
                guard account.state == "active", let code = account.code else {
                    return .refused(
                        code: "stake.account-inactive", message: "\(contract.raw) is \(account.state) at \(host)")
                }
                let codeHash = Data(code.representationHash).hex
                guard query.allowedCodeHashes.contains(codeHash) else {
                    return .refused(
                        code: "stake.code-not-allowed",
                        message: "\(contract.raw) runs code \(codeHash.prefix(16))…, which the policy does not allow")
                }
                let position: Position
                switch try await Self.position(query, contract: contract, client: client) {
                case .success(let p): position = p
                case .failure(.refused(let code, let message)): return .refused(code: code, message: message)
                case .failure(.unknown(let why)): return .unknown("\(host): \(why)")
                }
                if query.kind.coveredByAccountBalance, position.amount > account.balance {
                    return .unknown(
                        "\(host): a stake of \(position.amount) is more than the contract's balance \(account.balance)")
                }
                amounts.append(position.amount)
                if let note = position.note { notes.insert(note) }
                if let s = position.blockSeqno ?? account.blockSeqno { seqnos.append(s) }
            } catch {
                return .unknown("\(host): \(error)")
            }
        }
        let low = amounts.min()!, high = amounts.max()!
        guard high - low <= tolerance else { return .unknown("endpoints disagree: \(low) to \(high) nanotons") }
        return .observed(
            StakeObservation(
                source: "\(query.kind.name):\(contract.raw)", amount: low, blockSeqno: seqnos.max(),
                endpoints: clients.map(\.endpoint.base.absoluteString),
                note: notes.sorted().joined(separator: "; ").nilIfEmpty))
    }

    struct Position {
        let amount: UInt128
        let note: String?
        let blockSeqno: Int?
    }

    enum PositionError: Error {
        case refused(String, String)
        case unknown(String)
    }

    /// Runs the source's get-method on one endpoint and reads the provider's position from it.
    static func position(_ query: StakeQuery, contract: TONAddress, client: ToncenterClient)
        async throws(ToncenterError)
        -> Result<Position, PositionError>
    {
        switch query.kind {
        case .nominatorPool:
            let r = try await client.runGetMethod(
                contract, method: "get_nominator_data",
                arguments: [TVMInteger(negative: false, magnitude: query.provider.hash)])
            switch r.exitCode {
            case 86: return .success(Position(amount: 0, note: "not a nominator", blockSeqno: r.blockSeqno))
            case 0:
                guard r.stack.count == 3, let amount = r.stack[0].integer?.uint128, let withdraw = r.stack[2].integer
                else {
                    return .failure(.unknown("get_nominator_data did not return (amount, pending, withdraw_requested)"))
                }
                // A position with a withdrawal requested leaves the pool at the next round: it is not counted.
                if !withdraw.isZero {
                    return .success(Position(amount: 0, note: "withdraw requested", blockSeqno: r.blockSeqno))
                }
                return .success(Position(amount: amount, note: nil, blockSeqno: r.blockSeqno))
            default: return .failure(.unknown("get_nominator_data exited with \(r.exitCode)"))
            }
        case .jetton(let master):
            let r = try await client.runGetMethod(contract, method: "get_wallet_data")
            guard r.exitCode == 0, r.stack.count == 4, let balance = r.stack[0].integer?.uint128,
                let owner = Self.address(r.stack[1]), let walletMaster = Self.address(r.stack[2])
            else {
                return .failure(
                    .unknown("get_wallet_data did not return (balance, owner, master, code) (exit \(r.exitCode))"))
            }
            guard owner == query.provider else {
                return .failure(
                    .refused(
                        "stake.owner-mismatch",
                        "jetton wallet \(contract.raw) belongs to \(owner.raw), not \(query.provider.raw)"))
            }
            guard walletMaster == master else {
                return .failure(
                    .refused(
                        "stake.jetton-master-mismatch",
                        "jetton wallet \(contract.raw) holds jettons of \(walletMaster.raw), not of \(master.raw)"))
            }
            return .success(Position(amount: balance, note: nil, blockSeqno: r.blockSeqno))
        case .cocoonProxy(let root):
            let r = try await client.runGetMethod(contract, method: "get_cocoon_proxy_data")
            guard r.exitCode == 0, r.stack.count == 12, let owner = Self.address(r.stack[0]),
                let proxyRoot = Self.address(r.stack[2]),
                let state = r.stack[3].integer?.int64, let stake = r.stack[5].integer?.uint128
            else {
                return .failure(.unknown("get_cocoon_proxy_data did not return its 12 values (exit \(r.exitCode))"))
            }
            guard owner == query.provider else {
                return .failure(
                    .refused(
                        "stake.owner-mismatch",
                        "Cocoon proxy \(contract.raw) belongs to \(owner.raw), not \(query.provider.raw)"))
            }
            if let root, proxyRoot != root {
                return .failure(
                    .refused(
                        "stake.cocoon-root-mismatch",
                        "Cocoon proxy \(contract.raw) answers to root \(proxyRoot.raw), not \(root.raw)"))
            }
            // 1 = closing, 2 = closed: the stake is on its way out.
            if state != 0 {
                return .success(
                    Position(amount: 0, note: state == 1 ? "proxy closing" : "proxy closed", blockSeqno: r.blockSeqno))
            }
            return .success(Position(amount: stake, note: nil, blockSeqno: r.blockSeqno))
        }
    }

    /// An address returned as a slice (toncenter sends slices as cells).
    static func address(_ value: TVMValue) -> TONAddress? {
        guard let cell = value.cellValue else { return nil }
        var slice = CellSlice(cell)
        return (try? slice.address()) ?? nil
    }
}

/// Where a provider's stake is and how to read it, from the policy's `stake` section.
public struct StakeQuery: Sendable, Equatable {
    /// Where the stake is (the policy's source).
    public typealias Kind = StakeSourceKind

    public let kind: Kind
    /// The provider's wallet.
    public let provider: TONAddress
    /// The provider's jetton wallet or Cocoon proxy (from its proof); unused for a nominator pool.
    public let stakeAccount: TONAddress?
    /// Lowercase hex representation hashes of the code the contract may run.
    public let allowedCodeHashes: Set<String>

    public init(kind: Kind, provider: TONAddress, stakeAccount: TONAddress?, allowedCodeHashes: Set<String>) {
        self.kind = kind
        self.provider = provider
        self.stakeAccount = stakeAccount
        self.allowedCodeHashes = allowedCodeHashes
    }

    /// The contract the stake is read from.
    var contract: TONAddress? {
        if case .nominatorPool(let pool) = kind { return pool }
        return stakeAccount
    }
}

extension String {
    var nilIfEmpty: String? { isEmpty ? nil : self }
}
