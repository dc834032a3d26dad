import Foundation
import TONKit

/// One semantic difference between two policies.
public struct PolicyChange: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable { case added = "+", removed = "-", changed = "~" }
    public let kind: Kind
    /// The setting, as its YAML path (`measurements.binaries`, `evidence.tdx.allow_debug`).
    public let path: String
    public let text: String

    public var description: String { "\(kind.rawValue) \(path): \(text)" }
}

extension PolicyDocument {
    /// What changes from `self` to `new`: allowlist entries added and removed (by digest, so a
    /// renamed entry shows as a change of name), thresholds and switches changed. Order: the
    /// document's order, then by path.
    public func changes(to new: PolicyDocument) -> [PolicyChange] {
        var out = [PolicyChange]()
        func scalar<T: Equatable>(_ path: String, _ a: T, _ b: T, _ show: (T) -> String) {
            if a != b { out.append(PolicyChange(kind: .changed, path: path, text: "\(show(a)) → \(show(b))")) }
        }
        func set(_ path: String, _ a: [String], _ b: [String], _ show: (String) -> String = { $0 }) {
            let old = Set(a), new = Set(b)
            for x in b where !old.contains(x) { out.append(PolicyChange(kind: .added, path: path, text: show(x))) }
            for x in a where !new.contains(x) { out.append(PolicyChange(kind: .removed, path: path, text: show(x))) }
        }
        func optional(_ v: Int?) -> String { v.map(String.init) ?? "unset" }

        scalar("name", name, new.name) { $0 }
        set("evidence.formats", formats, new.formats)
        scalar("evidence.tpm.allow_sha1", tpm.allowSHA1, new.tpm.allowSHA1) { "\($0)" }
        scalar("evidence.tpm.require_restricted_ak", tpm.requireRestrictedAK, new.tpm.requireRestrictedAK) { "\($0)" }
        scalar("evidence.tpm.ak_trust", tpm.akTrust, new.tpm.akTrust) { $0.rawValue }
        set("evidence.tpm.enrolled_eks", tpm.enrolledEKs, new.tpm.enrolledEKs)
        for bank in Set(tpm.pcrs.keys).union(new.tpm.pcrs.keys).sorted() {
            let a = tpm.pcrs[bank] ?? [:], b = new.tpm.pcrs[bank] ?? [:]
            for index in Set(a.keys).union(b.keys).sorted() {
                set("evidence.tpm.pcrs.\(bank).\(index)", a[index] ?? [], b[index] ?? [])
            }
        }
        let t = tdx, n = new.tdx
        set("evidence.tdx.accepted_tcb_statuses", t.acceptedTCBStatuses, n.acceptedTCBStatuses)
        scalar("evidence.tdx.allow_debug", t.allowDebug, n.allowDebug) { "\($0)" }
        scalar("evidence.tdx.platform_grace_period_days", t.platformGracePeriodDays, n.platformGracePeriodDays) {
            "\($0)"
        }
        scalar("evidence.tdx.collateral_grace_period_days", t.collateralGracePeriodDays, n.collateralGracePeriodDays) {
            "\($0)"
        }
        set("evidence.tdx.rejected_advisory_ids", t.rejectedAdvisoryIDs, n.rejectedAdvisoryIDs)
        set("evidence.tdx.mrtd", t.mrtds, n.mrtds)
        func rtmrSet(_ s: [Int: String]) -> String {
            s.sorted { $0.key < $1.key }.map { "rtmr\($0.key)=\($0.value)" }.joined(separator: " ")
        }
        set("evidence.tdx.rtmrs", t.rtmrSets.map(rtmrSet), n.rtmrSets.map(rtmrSet))
        set("evidence.tdx.image_hashes", t.imageHashes, n.imageHashes)
        set("evidence.sgx.mrenclaves", sgx.mrenclaves, new.sgx.mrenclaves)
        func signer(_ s: SGXRules.Signer) -> String {
            "\(s.mrsigner) isvprodid=\(s.isvProdID) min_isvsvn=\(s.minISVSVN)"
        }
        set("evidence.sgx.signers", sgx.signers.map(signer), new.sgx.signers.map(signer))
        scalar("evidence.gpu.required", gpu.required, new.gpu.required) { "\($0)" }
        set("evidence.gpu.drivers", gpu.drivers, new.gpu.drivers)
        set("evidence.gpu.vbios", gpu.vbios, new.gpu.vbios)
        set("evidence.gpu.architectures", gpu.architectures, new.gpu.architectures)
        set("evidence.gpu.manifests", gpu.manifests, new.gpu.manifests)
        scalar("measurements.allow_unmeasured_engine", allowUnmeasuredEngine, new.allowUnmeasuredEngine) { "\($0)" }
        scalar("measurements.require", requireMeasurements, new.requireMeasurements) { "\($0)" }
        artifacts("measurements.binaries", binaries, new.binaries, into: &out)
        artifacts("measurements.models", models, new.models, into: &out)
        scalar(
            "workers.reattest_interval_seconds", workers.reattestIntervalSeconds, new.workers.reattestIntervalSeconds,
            optional)
        scalar(
            "workers.session_key_lifetime_seconds", workers.sessionKeyLifetimeSeconds,
            new.workers.sessionKeyLifetimeSeconds,
            optional)
        scalar("stake.minimum_ton", stake.minimumNanotons, new.stake.minimumNanotons) {
            $0.map(Self.tonText) ?? "unset"
        }
        scalar("stake.source", stake.source, new.stake.source) { $0.map(Self.sourceText) ?? "unset" }
        set("stake.code_hashes", stake.codeHashes, new.stake.codeHashes)
        scalar("stake.refresh_seconds", stake.refreshSeconds, new.stake.refreshSeconds) { "\($0)" }
        scalar("stake.grace_seconds", stake.graceSeconds, new.stake.graceSeconds) { "\($0)" }
        scalar("stake.proof_max_age_seconds", stake.proofMaxAgeSeconds, new.stake.proofMaxAgeSeconds) { "\($0)" }
        return out
    }

