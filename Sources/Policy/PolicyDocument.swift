import AttestationCore
import Foundation
import TONKit
import Yams

/// An allowlisted artifact: an inference binary or a model file, pinned by SHA-256.
public struct AllowedArtifact: Sendable, Equatable {
    public let name: String
    public let version: String?
    /// Lowercase hex SHA-256.
    public let sha256: String
    public let size: Int?
    /// Models: the names clients request it by (`names`); once any model entry lists names, a
    /// worker may advertise only names of models it measured.
    public var names: [String] = []
}

/// A policy document (`Policies/*.yaml`, schema `ccgate.policy/v1`): what evidence is accepted
/// and which measurements may run.
///
/// Documents are value types; loading checks every key against the schema and refuses anything
/// it does not understand, so a typo can never silently weaken a policy.
public struct PolicyDocument: Sendable, Equatable {
    public static let schema = "ccgate.policy/v1"

    public var name: String
    public var formats: [String]
    public var tpm: TPMRules
    public var tdx: TDXRules
    public var sgx = SGXRules()
    public var gpu = GPURules()
    public var binaries: [AllowedArtifact]
    public var models: [AllowedArtifact]
    /// Require at least one allowlisted binary and one allowlisted model among the measured files.
    public var requireMeasurements: Bool
    /// Admit workers whose engine was not started from the measured binary (`--engine-url`):
    /// labs and benchmarks only; recorded in the claims, named by lint.
    public var allowUnmeasuredEngine = false
    public var workers = WorkerRules()
    public var stake = StakeRules()

    /// NVIDIA GPUs bound into a TD's evidence (`evidence.gpu`, docs/POLICY.md).
    public struct GPURules: Sendable, Equatable {
        /// A TD worker must present at least one verified GPU.
        public var required = false
        /// Accepted driver versions (`550.90.07`); empty: any that NVIDIA's manifests cover.
        public var drivers: [String] = []
        /// Accepted VBIOS versions (`96.00.9f.00.01`, any case); empty: any.
        public var vbios: [String] = []
        /// Accepted architectures (`hopper`); empty: any the verifier reads.
        public var architectures: [String] = []
        /// SHA-256 of the reference manifests a GPU may be judged against (lowercase hex); empty:
        /// any NVIDIA-signed manifest for the report's driver and VBIOS versions. The worker
        /// supplies its manifests, and NVIDIA signs more than one for a version (test and
        /// production ones): pinning them takes that choice from the worker.
        public var manifests: [String] = []
    }

    /// How long admissions last.
    public struct WorkerRules: Sendable, Equatable {
        /// Seconds between re-attestations of an admitted worker; nil: the gateway's setting.
        public var reattestIntervalSeconds: Int?
        /// Seconds a session key may be used; a session older than this ends at its next
        /// re-attestation and the worker is admitted afresh with a new key. nil: no limit.
        public var sessionKeyLifetimeSeconds: Int?
    }

    /// The stake a worker's provider must hold on TON, where it is read, and how fresh it must be.
    public struct StakeRules: Sendable, Equatable {
        /// Minimum stake in nanotons (1 TON = 10^9); nil: no stake rule.
        public var minimumNanotons: UInt64?
        /// Where the stake is: a nominator pool position, a jetton wallet or a Cocoon proxy.
        public var source: StakeSourceKind?
        /// Lowercase hex code hashes the stake contract may run (the pool, the jetton wallet or the proxy).
        public var codeHashes: [String] = []
        /// Seconds an observation is trusted before it is read again (the oracle's TTL).
        public var refreshSeconds = 300
        /// Seconds an admitted provider keeps serving while the chain data cannot be read.
        public var graceSeconds = 900
        /// Seconds a provider proof stays acceptable after it was signed.
        public var proofMaxAgeSeconds = 600
    }

