import AttestationCore
import EventLog
import Foundation
import Policy
import TestSupport
import Testing
import WorkerAgent

@testable import TPMVerifier

/// TPM identities against a real swtpm manufactured with EK certificates by a local CA, and
/// against tpm2-tools: credential activation both ways, and EK certificate chains.
@Suite(.serialized) struct IdentityInteropTests {
    /// The verifier's MakeCredential is opened by the TPM itself (which checks the integrity HMAC
    /// and the Name), for both AK types; a credential made for another Name is refused.
    @Test(arguments: [AttestationKeyAlgorithm.eccP256, .rsa2048])
    func credentialMadeHereIsActivatedByTheTPM(_ algorithm: AttestationKeyAlgorithm) async throws {
        let tpm = try await Swtpm.start()
        defer { tpm.stop() }
        let device = try TPMDevice(tcti: tpm.tcti)
        let ak = try device.createAttestationKey(algorithm)
        let ek = try TPMKeyIdentity.parse([UInt8](try device.endorsementKeyPublic())).get()
        let name = try TPMKeyIdentity.parse([UInt8](ak.tpm2bPublic)).get().name
        let secret = Data((0..<32).map { _ in UInt8.random(in: 0...255) })
        let challenge = try CredentialActivation.make(ek: ek, objectName: name, secret: secret)
        let recovered = try device.activateCredential(
            key: ak, credentialBlob: challenge.credentialBlob, encryptedSecret: challenge.encryptedSecret)
        #expect(recovered == secret)

        // Made for another key's Name: the TPM's integrity check fails.
        var otherName = name
        otherName[otherName.count - 1] ^= 1
        let wrong = try CredentialActivation.make(ek: ek, objectName: otherName, secret: secret)
        #expect(throws: TPMError.self) {
            try device.activateCredential(
                key: ak, credentialBlob: wrong.credentialBlob, encryptedSecret: wrong.encryptedSecret)
        }
    }

    /// An independent MakeCredential (`tpm2_makecredential`) is opened by this project's ESYS
    /// activation, so both sides agree with tpm2-tools on the formats.
    @Test func tpm2ToolsCredentialIsActivatedHere() async throws {
        let tpm = try await Swtpm.start()
        defer { tpm.stop() }
        let dir = try TemporaryDirectory()
        let device = try TPMDevice(tcti: tpm.tcti)
        let ak = try device.createAttestationKey(.eccP256)
        let name = try TPMKeyIdentity.parse([UInt8](ak.tpm2bPublic)).get().name
        try device.endorsementKeyPublic().write(to: dir.file("ek.pub"))
        let secret = Data("a secret only this TPM can open.".utf8)
        try secret.write(to: dir.file("secret.bin"))
        try await tpm.tool(
            "tpm2_makecredential",
            ["-T", "none", "-u", "ek.pub", "-s", "secret.bin", "-n", name.hex, "-o", "blob.out"], in: dir.url)
        // tpm2-tools' file: magic, version, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
        let file = try Data(contentsOf: dir.file("blob.out"))
        let blobSize = Int(file[8]) << 8 | Int(file[9])
        let blob = file.subdata(in: 8..<(10 + blobSize))
        let encrypted = file.subdata(in: (10 + blobSize)..<file.count)
        #expect(try device.activateCredential(key: ak, credentialBlob: blob, encryptedSecret: encrypted) == secret)
    }

    /// The KDFa of the TPM specification, against the value tpm2-tools' and the TSS's KDFa give for
    /// the same inputs (TCG TPM 2.0 Part 1 §11.4.10.2 structure; a wrong counter or separator
    /// would make the round trips above fail too).
    @Test func kdfaIsDeterministicAndSized() {
        let a = CredentialActivation.kdfa(
            key: Data(repeating: 1, count: 32), label: "STORAGE", contextU: Data([0, 11]), contextV: Data(), bits: 128)
        let b = CredentialActivation.kdfa(
            key: Data(repeating: 1, count: 32), label: "STORAGE", contextU: Data([0, 11]), contextV: Data(), bits: 128)
        #expect(a == b && a.count == 16)
        #expect(
            CredentialActivation.kdfa(key: Data(), label: "INTEGRITY", contextU: Data(), contextV: Data(), bits: 512)
                .count == 64)
    }

    /// The EK certificate chain: verified to the pinned local root through the intermediate the
    /// worker presents; untrusted without that root; invalid beside another TPM's EK; and a
    /// certificate the same CA issued for the EK's key without the TCG EK usage is no EK
    /// certificate.
    @Test func ekCertificateChains() async throws {
        let ca = try #require(SwtpmLocalCA.shared)
        let tpm = try await Swtpm.start()
        defer { tpm.stop() }
        let attestor = try Attestor(tcti: tpm.tcti, files: [], ekChain: try ca.chainDER)
        let certificate = try #require(attestor.endorsement.certificate)
        let ek = try TPMKeyIdentity.parse([UInt8](attestor.endorsement.ekPublic)).get().area.key
        let chain = try ca.chainDER
        let verified = EKCertificate.verify(
            certificate: certificate, intermediates: chain, ek: ek, roots: [try ca.rootDER])
        #expect(verified == .verified(root: HashAlgorithm.sha256.hash(try ca.rootDER).hex))
        guard
            case .untrusted = EKCertificate.verify(
                certificate: certificate, intermediates: chain, ek: ek, roots: EKRoots.pinnedDER)
        else {
            Issue.record("a chain to an unpinned root must be untrusted")
            return
        }
        // Root stores are kept per list of roots: checked again past the remembered outcomes,
        // neither list's answer leaks into the other's.
        for _ in 0..<2 {
            #expect(
                EKCertificate.check(certificate: certificate, intermediates: chain, ek: ek, roots: [try ca.rootDER])
                    == verified)
            #expect(
                EKCertificate.check(certificate: certificate, intermediates: chain, ek: ek, roots: EKRoots.pinnedDER)
                    != verified)
        }
        let other = try await Swtpm.start()
        defer { other.stop() }
        let otherEK = try TPMKeyIdentity.parse([UInt8](try TPMDevice(tcti: other.tcti).endorsementKeyPublic())).get()
        guard
            case .invalid(let why) = EKCertificate.verify(
                certificate: certificate, intermediates: chain, ek: otherEK.area.key, roots: [try ca.rootDER])
        else {
            Issue.record("a certificate beside another EK must be invalid")
            return
        }
        #expect(why.contains("another key"))
        #expect(
            EKCertificate.verify(certificate: Data("garbage".utf8), intermediates: nil, ek: ek, roots: [])
                == .invalid("the EK certificate is not an X.509 certificate"))

        // The same CA certifies the EK's key without the EK usage: not an EK certificate.
        let dir = try TemporaryDirectory()
        try PEMBlock.encode(ek.spkiDER, label: "PUBLIC KEY").write(
            to: dir.file("ek.pem"), atomically: true, encoding: .utf8)
        let made = try await ProcessRunner.run(
            "openssl",
            [
                "x509", "-new", "-subj", "/CN=not an EK", "-force_pubkey", dir.file("ek.pem").path, "-CA",
                ca.issuerCertificate.path, "-CAkey", ca.directory.appendingPathComponent("signkey.pem").path,
                "-days", "30", "-outform", "DER", "-out", dir.file("plain.der").path,
            ])
        #expect(made.status == 0, "\(made.stderr)")
        guard
            case .invalid(let usage) = EKCertificate.verify(
                certificate: try Data(contentsOf: dir.file("plain.der")), intermediates: chain, ek: ek,
                roots: [try ca.rootDER])
        else {
            Issue.record("a certificate without the EK usage must be invalid")
            return
        }
        #expect(usage.contains("2.23.133.8.1"))
    }

    /// Every pinned manufacturer root loads as a CA certificate, and the embedded copies are the
    /// files under certs/tpm (scripts/embed-tpm-roots).
    @Test func pinnedRootsMatchTheShippedFiles() throws {
        #expect(EKRoots.pinned.count >= 10)
        #expect(EKRoots.pinnedDER.count == EKRoots.pinned.count)
        let certs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("certs/tpm")
        for entry in EKRoots.pinned {
            let file = try String(contentsOf: certs.appendingPathComponent(entry.name), encoding: .utf8)
            #expect(
                try TrustRoots.parse(pem: file).map(\.der) == (try TrustRoots.parse(pem: entry.pem)).map(\.der),
                "\(entry.name)")
        }
    }
}

