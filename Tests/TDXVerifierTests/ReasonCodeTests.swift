import AttestationCore
import Crypto
import EventLog
import Foundation
import TestSupport
import Testing

@testable import TDXVerifier

/// Each reason code, and each acceptance rule, on a test PKI generated in code: one change to a
/// good world, one expected verdict.
@Suite struct ReasonCodeTests {
    let day = DCAPWorld.day
    let t0 = DCAPWorld.referenceTime

    @Test func goodQuoteIsAccepted() {
        let w = DCAPWorld()
        let v = w.verify(nonce: Data(w.reportData))
        #expect(v.isAccepted, "\(v.reasons)")
        #expect(v.tcbStatus == "UpToDate")
        #expect(v.advisoryIDs == [])
        #expect(v.claims?.fields["mrtd"] == Data(w.mrtd).hex)
        #expect(v.claims?.fields["fmspc"] == "90c06f000000")
        #expect(v.claims?.fields["collateral.source"] == "envelope")
    }

    @Test func revokedPCKIsRejected() {
        var w = DCAPWorld()
        w.revokedPCKSerials = [0x1234, w.pckSerial]
        #expect(w.verify().reason == .chainRevoked)
    }

    @Test func revokedIntermediateIsRejected() {
        var w = DCAPWorld()
        w.revokedCASerials = [w.platformCA.serial]
        #expect(w.verify().reason == .chainRevoked)
    }

    @Test func revokedTCBSignerIsRejected() {
        var w = DCAPWorld()
        w.revokedCASerials = [w.tcbSigner.serial]
        #expect(w.verify().reason == .chainRevoked)
    }

    @Test func expiredCollateralIsRejected() {
        let w = DCAPWorld()
        let v = w.verify(at: w.collateralNext + 1)
        #expect(v.reason == .collateralExpired, "\(v.reasons)")
    }

    @Test func notYetValidCollateralIsRejected() {
        let w = DCAPWorld()
        #expect(w.verify(at: w.collateralIssued - 1).reason == .collateralExpired)
    }

    @Test func collateralGracePeriodCoversExpiredCollateral() {
        let w = DCAPWorld()
        let late = w.collateralNext + 2 * day
        #expect(w.verify(at: late) { $0.collateralGracePeriod = 3 * day }.isAccepted)
        #expect(w.verify(at: late) { $0.collateralGracePeriod = 1 * day }.reason == .collateralExpired)
    }

