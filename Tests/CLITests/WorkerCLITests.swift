import AttestationCore
import Foundation
import TPMVerifier
import TestSupport
import Testing

/// `ccworker quote` end to end against a real swtpm, judged by `ccgate evidence verify`.
@Suite struct WorkerCLITests {
    static var ccworker: String { EvidenceVerifyCLITests.binDirectory.appendingPathComponent("ccworker").path }
    static var ccgate: String { EvidenceVerifyCLITests.ccgate }

    @Test func quoteMadeByTheWorkerVerifies() async throws {
        let tpm = try await Swtpm.start()
        defer { tpm.stop() }
        let dir = try TemporaryDirectory()
        try Data("engine v1".utf8).write(to: dir.file("ccinfer"))
        let nonce = String(repeating: "5a", count: 32)
        let quote = try await ProcessRunner.run(
            Self.ccworker,
            [
                "quote", "--tpm", tpm.tcti, "--nonce", nonce,
                "--measure", dir.file("ccinfer").path, "--out", dir.file("e.json").path,
                "--tpm-ek-chain", try #require(SwtpmLocalCA.shared).issuerCertificate.path,
            ])
        #expect(quote.status == 0, "\(quote.stderr)")
        let root = try #require(SwtpmLocalCA.shared).rootCertificate.path
        // The default policy anchors AKs in hardware: a file proves the EK certificate, but not
        // that the AK lives in that TPM (credential activation is a live exchange).
        let anchored = try await ProcessRunner.run(
            Self.ccgate,
            ["evidence", "verify", dir.file("e.json").path, "--nonce", nonce, "--tpm-ek-root", root, "--json"])
        #expect(anchored.status == 1, "\(anchored.stdout)")
        let anchoredObject = try #require(try JSONSerialization.jsonObject(with: anchored.stdoutData) as? [String: Any])
        #expect(anchoredObject["reason"] as? String == "tpm.ak-untrusted")
        let why = (anchoredObject["reasons"] as? [[String: String]])?.first?["message"] ?? ""
        #expect(why.contains("credential activation"), "\(why)")
        try Data("schema: ccgate.policy/v1\nname: lab\nevidence: {tpm: {ak_trust: as-presented}}\n".utf8).write(
            to: dir.file("lab.yaml"))
        let verify = try await ProcessRunner.run(
            Self.ccgate,
            [
                "evidence", "verify", dir.file("e.json").path, "--nonce", nonce, "--policy", dir.file("lab.yaml").path,
                "--tpm-ek-root", root, "--json",
            ])
        #expect(verify.status == 0, "\(verify.stdout)")
        let object = try #require(try JSONSerialization.jsonObject(with: verify.stdoutData) as? [String: Any])
        let measurements = (object["claims"] as? [String: Any])?["measurements"] as? [[String: Any]]
        #expect(measurements?.first?["path"] as? String == dir.file("ccinfer").path)

        // The policy allowlist decides: allow exactly this binary (and no model: rejected).
        let digest = (measurements?.first?["digest"] as? String) ?? ""
        try Data(
            """
            schema: ccgate.policy/v1
            name: test
            evidence: {tpm: {ak_trust: as-presented}}
            measurements:
              binaries: [{name: ccinfer, sha256: \(digest)}]
              models: [{name: m, sha256: \(String(repeating: "00", count: 32))}]
              # The engine is a stand-in the worker does not start: it is hashed, not executed from its measured copy.
              allow_unmeasured_engine: true
            """.utf8
        ).write(to: dir.file("p.yaml"))
        let policy = try await ProcessRunner.run(
            Self.ccgate,
            [
                "evidence", "verify", dir.file("e.json").path, "--nonce", nonce,
                "--policy", dir.file("p.yaml").path, "--json",
            ])
        #expect(policy.status == 1)
        let reasons =
            (try JSONSerialization.jsonObject(with: policy.stdoutData) as? [String: Any])?["reasons"]
            as? [[String: String]]
        #expect(reasons?.map { $0["code"] } == ["policy.measurement-not-allowed"])
        #expect(reasons?.first?["message"]?.contains("no allowlisted model") == true)
    }

