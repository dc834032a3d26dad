import AttestationCore
import Foundation

/// Intel's TCB status strings, as the TCB evaluation compares them.
extension TCBStatus {
    /// The status strings a grace period covers.
    static let outOfDateNames: Set<String> = Set(outOfDateFamily.map(\.rawValue))
    /// Statuses of a current module that turn an out-of-date launch into a relaunch advice.
    static let relaunchable: Set<String> = Set(
        [TCBStatus.upToDate, .swHardeningNeeded, .configurationNeeded, .configurationAndSWHardeningNeeded].map(
            \.rawValue))

    static func needsConfiguration(_ status: String) -> Bool {
        [
            TCBStatus.configurationNeeded, .configurationAndSWHardeningNeeded, .outOfDateConfigurationNeeded,
            .tdRelaunchAdvisedConfigurationNeeded,
        ].map(\.rawValue).contains(status)
    }

    /// An out-of-date identity (QE or TDX module) drags the platform status down the way Intel's
    /// QVL converges them: up to date → out of date; configuration needed → out of date with
    /// configuration needed; a revoked identity revokes.
    static func converge(platform: String, identity: String) -> String {
        switch (TCBStatus(rawValue: platform), TCBStatus(rawValue: identity)) {
        case (_, .revoked?):
            return TCBStatus.revoked.rawValue
        case (.upToDate?, .outOfDate?), (.upToDate?, .outOfDateConfigurationNeeded?),
            (.swHardeningNeeded?, .outOfDate?), (.swHardeningNeeded?, .outOfDateConfigurationNeeded?):
            return TCBStatus.outOfDate.rawValue
        case (.configurationNeeded?, .outOfDate?), (.configurationNeeded?, .outOfDateConfigurationNeeded?),
            (.configurationAndSWHardeningNeeded?, .outOfDate?),
            (.configurationAndSWHardeningNeeded?, .outOfDateConfigurationNeeded?):
            return TCBStatus.outOfDateConfigurationNeeded.rawValue
        default:
            return platform
        }
    }
}

/// The outcome of matching a platform against TCB info: the status and what it rests on.
struct TCBResult: Equatable {
    var status: String
    var advisoryIDs: [String]
    /// The earliest tcbDate among the matched platform, module and QE levels: the date Intel's
    /// appraisal policies measure a platform grace period from.
    var tcbDate: Date
    var platformStatus: String
    var qeStatus: String
    var moduleStatus: String?
}

/// Intel's TCB level matching (QVL `TcbLevelCheck`, `TdxModuleCheck`, `TDRelaunchCheck`), as a
/// pure function of the certified platform TCB, the quote and the collateral.
enum TCBEvaluation {
    enum Failure: Error, Equatable {
        case noMatchingLevel(String)
        case moduleMismatch(String)
    }

    /// A platform level with the module level that judged it (TDX), converged.
    struct Platform {
        var status: String
        var advisories: Set<String>
        var dates: [Date]
        var platformStatus: String
        var moduleStatus: String?
    }

    static func evaluate(
        platform: SGXExtension, tcbInfo: TCBInfo, td: TDReport?, qe: TCBInfo.IdentityLevel?
    ) -> Result<TCBResult, Failure> {
        let levels = canonicalOrder(tcbInfo.levels)
        var result: Platform
        switch judge(platform: platform, levels: levels, tcbInfo: tcbInfo, teeTCBSVN: td?.teeTCBSVN) {
        case .success(let r): result = r
        case .failure(let f): return .failure(f)
        }
        // A TD 1.5 report also carries the SVNs of the module running now (after a TD-preserving
        // update). When the TD was launched on an out-of-date module but runs on a current one,
        // Intel advises relaunching rather than calling the platform out of date.
        // As in Intel's QVL, only when the quoting enclave itself is current.
        let qeCurrent =
            qe.map {
                ![TCBStatus.outOfDate, .outOfDateConfigurationNeeded, .revoked].map(\.rawValue).contains($0.status)
            } ?? false
        if qeCurrent, let svn2 = td?.teeTCBSVN2, TCBStatus.outOfDateNames.contains(result.status),
            case .success(let current) = judge(platform: platform, levels: levels, tcbInfo: tcbInfo, teeTCBSVN: svn2),
            TCBStatus.relaunchable.contains(current.status)
        {
            let configuration =
                TCBStatus.needsConfiguration(result.status) || TCBStatus.needsConfiguration(current.status)
            result.status =
                (configuration ? TCBStatus.tdRelaunchAdvisedConfigurationNeeded : .tdRelaunchAdvised).rawValue
        }
        guard let qe else {
            return .failure(.noMatchingLevel("the quoting enclave's ISV SVN is below every QE identity TCB level"))
        }
        let status = TCBStatus.converge(platform: result.status, identity: qe.status)
        let advisories = result.advisories.union(qe.advisoryIDs)
        return .success(
            TCBResult(
                status: status, advisoryIDs: advisories.sorted(), tcbDate: (result.dates + [qe.tcbDate]).min()!,
                platformStatus: result.platformStatus, qeStatus: qe.status, moduleStatus: result.moduleStatus))
    }

