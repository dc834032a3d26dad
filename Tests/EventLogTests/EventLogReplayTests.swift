import AttestationCore
import EventLog
import Foundation
import TestSupport
import Testing

/// Real TCG event logs replay to the PCR values their sources published.
@Suite struct EventLogReplayTests {
    static let cases = (try? SharedTestData.eventLogCases()) ?? []

    @Test func theSharedLogsAreThere() {
        #expect(Self.cases.count >= 5, "expected the shared event logs at \(SharedTestData.root.path)")
    }

    @Test(arguments: cases)
    func replaysToPublishedPCRs(_ c: SharedTestData.EventLogCase) throws {
        let log = try TCGEventLog.parse(SharedTestData.data("eventlog/" + c.log))
        #expect(log.layout == .cryptoAgile)
        let replayed = log.replay()
        for (bankName, values) in c.expect.pcrs {
            let bank = try #require(HashAlgorithm(rawValue: bankName))
            for (index, hex) in values {
                #expect(replayed[bank]?[Int(index)!]?.hex == hex, "\(c.id) \(bankName)[\(index)]")
            }
        }
    }

    /// Every strict prefix of a real log that cuts an event is refused as truncated, never
    /// replayed as if it were whole.
    @Test func truncatedLogsAreRefused() throws {
        let bytes = try SharedTestData.data("eventlog/glinux-alex.bin")
        let full = try TCGEventLog.parse(bytes)
        var refused = 0
        for cut in stride(from: 1, to: bytes.count, by: 97) {
            do {
                let partial = try TCGEventLog.parse(bytes.prefix(cut))
                #expect(partial.events.count < full.events.count)
            } catch {
                refused += 1
            }
        }
        #expect(refused > 0)
    }

    @Test func oversizedEventIsRefused() throws {
        var bytes = try [UInt8](SharedTestData.data("eventlog/glinux-alex.bin"))
        // First event's data size field sits after pcr, type and a 20-byte digest.
        bytes.replaceSubrange(28..<32, with: [0xff, 0xff, 0xff, 0x7f])
        #expect(throws: TCGEventLog.ParseError.self) { try TCGEventLog.parse(Data(bytes)) }
    }

    @Test func startupLocalitySetsTheInitialPCR0() throws {
        let log = try TCGEventLog.parse(SharedTestData.data("eventlog/glinux-alex.bin"))
        let startup = log.events.first {
            $0.eventType == TCGEventLog.evNoAction && $0.data.starts(with: Array("StartupLocality".utf8))
        }
        #expect(startup != nil)
    }
}

/// IMA `ima-ng` lists: template hashes are recomputed, and replay extends each bank.
@Suite struct IMALogTests {
    static let digest = HashAlgorithm.sha256.hash(Data("ccinfer".utf8))

    @Test func entryRoundTripsThroughText() throws {
        let entry = IMALog.Entry(pcr: 10, fileAlgorithm: .sha256, fileDigest: Self.digest, path: "/opt/cc/bin/ccinfer")
        let log = try IMALog.parse(Data(IMALog(entries: [entry]).text.utf8))
        #expect(log.entries.count == 1)
        #expect(log.entries[0].path == "/opt/cc/bin/ccinfer")
        #expect(log.entries[0].fileDigest == Self.digest)
    }

    /// Lines written by Linux kernels (published in public IMA discussions and docs): their
    /// template hashes are SHA-1 over the length-prefixed `ima-ng` fields, recomputed here.
    @Test(arguments: [
        "11 50b5a68bea0776a84eef6725f17ce474756e51c0 ima-ng sha256:15e1efee080fe54f5d7404af7e913de01671e745ce55215d89f3d6521d3884f0 /root/cat",
        "10 bb24b135e1c911c97aad8f1c1863efc08cd44c11 ima-ng sha256:d41dd4adacf5a35df426461dd8a92d7bdd5ba29bb61a1c3531bec0ada386f8dd /usr/lib/x86_64-linux-gnu/libresolv.so.2",
    ])
    func kernelLinesVerify(_ line: String) throws {
        let log = try IMALog.parse(Data(line.utf8))
        #expect(log.entries.count == 1)
        let e = log.entries[0]
        let rebuilt = IMALog.Entry(pcr: e.pcr, fileAlgorithm: .sha256, fileDigest: e.fileDigest, path: e.path)
        #expect(rebuilt.text == line)
    }

    @Test func tamperedPathIsCaughtByTheTemplateHash() throws {
        let entry = IMALog.Entry(pcr: 10, fileAlgorithm: .sha256, fileDigest: Self.digest, path: "/opt/cc/bin/ccinfer")
        let text = entry.text.replacingOccurrences(of: "ccinfer", with: "evilinf")
        #expect(throws: IMALog.ParseError.templateHashMismatch(line: 1)) { try IMALog.parse(Data(text.utf8)) }
    }

    @Test func pathsWithSpacesSurvive() throws {
        let entry = IMALog.Entry(
            pcr: 23, fileAlgorithm: .sha256, fileDigest: Self.digest, path: "/models/my model.gguf")
        let parsed = try IMALog.parse(Data(entry.text.utf8))
        #expect(parsed.entries[0].path == "/models/my model.gguf")
    }

    @Test func replayExtendsEveryBankFromZero() {
        let a = IMALog.Entry(pcr: 10, fileAlgorithm: .sha256, fileDigest: Self.digest, path: "/a")
        let b = IMALog.Entry(pcr: 10, fileAlgorithm: .sha256, fileDigest: Self.digest, path: "/b")
        let log = IMALog(entries: [a, b])
        for bank in [HashAlgorithm.sha1, .sha256, .sha384] {
            var expected = Data(count: bank.digestSize)
            for e in [a, b] { expected = bank.hash(expected + bank.hash(e.templateData)) }
            #expect(log.replay(bank: bank)[10] == expected)
        }
    }

    @Test(arguments: [
        "10 zz ima-ng sha256:00 /x",
        "99 0000000000000000000000000000000000000000 ima-ng sha256:00 /x",
        "10 0000000000000000000000000000000000000000 ima sha256:00 /x",
        "10 0000000000000000000000000000000000000000 ima-ng md5:00 /x",
        "10 0000000000000000000000000000000000000000 ima-ng",
    ])
    func badLinesAreRefused(_ line: String) {
        #expect(throws: IMALog.ParseError.self) { try IMALog.parse(Data(line.utf8)) }
    }
}
