import Foundation
#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif
import TestSupport
import Testing
import TONKit
import TONStake

/// The jetton and Cocoon proxy stake sources over constructed toncenter answers: the account body
/// is the recorded wallet v4r2 one (real code, so the code-hash rule is exercised on a real hash);
/// the get-method stacks are built here in the layouts of TEP-74 `get_wallet_data` (balance, owner,
/// master, wallet code) and Cocoon's `get_cocoon_proxy_data` (owner, public key, root, state,
/// balance, stake, unlock time, four prices, params version). No jetton or Cocoon code runs.
@Suite struct StakeSourceTests {
    static let provider = try! TONAddress.parseRaw("0:" + String(repeating: "11", count: 32))
    static let stranger = try! TONAddress.parseRaw("0:" + String(repeating: "22", count: 32))
    static let master = try! TONAddress.parseRaw("0:" + String(repeating: "33", count: 32))
    static let root = try! TONAddress.parseRaw("-1:" + String(repeating: "44", count: 32))
    static let contract = try! TONAddress.parse("UQDQ7lcI1SH-Pjydj7UWT8xbnQEQbpAGEhSu-da17Jaki3tq").address
    static let walletCode: Set<String> = ["feb5ff6820e2ff0d9483e7e0d62c817d846789fb4ae580c878866d959dabd5c0"]

    /// Answers getAddressInformation with the recorded wallet body and runGetMethod with `stack`.
    struct Chain: HTTPTransport {
        /// The runGetMethod body.
        let body: Data
        init(stack: [[Any]], exitCode: Int) {
            let result: [String: Any] = [
                "@type": "smc.runResult", "gas_used": 1000, "stack": stack, "exit_code": exitCode,
            ]
            body = try! JSONSerialization.data(withJSONObject: ["ok": true, "result": result])
        }
        func send(_ request: URLRequest) async throws -> (status: Int, body: Data) {
            if request.url?.path.hasSuffix("getAddressInformation") == true {
                return (200, try SharedTestData.data("ton/toncenter/getAddressInformation.wallet_v4r2.json"))
            }
            return (200, body)
        }
    }

    /// addr_std$10 anycast:nothing workchain:int8 address:bits256, as a cell BoC in toncenter's `cell` entry.
    static func address(_ a: TONAddress) -> [Any] {
        var bits = [Bool]([true, false, false])
        bits += (0..<8).map { (UInt8(bitPattern: Int8(a.workchain)) >> (7 - $0)) & 1 == 1 }
        for byte in a.hash { bits += (0..<8).map { (byte >> (7 - $0)) & 1 == 1 } }
        var data = [UInt8](repeating: 0, count: (bits.count + 7) / 8)
        for (i, bit) in bits.enumerated() where bit { data[i / 8] |= 0x80 >> (i % 8) }
        let cell = try! Cell(data: data, bitCount: bits.count)
        return [
            "cell",
            [
                "bytes": Data(try! BagOfCells.serialize([cell], crc32c: true)).base64EncodedString(),
                "object": [:] as [String: Any],
            ],
        ]
    }

    static func num(_ n: UInt64) -> [Any] { ["num", "0x" + String(n, radix: 16)] }

    static func reader(_ stack: [[Any]], exit: Int = 0) -> StakeReader {
        let chain = Chain(stack: stack, exitCode: exit)
        return StakeReader(
            clients: ["http://a.test", "http://b.test"].map {
                ToncenterClient(
                    endpoint: ToncenterEndpoint(base: URL(string: $0)!, requestsPerSecond: 1000), transport: chain,
                    maxAttempts: 1)
            })
    }

    static func jetton(balance: UInt64, owner: TONAddress = provider, master m: TONAddress = master) -> [[Any]] {
        [
            num(balance), address(owner), address(m),
            ["cell", ["bytes": "te6cckEBAQEAAgAAAEysuc0=", "object": [:] as [String: Any]]],
        ]
    }

    static func proxy(owner: TONAddress = provider, root r: TONAddress = root, state: UInt64 = 0, stake: UInt64)
        -> [[Any]]
    {
        [
            address(owner), num(7), address(r), num(state), num(0), num(stake), num(0), num(1), num(1),
            num(1_000_000_000), num(1), num(4),
        ]
    }

    static func read(
        _ kind: StakeQuery.Kind, _ stack: [[Any]], account: TONAddress? = contract, codes: Set<String> = walletCode,
        exit: Int = 0
    )
        async -> StakeReading
    {
        await reader(stack, exit: exit).stake(
            StakeQuery(kind: kind, provider: provider, stakeAccount: account, allowedCodeHashes: codes))
    }

    static func refusal(_ r: StakeReading) -> String? { if case .refused(let code, _) = r { code } else { nil } }

    @Test func jettonStake() async {
        let kind = StakeQuery.Kind.jetton(master: Self.master)
        let ok = await Self.read(kind, Self.jetton(balance: 50_000_000_000_000))
        guard case .observed(let o) = ok else { Issue.record("\(ok)"); return }
        #expect(o.amount == 50_000_000_000_000 && o.source == "jetton:\(Self.contract.raw)")
        // Threat: someone else's jetton wallet presented as the provider's.
        #expect(
            Self.refusal(await Self.read(kind, Self.jetton(balance: 1, owner: Self.stranger))) == "stake.owner-mismatch"
        )
        // Threat: a wallet of a worthless jetton.
        #expect(
            Self.refusal(await Self.read(kind, Self.jetton(balance: 1, master: Self.stranger)))
                == "stake.jetton-master-mismatch")
        #expect(Self.refusal(await Self.read(kind, Self.jetton(balance: 1), codes: ["00"])) == "stake.code-not-allowed")
        #expect(Self.refusal(await Self.read(kind, Self.jetton(balance: 1), account: nil)) == "stake.no-stake-account")
        guard case .unknown = await Self.read(kind, Array(Self.jetton(balance: 1).prefix(2))) else {
            Issue.record("a short stack was read"); return
        }
        guard case .unknown = await Self.read(kind, Self.jetton(balance: 1), exit: 11) else {
            Issue.record("a failed getter was read"); return
        }
    }

    @Test func cocoonProxyStake() async {
        let kind = StakeQuery.Kind.cocoonProxy(root: Self.root)
        let ok = await Self.read(kind, Self.proxy(stake: 500_000_000))
        guard case .observed(let o) = ok else { Issue.record("\(ok)"); return }
        #expect(o.amount == 500_000_000 && o.source == "cocoon-proxy:\(Self.contract.raw)")
        // A closing proxy's stake is on its way out.
        guard case .observed(let closing) = await Self.read(kind, Self.proxy(state: 1, stake: 500_000_000)) else {
            Issue.record("closing"); return
        }
        #expect(closing.amount == 0 && closing.note == "proxy closing")
        #expect(
            Self.refusal(await Self.read(kind, Self.proxy(owner: Self.stranger, stake: 1))) == "stake.owner-mismatch")
        #expect(
            Self.refusal(await Self.read(kind, Self.proxy(root: Self.stranger, stake: 1)))
                == "stake.cocoon-root-mismatch")
        // No root pinned: any root's proxy counts.
        guard case .observed = await Self.read(.cocoonProxy(root: nil), Self.proxy(root: Self.stranger, stake: 1))
        else { Issue.record("unpinned root"); return }
        // The recorded account holds 1 TON: a stake of 2 TON is not covered.
        guard case .unknown(let why) = await Self.read(kind, Self.proxy(stake: 2_000_000_000)) else {
            Issue.record("uncovered stake read"); return
        }
        #expect(why.contains("more than the contract's balance"))
    }
}