    /// The first level (newest first) the platform meets, converged with its TDX module level.
    static func judge(
        platform: SGXExtension, levels: [TCBInfo.Level], tcbInfo: TCBInfo, teeTCBSVN: [UInt8]?
    ) -> Result<Platform, Failure> {
        guard let level = levels.first(where: { matches(platform: platform, level: $0, teeTCBSVN: teeTCBSVN) }) else {
            return .failure(
                .noMatchingLevel(
                    "the platform's TCB SVNs are below every TCB level Intel lists for FMSPC \(Data(tcbInfo.fmspc).hex)"
                ))
        }
        var out = Platform(
            status: level.status, advisories: Set(level.advisoryIDs), dates: [level.tcbDate],
            platformStatus: level.status)
        guard let svn = teeTCBSVN, svn[1] > 0 else { return .success(out) }
        guard let module = moduleIdentity(version: svn[1], in: tcbInfo) else {
            return .failure(.moduleMismatch("Intel lists no TDX module identity \(moduleID(svn[1]))"))
        }
        let id = module.id
        guard let moduleLevel = module.levels.first(where: { $0.isvSVN <= Int(svn[0]) }) else {
            return .failure(.noMatchingLevel("TDX module \(id) SVN \(svn[0]) is below every module TCB level"))
        }
        out.moduleStatus = moduleLevel.status
        out.advisories.formUnion(moduleLevel.advisoryIDs)
        out.dates.append(moduleLevel.tcbDate)
        out.status = TCBStatus.converge(platform: level.status, identity: moduleLevel.status)
        return .success(out)
    }

    /// `TDX_03` for module version 3: Intel's identity name, uppercase hex.
    static func moduleID(_ version: UInt8) -> String { "TDX_" + [version].hexString.uppercased() }

    /// The identity Intel lists for a TDX module version (matched case-insensitively, as QVL does);
    /// version 0 is the top-level `tdxModule`.
    static func moduleIdentity(version: UInt8, in tcbInfo: TCBInfo) -> TCBInfo.ModuleIdentity? {
        guard version > 0 else { return tcbInfo.tdxModule }
        let id = moduleID(version)
        return tcbInfo.tdxModuleIdentities.first { $0.id.uppercased() == id }
    }

    static func matches(platform: SGXExtension, level: TCBInfo.Level, teeTCBSVN svn: [UInt8]?) -> Bool {
        for i in 0..<16 where platform.components[i] < level.sgxComponents[i] { return false }
        guard platform.pceSVN >= level.pceSVN else { return false }
        guard let svn else { return true }
        guard let tdx = level.tdxComponents else { return false }
        // With a TDX module identity (version byte 1 set), bytes 0 and 1 are judged by the
        // module's own TCB levels rather than here.
        let start = svn[1] > 0 ? 2 : 0
        for i in start..<16 where Int(svn[i]) < tdx[i] { return false }
        return true
    }

    /// Intel walks levels highest first (SGX components, then PCE SVN, then TDX components),
    /// whatever order the JSON lists them in.
    static func canonicalOrder(_ levels: [TCBInfo.Level]) -> [TCBInfo.Level] {
        levels.enumerated().sorted { a, b in
            let ka = a.element.sgxComponents + [a.element.pceSVN] + (a.element.tdxComponents ?? [])
            let kb = b.element.sgxComponents + [b.element.pceSVN] + (b.element.tdxComponents ?? [])
            if ka != kb { return ka.lexicographicallyPrecedes(kb) == false }
            return a.offset < b.offset
        }.map(\.element)
    }

    /// The QE's TCB level: the first, in Intel's order, whose ISV SVN the QE meets.
    static func qeLevel(_ identity: QEIdentity, isvSVN: Int) -> TCBInfo.IdentityLevel? {
        identity.levels.first { $0.isvSVN <= isvSVN }
    }
}
