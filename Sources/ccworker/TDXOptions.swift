import ArgumentParser
import CommandLineSupport
import Foundation
import WorkerAgent

/// The attestation hardware and, for TDX, where the guest's interfaces are. The defaults are
/// Linux's paths in a TDX guest; tests point them at a directory laid out the same way.
struct TDXOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The attestation hardware: tpm or tdx.", valueName: "TEE")) var tee = "tpm"
    @Option(help: ArgumentHelp("TDX: the configfs-tsm report directory.", valueName: "DIR"))
    var tsmDir = ConfigfsTSM.defaultRoot.path
    @Option(
        help: ArgumentHelp(
            "TDX: the guest driver's measurement registers (rtmr3:sha384 is extended).", valueName: "DIR"))
    var rtmrDir = RTMRExtender.defaultDirectory.path
    @Option(help: ArgumentHelp("TDX: the firmware CCEL event log.", valueName: "FILE")) var ccel = TDXAttestor
        .defaultCCEL.path
    @Option(
        help: ArgumentHelp(
            "TDX: offline Intel collateral (JSON, Intel field names) to send with each quote.", valueName: "FILE"))
    var collateral: String?

    func validate() throws {
        guard ["tpm", "tdx"].contains(tee) else { throw ValidationError("--tee must be tpm or tdx") }
    }

    func attestor(files: [URL], executable: SealedExecutable? = nil, premeasured: [FileMeasurement] = []) throws
        -> TDXAttestor
    {
        var fields: [String: String]?
        if let collateral {
            guard let data = FileManager.default.contents(atPath: collateral),
                let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
            else { throw ReportedFailure("ccworker", "\(collateral): not a JSON object", status: 2) }
            fields = ((object["collateral"] as? [String: Any]) ?? object).compactMapValues { $0 as? String }
        }
        return try TDXAttestor(
            tsm: ConfigfsTSM(root: URL(fileURLWithPath: tsmDir)),
            rtmr: RTMRExtender(directory: URL(fileURLWithPath: rtmrDir)),
            ccel: URL(fileURLWithPath: ccel), files: files, executable: executable, premeasured: premeasured,
            collateral: fields)
    }
}
