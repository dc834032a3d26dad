import AttestationCore
import Foundation
import NVGPUVerifier
import TestSupport
import Testing

/// Hostile reports and manifests: every one gets a reason code, none crashes.
@Suite struct NVGPUHostileInputTests {
    let verifier = NVGPUReportVerifier()

    /// Mutations of the real report (flipped bits, changed length fields, cuts, insertions), each
    /// verified whole: every verdict is a reject with a documented reason code.
    @Test func aThousandMutatedReportsEachGetAReasonCode() throws {
        let evidence = try NVIDIAVectors.current()
        let original = evidence.report
        var random = SeededRandom(seed: 0x6e76_6770_7521)
        var seen = [ReasonCode: Int]()
        // The header and length fields a parser trusts most.
        let fields = [0, 1, 2, 3, 36, 37, 38, 41, 42, 43, 44, 45, 46, 47, 48, 3597, 3598, 3599, 3600, 3601, 3602]
        for round in 0..<1_200 {
            var report = original
            switch round % 5 {
            case 0:
                report[Int.random(in: 0..<report.count, using: &random)] ^= UInt8(
                    1 << Int.random(in: 0..<8, using: &random))
            case 1:
                report[fields[Int.random(in: 0..<fields.count, using: &random)]] = UInt8.random(
                    in: 0...255, using: &random)
            case 2: report = Array(report.prefix(Int.random(in: 0..<report.count, using: &random)))
            case 3:
                let at = Int.random(in: 0...report.count, using: &random)
                report.insert(
                    contentsOf: (0..<Int.random(in: 1...64, using: &random)).map { _ in
                        UInt8.random(in: 0...255, using: &random)
                    }, at: at)
            default:
                for _ in 0..<8 {
                    report[Int.random(in: 0..<report.count, using: &random)] = UInt8.random(in: 0...255, using: &random)
                }
            }
            guard report != original else { continue }
            var mutated = evidence
            mutated.report = report
            let verdict = verifier.verify(mutated, expectedNonce: NVIDIAVectors.currentNonce, at: Date())
            #expect(!verdict.isAccepted, "round \(round)")
            let code = try #require(verdict.reason, "round \(round)")
            #expect(ReasonCode.all.contains(code), "round \(round): \(code)")
            seen[code, default: 0] += 1
        }
        #expect(seen.values.reduce(0, +) >= 1_000)
        #expect(seen[.evidenceMalformed, default: 0] > 0 && seen[.gpuSignatureInvalid, default: 0] > 0, "\(seen)")
    }

    /// Manifests that are not what they seem: not XML, a document type (entity expansion), a
    /// second signature (wrapping), a signature moved out of the root, cut text.
    @Test func hostileManifestsAreMalformedOrUnsigned() throws {
        let genuine = String(decoding: try NVIDIAVectors.shared("Driver_RIM_test_no_gpu.swidtag"), as: UTF8.self)
        let signature = try #require(genuine.range(of: "<ds:Signature"))
        let end = try #require(genuine.range(of: "</ds:Signature>"))
        let signatureText = String(genuine[signature.lowerBound..<end.upperBound])
        let cases: [(String, String)] = [
            ("not XML", "GH100 545.00"),
            ("a document type", #"<!DOCTYPE x [<!ENTITY a "aaaa">]>"# + genuine),
            (
                "two signatures",
                genuine.replacingOccurrences(of: "</ds:Signature>", with: "</ds:Signature>" + signatureText)
            ),
            ("cut", String(genuine.prefix(genuine.count / 2))),
            (
                "signature moved into Payload",
                genuine.replacingOccurrences(of: signatureText, with: "").replacingOccurrences(
                    of: "</ns0:Payload>", with: signatureText + "</ns0:Payload>")
            ),
            (
                "a supplemental tag",
                genuine.replacingOccurrences(of: #"supplemental="false""#, with: #"supplemental="true""#)
            ),
            ("empty", ""),
        ]
        for (name, text) in cases {
            #expect(throws: Reason.self, "\(name)") {
                try ReferenceManifest.verified(Array(text.utf8), at: NVIDIAVectors.manifestTime)
            }
            do {
                _ = try ReferenceManifest.verified(Array(text.utf8), at: NVIDIAVectors.manifestTime)
            } catch {
                #expect(error.code == .evidenceMalformed, "\(name): \(error)")
            }
        }
        // Under a root that is not NVIDIA's RIM root, the genuine manifest is refused.
        var options = NVGPUReportVerifier.Options()
        options.rimRootPEM = NVIDIARoots.deviceIdentityCAPEM
        options.rimRoots = [NVIDIARoots.deviceIdentityCA]
        do {
            _ = try ReferenceManifest.verified(Array(genuine.utf8), at: NVIDIAVectors.manifestTime, options: options)
            Issue.record("a manifest verified under the wrong root")
        } catch {
            #expect(error.code == .chainUntrustedRoot, "\(error)")
        }
    }

    /// The compiled roots are the files in `certs/nvidia/`, with the fingerprints pinned; the C
    /// target's xmlsec defines are what pkg-config says of the installed library.
    @Test func pinnedRootsAndXMLSecBuildSettingsMatchTheirSources() async throws {
        let certs = SharedTestData.packageRoot.appendingPathComponent("certs/nvidia")
        for (file, pem, fingerprint) in [
            ("nvidia-device-identity-ca.pem", NVIDIARoots.deviceIdentityCAPEM, NVIDIARoots.deviceIdentityCA),
            ("nvidia-corim-signing-root-ca.pem", NVIDIARoots.rimSigningRootCAPEM, NVIDIARoots.rimSigningRootCA),
        ] {
            let text = try String(contentsOf: certs.appendingPathComponent(file), encoding: .utf8)
            #expect(text.trimmingCharacters(in: .whitespacesAndNewlines) == pem, "\(file)")
            let der = try #require(PEMBlock.first(in: pem, label: "CERTIFICATE"))
            #expect(HashAlgorithm.sha256.hash(der).hex == fingerprint, "\(file)")
        }
        let flags = try await ProcessRunner.run("pkg-config", ["--cflags", "xmlsec1-openssl"])
        #expect(flags.status == 0, "\(flags.stderr)")
        let defines = Set(
            flags.stdout.split(separator: " ").filter { $0.hasPrefix("-D") }.map { String($0.dropFirst(2)) })
        let manifest = try String(
            contentsOf: SharedTestData.packageRoot.appendingPathComponent("Package.swift"), encoding: .utf8)
        for define in defines {
            let parts = define.split(separator: "=", maxSplits: 1).map(String.init)
            let spelled = parts.count == 2 ? #"("\#(parts[0])", "\#(parts[1])")"# : #"("\#(parts[0])", nil)"#
            #expect(manifest.contains(spelled), "Package.swift's xmlsecDefines lacks \(define)")
        }
        #expect(!defines.isEmpty)
    }
}
