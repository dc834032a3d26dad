// Quote verification against raw signature checks.
import AttestationCore
import EventLog
import Foundation
import TPMVerifier
import WorkerAgent

let sharedRootURL: URL = {
    if let dir = ProcessInfo.processInfo.environment["CCGATE_SHARED_TESTDATA"] { return URL(fileURLWithPath: dir) }
    return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("shared/testdata")
}()
let seconds = Double(ProcessInfo.processInfo.environment["CCGATE_BENCH_SECONDS"] ?? "") ?? 2.0

/// Runs `body` repeatedly for about `seconds` and returns operations per second.
func rate(_ body: () -> Bool) -> Double {
    let clock = ContinuousClock()
    // Warm up.
    for _ in 0..<20 { precondition(body(), "benchmark body failed") }
    var count = 0
    let start = clock.now
    let deadline = start + .milliseconds(Int(seconds * 1000))
    while clock.now < deadline {
        for _ in 0..<16 { precondition(body(), "benchmark body failed") }
        count += 16
    }
    let elapsed = clock.now - start
    let secs = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    return Double(count) / secs
}

struct Subject {
    let name: String
    let envelope: Data
    let nonce: Data?
}

/// Pulls the AK, the signed bytes and the signature out of an envelope, to time the bare
/// signature check on exactly the same key and message.
func rawSignatureCheck(_ envelope: Data) -> () -> Bool {
    let object = try! JSONSerialization.jsonObject(with: envelope) as! [String: Any]
    let attest = [UInt8](Data(base64Encoded: object["quote"] as! String)!)
    let sigBytes = [UInt8](Data(base64Encoded: object["signature"] as! String)!)
    let key: PublicKey
    if let spki = object["ak_public"] as? String {
        key = try! PublicKey(spkiDER: Data(base64Encoded: spki)!)
    } else {
        key = try! TPMVerifierBenchSupport.key(
            fromTPM2BPublic: Data(base64Encoded: object["ak_tpm2b_public"] as! String)!)
    }
    let (scheme, signature) = try! TPMVerifierBenchSupport.signature(sigBytes)
    return { key.verify(signature: signature, message: attest, scheme: scheme) }
}

// An ECDSA P-256 quote with an IMA log, made on a software TPM when one is installed.
func swtpmSubject() -> Subject? {
    guard let tpm = BenchSwtpm.start() else { return nil }
    defer { tpm.stop() }
    let nonce = Data(repeating: 0x5a, count: 32)
    do {
        let device = try TPMDevice(tcti: tpm.tcti)
        let key = try device.createAttestationKey(.eccP256)
        let file = tpm.directory.appendingPathComponent("engine")
        try Data("engine".utf8).write(to: file)
        let entry = try FileMeasurer(pcr: 23).measure(file, into: device)
        let envelope = try QuoteEnvelopeBuilder(device: device, key: key)
            .envelope(qualifyingData: nonce, indices: [0, 1, 2, 3, 4, 5, 6, 7, 23], imaLog: IMALog(entries: [entry]))
        return Subject(name: "EC P-256 (swtpm, 9 PCRs, IMA log)", envelope: envelope, nonce: nonce)
    } catch {
        FileHandle.standardError.write(Data("bench: swtpm quote failed: \(error)\n".utf8))
        return nil
    }
}

/// A software TPM for the benchmark's own quotes.
final class BenchSwtpm: @unchecked Sendable {
    let process: Process
    let directory: URL
    let port: Int
    var tcti: String { "swtpm:host=127.0.0.1,port=\(port)" }

    private init(process: Process, directory: URL, port: Int) {
        self.process = process
        self.directory = directory
        self.port = port
    }

    /// Starts a TPM; `manufactured`: with EK certificates from a local CA in DIR/ca (swtpm_setup).
    static func start(manufactured: Bool = false) -> BenchSwtpm? {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ccgate-bench-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        if manufactured, !manufacture(dir) { return nil }
        let port = Int.random(in: 30_000..<50_000) & ~1
        let swtpm = Process()
        swtpm.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        swtpm.arguments = [
            "swtpm", "socket", "--tpm2", "--server", "type=tcp,port=\(port),bindaddr=127.0.0.1",
            "--ctrl", "type=tcp,port=\(port + 1),bindaddr=127.0.0.1", "--tpmstate", "dir=\(dir.path)",
            "--flags", "not-need-init,startup-clear",
        ]
        swtpm.standardError = FileHandle.nullDevice
        guard (try? swtpm.run()) != nil else { return nil }
        // Ready once its command port accepts a connection (up to 5 s; a busy machine is slow).
        for _ in 0..<100 where !accepts(port) { usleep(50_000) }
        return BenchSwtpm(process: swtpm, directory: dir, port: port)
    }

