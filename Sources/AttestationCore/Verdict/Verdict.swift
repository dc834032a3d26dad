import Foundation

/// A measured file reported by a runtime measurement log (IMA `ima-ng` or the agent's own log).
public struct MeasuredFile: Hashable, Sendable, Codable {
    public let path: String
    /// Hash algorithm name as written in the log (`sha256`, `sha1`, ...).
    public let algorithm: String
    /// Lowercase hex digest of the file contents.
    public let digestHex: String
    /// The register the measurement was extended into.
    public let pcr: Int

    /// Log path prefix of an engine the worker measured in a sealed copy and executed from that
    /// copy (`ccworker-exec:<path>`), as opposed to a file that was only hashed.
    public static let executedPrefix = "ccworker-exec:"

    /// Whether the worker executed this file from the measured, sealed copy.
    public var wasExecutedFromMeasuredCopy: Bool { path.hasPrefix(Self.executedPrefix) }

    public init(path: String, algorithm: String, digestHex: String, pcr: Int) {
        self.path = path
        self.algorithm = algorithm
        self.digestHex = digestHex
        self.pcr = pcr
    }
}

/// Facts that a verifier proved from evidence.
///
/// Only verifiers in this package can create one (`package` initializer), and they do so only
/// after every check has passed: holding a `VerifiedClaims` means the evidence was genuine, fresh
/// and consistent with its logs under the verifier's rules.
public struct VerifiedClaims: Sendable, Equatable {
    /// bank name (`sha1`, `sha256`, `sha384`) → PCR index → lowercase hex value; only quoted PCRs.
    public let pcrs: [String: [Int: String]]
    /// Files measured into a quoted register, in log order.
    public let measuredFiles: [MeasuredFile]
    /// Other scalar facts (`ak.sha256`, `tpm.firmware`, `mrtd`, ...), lowercase hex or text.
    public let fields: [String: String]

    package init(
        pcrs: [String: [Int: String]] = [:], measuredFiles: [MeasuredFile] = [],
        fields: [String: String] = [:]
    ) {
        self.pcrs = pcrs
        self.measuredFiles = measuredFiles
        self.fields = fields
    }
}

/// The outcome of verifying one piece of evidence.
///
/// A rejected verdict carries at least one reason; the first is the one reported as `reason`.
/// An accepted verdict carries the claims that were proven and no reasons.
public struct Verdict: Sendable {
    public enum Outcome: String, Sendable { case accept, reject }

    public let format: String
    public let outcome: Outcome
    public let reasons: [Reason]
    public let claims: VerifiedClaims?
    /// TDX/SGX: Intel TCB status string, when one was determined.
    public let tcbStatus: String?
    public let advisoryIDs: [String]
    /// Checks that passed, in order, for a human-readable trace.
    public let passedChecks: [String]
    /// SHA-256 of collateral the verifier took from outside the evidence (a cache), so that a
    /// decision names exactly what it rested on; nil when the evidence carried all it needed.
    public internal(set) var collateralSHA256: String? = nil

    /// This verdict, naming the outside collateral it rested on.
    public func citing(collateral sha256: String?) -> Verdict {
        var copy = self
        copy.collateralSHA256 = sha256
        return copy
    }

    public var isAccepted: Bool { outcome == .accept }
    /// The first reason code, for a reject.
    public var reason: ReasonCode? { reasons.first?.code }

    public static func accept(
        format: String, claims: VerifiedClaims, passed: [String],
        tcbStatus: String? = nil, advisoryIDs: [String] = []
    ) -> Verdict {
        Verdict(
            format: format, outcome: .accept, reasons: [], claims: claims, tcbStatus: tcbStatus,
            advisoryIDs: advisoryIDs, passedChecks: passed)
    }

    public static func reject(
        format: String, reasons: [Reason], passed: [String] = [],
        tcbStatus: String? = nil, advisoryIDs: [String] = []
    ) -> Verdict {
        precondition(!reasons.isEmpty, "a reject carries a reason")
        return Verdict(
            format: format, outcome: .reject, reasons: reasons, claims: nil, tcbStatus: tcbStatus,
            advisoryIDs: advisoryIDs, passedChecks: passed)
    }

    /// Rejects an accepted verdict for policy reasons, keeping its trace; rejects stay as they are.
    public func adding(policyReasons: [Reason]) -> Verdict {
        guard !policyReasons.isEmpty else { return self }
        return Verdict(
            format: format, outcome: .reject, reasons: reasons + policyReasons, claims: nil,
            tcbStatus: tcbStatus, advisoryIDs: advisoryIDs, passedChecks: passedChecks,
            collateralSHA256: collateralSHA256)
    }
}
