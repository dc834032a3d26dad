import Foundation

/// Extends RTMR3 through the TDX guest driver's measurement registers
/// (`/sys/class/misc/tdx_guest/measurements/rtmr3:sha384`: each 48-byte write extends).
public struct RTMRExtender: Sendable {
    public static let defaultDirectory = URL(fileURLWithPath: "/sys/class/misc/tdx_guest/measurements")
    public let directory: URL

    public init(directory: URL = Self.defaultDirectory) { self.directory = directory }

    public func extendRTMR3(with digest: Data) throws(TDXError) {
        guard digest.count == 48 else { throw TDXError("an RTMR extension is 48 bytes (SHA-384), not \(digest.count)") }
        try write(digest, to: directory.appendingPathComponent("rtmr3:sha384"))
    }
}
