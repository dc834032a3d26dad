/// A stable reason code for a rejected piece of evidence.
///
/// The strings are a contract shared by the audit log, metrics and the admin CLI; they never
/// change meaning. Equality is by code only.
public struct ReasonCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible, Codable {
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public var description: String { rawValue }

    public static let evidenceMalformed = ReasonCode(rawValue: "evidence.malformed")
    public static let evidenceUnsupported = ReasonCode(rawValue: "evidence.unsupported")
    public static let quoteSignatureInvalid = ReasonCode(rawValue: "quote.signature-invalid")
    public static let qeReportSignatureInvalid = ReasonCode(rawValue: "qe-report.signature-invalid")
    public static let qeReportBindingMismatch = ReasonCode(rawValue: "qe-report.binding-mismatch")
    public static let qeIdentityMismatch = ReasonCode(rawValue: "qe-identity.mismatch")
    public static let chainUntrustedRoot = ReasonCode(rawValue: "chain.untrusted-root")
    public static let chainInvalid = ReasonCode(rawValue: "chain.invalid")
    public static let chainRevoked = ReasonCode(rawValue: "chain.revoked")
    public static let collateralMissing = ReasonCode(rawValue: "collateral.missing")
    public static let collateralSignatureInvalid = ReasonCode(rawValue: "collateral.signature-invalid")
    public static let collateralExpired = ReasonCode(rawValue: "collateral.expired")
    public static let collateralMismatch = ReasonCode(rawValue: "collateral.mismatch")
    public static let tcbNoMatchingLevel = ReasonCode(rawValue: "tcb.no-matching-level")
    public static let tcbStatusNotAllowed = ReasonCode(rawValue: "tcb.status-not-allowed")
    public static let nonceMismatch = ReasonCode(rawValue: "nonce.mismatch")
    public static let pcrDigestMismatch = ReasonCode(rawValue: "pcr.digest-mismatch")
    public static let eventLogReplayMismatch = ReasonCode(rawValue: "eventlog.replay-mismatch")
    public static let policyMeasurementNotAllowed = ReasonCode(rawValue: "policy.measurement-not-allowed")
    public static let policyDebugNotAllowed = ReasonCode(rawValue: "policy.debug-not-allowed")
    /// The attestation key is not shown to live in a genuine TPM (no EK certificate, attributes of
    /// a key that can leave the TPM, no credential activation, an EK that is not enrolled).
    public static let tpmAKUntrusted = ReasonCode(rawValue: "tpm.ak-untrusted")
    /// The EK certificate does not chain to a pinned TPM manufacturer root, or is invalid.
    public static let tpmEKChainInvalid = ReasonCode(rawValue: "tpm.ek-chain-invalid")
    /// The engine serving requests was not started from the measured binary, and the policy
    /// does not allow that (`measurements.allow_unmeasured_engine`).
    public static let policyUnmeasuredEngine = ReasonCode(rawValue: "policy.unmeasured-engine")
    /// The worker advertises a model name no model it measured is bound to by the policy.
    public static let policyModelNameNotBound = ReasonCode(rawValue: "policy.model-name-not-bound")
    /// The worker could not recover the credential-activation secret (the AK is not in the EK's TPM).
    public static let tpmActivationFailed = ReasonCode(rawValue: "tpm.activation-failed")
    /// A GPU's measurement report is not signed by the key of its device certificate.
    public static let gpuSignatureInvalid = ReasonCode(rawValue: "gpu.signature-invalid")
    /// The firmware identity a GPU's report carries differs from its device certificate's.
    public static let gpuFWIDMismatch = ReasonCode(rawValue: "gpu.fwid-mismatch")
    /// A GPU measurement differs from every golden value its reference manifest allows.
    public static let gpuMeasurementMismatch = ReasonCode(rawValue: "gpu.measurement-mismatch")
    /// A TD's REPORTDATA does not commit to the GPU evidence presented beside its quote.
    public static let gpuBindingMismatch = ReasonCode(rawValue: "gpu.binding-mismatch")
    /// The policy requires GPU evidence and the worker presented none, or a GPU it does not accept.
    public static let policyGPUNotAllowed = ReasonCode(rawValue: "policy.gpu-not-allowed")
    /// No reference manifest for the GPU's driver or VBIOS was given or cached.
    public static let rimMissing = ReasonCode(rawValue: "rim.missing")
    /// A reference manifest is for another driver or VBIOS version than the report's.
    public static let rimVersionMismatch = ReasonCode(rawValue: "rim.version-mismatch")
    /// A reference manifest's XML signature does not verify under its signer.
    public static let rimSignatureInvalid = ReasonCode(rawValue: "rim.signature-invalid")
    /// A reference manifest's signer chain is not valid at the verification time.
    public static let rimExpired = ReasonCode(rawValue: "rim.expired")

    /// Every code the verifiers may report.
    public static let all: [ReasonCode] = [
        .evidenceMalformed, .evidenceUnsupported, .quoteSignatureInvalid, .qeReportSignatureInvalid,
        .qeReportBindingMismatch, .qeIdentityMismatch, .chainUntrustedRoot, .chainInvalid, .chainRevoked,
        .collateralMissing, .collateralSignatureInvalid, .collateralExpired, .collateralMismatch,
        .tcbNoMatchingLevel, .tcbStatusNotAllowed, .nonceMismatch, .pcrDigestMismatch,
        .eventLogReplayMismatch, .policyMeasurementNotAllowed, .policyDebugNotAllowed, .tpmAKUntrusted,
        .tpmEKChainInvalid, .tpmActivationFailed, .policyUnmeasuredEngine, .policyModelNameNotBound,
        .gpuSignatureInvalid, .gpuFWIDMismatch, .gpuMeasurementMismatch, .rimMissing, .rimVersionMismatch,
        .rimSignatureInvalid, .rimExpired, .gpuBindingMismatch, .policyGPUNotAllowed,
    ]
}

/// One reason a check failed: a stable code, the check that failed, and human text.
public struct Reason: Hashable, Sendable, CustomStringConvertible, Error {
    public let code: ReasonCode
    /// Name of the check or policy that produced the reason (`tpm.signature`, `policy.allowlist`).
    public let source: String
    public let message: String

    public init(_ code: ReasonCode, _ source: String, _ message: String) {
        self.code = code
        self.source = source
        self.message = message
    }

    public var description: String { "\(code) [\(source)]: \(message)" }
}
