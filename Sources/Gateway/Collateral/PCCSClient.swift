import AttestationCore
import Foundation
import HTTPFetch
import TDXVerifier

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Fetches Intel collateral from a PCCS or Intel's PCS (API v4) for platforms the cache lacks:
/// `GET {base}/{sgx|tdx}/certification/v4/tcb?fmspc=…`, `…/qe/identity`,
/// `{base}/sgx/certification/v4/pckcrl?ca=…&encoding=der` and the root CA CRL. The issuer chains
/// come URL-encoded in response headers; `tcbInfo` and `enclaveIdentity` are cut from the body
/// byte for byte, since their signatures cover the exact text.
///
/// Nothing fetched is trusted: it goes into the cache and is verified on every use like any other
/// collateral. A fetch failure leaves the cache as it was (the verdict is then
/// `collateral.missing` or `collateral.expired`).
public struct PCCSClient: Sendable {
    public let base: URL
    /// Where the root CA CRL is (a PCCS serves `{base}/sgx/certification/v4/rootcacrl`; Intel's PCS
    /// does not, its CRL is on Intel's certificate site).
    public let rootCRL: URL
    public let timeout: TimeInterval

    public init(base: URL, rootCRL: URL? = nil, timeout: TimeInterval = 10) {
        self.base = base
        self.rootCRL = rootCRL ?? base.appendingPathComponent("sgx/certification/v4/rootcacrl")
        self.timeout = timeout
    }

    public struct FetchError: Error, CustomStringConvertible {
        public let description: String
        init(_ d: String) { description = d }
    }