    public struct TPMRules: Sendable, Equatable {
        public var allowSHA1 = false
        public var requireRestrictedAK = false
        /// What makes an attestation key believable (`evidence.tpm.ak_trust`).
        public var akTrust = AKTrust.ekCertificate
        /// `enrolled`: the SHA-256 digests (lowercase hex) of the EK SubjectPublicKeyInfos accepted.
        public var enrolledEKs: [String] = []
        /// bank → PCR index → accepted lowercase hex values.
        public var pcrs: [String: [Int: [String]]] = [:]
    }

    /// What an SGX enclave must be: one of these MRENCLAVEs, or signed by one of these signers
    /// with the product id and at least the security version.
    public struct SGXRules: Sendable, Equatable {
        public struct Signer: Sendable, Equatable {
            public var mrsigner: String
            public var isvProdID: Int
            public var minISVSVN: Int
        }
        public var mrenclaves: [String] = []
        public var signers: [Signer] = []
    }

    public struct TDXRules: Sendable, Equatable {
        public var acceptedTCBStatuses: [String] = [TCBStatus.upToDate.rawValue]
        public var allowDebug = false
        /// Days an `OutOfDate` platform stays acceptable after the tcbDate of its TCB level
        /// (Intel's `platform_grace_period`); 0: none.
        public var platformGracePeriodDays = 0
        /// Days collateral stays acceptable past its `nextUpdate` (Intel's
        /// `collateral_grace_period`); 0: none.
        public var collateralGracePeriodDays = 0
        public var rejectedAdvisoryIDs: [String] = []
        /// Accepted MRTD values (lowercase hex); empty: any.
        public var mrtds: [String] = []
        /// Accepted RTMR sets: each maps a register index (0–3) to its value; a TD meets the rule
        /// when every register of one set matches. Empty: any.
        public var rtmrSets: [[Int: String]] = []
        /// Accepted Cocoon image hashes (SHA-256 over MRTD ‖ MRCONFIGID ‖ MROWNER ‖ MROWNERCONFIG ‖
        /// RTMR0..3 ‖ 64 zero bytes), as a Cocoon root contract lists them; empty: any.
        public var imageHashes: [String] = []
    }

    /// Intel's TCB status names, for checking policies.
    public static let knownTCBStatuses = TCBStatus.allCases.map(\.rawValue)

    /// The built-in default used when no policy file is named: accept `UpToDate` TDX only, no
    /// debug TDs, no SHA-1 TPM quotes, no measurement requirements.
    /// The built-in default as a document (what the policy history records when no file is named).
    public static let builtinDefaultText = "schema: \(schema)\nname: builtin-default\n"

    /// Documents that name no formats accept TPM quotes only: a policy accepting TDX or SGX
    /// evidence must say so and pin the guest (see ``lint``).
    public static let builtinDefault = PolicyDocument(
        name: "builtin-default", formats: [EvidenceFormat.tpm2Quote.rawValue], tpm: TPMRules(), tdx: TDXRules(),
        binaries: [], models: [], requireMeasurements: false)

    /// What `ccgate evidence verify` applies without a policy file: the built-in default's
    /// evidence rules for every format (hand verification pins no guest; admission does).
    public static var handVerification: PolicyDocument {
        var document = builtinDefault
        document.formats = EvidenceFormat.allCases.map(\.rawValue)
        return document
    }
}

/// What makes a TPM attestation key believable (`evidence.tpm.ak_trust`).
///
/// Threat: a quote signed by a key made in software. Under `ek-certificate` and `enrolled` the
/// AK must be shown, by credential activation, to live in the TPM whose endorsement key is
/// certified by a pinned manufacturer root (or is on the enrolled list); `as-presented` trusts
/// whatever key the evidence names and is for labs only.
public enum AKTrust: String, Sendable, CaseIterable {
    case ekCertificate = "ek-certificate"
    case enrolled
    case asPresented = "as-presented"
}

/// A problem in a policy document, with its position.
public struct PolicyLoadError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let line: Int
    public let column: Int
    public let message: String

    public var description: String { "\(file):\(line):\(column): \(message)" }
}

