import Foundation
import TestSupport
import Testing
import TONKit
import TONStake

/// Every toncenter v2 body of `../shared/testdata/ton/toncenter` decodes as its index says, and
/// every get-method result equals the pytvm run recorded in `contracts/getters.json`.
@Suite struct ToncenterDecodingTests {
    static func body(_ file: String) throws -> Data { try SharedTestData.data("ton/toncenter/\(file)") }
    static func json(_ path: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: try SharedTestData.data("ton/\(path)")) as? [String: Any])
    }

    /// pytvm's typed entry, compared with ours the way toncenter renders it (null and lisp lists
    /// of pairs as `tvm.list`).
    static func matches(_ mine: TVMValue, _ theirs: [String: Any]) -> Bool {
        switch theirs["type"] as? String {
        case "int": return mine.integer?.description == theirs["dec"] as? String
        case "cell": return mine.cellValue.map { Data($0.representationHash).hex } == theirs["hash"] as? String
        case "null": return mine == .list([])
        case "tuple":
            let items = theirs["items"] as? [[String: Any]] ?? []
            // A lisp list: (head, tail) pairs ending in null.
            var flat = [[String: Any]]()
            var node: [String: Any]? = theirs
            var isList = true
            while let n = node, n["type"] as? String == "tuple" {
                let pair = n["items"] as? [[String: Any]] ?? []
                guard pair.count == 2 else { isList = false; break }
                flat.append(pair[0])
                node = pair[1]
            }
            if isList, node?["type"] as? String == "null", case .list(let elements) = mine {
                return elements.count == flat.count && zip(elements, flat).allSatisfy { matches($0, $1) }
            }
            guard case .tuple(let elements) = mine else { return false }
            return elements.count == items.count && zip(elements, items).allSatisfy { matches($0, $1) }
        default: return false
        }
    }

    @Test func runGetMethodBodiesMatchTheTVMRuns() throws {
        let runs = try #require(try Self.json("contracts/getters.json")["runs"] as? [String: [String: Any]])
        let pairs = [
            ("runGetMethod.get_pool_data.json", "get_pool_data"),
            ("runGetMethodStd.get_pool_data.json", "get_pool_data"),
            ("runGetMethod.list_nominators.json", "list_nominators"),
            ("runGetMethodStd.list_nominators.json", "list_nominators"),
            ("runGetMethod.get_nominator_data.json", "get_nominator_data(present, withdraw requested)"),
            ("jsonRPC.runGetMethod.json", "get_nominator_data(present, withdraw requested)"),
            ("runGetMethod.get_nominator_data.exit_86.json", "get_nominator_data(absent -> exit 86)"),
            ("runGetMethod.seqno.json", "seqno"), ("runGetMethod.get_public_key.json", "get_public_key"),
            ("runGetMethod.no_such_method.exit_11.json", "get_pool_data on wallet v4r2 (no such method -> exit 11)"),
        ]
        for (file, runName) in pairs {
            let run = try #require(runs[runName], "\(runName)")
            let result = try ToncenterDecoding.runGetMethod(try Self.body(file), status: 200)
            #expect(result.exitCode == run["exit_code"] as? Int, "\(file)")
            #expect(result.gasUsed == run["gas_used"] as? Int, "\(file)")
            let expected = run["tvm_stack"] as? [[String: Any]] ?? []
            #expect(result.stack.count == expected.count, "\(file)")
            for (mine, theirs) in zip(result.stack, expected) {
                #expect(Self.matches(mine, theirs), "\(file): \(mine) vs \(theirs)")
            }
        }
        // The 256-bit public key comes back as 32 bytes; a withdraw flag as -1.
        let key = try ToncenterDecoding.runGetMethod(try Self.body("runGetMethod.get_public_key.json"), status: 200)
        #expect(key.stack.first?.integer?.bytes32?.count == 32)
        let nominator = try ToncenterDecoding.runGetMethod(
            try Self.body("runGetMethod.get_nominator_data.json"), status: 200)
        #expect(nominator.stack.map { $0.integer?.int64 } == [20_000_000_000_000, 5_000_000_000_000, -1])
        #expect(nominator.stack[0].integer?.uint128 == 20_000_000_000_000)
    }

    @Test func accountBodies() throws {
        let pool = try ToncenterDecoding.addressInformation(
            try Self.body("getAddressInformation.nominator_pool.json"), status: 200)
        #expect(pool.state == "active")
        #expect(
            pool.code.map { Data($0.representationHash).hex }
                == "9a3ec14bc098f6b44064c305222caea2800f17dda85ee6a8198a7095ede10dcf")
        #expect(pool.balance > 0)
        let wallet = try ToncenterDecoding.addressInformation(
            try Self.body("getAddressInformation.wallet_v4r2.json"), status: 200)
        #expect(
            wallet.code.map { Data($0.representationHash).hex }
                == "feb5ff6820e2ff0d9483e7e0d62c817d846789fb4ae580c878866d959dabd5c0")
        let empty = try ToncenterDecoding.addressInformation(
            try Self.body("getAddressInformation.uninitialized.json"), status: 200)
        #expect(empty.balance == 0 && empty.state == "uninitialized" && empty.code == nil)
    }

    /// Errors are classified; none of them, nor garbage, decodes as a result.
    @Test func errorsAndGarbage() throws {
        let index = try #require(try Self.json("toncenter/index.json")["files"] as? [[String: Any]])
        var errors = 0
        for entry in index {
            guard let file = entry["file"] as? String, file.hasPrefix("error."),
                let status = entry["http_status"] as? Int
            else { continue }
            do {
                _ = try ToncenterDecoding.runGetMethod(try Self.body(file), status: status)
                Issue.record("\(file) decoded")
            } catch {
                let expected: ToncenterError.Kind =
                    status == 429 ? .rateLimited : status >= 500 ? .unavailable : .rejected
                #expect((error as? ToncenterError)?.kind == expected, "\(file): \(error)")
            }
            errors += 1
        }
        #expect(errors == 8)
        for garbage in [
            "", "nope", "[]", "{\"ok\":true}",
            "{\"ok\":true,\"result\":{\"exit_code\":0,\"stack\":[[\"num\",\"0xZZ\"]]}}",
            "{\"ok\":true,\"result\":{\"exit_code\":0,\"stack\":[[\"cell\",{\"bytes\":\"AAAA\"}]]}}",
            "{\"ok\":true,\"result\":{\"balance\":\"-5\",\"state\":\"active\"}}",
        ] {
            #expect(throws: ToncenterError.self) { try ToncenterDecoding.runGetMethod(Data(garbage.utf8), status: 200) }
            #expect(throws: ToncenterError.self) {
                try ToncenterDecoding.addressInformation(Data(garbage.utf8), status: 200)
            }
        }
        #expect(TVMInteger("-0x1")?.int64 == -1)
        #expect(TVMInteger("0x0")?.isZero == true)
        #expect(
            TVMInteger("115792089237316195423570985008687907853269984665640564039457584007913129639935")?.bytes32
                == [UInt8](repeating: 0xFF, count: 32))
        #expect(TVMInteger("1" + String(repeating: "0", count: 90)) == nil)
    }
}
