import AttestationCore
import EventLog
import Foundation
import TestSupport
import Testing

@testable import TDXVerifier

/// CCEL replay to RTMR0–3 and the RTMR3 application log, on quotes whose RTMRs the fixtures set
/// from the same events.
@Suite struct CCELTests {
    static let firmware: [(UInt32, Data)] = [
        (1, Data("td-hob".utf8)), (2, Data("kernel".utf8)), (3, Data("initrd".utf8)), (1, Data("acpi".utf8)),
    ]

    /// A log with firmware events and the engine and model measured into RTMR3, and the RTMRs it replays to.
    static func log(engine: Data = Data(repeating: 0xE1, count: 32), model: Data = Data(repeating: 0xB1, count: 32))
        -> (Data, [[UInt8]])
    {
        var log = CCELEncoder.header()
        var rtmrs = [Data](repeating: Data(count: 48), count: 4)
        for (mr, text) in firmware {
            let digest = HashAlgorithm.sha384.hash(text)
            log += CCELEncoder.event(mrIndex: mr, type: 0x8000_0001, digest: digest, data: text)
            rtmrs[Int(mr) - 1] = HashAlgorithm.sha384.extend(rtmrs[Int(mr) - 1], with: digest)
        }
        for (path, digest) in [("/opt/ccgate/ccinfer", engine), ("/models/smollm2.gguf", model)] {
            log += CCELEncoder.applicationEvent(path: path, sha256: digest)
            rtmrs[3] = HashAlgorithm.sha384.extend(
                rtmrs[3], with: CCEL.applicationEvent(path: path, sha256: digest).digest)
        }
        return (log, rtmrs.map { [UInt8]($0) })
    }

    @Test func logReplaysToTheQuotedRTMRsAndReportsTheEngineAndModel() throws {
        var w = DCAPWorld()
        let (log, rtmrs) = Self.log()
        w.rtmrs = rtmrs
        let v = w.verify(w.envelope(collateral: w.collateral(), eventLog: log))
        #expect(v.isAccepted, "\(v.reasons)")
        let files = try #require(v.claims?.measuredFiles)
        #expect(files.map(\.path) == ["/opt/ccgate/ccinfer", "/models/smollm2.gguf"])
        #expect(files[0].digestHex == Data(repeating: 0xE1, count: 32).hex)
        #expect(files.allSatisfy { $0.pcr == 3 })
    }

    @Test func logThatDoesNotReplayIsRejected() {
        var w = DCAPWorld()
        let (_, rtmrs) = Self.log()
        w.rtmrs = rtmrs
        // The log claims another model than the one measured into RTMR3.
        let (lying, _) = Self.log(model: Data(repeating: 0xB2, count: 32))
        #expect(w.verify(w.envelope(collateral: w.collateral(), eventLog: lying)).reason == .eventLogReplayMismatch)
    }

    @Test func applicationEventWhoseDigestIsNotItsDataIsRejected() {
        var log = CCELEncoder.header()
        let honest = CCEL.applicationEvent(path: "/opt/ccgate/ccinfer", sha256: Data(repeating: 1, count: 32))
        let shown = CCEL.applicationEvent(path: "/opt/ccgate/ccinfer", sha256: Data(repeating: 2, count: 32))
        log += CCELEncoder.event(
            mrIndex: 4, type: CCEL.applicationEventType, digest: honest.digest, data: shown.data)
        guard case .failure(let r) = CCELReplay.replay(log) else {
            Issue.record("a digest that is not SHA-384 of the data was accepted")
            return
        }
        #expect(r.code == .eventLogReplayMismatch)
    }

    @Test func garbageLogIsMalformed() {
        let w = DCAPWorld()
        for junk in [Data(), Data([1, 2, 3]), CCELEncoder.header().prefix(30)] {
            #expect(w.verify(w.envelope(collateral: w.collateral(), eventLog: Data(junk))).reason == .evidenceMalformed)
        }
    }
}

extension CCELTests {
    /// Application measurements count only in RTMR3: the same event in RTMR2 is extended but not reported.
    @Test func applicationEventsOutsideRTMR3AreNotMeasurements() throws {
        var log = CCELEncoder.header()
        let e = CCEL.applicationEvent(path: "/opt/ccgate/ccinfer", sha256: Data(repeating: 1, count: 32))
        log += CCELEncoder.event(mrIndex: 3, type: CCEL.applicationEventType, digest: e.digest, data: e.data)
        let summary = try CCELReplay.replay(log).get()
        #expect(summary.measuredFiles.isEmpty)
        #expect(summary.rtmrs[2] != [UInt8](repeating: 0, count: 48))
    }

    @Test func paddingAfterTheLastEventIsTrimmed() throws {
        let (log, _) = Self.log()
        for pad in [Data(count: 4096), Data(repeating: 0xFF, count: 4096)] {
            #expect(CCEL.trimmed(log + pad) == log)
            #expect(try CCELReplay.replay(log + pad).get().measuredFiles.count == 2)
        }
    }
}