extension PolicyDocument {
    /// Loads and checks a policy file. Every problem found is reported, not just the first.
    public static func load(contentsOf url: URL) throws(PolicyLoadErrors) -> PolicyDocument {
        let text: String
        do { text = try String(contentsOf: url, encoding: .utf8) } catch {
            throw PolicyLoadErrors([
                PolicyLoadError(
                    file: url.path, line: 0, column: 0, message: "cannot read: \(error.localizedDescription)")
            ])
        }
        return try parse(text, file: url.path)
    }

    public static func parse(_ text: String, file: String = "<policy>") throws(PolicyLoadErrors) -> PolicyDocument {
        // Cap: policy documents are a few KiB; a multi-megabyte one is a mistake or an attack on the parser.
        guard text.utf8.count <= 1 << 20 else {
            throw PolicyLoadErrors([
                PolicyLoadError(file: file, line: 0, column: 0, message: "policy is larger than 1 MiB")
            ])
        }
        let composed: Node?
        do {
            composed = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            let (line, column) = Self.position(of: error)
            throw PolicyLoadErrors([PolicyLoadError(file: file, line: line, column: column, message: "YAML: \(error)")])
        } catch {
            throw PolicyLoadErrors([PolicyLoadError(file: file, line: 0, column: 0, message: "YAML: \(error)")])
        }
        guard let root = composed else {
            throw PolicyLoadErrors([PolicyLoadError(file: file, line: 1, column: 1, message: "empty document")])
        }
        var reader = NodeReader(file: file)
        let doc = reader.document(root)
        if !reader.errors.isEmpty { throw PolicyLoadErrors(reader.errors) }
        return doc!
    }

    private static func position(of error: YamlError) -> (Int, Int) {
        switch error {
        case .scanner(_, _, let mark, _), .parser(_, _, let mark, _), .composer(_, _, let mark, _):
            return (mark.line, mark.column)
        default:
            return (0, 0)
        }
    }
}

/// All problems found while loading one policy.
public struct PolicyLoadErrors: Error, CustomStringConvertible, ExpressibleByArrayLiteral {
    public let errors: [PolicyLoadError]
    public init(_ errors: [PolicyLoadError]) { self.errors = errors }
    public init(arrayLiteral elements: PolicyLoadError...) { self.errors = elements }
    public var description: String { errors.map(\.description).joined(separator: "\n") }
}

/// Walks the YAML node tree, checking keys and types against the schema and collecting errors.
struct NodeReader {
    let file: String
    var errors = [PolicyLoadError]()

    mutating func fail(_ node: Node?, _ message: String) {
        errors.append(
            PolicyLoadError(file: file, line: node?.mark?.line ?? 0, column: node?.mark?.column ?? 0, message: message))
    }

    /// The mapping's entries, after refusing keys outside `allowed`.
    mutating func mapping(_ node: Node, _ path: String, allowed: Set<String>) -> [String: Node] {
        guard let map = node.mapping else {
            fail(node, "\(path) must be a mapping")
            return [:]
        }
        var out = [String: Node]()
        for (key, value) in map {
            guard let k = key.string else {
                fail(key, "\(path) has a non-string key")
                continue
            }
            if !allowed.contains(k) {
                fail(key, "unknown key '\(k)' in \(path) (known: \(allowed.sorted().joined(separator: ", ")))")
                continue
            }
            out[k] = value
        }
        return out
    }

    mutating func string(_ node: Node?, _ path: String) -> String? {
        guard let node else { return nil }
        guard let s = node.scalar?.string else {
            fail(node, "\(path) must be a string")
            return nil
        }
        return s
    }

    mutating func bool(_ node: Node?, _ path: String, default value: Bool) -> Bool {
        guard let node else { return value }
        guard let b = node.bool else {
            fail(node, "\(path) must be true or false")
            return value
        }
        return b
    }

    mutating func strings(_ node: Node?, _ path: String) -> [String]? {
        guard let node else { return nil }
        guard let seq = node.sequence else {
            fail(node, "\(path) must be a list")
            return nil
        }
        return seq.compactMap { string($0, path + "[]") }
    }

    mutating func hex(_ node: Node?, _ path: String, bytes: Int) -> String? {
        guard let text = string(node, path) else { return nil }
        guard let data = Data(hex: text), data.count == bytes else {
            fail(node, "\(path) must be \(bytes * 2) hex digits")
            return nil
        }
        return data.hex
    }