    /// The full collateral set for one platform.
    public func fetch(_ key: CollateralKey) async throws(FetchError) -> Collateral {
        let tee = key.tee == .tdx ? "tdx" : "sgx"
        let fmspc = Data(key.fmspc).hex.uppercased()
        let tcb = try await get("\(tee)/certification/v4/tcb?fmspc=\(fmspc)")
        let qe = try await get("\(tee)/certification/v4/qe/identity")
        let ca = key.pckIssuer.contains("Processor") ? "processor" : "platform"
        let crl = try await get("sgx/certification/v4/pckcrl?ca=\(ca)&encoding=der")
        let root = try await get(url: rootCRL)

        guard let tcbText = Self.rawValue(of: "tcbInfo", in: tcb.body), let tcbSig = Self.signature(in: tcb.body) else {
            throw FetchError("TCB info response has no tcbInfo/signature")
        }
        guard let qeText = Self.rawValue(of: "enclaveIdentity", in: qe.body), let qeSig = Self.signature(in: qe.body)
        else {
            throw FetchError("QE identity response has no enclaveIdentity/signature")
        }
        guard let tcbChain = tcb.header(["TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"]),
            let qeChain = qe.header(["SGX-Enclave-Identity-Issuer-Chain", "Enclave-Identity-Issuer-Chain"]),
            let crlChain = crl.header(["SGX-PCK-CRL-Issuer-Chain"])
        else { throw FetchError("a response lacks its issuer-chain header") }
        // A PCCS returns the root CRL as hex text, Intel's site as DER.
        let rootBytes =
            Data(hex: String(decoding: root.body, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
            ?? root.body
        return Collateral(
            pckCRLIssuerChain: crlChain, rootCACRL: [UInt8](rootBytes), pckCRL: [UInt8](crl.body),
            tcbInfoIssuerChain: tcbChain,
            tcbInfo: tcbText, tcbInfoSignature: tcbSig, qeIdentityIssuerChain: qeChain, qeIdentity: qeText,
            qeIdentitySignature: qeSig)
    }

    struct Response {
        let body: Data
        let headers: [String: String]
        func header(_ names: [String]) -> String? {
            for name in names {
                if let value = headers.first(where: { $0.key.caseInsensitiveCompare(name) == .orderedSame })?.value {
                    return value.removingPercentEncoding ?? value
                }
            }
            return nil
        }
    }

    /// Responses are collateral documents: a few KiB, a PCK CRL up to a few MiB.
    static let maxBody = 8 << 20

    func get(_ path: String) async throws(FetchError) -> Response {
        guard
            let url = URL(
                string: path, relativeTo: base.absoluteString.hasSuffix("/") ? base : base.appendingPathComponent(""))
        else {
            throw FetchError("bad PCCS path \(path)")
        }
        return try await get(url: url)
    }

    /// Threat: a PCCS (or anyone in its place) that answers without end. The body is capped as it
    /// arrives and the request has a deadline.
    func get(url: URL) async throws(FetchError) -> Response {
        let answer: HTTPFetch.Response
        do {
            answer = try await HTTPFetch.send(
                "GET", url, timeout: .milliseconds(Int64(timeout * 1000)), maxBody: Self.maxBody)
        } catch {
            throw FetchError(error.description)
        }
        guard answer.status == 200 else { throw FetchError("\(url.absoluteString): HTTP \(answer.status)") }
        var headers = [String: String]()
        for (name, value) in answer.headers { headers[name] = value }
        return Response(body: answer.body, headers: headers)
    }

    static func signature(in body: Data) -> [UInt8]? {
        guard let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any],
            let hex = object["signature"] as? String,
            let data = Data(hex: hex)
        else { return nil }
        return [UInt8](data)
    }

    /// The exact text of a top-level key's object value in a JSON document: the bytes between its
    /// opening and matching closing brace, strings and escapes respected.
    static func rawValue(of key: String, in body: Data) -> String? {
        let bytes = [UInt8](body)
        let needle = Array("\"\(key)\"".utf8)
        var depth = 0
        var inString = false
        var escaped = false
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            if inString {
                if escaped {
                    escaped = false
                } else if b == UInt8(ascii: "\\") {
                    escaped = true
                } else if b == UInt8(ascii: "\"") {
                    inString = false
                }
                i += 1
                continue
            }
            if depth == 1, b == UInt8(ascii: "\""), i + needle.count <= bytes.count,
                Array(bytes[i..<(i + needle.count)]) == needle
            {
                var j = i + needle.count
                while j < bytes.count,
                    bytes[j] == UInt8(ascii: " ") || bytes[j] == UInt8(ascii: "\n") || bytes[j] == UInt8(ascii: "\t")
                        || bytes[j] == UInt8(ascii: "\r")
                { j += 1 }
                guard j < bytes.count, bytes[j] == UInt8(ascii: ":") else { i += 1; continue }
                j += 1
                while j < bytes.count,
                    bytes[j] == UInt8(ascii: " ") || bytes[j] == UInt8(ascii: "\n") || bytes[j] == UInt8(ascii: "\t")
                        || bytes[j] == UInt8(ascii: "\r")
                { j += 1 }
                guard j < bytes.count, bytes[j] == UInt8(ascii: "{") else { return nil }
                return matchingObject(bytes, from: j)
            }
            switch b {
            case UInt8(ascii: "\""): inString = true
            case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
            case UInt8(ascii: "}"), UInt8(ascii: "]"): depth -= 1
            default: break
            }
            i += 1
        }
        return nil
    }

    /// `rawValue(of:in:)` for tests outside this module.
    public static func rawValueForTests(of key: String, in body: Data) -> String? { rawValue(of: key, in: body) }

    private static func matchingObject(_ bytes: [UInt8], from start: Int) -> String? {
        var depth = 0
        var inString = false
        var escaped = false
        for k in start..<bytes.count {
            let b = bytes[k]
            if inString {
                if escaped {
                    escaped = false
                } else if b == UInt8(ascii: "\\") {
                    escaped = true
                } else if b == UInt8(ascii: "\"") {
                    inString = false
                }
                continue
            }
            switch b {
            case UInt8(ascii: "\""): inString = true
            case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                depth -= 1
                if depth == 0 { return String(decoding: bytes[start...k], as: UTF8.self) }
            default: break
            }
        }
        return nil
    }
}
