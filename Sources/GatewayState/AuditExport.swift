import AttestationCore
import AuditLog
import Foundation

/// Writes audit entries as an export: JSON Lines (the stored lines, byte for byte, verifiable
/// with `ccgate audit verify`) or CSV (for spreadsheets; not verifiable, the hash columns are
/// there for cross-reference).
public enum AuditExportFormat: String, Sendable, CaseIterable {
    case jsonl, csv

    public var contentType: String { self == .jsonl ? "application/x-ndjson" : "text/csv; charset=utf-8" }
}

public enum AuditExport {
    public static let csvColumns = [
        "seq", "time", "actor", "event", "worker", "decision", "reasons", "policy_version", "evidence_sha256",
        "collateral_sha256", "detail", "gateway", "prev", "hash",
    ]

    /// Streams the entries matching `query` to `sink` in chunks of about 64 KiB; `progress` gets
    /// the number of entries written so far after each chunk. Returns the number written.
    @discardableResult
    public static func write(
        from store: any GatewayStore, query: AuditQuery, format: AuditExportFormat,
        to sink: (Data) throws -> Void, progress: (Int) -> Void = { _ in }
    ) throws -> Int {
        var buffer = Data()
        buffer.reserveCapacity(80 << 10)
        var written = 0
        func flush() throws {
            guard !buffer.isEmpty else { return }
            try sink(buffer)
            buffer.removeAll(keepingCapacity: true)
            progress(written)
        }
        switch format {
        case .jsonl:
            try store.lines(query) { _, line in
                buffer.append(contentsOf: line)
                buffer.append(UInt8(ascii: "\n"))
                written += 1
                if buffer.count >= 64 << 10 { try flush() }
                return true
            }
        case .csv:
            buffer.append(contentsOf: (csvColumns.joined(separator: ",") + "\r\n").utf8)
            try store.entries(query) { entry in
                buffer.append(contentsOf: csvRow(entry).utf8)
                written += 1
                if buffer.count >= 64 << 10 { try flush() }
                return true
            }
        }
        try flush()
        return written
    }

    static func csvRow(_ entry: AuditEntry) -> String {
        let e = entry.event
        let detail =
            e.detail.isEmpty
            ? "" : String(decoding: CanonicalJSON.encode(.object(e.detail.mapValues(JSONValue.string))), as: UTF8.self)
        let cells = [
            String(entry.seq), entry.time.rfc3339, e.actor, e.event, e.worker ?? "", e.decision ?? "",
            e.reasons.joined(separator: ";"), e.policyVersion.map(String.init) ?? "", e.evidenceSHA256 ?? "",
            e.collateralSHA256 ?? "", detail, e.gateway ?? "", entry.prev, entry.hash,
        ]
        return cells.map(csvCell).joined(separator: ",") + "\r\n"
    }

    /// RFC 4180 quoting. Threat: a worker-chosen string (an id, a model name, an error message)
    /// starting with `=`, `+`, `-` or `@` is a formula to a spreadsheet (CSV injection); such cells
    /// get a leading `'`, which spreadsheets show as text.
    static func csvCell(_ value: String) -> String {
        var v = value
        if let first = v.unicodeScalars.first, "=+-@\t\r".unicodeScalars.contains(first) { v = "'" + v }
        guard v.utf8.contains(where: { $0 == 0x2C || $0 == 0x22 || $0 == 0x0A || $0 == 0x0D }) else { return v }
        var out = [UInt8]()
        out.reserveCapacity(v.utf8.count + 8)
        out.append(0x22)
        for b in v.utf8 {
            out.append(b)
            if b == 0x22 { out.append(0x22) }
        }
        out.append(0x22)
        return String(decoding: out, as: UTF8.self)
    }
}
