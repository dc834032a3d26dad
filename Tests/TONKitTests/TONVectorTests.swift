import AttestationCore
import Foundation
import TestSupport
import Testing
import TONKit

/// Every vector of `../shared/testdata/ton` (addresses, bags of cells and their hashes), read in place.
@Suite struct TONVectorTests {
    static func json(_ name: String) throws -> [String: Any] {
        let data = try SharedTestData.data("ton/\(name)")
        return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    static func hex(_ text: String) -> [UInt8] { [UInt8](Data(hex: text) ?? Data()) }

    @Test func addresses() throws {
        let cases = try #require(try Self.json("addresses.json")["cases"] as? [[String: Any]])
        #expect(cases.count >= 37)
        var friendlyChecked = 0
        for c in cases {
            let id = c["id"] as? String ?? "?"
            if c["valid"] as? Bool == true {
                let wc = Int32(try #require(c["workchain"] as? Int))
                let hash = Self.hex(try #require(c["hash_hex"] as? String))
                let address = TONAddress(workchain: wc, hash: hash)
                #expect(address.raw == c["raw"] as? String, "\(id)")
                #expect(address.isStandardWorkchain == (c["standard_workchain"] as? Bool), "\(id)")
                for raw in c["raw_inputs"] as? [String] ?? [] {
                    #expect((try? TONAddress.parseRaw(raw)) == address, "\(id): \(raw)")
                }
                for f in c["user_friendly"] as? [[String: Any]] ?? [] {
                    let text = try #require(f["address"] as? String)
                    let bounceable = try #require(f["bounceable"] as? Bool),
                        testnet = try #require(f["testnet"] as? Bool)
                    let parsed = try TONAddress.parseFriendly(text)
                    #expect(
                        parsed.address == address && parsed.bounceable == bounceable && parsed.testnet == testnet,
                        "\(id): \(text)")
                    let alphabet = f["alphabet"] as? String
                    let urlSafe = alphabet == "std" ? false : true
                    #expect(
                        address.friendly(bounceable: bounceable, testnet: testnet, urlSafe: urlSafe) == text,
                        "\(id): \(text)")
                    friendlyChecked += 1
                }
            } else {
                let input = try #require(c["input"] as? String)
                let reason = try #require(c["reason"] as? String)
                do {
                    let parsed = try TONAddress.parse(input)
                    Issue.record("\(id): '\(input)' parsed as \(parsed.address)")
                } catch {
                    #expect(error.reason.rawValue == reason, "\(id): \(error)")
                }
            }
        }
        #expect(friendlyChecked >= 89)
        #expect(TONChecksum.crc16(Array("123456789".utf8)) == 0x31C3)
        #expect(TONChecksum.crc32c(Array("123456789".utf8)) == 0xE306_9283)
    }

    @Test func bagsOfCells() throws {
        let cases = try #require(try Self.json("boc.json")["cases"] as? [[String: Any]])
        #expect(cases.count >= 93)
        var valid = 0, invalid = 0, reasonMatches = 0
        var otherClass = [String]()
        for c in cases {
            let name = c["name"] as? String ?? "?"
            let bytes = Self.hex(try #require(c["boc_hex"] as? String))
            if c["expect"] as? String == "valid" {
                let roots: [Cell]
                do { roots = try BagOfCells.parse(bytes) } catch {
                    Issue.record("\(name): \(error)")
                    continue
                }
                let hashes = roots.map { Data($0.representationHash).hex }
                #expect(hashes == c["root_hashes"] as? [String], "\(name)")
                #expect(roots.map { $0.depth() } == c["depths"] as? [Int], "\(name)")
                // Re-serialized (every flag form), the same cells come back.
                for (index, crc) in [(false, false), (true, true)] {
                    let again = try BagOfCells.parse(try BagOfCells.serialize(roots, index: index, crc32c: crc))
                    #expect(again.map { Data($0.representationHash).hex } == hashes, "\(name) re-serialized")
                }
                valid += 1
            } else {
                let reason = c["reason"] as? String ?? ""
                do {
                    _ = try BagOfCells.parse(bytes)
                    Issue.record("\(name): accepted, expected \(reason)")
                } catch {
                    if error.reason.rawValue == reason {
                        reasonMatches += 1
                    } else {
                        otherClass.append("\(name): \(reason) → \(error)")
                    }
                }
                invalid += 1
            }
        }
        #expect(valid == 47 && invalid == 46)
        print(
            "boc vectors: \(valid) valid decoded, \(invalid) invalid refused, \(reasonMatches) with the vector's reason class; other: \(otherClass)"
        )
    }

    /// The real contract codes hash to their published code hashes.
    @Test func contractCodes() throws {
        for (file, hash) in [
            ("nominator_pool_code.boc.hex", "9a3ec14bc098f6b44064c305222caea2800f17dda85ee6a8198a7095ede10dcf"),
            ("wallet_v4r2_code.boc.hex", "feb5ff6820e2ff0d9483e7e0d62c817d846789fb4ae580c878866d959dabd5c0"),
        ] {
            let text = String(decoding: try SharedTestData.data("ton/contracts/\(file)"), as: UTF8.self)
            let roots = try BagOfCells.parse(Self.hex(text.trimmingCharacters(in: .whitespacesAndNewlines)))
            #expect(roots.count == 1)
            #expect(Data(roots[0].representationHash).hex == hash, "\(file)")
        }
    }

    /// Hostile bytes never crash the decoder: truncations and single-byte changes of every valid case.
    @Test func mutatedBagsNeverCrash() throws {
        let cases = try #require(try Self.json("boc.json")["cases"] as? [[String: Any]])
        var generator = SeededRandom(seed: 99)
        var refused = 0
        for c in cases where c["expect"] as? String == "valid" {
            let bytes = Self.hex(c["boc_hex"] as? String ?? "")
            for cut in stride(from: 0, to: bytes.count, by: max(1, bytes.count / 16)) {
                if (try? BagOfCells.parse(Array(bytes[0..<cut]))) == nil { refused += 1 }
            }
            for _ in 0..<24 where !bytes.isEmpty {
                var m = bytes
                let at = Int.random(in: 0..<m.count, using: &generator)
                m[at] ^= UInt8.random(in: 1...255, using: &generator)
                _ = try? BagOfCells.parse(m)
            }
        }
        #expect(refused > 0)
    }
}

/// The real mainnet account proof: two Merkle-proof roots whose stored hashes and depths are
/// their children's; every mutation the C++ loader rejects is rejected here at decoding; the
/// legacy-encoded config proof is refused.
@Suite struct AccountProofDecodingTests {
    static func boc(_ file: String) throws -> [UInt8] {
        let text = String(decoding: try SharedTestData.data("ton/account_proof/\(file)"), as: UTF8.self)
        return [UInt8](try #require(Data(base64Encoded: text.trimmingCharacters(in: .whitespacesAndNewlines))))
    }

    @Test func proofDecodesAndMutationsAreRefused() throws {
        let facts = try #require(
            try JSONSerialization.jsonObject(with: try SharedTestData.data("ton/account_proof/account_proof.json"))
                as? [String: Any])
        let bytes = try Self.boc("accountProof.txt")
        let roots = try BagOfCells.parse(bytes)
        let expected = try #require(facts["roots"] as? [[String: Any]])
        #expect(roots.count == expected.count)
        for (root, fact) in zip(roots, expected) {
            #expect(root.kind == .merkleProof)
            #expect(Data(root.representationHash).hex == fact["representation_hash"] as? String)
            #expect(Data(root.data[1..<33]).hex == fact["stored_hash"] as? String)
            #expect(Data(root.refs[0].hash(level: 0)).hex == fact["stored_hash"] as? String)
            #expect(root.refs[0].depth(level: 0) == fact["stored_depth"] as? Int)
        }
        var checked = 0
        for scenario in facts["must_reject"] as? [[String: Any]] ?? [] {
            guard let mutation = scenario["mutation"] as? [String: Int], let at = mutation["byte_offset"],
                let x = mutation["xor"]
            else { continue }
            var m = bytes
            m[at] ^= UInt8(x)
            #expect(throws: TONCellError.self, "\(scenario["name"] ?? "?")") { try BagOfCells.parse(m) }
            checked += 1
        }
        #expect(checked == 6)
        #expect(throws: TONCellError.self) { try BagOfCells.parse(try Self.boc("configProof.txt")) }
    }
}