    private func artifacts(
        _ path: String, _ a: [AllowedArtifact], _ b: [AllowedArtifact], into out: inout [PolicyChange]
    ) {
        func label(_ x: AllowedArtifact) -> String { x.name + (x.version.map { " \($0)" } ?? "") }
        let old = Dictionary(a.map { ($0.sha256, $0) }, uniquingKeysWith: { first, _ in first })
        let new = Dictionary(b.map { ($0.sha256, $0) }, uniquingKeysWith: { first, _ in first })
        for x in b {
            if let before = old[x.sha256] {
                if before != x {
                    out.append(
                        PolicyChange(
                            kind: .changed, path: path, text: "\(label(before)) → \(label(x)) (sha256 \(x.sha256))"))
                }
            } else {
                out.append(PolicyChange(kind: .added, path: path, text: "\(label(x)) (sha256 \(x.sha256))"))
            }
        }
        for x in a where new[x.sha256] == nil {
            out.append(PolicyChange(kind: .removed, path: path, text: "\(label(x)) (sha256 \(x.sha256))"))
        }
    }

    static func sourceText(_ kind: StakeSourceKind) -> String {
        switch kind {
        case .nominatorPool(let pool): "nominator-pool \(pool.raw)"
        case .jetton(let master): "jetton of \(master.raw)"
        case .cocoonProxy(let root): "cocoon-proxy" + (root.map { " of root \($0.raw)" } ?? "")
        }
    }

    /// 2_500_000_000 → "2.5".
    public static func tonText(_ nano: UInt64) -> String {
        let whole = nano / 1_000_000_000, fraction = nano % 1_000_000_000
        guard fraction > 0 else { return "\(whole)" }
        var f = String(fraction)
        f = String(repeating: "0", count: 9 - f.count) + f
        while f.hasSuffix("0") { f.removeLast() }
        return "\(whole).\(f)"
    }
}
