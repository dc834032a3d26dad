import Foundation
import TestSupport
import Testing
import TONKit

/// Differential test against pytoniq-core (PyPI, in the virtual environment scripts/reference-env
/// makes): 5,000 random cells as bags of cells and 5,000 random addresses with all their forms,
/// generated there, decode here and re-encode to identical bytes, hashes, depths and strings.
@Suite struct PytoniqDifferentialTests {
    @Test func corpusRoundTripsToIdenticalBytes() async throws {
        try await onCPULane {
            let env = try ReferenceEnvironment.shared.get()
            let script = SharedTestData.packageRoot.appendingPathComponent("Tests/TONKitTests/pytoniq_corpus.py")
            let result = try await ProcessRunner.run(env.tonPython.path, [script.path, "20261201", "5000", "5000"])
            #expect(result.status == 0, "\(result.stderr)")
            var cells = 0, addresses = 0, strings = 0
            for line in result.stdout.split(separator: "\n") {
                let o = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
                if o["kind"] as? String == "cell" {
                    let boc = [UInt8](Data(hex: try #require(o["boc"] as? String))!)
                    let roots = try BagOfCells.parse(boc)
                    #expect(roots.count == 1)
                    let root = roots[0]
                    #expect(Data(root.representationHash).hex == o["hash"] as? String)
                    #expect(root.depth() == o["depth"] as? Int)
                    #expect(root.bitCount == o["bits"] as? Int && root.refs.count == o["refs"] as? Int)
                    let again = try BagOfCells.serialize(roots, crc32c: o["crc"] as? Bool ?? false)
                    #expect(again == boc, "cell \(cells): re-encoded bytes differ")
                    cells += 1
                } else {
                    let raw = try #require(o["raw"] as? String)
                    let address = try TONAddress.parseRaw(raw)
                    #expect(address.raw == raw)
                    #expect(Int(address.workchain) == o["workchain"] as? Int)
                    for f in o["friendly"] as? [[String: Any]] ?? [] {
                        let text = try #require(f["address"] as? String)
                        let bounceable = f["bounceable"] as? Bool ?? true, testnet = f["testnet"] as? Bool ?? false
                        let parsed = try TONAddress.parseFriendly(text)
                        #expect(
                            parsed.address == address && parsed.bounceable == bounceable && parsed.testnet == testnet,
                            "\(text)")
                        #expect(
                            address.friendly(
                                bounceable: bounceable, testnet: testnet, urlSafe: f["url_safe"] as? Bool ?? true)
                                == text)
                        strings += 1
                    }
                    addresses += 1
                }
            }
            #expect(cells == 5000 && addresses == 5000)
            #expect(strings == 40000)
        }
    }
}
