import AttestationCore
import Foundation

/// The facts a DCAP quote states, as claim fields (lowercase hex). They are claims only once the
/// verifier accepted the quote; `unverifiedFields(of:)` exists for tools that show a rejected quote.
public enum QuoteClaims {
    static func fields(of quote: DCAPQuote, platform: SGXExtension?) -> [String: String] {
        var f = [String: String]()
        f["quote_version"] = String(quote.version)
        f["tee"] = quote.tee == .tdx ? "tdx" : "sgx"
        f["report_data"] = Data(quote.reportData).hex
        f["debug"] = quote.isDebug ? "true" : "false"
        switch quote.body {
        case .td(let td):
            f["mrtd"] = Data(td.mrTD).hex
            for i in 0..<4 { f["rtmr\(i)"] = Data(td.rtmr(i)).hex }
            f["mrconfigid"] = Data(td.mrConfigID).hex
            f["mrowner"] = Data(td.mrOwner).hex
            f["mrownerconfig"] = Data(td.mrOwnerConfig).hex
            f["mrseam"] = Data(td.mrSeam).hex
            f["mrsignerseam"] = Data(td.mrSignerSeam).hex
            f["td_attributes"] = Data(td.tdAttributes).hex
            f["xfam"] = Data(td.xfam).hex
            f["tee_tcb_svn"] = Data(td.teeTCBSVN).hex
            if let svn2 = td.teeTCBSVN2 { f["tee_tcb_svn2"] = Data(svn2).hex }
            if let service = td.mrServiceTD { f["mrservicetd"] = Data(service).hex }
            f["cocoon_image_hash"] = Data(td.cocoonImageHash).hex
        case .enclave(let e):
            f["mrenclave"] = Data(e.mrEnclave).hex
            f["mrsigner"] = Data(e.mrSigner).hex
            f["isvprodid"] = String(e.isvProdID)
            f["isvsvn"] = String(e.isvSVN)
            f["attributes"] = Data(e.attributes).hex
        }
        if let platform {
            f["fmspc"] = Data(platform.fmspc).hex
            f["pce_id"] = Data(platform.pceID).hex
            f["pce_svn"] = String(platform.pceSVN)
        }
        return f
    }

    /// What a quote says about itself, before and regardless of verification (FMSPC and PCE id
    /// come from its PCK certificate, read but not checked).
    public static func unverifiedFields(of quote: DCAPQuote) -> [String: String] {
        let leaf = try? Certificate.chain(pem: quote.pckChainPEM).first
        let ext = leaf?.extensionValue(oid: SGXExtension.oid).flatMap(SGXExtension.init(extensionDER:))
        return fields(of: quote, platform: ext)
    }
}
