import AttestationCore
import Foundation

/// Turns a verdict into the `--json` object or the human-readable report.
enum VerdictRendering {
    static func jsonObject(_ verdict: Verdict) -> [String: Any] {
        var claims = [String: Any]()
        if let c = verdict.claims {
            claims["pcrs"] = c.pcrs.mapValues { bank in
                Dictionary(uniqueKeysWithValues: bank.map { (String($0.key), $0.value) })
            }
            claims["measurements"] = c.measuredFiles.map {
                ["path": $0.path, "algorithm": $0.algorithm, "digest": $0.digestHex, "pcr": $0.pcr] as [String: Any]
            }
            for (k, v) in c.fields { claims[k] = v }
        }
        return [
            "verdict": verdict.outcome.rawValue,
            "format": verdict.format,
            "reason": verdict.reason?.rawValue ?? NSNull(),
            "reasons": verdict.reasons.map { ["code": $0.code.rawValue, "check": $0.source, "message": $0.message] },
            "claims": claims,
            "tcb_status": verdict.tcbStatus ?? NSNull(),
            "advisory_ids": verdict.advisoryIDs,
        ]
    }

    static func json(_ verdict: Verdict) -> String {
        let data =
            (try? JSONSerialization.data(withJSONObject: jsonObject(verdict), options: [.sortedKeys]))
            ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    static func human(_ verdict: Verdict, source: String, color: Bool) -> String {
        func paint(_ text: String, _ code: String) -> String { color ? "\u{1B}[\(code)m\(text)\u{1B}[0m" : text }
        var lines = [String]()
        if verdict.isAccepted {
            lines.append("\(paint("ACCEPT", "1;32"))  \(verdict.format)  \(source)")
        } else {
            lines.append("\(paint("REJECT", "1;31"))  \(verdict.format)  \(source)")
            lines.append(
                "  reason: \(paint(verdict.reason?.rawValue ?? "?", "1")) — \(verdict.reasons.first?.message ?? "")")
        }
        for check in verdict.passedChecks { lines.append("  \(paint("✓", "32")) \(check)") }
        for reason in verdict.reasons {
            lines.append("  \(paint("✗", "31")) \(reason.code) [\(reason.source)] \(reason.message)")
        }
        if let status = verdict.tcbStatus {
            lines.append(
                "  TCB status: \(status)"
                    + (verdict.advisoryIDs.isEmpty ? "" : " (\(verdict.advisoryIDs.joined(separator: ", ")))"))
        }
        if let claims = verdict.claims {
            if !claims.pcrs.isEmpty {
                lines.append("  quoted PCRs:")
                for (bank, values) in claims.pcrs.sorted(by: { $0.key < $1.key }) {
                    for (index, value) in values.sorted(by: { $0.key < $1.key }) {
                        lines.append("    \(bank)[\(index)]".padding(toLength: 16, withPad: " ", startingAt: 0) + value)
                    }
                }
            }
            if !claims.measuredFiles.isEmpty {
                lines.append("  measured files:")
                for file in claims.measuredFiles {
                    lines.append("    \(file.algorithm):\(file.digestHex)  \(file.path)  (PCR \(file.pcr))")
                }
            }
            if !claims.fields.isEmpty {
                lines.append("  facts:")
                for (key, value) in claims.fields.sorted(by: { $0.key < $1.key }) {
                    lines.append("    \(key.padding(toLength: 28, withPad: " ", startingAt: 0)) \(value)")
                }
            }
        }
        return lines.joined(separator: "\n")
    }
}
