/// The platform facts Intel writes into every PCK certificate (extension
/// 1.2.840.113741.1.13.1): the platform's family (FMSPC), its provisioning enclave (PCE id) and
/// the TCB it had when the certificate was issued (16 CPU SVN components and the PCE SVN).
///
/// Threat: these values decide which TCB level a platform gets. They are read only from a
/// certificate whose chain was verified to the pinned root, so a quote cannot claim them itself.
struct SGXExtension: Sendable, Equatable {
    static let oid = "1.2.840.113741.1.13.1"

    var fmspc: [UInt8]
    var pceID: [UInt8]
    var pceSVN: Int
    var cpuSVN: [UInt8]
    /// The 16 SGX TCB component SVNs (sub-OIDs .2.1 to .2.16).
    var components: [Int]

    /// nil when the extension is absent or malformed: such a certificate is not a PCK certificate.
    init?(extensionDER der: [UInt8]) {
        var outer = DERReader(der)
        guard let top = outer.next(), top.tag == 0x30, outer.isAtEnd else { return nil }
        var fmspc: [UInt8]?
        var pceID: [UInt8]?
        var tcb: (components: [Int], pceSVN: Int, cpuSVN: [UInt8])?
        var entries = DERReader(top.contents)
        // Intel's extension has seven entries; bound the walk for hostile certificates.
        var seen = 0
        while !entries.isAtEnd {
            seen += 1
            guard seen <= 32, let entry = entries.next(), entry.tag == 0x30 else { return nil }
            var fields = DERReader(entry.contents)
            guard let oidTLV = fields.next(), oidTLV.tag == 0x06, let oid = DERReader.oid(oidTLV.contents),
                let value = fields.next()
            else { return nil }
            switch oid {
            case Self.oid + ".2":
                guard value.tag == 0x30, let parsed = Self.tcb(value.contents) else { return nil }
                tcb = parsed
            case Self.oid + ".3":
                guard value.tag == 0x04, value.contents.count == 2 else { return nil }
                pceID = value.contents
            case Self.oid + ".4":
                guard value.tag == 0x04, value.contents.count == 6 else { return nil }
                fmspc = value.contents
            default:
                continue
            }
        }
        guard let fmspc, let pceID, let tcb else { return nil }
        self.fmspc = fmspc
        self.pceID = pceID
        self.components = tcb.components
        self.pceSVN = tcb.pceSVN
        self.cpuSVN = tcb.cpuSVN
    }

    private static func tcb(_ der: [UInt8]) -> (components: [Int], pceSVN: Int, cpuSVN: [UInt8])? {
        var components = [Int?](repeating: nil, count: 16)
        var pceSVN: Int?
        var cpuSVN: [UInt8]?
        var reader = DERReader(der)
        var seen = 0
        while !reader.isAtEnd {
            seen += 1
            guard seen <= 32, let entry = reader.next(), entry.tag == 0x30 else { return nil }
            var fields = DERReader(entry.contents)
            guard let oidTLV = fields.next(), oidTLV.tag == 0x06, let oid = DERReader.oid(oidTLV.contents),
                let value = fields.next()
            else { return nil }
            let prefix = Self.oid + ".2."
            guard oid.hasPrefix(prefix), let index = Int(oid.dropFirst(prefix.count)) else { continue }
            switch index {
            case 1...16:
                guard value.tag == 0x02, let svn = DERReader.integer(value.contents), svn <= 255 else { return nil }
                components[index - 1] = svn
            case 17:
                guard value.tag == 0x02, let svn = DERReader.integer(value.contents), svn <= 0xFFFF else { return nil }
                pceSVN = svn
            case 18:
                guard value.tag == 0x04, value.contents.count == 16 else { return nil }
                cpuSVN = value.contents
            default:
                continue
            }
        }
        let all = components.compactMap { $0 }
        guard all.count == 16, let pceSVN, let cpuSVN else { return nil }
        return (all, pceSVN, cpuSVN)
    }
}
