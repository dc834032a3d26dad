import AttestationCore
import Foundation
import TONKit

/// A provider's proof that it runs a worker: an Ed25519 signature by the provider wallet's key
/// over (gateway id, wallet, worker public key, time). The gateway reads the wallet's key on chain
/// (`get_public_key`) and checks the signature; a stake without this proof admits nobody.
///
/// Threats: a provider claiming another provider's stake (the signature must verify under the
/// key the named wallet holds on chain), a proof lifted from one worker or gateway to another
/// (both are signed), and an old proof replayed (its time must be recent).
public struct ProviderProof: Sendable, Equatable, Codable {
    public let wallet: String
    public let gatewayID: String
    /// The worker's public key (its KEM key, the one its quote is bound to).
    public let workerKey: Data
    /// Unix seconds.
    public let time: Int
    public let signature: Data
    /// The provider's jetton wallet or Cocoon proxy holding the stake (nil for a nominator pool,
    /// which the policy names). Not signed: the gateway checks on chain that the provider owns it.
    public let stakeAccount: String?

    enum CodingKeys: String, CodingKey {
        case wallet, time, signature
        case gatewayID = "gateway_id"
        case workerKey = "worker_key"
        case stakeAccount = "stake_account"
    }

    public static func message(wallet: String, gatewayID: String, workerKey: Data, time: Int) -> Data {
        Data("ccgate.provider-proof/v1\n\(gatewayID)\n\(wallet)\n\(workerKey.hex)\n\(time)\n".utf8)
    }

    public static func sign(
        wallet: TONAddress, gatewayID: String, workerKey: Data, time: Int, key: Ed25519PrivateKey,
        stakeAccount: TONAddress? = nil
    ) -> ProviderProof {
        ProviderProof(
            wallet: wallet.raw, gatewayID: gatewayID, workerKey: workerKey, time: time,
            signature: key.signature(
                for: message(wallet: wallet.raw, gatewayID: gatewayID, workerKey: workerKey, time: time)),
            stakeAccount: stakeAccount?.raw)
    }

    public init(
        wallet: String, gatewayID: String, workerKey: Data, time: Int, signature: Data, stakeAccount: String? = nil
    ) {
        self.wallet = wallet
        self.gatewayID = gatewayID
        self.workerKey = workerKey
        self.time = time
        self.signature = signature
        self.stakeAccount = stakeAccount
    }

    /// Decodes a proof as a worker sends it; `stake.proof-malformed` for anything else.
    public static func decode(_ data: Data) throws(Failure) -> (
        proof: ProviderProof, wallet: TONAddress, stakeAccount: TONAddress?
    ) {
        guard data.count <= 4096, let proof = try? JSONDecoder().decode(ProviderProof.self, from: data) else {
            throw Failure(code: "stake.proof-malformed", message: "the provider proof is not a ccgate provider proof")
        }
        guard proof.signature.count == 64, proof.workerKey.count == 32 else {
            throw Failure(
                code: "stake.proof-malformed",
                message: "the provider proof's signature or worker key has the wrong length")
        }
        let wallet: TONAddress, account: TONAddress?
        do throws(TONAddressError) {
            wallet = try TONAddress.parse(proof.wallet).address
            account = try proof.stakeAccount.map { (text) throws(TONAddressError) in try TONAddress.parse(text).address
            }
        } catch {
            throw Failure(code: "stake.proof-malformed", message: "the provider proof names a bad address: \(error)")
        }
        // Nominators, jetton wallets and Cocoon proxies of providers live in the basechain.
        guard wallet.workchain == 0 else {
            throw Failure(
                code: "stake.proof-malformed", message: "the provider wallet \(wallet.raw) is not in the basechain")
        }
        return (proof, wallet, account)
    }

    public struct Failure: Error, CustomStringConvertible, Equatable {
        public let code: String
        public let message: String
        public var description: String { "\(code): \(message)" }
    }

    /// Checks the proof for this gateway and worker against the wallet's on-chain key.
    public func verify(
        walletKey: Ed25519PublicKey, gatewayID expectedGateway: String, workerKey expectedWorker: Data, now: Date,
        maxAge: TimeInterval = 600
    ) throws(Failure) {
        guard gatewayID == expectedGateway else {
            throw Failure(code: "stake.proof-mismatch", message: "the proof is for gateway '\(gatewayID)'")
        }
        guard workerKey == expectedWorker else {
            throw Failure(code: "stake.proof-mismatch", message: "the proof is for another worker key")
        }
        // Threat: a peer-chosen time (Int.min, Int.max) that overflows the arithmetic below.
        // Times are checked to lie within a century of now before anything is computed with them.
        let now = now.timeIntervalSince1970
        guard abs(Double(time) - now) < 100 * 365 * 86_400 else {
            throw Failure(code: "stake.proof-stale", message: "the proof's time \(time) is not a plausible Unix time")
        }
        let age = now - TimeInterval(time)
        guard age <= maxAge, age >= -60 else {
            throw Failure(
                code: "stake.proof-stale", message: "the proof is \(Int(age.rounded())) s old (at most \(Int(maxAge)))")
        }
        guard
            walletKey.isValidSignature(
                signature, for: Self.message(wallet: wallet, gatewayID: gatewayID, workerKey: workerKey, time: time))
        else {
            throw Failure(
                code: "stake.proof-invalid",
                message: "the signature does not verify under the public key wallet \(wallet) holds on chain")
        }
    }
}

extension StakeReader {
    /// The wallet's Ed25519 key from `get_public_key`, the same at every endpoint.
    public func walletPublicKey(_ wallet: TONAddress) async -> Result<Ed25519PublicKey, ProviderProof.Failure> {
        var keys = Set<[UInt8]>()
        for client in clients {
            do {
                let r = try await client.runGetMethod(wallet, method: "get_public_key")
                guard r.exitCode == 0, let raw = r.stack.first?.integer?.bytes32 else {
                    return .failure(
                        .init(
                            code: "stake.no-wallet-key",
                            message: "\(wallet.raw) has no get_public_key (exit \(r.exitCode))"))
                }
                keys.insert(raw)
            } catch {
                return .failure(
                    .init(code: "stake.unknown", message: "\(client.endpoint.base.absoluteString): \(error)"))
            }
        }
        guard keys.count == 1, let raw = keys.first, let key = try? Ed25519PublicKey(raw: Data(raw)) else {
            return .failure(.init(code: "stake.unknown", message: "endpoints disagree on \(wallet.raw)'s public key"))
        }
        return .success(key)
    }
}