    static func accepts(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }

    /// swtpm_setup with a local CA, as the test kit and `scripts/lib.sh` do.
    static func manufacture(_ dir: URL) -> Bool {
        let ca = dir.appendingPathComponent("ca")
        try? FileManager.default.createDirectory(at: ca, withIntermediateDirectories: true)
        let files = [
            "localca.conf":
                "statedir = \(ca.path)\nsigningkey = \(ca.path)/signkey.pem\nissuercert = \(ca.path)/issuercert.pem\ncertserial = \(ca.path)/certserial\n",
            "localca.options": "--platform-manufacturer ccgate\n--platform-version 1\n--platform-model swtpm\n",
            "setup.conf":
                "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = \(ca.path)/localca.conf\ncreate_certs_tool_options = \(ca.path)/localca.options\n",
        ]
        for (name, text) in files {
            try? text.write(to: ca.appendingPathComponent(name), atomically: true, encoding: .utf8)
        }
        let setup = Process()
        setup.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        setup.arguments = [
            "swtpm_setup", "--tpm2", "--tpmstate", dir.path, "--create-ek-cert", "--overwrite", "--config",
            ca.appendingPathComponent("setup.conf").path,
        ]
        setup.standardOutput = FileHandle.nullDevice
        setup.standardError = FileHandle.nullDevice
        guard (try? setup.run()) != nil else { return false }
        setup.waitUntilExit()
        return setup.terminationStatus == 0
    }

    /// The local CA's root and intermediate (DER), for a manufactured TPM.
    var caRootDER: Data? { Self.der(directory.appendingPathComponent("ca/swtpm-localca-rootca-cert.pem")) }
    var caChainDER: Data? { Self.der(directory.appendingPathComponent("ca/issuercert.pem")) }

    static func der(_ url: URL) -> Data? {
        (try? String(contentsOf: url, encoding: .utf8)).flatMap { PEMBlock.first(in: $0, label: "CERTIFICATE") }
    }

    func stop() {
        process.terminate()
        usleep(100_000)
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(at: directory)
    }
}

func tpmBench() {
    var subjects = [Subject]()
    let keylime = sharedRootURL.appendingPathComponent("tpm/keylime-checkquote.json")
    if let data = try? Data(contentsOf: keylime) {
        subjects.append(
            Subject(
                name: "RSA-2048 (keylime vector)", envelope: data,
                nonce: Data(hex: "4169354d35536a596a6e6b797634503769744831")))
    } else {
        FileHandle.standardError.write(Data("bench: \(keylime.path) not found; skipping the RSA vector\n".utf8))
    }

    if let s = swtpmSubject() { subjects.append(s) }

    print("ccgate bench: TPM quote verification")
    print("baseline: raw signature verification with the same key and signed bytes, same run (\(seconds) s each)")
    print("")
    print(
        "key".padding(toLength: 36, withPad: " ", startingAt: 0) + "quote verifies/s   raw sig verifies/s   quote/raw")
    let verifier = TPMQuoteVerifier()
    let at = Date(timeIntervalSince1970: 1_772_323_200)
    for subject in subjects {
        precondition(verifier.verify(envelopeData: subject.envelope, expectedNonce: subject.nonce, at: at).isAccepted)
        let quoteRate = rate {
            verifier.verify(envelopeData: subject.envelope, expectedNonce: subject.nonce, at: at).isAccepted
        }
        let rawRate = rate(rawSignatureCheck(subject.envelope))
        print(
            subject.name.padding(toLength: 36, withPad: " ", startingAt: 0)
                + String(format: "%16.0f   %18.0f   %9.3f", quoteRate, rawRate, quoteRate / rawRate))
    }

    // Where the time goes: each stage alone, on the first subject.
    if let subject = subjects.first {
        let object = try! JSONSerialization.jsonObject(with: subject.envelope) as! [String: Any]
        let spki = (object["ak_public"] as? String).flatMap { Data(base64Encoded: $0) }
        print("")
        print("stages (\(subject.name)):")
        let stages: [(String, () -> Bool)] = [
            ("envelope JSON parse", { (try? EvidenceEnvelope.parse(subject.envelope).get()) != nil }),
            ("AK public key decode", { spki == nil || (try? PublicKey(spkiDER: spki!)) != nil }),
            ("AK public key (cached)", { spki == nil || (try? PublicKey.cached(spkiDER: spki!)) != nil }),
            ("raw signature check", rawSignatureCheck(subject.envelope)),
        ]
        for (name, body) in stages {
            print(
                "  " + name.padding(toLength: 24, withPad: " ", startingAt: 0) + String(format: "%12.0f /s", rate(body))
            )
        }
    }
}
