import ArgumentParser
import AttestationCore
import AuditLog
import Foundation

struct ReceiptCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "receipt", abstract: "Check the receipts the gateway signs for its responses.",
        subcommands: [Verify.self])

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Verify a response receipt offline, under the gateway's key.",
            discussion: """
                Every response the gateway relays carries a receipt signed by its identity key over the request's \
                and the response's SHA-256, the engine's usage, the worker and its evidence digest, the policy \
                version and digest, and the audit sequence number of the worker's admission: in the `ccgate-receipt` \
                header of a plain response (base64), or as a last `ccgate-receipt` event after a stream's [DONE].

                FILE is either a saved event stream (its final receipt event is read, and the bytes before it are \
                the response it covers), or the receipt itself (the header value, or its JSON); then give the \
                response body with --response. --request checks the request body as well.

                Examples:
                  curl -sN https://gw/v1/chat/completions -H 'authorization: Bearer KEY' -d @req.json > stream.txt
                  ccgate receipt verify stream.txt --key gateway.pub --request req.json
                  curl -s -D headers.txt https://gw/v1/chat/completions … > body.json
                  grep -i '^ccgate-receipt:' headers.txt | cut -d' ' -f2 > receipt.txt
                  ccgate receipt verify receipt.txt --response body.json --key gateway.pub

                Exit status: 0 verified, 1 not verified (the reason code is printed: receipt.signature-invalid, \
                receipt.response-mismatch, receipt.request-mismatch, receipt.key-mismatch, receipt.malformed), \
                2 unreadable input or bad usage.
                """)

        @Argument(help: ArgumentHelp("A saved event stream, or a receipt (header value or JSON).", valueName: "FILE"))
        var file: String

        @Option(help: ArgumentHelp("The gateway's public key (its gateway.pub).", valueName: "PEM")) var key: String

        @Option(help: ArgumentHelp("The response body the receipt covers.", valueName: "FILE")) var response: String?

        @Option(help: ArgumentHelp("The request body sent.", valueName: "FILE")) var request: String?

        @Flag(help: "Print the receipt as JSON.") var json = false

        func run() throws {
            try exiting {
                let key = try publicKeys([self.key])[0]
                let input = try read(file)
                var receipt: SignedReceipt
                var body = try response.map(read)
                if let (streamed, found) = SignedReceipt.split(stream: input) {
                    receipt = found
                    body = body ?? streamed
                } else {
                    do { receipt = try SignedReceipt(text: String(decoding: input, as: UTF8.self)) } catch {
                        print("not verified: \(error)")
                        return 1
                    }
                }
                do {
                    try receipt.verify(key: key, response: body, request: try request.map(read))
                } catch {
                    print("not verified: \(error)")
                    return 1
                }
                if json {
                    print(String(decoding: receipt.json, as: UTF8.self))
                } else {
                    let r = receipt.receipt
                    print("verified: signed by gateway \(r.gateway.prefix(16))…")
                    print("  worker \(r.worker) (session \(r.session)), evidence sha256:\(r.evidenceSHA256)")
                    print(
                        "  policy version \(r.policyVersion) sha256:\(r.policySHA256), admission seq \(r.admissionSeq)")
                    print(
                        "  model \(r.model), status \(r.status), at \(Date(timeIntervalSince1970: TimeInterval(r.time)).rfc3339)"
                    )
                    print(
                        "  response \(body == nil ? "not checked (give --response)" : "matches") sha256:\(r.responseSHA256)"
                    )
                    print(
                        "  request \(request == nil ? "not checked (give --request)" : "matches") sha256:\(r.requestSHA256)"
                    )
                    if r.usage != .null {
                        print("  usage \(String(decoding: CanonicalJSON.encode(r.usage), as: UTF8.self))")
                    }
                }
                return 0
            }
        }

        func read(_ path: String) throws -> Data {
            guard let data = FileManager.default.contents(atPath: path) else { throw failure("\(path): cannot read") }
            return data
        }
    }
}
