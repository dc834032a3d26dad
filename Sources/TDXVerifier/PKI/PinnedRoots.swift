/// The production trust anchors for DCAP verification, pinned by the SHA-256 of their DER
/// encoding (as listed in `certs/pinned-roots.txt`; a test keeps the two equal).
///
/// Threat: a look-alike root ("Intel SGX Root CA" made by anyone). Only this exact key anchors
/// PCK chains and collateral signers unless an operator configures other roots.
public enum PinnedRoots {
    /// Intel SGX Root CA (the root of every PCK certificate, TCB info and QE identity signer).
    public static let intelSGXRootCA = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"

    public static let production: Set<String> = [intelSGXRootCA]
}
