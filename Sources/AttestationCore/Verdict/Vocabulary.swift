import Foundation

/// The evidence formats ccgate reads (the envelope's `format`, see docs/EVIDENCE.md). The raw
/// strings are what envelopes, policies and the audit log carry; they never change.
public enum EvidenceFormat: String, Sendable, CaseIterable, Codable {
    case tpm2Quote = "tpm2-quote"
    case tdxQuote = "tdx-quote"
    case sgxQuote = "sgx-quote"

    /// Formats verified against Intel's DCAP collateral (TCB status, advisories, debug).
    public var isDCAP: Bool { self != .tpm2Quote }
}

/// Intel's TCB statuses, with the strings of Intel's TCB info and appraisal results.
public enum TCBStatus: String, Sendable, CaseIterable, Codable {
    case upToDate = "UpToDate"
    case swHardeningNeeded = "SWHardeningNeeded"
    case configurationNeeded = "ConfigurationNeeded"
    case configurationAndSWHardeningNeeded = "ConfigurationAndSWHardeningNeeded"
    case outOfDate = "OutOfDate"
    case outOfDateConfigurationNeeded = "OutOfDateConfigurationNeeded"
    case revoked = "Revoked"
    case tdRelaunchAdvised = "TDRelaunchAdvised"
    case tdRelaunchAdvisedConfigurationNeeded = "TDRelaunchAdvisedConfigurationNeeded"

    /// Statuses that say the platform fell behind Intel's latest TCB: what a platform grace
    /// period (Intel's appraisal `platform_grace_period`) may still accept.
    public static let outOfDateFamily: Set<TCBStatus> = [.outOfDate, .outOfDateConfigurationNeeded]
}