    /// Threat: an attacker without a TPM takes a genuine quote file (with its genuine EK
    /// certificate), re-signs it with a software key presented as a TPM key, and adds an
    /// activation record signed by a key of its own. `ccgate evidence verify` under the default
    /// policy refuses it, whichever gateway key it is told to believe.
    @Test func forgedEnvelopeIsRejectedUnderTheDefaultPolicy() async throws {
        let ca = try #require(SwtpmLocalCA.shared)
        let tpm = try await Swtpm.start()
        defer { tpm.stop() }
        let dir = try TemporaryDirectory()
        let nonce = String(repeating: "3c", count: 32)
        let quote = try await ProcessRunner.run(
            Self.ccworker,
            [
                "quote", "--tpm", tpm.tcti, "--nonce", nonce, "--out", dir.file("genuine.json").path,
                "--tpm-ek-chain", ca.issuerCertificate.path,
            ])
        #expect(quote.status == 0, "\(quote.stderr)")
        let software = SoftwareAK()
        let forged = try software.forge(try Data(contentsOf: dir.file("genuine.json")))
        let name = try TPMKeyIdentity.parse([UInt8](software.tpm2bPublic)).get().name
        let object = try #require(try JSONSerialization.jsonObject(with: forged) as? [String: Any])
        let ek = try TPMKeyIdentity.parse(
            [UInt8](try #require(Data(base64Encoded: object["ek_public"] as? String ?? "")))
        )
        .get()
        let attackerKey = Ed25519PrivateKey.generate()
        let record = ActivationRecord.sign(
            akName: name, ekSHA256: ek.area.key.fingerprint, gatewayID: "attacker", time: Date(), with: attackerKey)
        try #require(record.adding(to: forged)).write(to: dir.file("forged.json"))
        let gatewayKey = Ed25519PrivateKey.generate().publicKey
        try gatewayKey.pem.write(to: dir.file("gateway.pub"), atomically: true, encoding: .utf8)
        let verify = try await ProcessRunner.run(
            Self.ccgate,
            [
                "evidence", "verify", dir.file("forged.json").path, "--nonce", nonce, "--json",
                "--tpm-ek-root", ca.rootCertificate.path, "--activation-key", dir.file("gateway.pub").path,
            ])
        #expect(verify.status == 1, "\(verify.stdout)")
        let verdict = try #require(try JSONSerialization.jsonObject(with: verify.stdoutData) as? [String: Any])
        #expect(verdict["reason"] as? String == "tpm.ak-untrusted")
        // The signature itself verifies: the quote is genuine, only the key is not a TPM's.
        let codes = (verdict["reasons"] as? [[String: String]])?.compactMap { $0["code"] }
        #expect(codes == ["tpm.ak-untrusted"])
    }

    @Test func unreachableTPMIsAClearError() async throws {
        let result = try await ProcessRunner.run(Self.ccworker, ["quote", "--tpm", "swtpm:host=127.0.0.1,port=1"])
        #expect(result.status == 1)
        #expect(result.stderr.hasPrefix("ccworker: TPM open"))
        #expect(!result.stderr.contains("ERROR:tcti"))
    }

    @Test(arguments: [
        ["quote", "--ak", "dsa"], ["quote", "--nonce", String(repeating: "00", count: 65)],
        ["quote", "--pcrs", "0,99"], ["quote", "--measure", "/nonexistent"], ["nope"],
    ])
    func badUsageExitsTwo(_ args: [String]) async throws {
        let result = try await ProcessRunner.run(Self.ccworker, args)
        #expect(result.status == 2, "\(args): \(result.stderr)")
    }
}