    mutating func document(_ root: Node) -> PolicyDocument? {
        let top = mapping(root, "policy", allowed: ["schema", "name", "evidence", "measurements", "workers", "stake"])
        let schema = string(top["schema"], "schema")
        if top["schema"] == nil { fail(root, "missing 'schema: \(PolicyDocument.schema)'") }
        if let schema, schema != PolicyDocument.schema {
            fail(top["schema"], "schema '\(schema)' is not \(PolicyDocument.schema)")
        }
        guard let name = string(top["name"], "name") else {
            if top["name"] == nil { fail(root, "missing 'name'") }
            return nil
        }
        var doc = PolicyDocument.builtinDefault
        doc.name = name
        if let evidence = top["evidence"] {
            let ev = mapping(evidence, "evidence", allowed: ["formats", "tpm", "tdx", "sgx", "gpu"])
            if let sgxNode = ev["sgx"] { sgxRules(sgxNode, into: &doc.sgx) }
            if let gpuNode = ev["gpu"] { gpuRules(gpuNode, into: &doc.gpu) }
            if let formats = strings(ev["formats"], "evidence.formats") {
                for f in formats where EvidenceFormat(rawValue: f) == nil {
                    fail(ev["formats"], "evidence.formats: unknown format '\(f)'")
                }
                doc.formats = formats
            }
            if let tpmNode = ev["tpm"] {
                let tpm = mapping(
                    tpmNode, "evidence.tpm",
                    allowed: ["allow_sha1", "require_restricted_ak", "pcrs", "ak_trust", "enrolled_eks"])
                if let trust = string(tpm["ak_trust"], "evidence.tpm.ak_trust") {
                    if let value = AKTrust(rawValue: trust) {
                        doc.tpm.akTrust = value
                    } else {
                        let known = AKTrust.allCases.map(\.rawValue).joined(separator: ", ")
                        fail(tpm["ak_trust"], "evidence.tpm.ak_trust: '\(trust)' is not one of \(known)")
                    }
                }
                if let node = tpm["enrolled_eks"] {
                    doc.tpm.enrolledEKs = (node.sequence ?? []).compactMap {
                        hex($0, "evidence.tpm.enrolled_eks[]", bytes: 32)
                    }
                    if node.sequence == nil { fail(node, "evidence.tpm.enrolled_eks must be a list") }
                }
                if doc.tpm.akTrust == .enrolled, doc.tpm.enrolledEKs.isEmpty {
                    fail(tpmNode, "evidence.tpm.ak_trust: enrolled needs a non-empty enrolled_eks list")
                }
                doc.tpm.allowSHA1 = bool(tpm["allow_sha1"], "evidence.tpm.allow_sha1", default: false)
                doc.tpm.requireRestrictedAK = bool(
                    tpm["require_restricted_ak"], "evidence.tpm.require_restricted_ak", default: false)
                if let pcrsNode = tpm["pcrs"] {
                    let banks = mapping(pcrsNode, "evidence.tpm.pcrs", allowed: ["sha1", "sha256", "sha384", "sha512"])
                    for (bankName, bankNode) in banks {
                        let size = HashAlgorithm(rawValue: bankName)!.digestSize
                        let indices = mapping(
                            bankNode, "evidence.tpm.pcrs.\(bankName)", allowed: Set((0..<24).map(String.init)))
                        for (indexText, valuesNode) in indices {
                            let path = "evidence.tpm.pcrs.\(bankName).\(indexText)"
                            guard let seq = valuesNode.sequence, !seq.isEmpty else {
                                fail(valuesNode, "\(path) must be a non-empty list of accepted values")
                                continue
                            }
                            doc.tpm.pcrs[bankName, default: [:]][Int(indexText)!] = seq.compactMap {
                                hex($0, path, bytes: size)
                            }
                        }
                    }
                }
            }
            if let tdxNode = ev["tdx"] {
                tdxRules(tdxNode, into: &doc.tdx)
            }
        }
        if let measurementsNode = top["measurements"] {
            let m = mapping(
                measurementsNode, "measurements", allowed: ["require", "binaries", "models", "allow_unmeasured_engine"])
            doc.requireMeasurements = bool(m["require"], "measurements.require", default: true)
            doc.allowUnmeasuredEngine = bool(
                m["allow_unmeasured_engine"], "measurements.allow_unmeasured_engine", default: false)
            doc.binaries = artifacts(m["binaries"], "measurements.binaries")
            doc.models = artifacts(m["models"], "measurements.models")
        }
        if let workersNode = top["workers"] {
            let w = mapping(
                workersNode, "workers", allowed: ["reattest_interval_seconds", "session_key_lifetime_seconds"])
            doc.workers.reattestIntervalSeconds = seconds(
                w["reattest_interval_seconds"], "workers.reattest_interval_seconds")
            doc.workers.sessionKeyLifetimeSeconds = seconds(
                w["session_key_lifetime_seconds"], "workers.session_key_lifetime_seconds")
        }
        if let stakeNode = top["stake"] {
            stakeRules(stakeNode, into: &doc.stake)
        }
        return doc
    }

