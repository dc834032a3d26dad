import ArgumentParser
import AttestationCore
import Foundation
import NVGPUVerifier

/// `ccgate evidence wrap`: evidence as other tools write it, into an envelope `ccgate evidence
/// verify` and the gateway read.
struct EvidenceWrapCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wrap", abstract: "Turn evidence files from other tools into an evidence envelope.",
        subcommands: [NVGPU.self])

    struct NVGPU: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "nvgpu",
            abstract: "Wrap an NVIDIA GPU attestation report, its certificate chain and manifests.",
            discussion: """
                Reads a GPU attestation report as NVIDIA's tools write it (hex text, as nvtrust's samples, or the \
                raw bytes NVML returns), its device certificate chain (PEM, leaf first: NVML's attestation \
                certificate chain), and the driver and VBIOS reference integrity manifests (RIM files, *.swidtag), \
                and writes one nvgpu-report envelope (docs/EVIDENCE.md). Nothing is verified here beyond the \
                report's shape; `ccgate evidence verify` does that.

                Each --rim is placed by the version it states: a VBIOS manifest's version has five groups of two \
                hex digits (96.00.9F.00.01), a driver's does not (550.90.07).

                Examples:
                  ccgate evidence wrap nvgpu --report hopperAttestationReport.txt --cert-chain hopperCertChain.txt \\
                      --rim Driver_RIM.swidtag --rim 1010_0200_882_96009F0001_PROD.swidtag --out gpu.json
                  ccgate evidence verify gpu.json --nonce 931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb

                Exit status: 0 written, 2 unreadable input or bad usage.
                """)

        @Option(help: ArgumentHelp("The attestation report: hex text or raw bytes.", valueName: "FILE"))
        var report: String

        @Option(help: ArgumentHelp("The device certificate chain, PEM, leaf first.", valueName: "PEM"))
        var certChain: String

        @Option(help: ArgumentHelp("A driver or VBIOS reference integrity manifest; repeatable.", valueName: "FILE"))
        var rim: [String] = []

        @Option(help: ArgumentHelp("Where to write the envelope (- for standard output).", valueName: "ENVELOPE"))
        var out: String

        func run() throws {
            try exiting {
                let reportBytes = try Self.reportBytes(try readSmall(report, limit: 4 * SPDMReport.maxSize))
                let parsed: SPDMReport
                do throws(SPDMReport.Malformed) { parsed = try SPDMReport(reportBytes) } catch {
                    throw failure("\(report): evidence.malformed: \(error.description)")
                }
                let chain = try readSmall(certChain, limit: 64 << 10)
                guard String(decoding: chain, as: UTF8.self).contains("-----BEGIN CERTIFICATE-----") else {
                    throw failure("\(certChain): no PEM certificate found")
                }
                var envelope: [String: Any] = [
                    "format": NVGPUReportVerifier.format, "version": 1,
                    "report": Data(reportBytes).base64EncodedString(),
                    "cert_chain": String(decoding: chain, as: UTF8.self),
                ]
                var placed = [String]()
                for path in rim {
                    let xml = try readSmall(path, limit: ReferenceManifest.maxSize)
                    let version: String
                    do throws(Reason) { version = try ReferenceManifest.statedVersion(xml) } catch {
                        throw failure("\(path): \(error.code): \(error.message)")
                    }
                    let key = ReferenceManifest.isVBIOSVersion(version) ? "rim_vbios" : "rim_driver"
                    guard envelope[key] == nil else { throw failure("\(path): a second \(key) manifest") }
                    envelope[key] = Data(xml).base64EncodedString()
                    placed.append("\(key == "rim_vbios" ? "VBIOS" : "driver") manifest \(version)")
                }
                let json = try JSONSerialization.data(
                    withJSONObject: envelope, options: [.sortedKeys, .withoutEscapingSlashes])
                if out == "-" {
                    FileHandle.standardOutput.write(json + Data("\n".utf8))
                } else {
                    do { try (json + Data("\n".utf8)).write(to: URL(fileURLWithPath: out), options: .atomic) } catch {
                        throw failure("\(out): \(error.localizedDescription)")
                    }
                }
                let summary =
                    "driver \(parsed.opaque.driverVersion ?? "?"), VBIOS \(parsed.opaque.vbiosVersion ?? "?"), "
                    + "nonce \(Data(parsed.nonce).hex)"
                    + (placed.isEmpty ? ", no manifests" : "; " + placed.joined(separator: ", "))
                FileHandle.standardError.write(Data("wrote \(out == "-" ? "(stdout)" : out): \(summary)\n".utf8))
                return 0
            }
        }

        /// Hex text (whitespace ignored) when every byte is a hex digit or whitespace, else the bytes.
        static func reportBytes(_ file: [UInt8]) throws -> [UInt8] {
            let isText =
                !file.isEmpty
                && file.allSatisfy {
                    $0 < 0x80 && (Character(UnicodeScalar($0)).isHexDigit || Character(UnicodeScalar($0)).isWhitespace)
                }
            guard isText else { return file }
            let text = String(decoding: file.filter { !Character(UnicodeScalar($0)).isWhitespace }, as: UTF8.self)
            guard let bytes = Data(hex: text) else {
                throw failure("the report's hex text has an odd number of digits")
            }
            return [UInt8](bytes)
        }
    }
}

/// A file of at most `limit` bytes.
func readSmall(_ path: String, limit: Int) throws -> [UInt8] {
    guard let handle = FileHandle(forReadingAtPath: path) else { throw failure("\(path): cannot open") }
    defer { try? handle.close() }
    let data: Data
    do { data = try handle.read(upToCount: limit + 1) ?? Data() } catch {
        throw failure("\(path): \(error.localizedDescription)")
    }
    guard data.count <= limit else { throw failure("\(path) is larger than \(limit) bytes") }
    return [UInt8](data)
}
