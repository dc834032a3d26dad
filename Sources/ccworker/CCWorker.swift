import ArgumentParser
import AttestationCore
import CommandLineSupport
import EventLog
import Foundation
import ServiceSupport
import WorkerAgent

@main
struct CCWorker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ccworker",
        abstract: "The ccgate worker agent: measures the inference engine and model, and attests with the TPM.",
        version: projectVersion,
        subcommands: [Run.self, Quote.self])

    /// `run --config FILE` is expanded into the options it stands for before anything is parsed.
    static func main() async {
        let arguments: [String]
        do { arguments = try ConfigFile.expand(Array(CommandLine.arguments.dropFirst())) } catch {
            FileHandle.standardError.write(Data("ccworker: \(error)\n".utf8))
            Foundation.exit(2)
        }
        await runAsyncWithProjectExitCodes(arguments: arguments)
    }
}

struct Quote: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure files and write an evidence envelope (tpm2-quote, or tdx-quote with --tee tdx).",
        discussion: """
            Each --measure FILE is hashed (SHA-256), recorded in an ima-ng log and extended into the
            measurement PCR of the sha1 and sha256 banks; then the TPM quotes the selected PCRs with an
            attestation key bound to --nonce. The envelope goes to --out or standard output.

            Examples:
              ccworker quote --tpm swtpm:host=127.0.0.1,port=2321 --nonce 00112233 --measure ./ccinfer
              ccworker quote --tpm device:/dev/tpmrm0 --pcrs 0,7,10 --out evidence.json
              ccworker quote --tee tdx --nonce 00112233 --measure ./ccinfer --out tdx.json

            With --tee tdx, each file is measured into RTMR3 instead and the quote comes from configfs-tsm.
            """)

    @Option(
        help: ArgumentHelp("TPM to use, as a TCTI string (device:/dev/tpmrm0, swtpm:host=H,port=P).", valueName: "TCTI")
    )
    var tpm = "device:/dev/tpmrm0"

    @Option(help: ArgumentHelp("Attestation key algorithm: ecc (P-256) or rsa (2048).", valueName: "ALG"))
    var ak: String = "ecc"

    @Option(help: ArgumentHelp("Qualifying data to bind into the quote, hex, at most 64 bytes.", valueName: "HEX"))
    var nonce: String = ""

    @Option(help: ArgumentHelp("PCRs to quote, comma-separated.", valueName: "LIST"))
    var pcrs: String = "0,1,2,3,4,5,6,7,23"

    @Option(help: ArgumentHelp("PCR bank to quote: sha256, sha384 or sha1.", valueName: "BANK"))
    var bank: String = "sha256"

    @Option(
        name: .customLong("measure"),
        help: ArgumentHelp("A file to measure before quoting; repeatable.", valueName: "FILE"))
    var files: [String] = []

    @Option(help: ArgumentHelp("The PCR that measurements are extended into.", valueName: "N"))
    var measurePCR: Int = 23

    @Option(help: ArgumentHelp("Write the envelope here instead of standard output.", valueName: "FILE"))
    var out: String?

    @Option(
        help: ArgumentHelp(
            "Intermediate CA certificates (PEM) between the EK certificate and its manufacturer's root.",
            valueName: "PEM"))
    var tpmEKChain: String?

    @OptionGroup var tdx: TDXOptions

    func validate() throws {
        guard let n = Data(hex: nonce), n.count <= 64 else {
            throw ValidationError("--nonce must be hex, at most 64 bytes")
        }
        guard AttestationKeyAlgorithm(rawValue: ak) != nil else { throw ValidationError("--ak must be ecc or rsa") }
        guard HashAlgorithm(rawValue: bank) != nil, bank != "sha512" else {
            throw ValidationError("--bank must be sha1, sha256 or sha384")
        }
        guard !parsedPCRs.isEmpty, parsedPCRs.allSatisfy({ (0..<24).contains($0) }) else {
            throw ValidationError("--pcrs must list PCR numbers 0-23, e.g. 0,7,23")
        }
        guard (0..<24).contains(measurePCR) else { throw ValidationError("--measure-pcr must be 0-23") }
        for file in files where !FileManager.default.isReadableFile(atPath: file) {
            throw ValidationError("--measure \(file): not a readable file")
        }
        try tdx.validate()
    }

    var parsedPCRs: [Int] { pcrs.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) } }

    func run() throws {
        if tdx.tee == "tdx" {
            let envelope: Data
            do {
                let attestor = try tdx.attestor(files: files.map { URL(fileURLWithPath: $0).standardizedFileURL })
                envelope = try attestor.envelope(binding: Data(hex: nonce)!)
            } catch let failure as ReportedFailure {
                throw failure
            } catch {
                throw ReportedFailure("ccworker", "\(error)", status: 1)
            }
            try emit(envelope, measurements: files.count)
            return
        }
        do {
            let device = try TPMDevice(tcti: tpm)
            let key = try device.createAttestationKey(AttestationKeyAlgorithm(rawValue: ak)!)
            let measurer = FileMeasurer(pcr: measurePCR)
            var entries = [IMALog.Entry]()
            for file in files {
                let url = URL(fileURLWithPath: file).standardizedFileURL
                entries.append(try measurer.measure(url, into: device))
            }
            var indices = parsedPCRs
            if !entries.isEmpty, !indices.contains(measurePCR) { indices.append(measurePCR) }
            let endorsement = Attestor.Endorsement(
                ekPublic: try device.endorsementKeyPublic(),
                certificate: try device.readNV(index: TPMDevice.rsaEKCertificateIndex).flatMap(Attestor.derPrefix),
                chain: try ekChain(tpmEKChain))
            let envelope = try QuoteEnvelopeBuilder(device: device, key: key).envelope(
                qualifyingData: Data(hex: nonce)!, bank: HashAlgorithm(rawValue: bank)!, indices: indices.sorted(),
                imaLog: entries.isEmpty ? nil : IMALog(entries: entries), endorsement: endorsement)
            try emit(envelope, measurements: entries.count)
        } catch let error as TPMError {
            throw ReportedFailure("ccworker", error.description, status: 1)
        }
    }

    func emit(_ envelope: Data, measurements: Int) throws {
        if let out {
            try envelope.write(to: URL(fileURLWithPath: out), options: .atomic)
            FileHandle.standardError.write(
                Data("ccworker: wrote \(out) (\(envelope.count) bytes, \(measurements) measurements)\n".utf8))
        } else {
            FileHandle.standardOutput.write(envelope + Data("\n".utf8))
        }
    }
}

/// The certificates of a PEM file as concatenated DER (the envelope's `ek_chain`); nil for no file.
func ekChain(_ path: String?) throws -> Data? {
    guard let path else { return nil }
    do {
        let certificates = try TrustRoots.load(pemFile: path)
        guard !certificates.isEmpty else {
            throw ReportedFailure("ccworker", "\(path): no PEM certificate found", status: 2)
        }
        return certificates.reduce(into: Data()) { $0.append($1.der) }
    } catch let error as TrustRoots.LoadError {
        throw ReportedFailure("ccworker", error.description, status: 2)
    }
}
