import Foundation
import TestSupport
import Testing
import TONKit
import TONStake

/// Slices, Coins, addresses and HashmapE on the nominator pool's data layout (`pool.fc`
/// `save_data`), and get-method ids, against `../shared/testdata/ton/contracts/getters.json`.
@Suite struct ContractDataTests {
    static func getters() throws -> [String: Any] {
        try #require(
            try JSONSerialization.jsonObject(with: try SharedTestData.data("ton/contracts/getters.json"))
                as? [String: Any])
    }

    @Test func methodIds() throws {
        let runs = try #require(try Self.getters()["runs"] as? [String: [String: Any]])
        var checked = 0
        for run in runs.values {
            guard let name = run["method"] as? String, let id = run["method_id"] as? Int else { continue }
            #expect(GetMethod.id(name) == id, "\(name)")
            checked += 1
        }
        #expect(checked >= 7)
        #expect(GetMethod.id("get_nominator_data") == 112473)
    }

    @Test func nominatorPoolData() throws {
        let pool = try #require(
            (try Self.getters()["example_accounts"] as? [String: Any])?["nominator_pool"] as? [String: Any])
        let values = try #require(pool["data_values"] as? [String: Any])
        let dataHex = try #require(pool["data_boc_hex"] as? String)
        let root = try #require(try BagOfCells.parse([UInt8](Data(hex: dataHex) ?? Data())).first)
        #expect(Data(root.representationHash).hex == pool["data_hash"] as? String)
        var s = CellSlice(root)
        #expect(try s.uint(8) == UInt64(values["state"] as? Int ?? -1))
        #expect(try s.uint(16) == UInt64(values["nominators_count"] as? Int ?? -1))
        #expect(try s.coins() == UInt128(values["stake_amount_sent"] as? String ?? "x"))
        #expect(try s.coins() == UInt128(values["validator_amount"] as? String ?? "x"))
        var config = CellSlice(try s.ref())
        _ = try config.bits(256)
        #expect(try config.uint(16) == UInt64(values["validator_reward_share"] as? Int ?? -1))
        #expect(try config.uint(16) == UInt64(values["max_nominators_count"] as? Int ?? -1))
        #expect(try config.coins() == UInt128(values["min_validator_stake"] as? String ?? "x"))
        #expect(try config.coins() == UInt128(values["min_nominator_stake"] as? String ?? "x"))
        try config.requireEnd()

        let expected = try #require(values["nominators"] as? [String: [String: Any]])
        let nominators = try s.hashmapE(keyBits: 256)
        #expect(nominators.count == expected.count)
        let withdrawals = Set(try s.hashmapE(keyBits: 256).map { Data($0.key).hex })
        for (key, value) in nominators {
            let raw = "0:" + Data(key).hex
            let fact = try #require(expected[raw], "\(raw)")
            var v = value
            #expect(try v.coins() == UInt128(fact["amount"] as? String ?? "x"))
            #expect(try v.coins() == UInt128(fact["pending_deposit"] as? String ?? "x"))
            #expect(withdrawals.contains(Data(key).hex) == (fact["withdraw_requested"] as? Bool))
        }
    }

    @Test func shortDataIsAnErrorNotACrash() throws {
        let cell = try Cell(bits: [0xF0], count: 4)
        var s = CellSlice(cell)
        #expect(throws: TONSliceError.self) { try s.uint(8) }
        #expect(throws: TONSliceError.self) { try s.ref() }
        var t = CellSlice(cell)
        #expect(throws: TONSliceError.self) { try t.coins() }  // length 15, no bytes
        var u = CellSlice(try Cell(bits: [0b1100_0000], count: 3))
        #expect(throws: TONSliceError.self) { try u.address() }
    }
}