    mutating func stakeRules(_ node: Node, into rules: inout PolicyDocument.StakeRules) {
        let st = mapping(
            node, "stake",
            allowed: [
                "minimum_ton", "source", "pool", "jetton_master", "cocoon_root", "code_hashes", "refresh_seconds",
                "grace_seconds",
                "proof_max_age_seconds",
            ])
        if let node = st["minimum_ton"] {
            if let text = node.scalar?.string, let nano = Self.nanotons(text) {
                rules.minimumNanotons = nano
            } else {
                fail(node, "stake.minimum_ton must be a TON amount such as 100 or 2.5 (at most 9 decimals)")
            }
        }
        func address(_ key: String) -> TONAddress? {
            guard let text = string(st[key], "stake.\(key)") else { return nil }
            do throws(TONAddressError) {
                let a = try TONAddress.parse(text).address
                guard a.isStandardWorkchain else {
                    fail(st[key], "stake.\(key): workchain \(a.workchain) is not 0 or -1")
                    return nil
                }
                return a
            } catch {
                fail(st[key], "stake.\(key) is not a TON address: \(error)")
                return nil
            }
        }
        let pool = address("pool"), master = address("jetton_master"), root = address("cocoon_root")
        switch string(st["source"], "stake.source") ?? (st["minimum_ton"] == nil ? nil : "nominator-pool") {
        case nil: break
        case "nominator-pool":
            if let pool {
                rules.source = .nominatorPool(pool: pool)
            } else if st["pool"] == nil {
                fail(node, "stake.source nominator-pool needs stake.pool")
            }
        case "jetton":
            if let master {
                rules.source = .jetton(master: master)
            } else if st["jetton_master"] == nil {
                fail(node, "stake.source jetton needs stake.jetton_master")
            }
        case "cocoon-proxy": rules.source = .cocoonProxy(root: root)
        case let other?: fail(st["source"], "stake.source '\(other)' is not nominator-pool, jetton or cocoon-proxy")
        }
        if let hashes = st["code_hashes"] {
            guard let seq = hashes.sequence else {
                fail(hashes, "stake.code_hashes must be a list")
                return
            }
            rules.codeHashes = seq.compactMap { hex($0, "stake.code_hashes[]", bytes: 32) }
        }
        if rules.minimumNanotons != nil, rules.codeHashes.isEmpty {
            fail(node, "stake.code_hashes must list the code hashes the stake contract may run")
        }
        if rules.minimumNanotons == nil, st["source"] != nil || st["code_hashes"] != nil {
            fail(node, "stake needs minimum_ton when it names a source")
        }
        rules.refreshSeconds = seconds(st["refresh_seconds"], "stake.refresh_seconds") ?? rules.refreshSeconds
        rules.graceSeconds = seconds(st["grace_seconds"], "stake.grace_seconds") ?? rules.graceSeconds
        rules.proofMaxAgeSeconds =
            seconds(st["proof_max_age_seconds"], "stake.proof_max_age_seconds") ?? rules.proofMaxAgeSeconds
    }