    @Test func badTCBInfoSignatureIsRejected() {
        let w = DCAPWorld()
        let good = w.tcbInfoText
        let forged = good.replacingOccurrences(of: #""tcbStatus":"OutOfDate""#, with: #""tcbStatus":"UpToDate""#)
        #expect(forged != good)
        let v = w.verify(w.envelope(collateral: w.collateral(tcbInfo: forged, tcbSignatureOver: good)))
        #expect(v.reason == .collateralSignatureInvalid, "\(v.reasons)")
    }

    @Test func collateralSignedByAnotherKeyIsRejected() {
        var w = DCAPWorld()
        let good = w.collateral()
        w.tcbSigner = TestCA(name: "Intel SGX TCB Signing", issuer: w.root, isCA: false)
        var mixed = w.collateral()
        mixed.tcbInfoIssuerChain = good.tcbInfoIssuerChain
        #expect(w.verify(w.envelope(collateral: mixed)).reason == .collateralSignatureInvalid)
    }

    @Test func pckCRLSignedByAnotherKeyIsRejected() {
        var w = DCAPWorld()
        let original = w.platformCA
        w.platformCA = TestCA(name: original.name, issuer: w.root)
        var c = w.collateral()
        w.platformCA = original
        c.pckCRLIssuerChain = w.collateral().pckCRLIssuerChain
        #expect(w.verify(w.envelope(collateral: c)).reason == .collateralSignatureInvalid)
    }

    @Test func qeIdentityMismatchIsRejected() {
        var w = DCAPWorld()
        w.qeMRSigner = [UInt8](repeating: 0xAA, count: 32)
        #expect(w.verify().reason == .qeIdentityMismatch)
    }

    @Test func fmspcMismatchIsRejected() {
        var w = DCAPWorld()
        w.tcbInfoFMSPC = [0x00, 0x60, 0x6A, 0x00, 0x00, 0x00]
        #expect(w.verify().reason == .collateralMismatch)
    }

    @Test func untrustedRootIsRejected() {
        let w = DCAPWorld()
        // A look-alike: same name, another key. Names prove nothing.
        let impostor = TestCA(name: "Intel SGX Root CA")
        let v = w.verify { $0.pinnedRootFingerprints = [impostor.fingerprint] }
        #expect(v.reason == .chainUntrustedRoot)
    }

    @Test func expiredPCKCertificateIsRejected() {
        var w = DCAPWorld()
        w.pckValidity = (t0 - 400 * day, t0 - day)
        #expect(w.verify().reason == .chainInvalid)
    }

    @Test func noMatchingLevelIsRejected() {
        var w = DCAPWorld()
        w.cpuSVN[0] = 1
        let v = w.verify()
        #expect(v.reason == .tcbNoMatchingLevel, "\(v.reasons)")
        #expect(v.tcbStatus == nil)
    }

    @Test func outOfDatePlatformIsNotAllowedByDefault() {
        var w = DCAPWorld()
        w.cpuSVN = [2, 2, 2, 2, 3, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0]
        w.pceSVN = 11
        let v = w.verify()
        #expect(v.reason == .tcbStatusNotAllowed)
        #expect(v.tcbStatus == "OutOfDate")
        #expect(v.advisoryIDs == ["INTEL-SA-00837", "INTEL-SA-00960"])
        #expect(w.verify { $0.acceptedStatuses.insert("OutOfDate") }.isAccepted)
    }

    @Test func platformGracePeriodInsideAndOutside() {
        var w = DCAPWorld()
        w.teeTCBSVN = [3, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        // The OutOfDate level's tcbDate is 2024-03-13; the reference time is 2026-05-28 (806 days on).
        let inside = w.verify { $0.platformGracePeriod = 900 * day }
        #expect(inside.isAccepted, "\(inside.reasons)")
        #expect(inside.tcbStatus == "OutOfDate")
        let outside = w.verify { $0.platformGracePeriod = 700 * day }
        #expect(outside.reason == .tcbStatusNotAllowed)
        #expect(outside.reasons.first?.message.contains("grace") == true)
    }

    @Test func debugGuestIsRejectedUnlessAllowed() {
        var w = DCAPWorld()
        w.tdAttributes[0] |= 0x01
        #expect(w.verify().reason == .policyDebugNotAllowed)
        let allowed = w.verify { $0.allowDebug = true }
        #expect(allowed.isAccepted)
        #expect(allowed.claims?.fields["debug"] == "true")
    }

    @Test func rejectedAdvisoryIsRejected() {
        var w = DCAPWorld()
        w.teeTCBSVN = [3, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        let v = w.verify {
            $0.acceptedStatuses.insert("OutOfDate")
            $0.rejectedAdvisoryIDs = ["INTEL-SA-00960"]
        }
        #expect(v.reason == .tcbStatusNotAllowed)
        #expect(v.reasons.first?.message.contains("INTEL-SA-00960") == true)
    }

    @Test func outOfDateQuotingEnclaveConverges() {
        var w = DCAPWorld()
        w.qeISVSVN = 3
        let v = w.verify()
        #expect(v.tcbStatus == "OutOfDate")
        #expect(v.advisoryIDs == ["INTEL-SA-00615"])
        w.qeISVSVN = 1
        #expect(w.verify().reason == .tcbNoMatchingLevel)
    }

    @Test func tdxModuleIdentityLevelsJudgeTheModule() {
        var w = DCAPWorld()
        w.teeTCBSVN = [2, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        let zeros = String(repeating: "0", count: 96)
        w.moduleIdentities =
            #"[{"id":"TDX_03","mrsigner":"\#(zeros)","attributes":"0000000000000000","attributesMask":"FFFFFFFFFFFFFFFF","tcbLevels":[{"tcb":{"isvsvn":4},"tcbDate":"2025-11-12T00:00:00Z","tcbStatus":"UpToDate"},{"tcb":{"isvsvn":1},"tcbDate":"2024-03-13T00:00:00Z","tcbStatus":"OutOfDate","advisoryIDs":["INTEL-SA-01036"]}]}]"#
        let v = w.verify()
        #expect(v.tcbStatus == "OutOfDate", "\(v.reasons) \(v.passedChecks)")
        #expect(v.advisoryIDs == ["INTEL-SA-01036"])
        w.teeTCBSVN[0] = 4
        #expect(w.verify().isAccepted)
        w.teeTCBSVN[1] = 5
        #expect(w.verify().reason == .tcbNoMatchingLevel)
    }

    @Test func tdRelaunchIsAdvisedWhenTheRunningModuleIsCurrent() {
        var w = DCAPWorld()
        w.teeTCBSVN = [3, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        w.teeTCBSVN2 = [5, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        let v = w.verify(w.envelope(quote: w.quote(version: 5), collateral: w.collateral()))
        #expect(v.tcbStatus == "TDRelaunchAdvised", "\(v.reasons)")
        #expect(v.reason == .tcbStatusNotAllowed)
        let accepted = w.verifier { $0.acceptedStatuses.insert("TDRelaunchAdvised") }
            .verify(
                envelopeData: w.envelope(quote: w.quote(version: 5), collateral: w.collateral()), expectedNonce: nil,
                at: t0)
        #expect(accepted.isAccepted)
        #expect(accepted.claims?.fields["tee_tcb_svn2"] == Data(w.teeTCBSVN2!).hex)
    }

    @Test func qeReportSignedByAnotherKeyIsRejected() {
        let w = DCAPWorld()
        let v = w.verify(w.envelope(quote: w.quote(signQERWith: P256.Signing.PrivateKey()), collateral: w.collateral()))
        #expect(v.reason == .qeReportSignatureInvalid)
    }

    @Test func qeAuthDataNotBoundIsRejected() {
        let w = DCAPWorld()
        var q = w.quote()
        // The QE authentication data sits after the QE report and its signature; change one byte.
        let authOffset = 48 + 584 + 4 + 64 + 64 + 6 + 384 + 64 + 2
        q[authOffset] ^= 0x01
        #expect(w.verify(w.envelope(quote: q, collateral: w.collateral())).reason == .qeReportBindingMismatch)
    }

    @Test func alteredMeasurementBreaksTheQuoteSignature() {
        let w = DCAPWorld()
        var q = w.quote()
        q[48 + 136] ^= 0x80  // MRTD
        #expect(w.verify(w.envelope(quote: q, collateral: w.collateral())).reason == .quoteSignatureInvalid)
    }

    @Test func wrongNonceIsRejected() {
        let w = DCAPWorld()
        var nonce = w.reportData
        nonce[63] ^= 1
        #expect(w.verify(nonce: Data(nonce)).reason == .nonceMismatch)
        // A 32-byte binding is REPORTDATA's first half, the rest zero.
        var short = DCAPWorld()
        short.reportData = [UInt8](repeating: 0x42, count: 32) + [UInt8](repeating: 0, count: 32)
        #expect(short.verify(nonce: Data(repeating: 0x42, count: 32)).isAccepted)
        #expect(w.verify(nonce: Data(repeating: 0x77, count: 32)).reason == .nonceMismatch)
    }

    @Test func missingCollateralIsRejected() {
        let w = DCAPWorld()
        #expect(w.verify(w.envelope(collateral: nil)).reason == .collateralMissing)
    }

    @Test func truncatedAndPaddedQuotes() {
        let w = DCAPWorld()
        let q = w.quote()
        for cut in [0, 10, 47, 48, 600, q.count - 1] {
            #expect(
                w.verify(w.envelope(quote: Array(q.prefix(cut)), collateral: w.collateral())).reason
                    == .evidenceMalformed)
        }
        // Trailing padding after the signature data is kept, not fatal.
        #expect(
            w.verify(w.envelope(quote: q + [UInt8](repeating: 0, count: 39), collateral: w.collateral())).isAccepted)
    }

    @Test func quoteV5WithTD10BodyIsAccepted() {
        let w = DCAPWorld()
        let v = w.verify(w.envelope(quote: w.quote(version: 5), collateral: w.collateral()))
        #expect(v.isAccepted, "\(v.reasons)")
        #expect(v.claims?.fields["quote_version"] == "5")
    }
}

/// Attacks on the collateral itself: a signer that is not Intel's TCB signer, rollback to older
/// collateral, and hostile sizes.
@Suite struct CollateralAttackTests {
    struct Held: CollateralSource {
        let held: Collateral
        var mode: String { "cache" }
        func collateral(for key: CollateralKey, at time: Date) -> Collateral? { held }
    }

    /// Threat: any platform's PCK key chains to Intel's root; it must not be able to sign TCB info.
    @Test func collateralSignedByAPCKKeyIsRejected() {
        let w = DCAPWorld()
        var c = w.collateral()
        c.tcbInfoIssuerChain = w.pckChainPEM
        c.tcbInfoSignature = [UInt8](
            try! w.pckKey.signature(for: SHA256.hash(data: Array(c.tcbInfo.utf8))).rawRepresentation)
        let v = w.verify(w.envelope(collateral: c))
        #expect(v.reason == .chainInvalid, "\(v.reasons)")
    }

    @Test func collateralSignedByAnIntermediateIsRejected() {
        let w = DCAPWorld()
        var c = w.collateral()
        c.qeIdentityIssuerChain = PEM.encode([w.platformCA.certificate, w.root.certificate])
        c.qeIdentitySignature = w.platformCA.signRaw(Array(c.qeIdentity.utf8))
        #expect(w.verify(w.envelope(collateral: c)).reason == .chainInvalid)
    }

    /// Threat: a worker replaying collateral from before a TCB recovery.
    @Test func olderCollateralThanTheVerifierHoldsIsRejected() {
        var w = DCAPWorld()
        w.evaluationNumber = 19
        let newer = w.collateral()
        w.evaluationNumber = 18
        let older = w.envelope(collateral: w.collateral())
        var options = TDXQuoteVerifier.Options(pinnedRootFingerprints: [w.root.fingerprint])
        let withCache = TDXQuoteVerifier(options: options, collateralSource: Held(held: newer))
        #expect(
            withCache.verify(envelopeData: older, expectedNonce: nil, at: DCAPWorld.referenceTime).reason
                == .collateralExpired)
        // The same envelope with collateral at least as new as the cache's is fine.
        w.evaluationNumber = 19
        #expect(
            withCache.verify(
                envelopeData: w.envelope(collateral: newer), expectedNonce: nil, at: DCAPWorld.referenceTime
            ).isAccepted)
        options.minimumTCBEvaluationDataNumber = 20
        #expect(
            TDXQuoteVerifier(options: options).verify(
                envelopeData: older, expectedNonce: nil, at: DCAPWorld.referenceTime
            ).reason == .collateralExpired)
    }

    @Test func relaunchIsNotAdvisedWhenTheQuotingEnclaveIsOutOfDate() {
        var w = DCAPWorld()
        w.teeTCBSVN = [3, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        w.teeTCBSVN2 = [5, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        w.qeISVSVN = 3
        let v = w.verify(w.envelope(quote: w.quote(version: 5), collateral: w.collateral())) {
            $0.acceptedStatuses.insert("TDRelaunchAdvised")
        }
        #expect(v.tcbStatus == "OutOfDate")
        #expect(v.reason == .tcbStatusNotAllowed)
    }

    @Test func chainWithTooManyCertificatesIsRefusedBeforeDecoding() {
        let w = DCAPWorld()
        var c = w.collateral()
        c.tcbInfoIssuerChain =
            String(repeating: PEM.encode([w.tcbSigner.certificate]), count: 6) + PEM.encode([w.root.certificate])
        #expect(w.verify(w.envelope(collateral: c)).reason == .evidenceMalformed)
    }

    @Test func verifiedSplitRefusesUnsignedAndFutureItems() {
        var w = DCAPWorld()
        var forged = w.collateral()
        forged.tcbInfoSignature[5] ^= 1
        guard
            case .failure(let r) = CollateralItem.verifiedSplit(
                forged, roots: [w.root.fingerprint], at: DCAPWorld.referenceTime)
        else {
            Issue.record("a forged TCB info was accepted for the cache")
            return
        }
        #expect(r.code == .collateralSignatureInvalid)
        w.collateralIssued = DCAPWorld.referenceTime + 30 * DCAPWorld.day
        w.collateralNext = DCAPWorld.referenceTime + 60 * DCAPWorld.day
        guard
            case .failure(let f) = CollateralItem.verifiedSplit(
                w.collateral(), roots: [w.root.fingerprint], at: DCAPWorld.referenceTime)
        else {
            Issue.record("collateral issued in the future was accepted for the cache")
            return
        }
        #expect(f.code == .collateralExpired)
        #expect(
            (try? CollateralItem.verifiedSplit(
                DCAPWorld().collateral(), roots: [w.root.fingerprint], at: DCAPWorld.referenceTime
            ).get()) == nil)
    }
}