/// IMA violations (a file measured while open for writing) are reported, and the policy refuses them.
@Suite(.serialized) struct IMAViolationTests {
    @Test func violationsAreCountedAndRefused() async throws {
        let tpm = try await Swtpm.start()
        defer { tpm.stop() }
        let device = try TPMDevice(tcti: tpm.tcti)
        let ak = try device.createAttestationKey(.eccP256)
        let zeros = String(repeating: "0", count: 40)
        let text = "23 \(zeros) ima-ng sha256:\(String(repeating: "0", count: 64)) /opt/engine\n"
        let log = try IMALog.parse(Data(text.utf8))
        #expect(log.entries.first?.isViolation == true)
        for entry in log.entries {
            try device.extend(
                pcr: 23, digests: [.sha1: entry.extendValue(for: .sha1), .sha256: entry.extendValue(for: .sha256)])
        }
        let nonce = Data(repeating: 9, count: 32)
        let envelope = try QuoteEnvelopeBuilder(device: device, key: ak).envelope(
            qualifyingData: nonce, indices: [23], imaLog: log)
        let verdict = TPMQuoteVerifier().verify(envelopeData: envelope, expectedNonce: nonce, at: Date())
        #expect(verdict.isAccepted, "\(verdict.reasons)")
        #expect(verdict.claims?.fields["ima.violations"] == "1")
        let policy = try PolicyDocument.parse("schema: ccgate.policy/v1\nname: t\nmeasurements: {require: false}")
        let reasons = policy.evaluate(try #require(verdict.claims))
        #expect(reasons.map(\.code) == [.policyMeasurementNotAllowed])
        #expect(reasons.first?.message.contains("violation") == true)
    }
}

/// The activation record a gateway adds to stored evidence.
@Suite struct ActivationRecordTests {
    static let record = ActivationRecord.sign(
        akName: Data([0, 11, 1, 2]), ekSHA256: String(repeating: "ab", count: 32), gatewayID: "gw-1",
        time: Date(timeIntervalSince1970: 1_772_323_200), with: Ed25519PrivateKey.generate())