    mutating func gpuRules(_ node: Node, into rules: inout PolicyDocument.GPURules) {
        let gpu = mapping(
            node, "evidence.gpu", allowed: ["required", "drivers", "vbios", "architectures", "manifests"])
        if let list = gpu["manifests"] {
            rules.manifests = (list.sequence ?? []).compactMap { hex($0, "evidence.gpu.manifests[]", bytes: 32) }
            if list.sequence == nil { fail(list, "evidence.gpu.manifests must be a list") }
        }
        rules.required = bool(gpu["required"], "evidence.gpu.required", default: false)
        rules.drivers = strings(gpu["drivers"], "evidence.gpu.drivers") ?? []
        rules.vbios = (strings(gpu["vbios"], "evidence.gpu.vbios") ?? []).map { $0.lowercased() }
        rules.architectures = strings(gpu["architectures"], "evidence.gpu.architectures") ?? []
        for arch in rules.architectures where arch != "hopper" {
            fail(gpu["architectures"], "evidence.gpu.architectures: unknown architecture '\(arch)' (known: hopper)")
        }
    }

    mutating func sgxRules(_ node: Node, into rules: inout PolicyDocument.SGXRules) {
        let sgx = mapping(node, "evidence.sgx", allowed: ["mrenclaves", "signers"])
        if let list = sgx["mrenclaves"] {
            rules.mrenclaves = (list.sequence ?? []).compactMap { hex($0, "evidence.sgx.mrenclaves[]", bytes: 32) }
            if list.sequence == nil { fail(list, "evidence.sgx.mrenclaves must be a list") }
        }
        guard let list = sgx["signers"] else { return }
        guard let seq = list.sequence else {
            fail(list, "evidence.sgx.signers must be a list")
            return
        }
        for item in seq {
            let s = mapping(item, "evidence.sgx.signers[]", allowed: ["mrsigner", "isvprodid", "min_isvsvn"])
            let signer = hex(s["mrsigner"], "evidence.sgx.signers[].mrsigner", bytes: 32)
            let prod = s["isvprodid"]?.int
            let svn = s["min_isvsvn"]?.int
            guard let signer, let prod, (0...65_535).contains(prod), let svn, (0...65_535).contains(svn) else {
                fail(item, "evidence.sgx.signers[] needs mrsigner (32 bytes hex), isvprodid and min_isvsvn (0-65535)")
                continue
            }
            rules.signers.append(.init(mrsigner: signer, isvProdID: prod, minISVSVN: svn))
        }
    }

    mutating func seconds(_ node: Node?, _ path: String) -> Int? {
        guard let node else { return nil }
        guard let n = node.int, (1...31_536_000).contains(n) else {
            fail(node, "\(path) must be a whole number of seconds from 1 to 31536000")
            return nil
        }
        return n
    }

