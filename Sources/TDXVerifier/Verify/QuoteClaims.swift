import AttestationCore
import Foundation

/// The facts a DCAP quote states, as claim fields (lowercase hex). They are claims only once the
/// verifier accepted the quote; `unverifiedFields(of:)` exists for tools that show a rejected quote.
public enum QuoteClaims {
    static func fields(of quote: DCAPQuote, platform: SGXExtension?) -> [String: String] {
        var f = [String: String]()
        f["quote_version"] = String(quote.version)
        f["tee"] = quote.tee == .tdx ? "tdx" : "sgx"
        f["report_data"] = quote.reportData.hexString
        f["debug"] = quote.isDebug ? "true" : "false"
        switch quote.body {
        case .td(let td):
            f["mrtd"] = td.mrTD.hexString
            for i in 0..<4 { f["rtmr\(i)"] = td.rtmr(i).hexString }
            f["mrconfigid"] = td.mrConfigID.hexString
            f["mrowner"] = td.mrOwner.hexString
            f["mrownerconfig"] = td.mrOwnerConfig.hexString
            f["mrseam"] = td.mrSeam.hexString
            f["mrsignerseam"] = td.mrSignerSeam.hexString
            f["td_attributes"] = td.tdAttributes.hexString
            f["xfam"] = td.xfam.hexString
            f["tee_tcb_svn"] = td.teeTCBSVN.hexString
            if let svn2 = td.teeTCBSVN2 { f["tee_tcb_svn2"] = svn2.hexString }
            if let service = td.mrServiceTD { f["mrservicetd"] = service.hexString }
            f["cocoon_image_hash"] = td.cocoonImageHash.hexString
        case .enclave(let e):
            f["mrenclave"] = e.mrEnclave.hexString
            f["mrsigner"] = e.mrSigner.hexString
            f["isvprodid"] = String(e.isvProdID)
            f["isvsvn"] = String(e.isvSVN)
            f["attributes"] = e.attributes.hexString
        }
        if let platform {
            f["fmspc"] = platform.fmspc.hexString
            f["pce_id"] = platform.pceID.hexString
            f["pce_svn"] = String(platform.pceSVN)
        }
        return f
    }

    /// What a quote says about itself, before and regardless of verification (FMSPC and PCE id
    /// come from its PCK certificate, read but not checked).
    public static func unverifiedFields(of quote: DCAPQuote) -> [String: String] {
        let leaf = try? Memo.chain(pemBytes: quote.pckChainBytes).first
        return fields(of: quote, platform: leaf?.sgxExtension)
    }
}