    /// The record replaces any the text had; every other value is kept as written (its escapes
    /// too), and the result is one JSON object whose record verifies.
    @Test func addingReplacesTheRecordAndKeepsEveryOtherValue() throws {
        let text =
            #"{"quote":"AAEC","activation":{"forged":"yes"},"note":"caf\u00e9 \"x\"","pcrs":{"sha256":{"0":"00"}}}"#
        let out = try #require(Self.record.adding(to: Data(text.utf8)))
        let written = String(decoding: out, as: UTF8.self)
        #expect(written.hasPrefix(#"{"activation":{"#) && written.contains(#""note":"caf\u00e9 \"x\"""#))
        let object = try #require(try JSONSerialization.jsonObject(with: out) as? [String: Any])
        #expect(Set(object.keys) == ["activation", "note", "pcrs", "quote"])
        #expect(object["note"] as? String == "café \"x\"")
        let fields = try #require(object["activation"] as? [String: String])
        #expect(fields["forged"] == nil)
        #expect(ActivationRecord(fields: fields) == Self.record)
        #expect(Self.record.isValidlySigned)
    }

    /// Threat: stored evidence whose meaning depends on which copy of a member a reader takes.
    /// Text naming a member twice, or that is not one JSON object, gets no record.
    @Test func addingRefusesTextThatIsNotOneObjectOfDistinctNames() {
        for text in [#"{"quote":"AA","quote":"AB"}"#, #"{"quote":"AA"} {}"#, "[1]", "", #"{"quote":"#] {
            #expect(Self.record.adding(to: Data(text.utf8)) == nil, "\(text)")
        }
    }
}