    /// "2.5" → 2_500_000_000. Decimal text only: a float would round a stake.
    static func nanotons(_ text: String) -> UInt64? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), !parts[0].isEmpty, parts[0].allSatisfy(\.isASCII),
            parts[0].allSatisfy(\.isNumber),
            let whole = UInt64(parts[0])
        else { return nil }
        var fraction: UInt64 = 0
        if parts.count == 2 {
            let f = parts[1]
            guard (1...9).contains(f.count), f.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
            fraction = UInt64(f + String(repeating: "0", count: 9 - f.count))!
        }
        let (scaled, overflow) = whole.multipliedReportingOverflow(by: 1_000_000_000)
        guard !overflow else { return nil }
        let (sum, overflow2) = scaled.addingReportingOverflow(fraction)
        return overflow2 ? nil : sum
    }

    mutating func tdxRules(_ node: Node, into rules: inout PolicyDocument.TDXRules) {
        let path = "evidence.tdx"
        let tdx = mapping(
            node, path,
            allowed: [
                "accepted_tcb_statuses", "allow_debug", "platform_grace_period_days", "collateral_grace_period_days",
                "rejected_advisory_ids", "mrtd", "rtmrs", "image_hashes",
            ])
        if let statuses = strings(tdx["accepted_tcb_statuses"], "\(path).accepted_tcb_statuses") {
            for s in statuses where !PolicyDocument.knownTCBStatuses.contains(s) {
                fail(tdx["accepted_tcb_statuses"], "\(path).accepted_tcb_statuses: unknown Intel TCB status '\(s)'")
            }
            rules.acceptedTCBStatuses = statuses
        }
        rules.allowDebug = bool(tdx["allow_debug"], "\(path).allow_debug", default: false)
        rules.platformGracePeriodDays = days(tdx["platform_grace_period_days"], "\(path).platform_grace_period_days")
        rules.collateralGracePeriodDays = days(
            tdx["collateral_grace_period_days"], "\(path).collateral_grace_period_days")
        if let ids = strings(tdx["rejected_advisory_ids"], "\(path).rejected_advisory_ids") {
            for id in ids where !id.hasPrefix("INTEL-SA-") {
                fail(tdx["rejected_advisory_ids"], "\(path).rejected_advisory_ids: '\(id)' is not an INTEL-SA-… id")
            }
            rules.rejectedAdvisoryIDs = ids
        }
        rules.mrtds = hexList(tdx["mrtd"], "\(path).mrtd", bytes: 48)
        rules.imageHashes = hexList(tdx["image_hashes"], "\(path).image_hashes", bytes: 32)
        if let node = tdx["rtmrs"] {
            guard let seq = node.sequence else {
                fail(node, "\(path).rtmrs must be a list of RTMR sets")
                return
            }
            for (i, item) in seq.enumerated() {
                let set = mapping(item, "\(path).rtmrs[\(i)]", allowed: ["rtmr0", "rtmr1", "rtmr2", "rtmr3"])
                var values = [Int: String]()
                for (key, valueNode) in set {
                    if let v = hex(valueNode, "\(path).rtmrs[\(i)].\(key)", bytes: 48) {
                        values[Int(key.dropFirst(4))!] = v
                    }
                }
                if set.isEmpty { fail(item, "\(path).rtmrs[\(i)] names no register") }
                rules.rtmrSets.append(values)
            }
        }
    }

    mutating func days(_ node: Node?, _ path: String) -> Int {
        guard let node else { return 0 }
        guard let n = node.int, n >= 0, n <= 3650 else {
            fail(node, "\(path) must be a whole number of days from 0 to 3650")
            return 0
        }
        return n
    }

    mutating func hexList(_ node: Node?, _ path: String, bytes: Int) -> [String] {
        guard let node else { return [] }
        guard let seq = node.sequence else {
            fail(node, "\(path) must be a list")
            return []
        }
        return seq.compactMap { hex($0, path + "[]", bytes: bytes) }
    }

    mutating func artifacts(_ node: Node?, _ path: String) -> [AllowedArtifact] {
        guard let node else { return [] }
        guard let seq = node.sequence else {
            fail(node, "\(path) must be a list")
            return []
        }
        var out = [AllowedArtifact]()
        for (i, item) in seq.enumerated() {
            let p = "\(path)[\(i)]"
            let fields = mapping(item, p, allowed: ["name", "version", "sha256", "size", "names"])
            let name = string(fields["name"], p + ".name")
            let digest = hex(fields["sha256"], p + ".sha256", bytes: 32)
            if fields["name"] == nil { fail(item, "\(p) is missing 'name'") }
            if fields["sha256"] == nil { fail(item, "\(p) is missing 'sha256'") }
            var size: Int?
            if let sizeNode = fields["size"] {
                size = sizeNode.int
                if size == nil || size! < 0 { fail(sizeNode, "\(p).size must be a non-negative integer") }
            }
            if let name, let digest {
                var artifact = AllowedArtifact(
                    name: name, version: string(fields["version"], p + ".version"), sha256: digest, size: size)
                artifact.names = strings(fields["names"], p + ".names") ?? []
                out.append(artifact)
            }
        }
        return out
    }
}
