import CSQLite
import AuditLog
import Foundation

/// A thin SQLite connection: prepared statements cached by SQL text, typed binds and columns,
/// errors with SQLite's message. Not thread-safe: its owner serializes use.
final class SQLiteConnection {
    private let db: OpaquePointer
    private var cache: [String: OpaquePointer] = [:]
    let path: String

    init(path: String, readOnly: Bool = false) throws {
        var handle: OpaquePointer?
        let flags = readOnly ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE)
        let rc = sqlite3_open_v2(path, &handle, flags | SQLITE_OPEN_NOMUTEX, nil)
        guard rc == SQLITE_OK, let handle else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "error \(rc)"
            if let handle { sqlite3_close_v2(handle) }
            throw StoreError("\(path): cannot open the database: \(message)")
        }
        db = handle
        self.path = path
        // Another connection (an export, the admin CLI reading offline) may hold a lock briefly.
        sqlite3_busy_timeout(db, 10_000)
    }

    deinit {
        for statement in cache.values { sqlite3_finalize(statement) }
        sqlite3_close_v2(db)
    }

    func fail(_ what: String) -> StoreError { StoreError("\(path): \(what): \(String(cString: sqlite3_errmsg(db)))") }

    /// Runs statements that return no rows.
    func exec(_ sql: String) throws {
        var error: UnsafeMutablePointer<CChar>?
        guard sqlite3_exec(db, sql, nil, nil, &error) == SQLITE_OK else {
            let message = error.map { String(cString: $0) } ?? "error"
            sqlite3_free(error)
            throw StoreError("\(path): \(message) (in \(sql.prefix(60)))")
        }
    }

    /// Runs one statement with `binds`, calling `row` for each result row (return false to stop).
    func run(_ sql: String, _ binds: [SQLiteValue] = [], row: (SQLiteRow) throws -> Bool = { _ in true }) throws {
        let statement = try prepared(sql)
        defer {
            sqlite3_reset(statement)
            sqlite3_clear_bindings(statement)
        }
        for (i, value) in binds.enumerated() {
            let index = Int32(i + 1)
            let rc: Int32
            switch value {
            case .null: rc = sqlite3_bind_null(statement, index)
            case .int(let v): rc = sqlite3_bind_int64(statement, index, Int64(v))
            case .text(let s): rc = sqlite3_bind_text(statement, index, s, -1, ccgate_sqlite_transient())
            case .blob(let d):
                rc = d.withUnsafeBytes {
                    sqlite3_bind_blob(statement, index, $0.baseAddress, Int32($0.count), ccgate_sqlite_transient())
                }
            }
            guard rc == SQLITE_OK else { throw fail("bind") }
        }
        while true {
            let rc = sqlite3_step(statement)
            if rc == SQLITE_DONE { return }
            guard rc == SQLITE_ROW else { throw fail("step") }
            if try !row(SQLiteRow(statement: statement)) { return }
        }
    }

    /// The first row's first column as an integer, if any.
    func scalar(_ sql: String, _ binds: [SQLiteValue] = []) throws -> Int? {
        var value: Int?
        try run(sql, binds) { row in
            value = row.isNull(0) ? nil : row.int(0)
            return false
        }
        return value
    }

    private func prepared(_ sql: String) throws -> OpaquePointer {
        if let s = cache[sql] { return s }
        var statement: OpaquePointer?
        guard sqlite3_prepare_v2(db, sql, -1, &statement, nil) == SQLITE_OK, let statement else {
            throw fail("prepare")
        }
        cache[sql] = statement
        return statement
    }

    /// Runs `body` in one IMMEDIATE transaction: committed when it returns, rolled back when it throws.
    func transaction<T>(_ body: () throws -> T) throws -> T {
        try exec("BEGIN IMMEDIATE")
        do {
            let result = try body()
            try exec("COMMIT")
            return result
        } catch {
            try? exec("ROLLBACK")
            throw error
        }
    }
}

enum SQLiteValue {
    case null
    case int(Int)
    case text(String)
    case blob(Data)

    static func optional(_ s: String?) -> SQLiteValue { s.map(SQLiteValue.text) ?? .null }
    static func optional(_ i: Int?) -> SQLiteValue { i.map(SQLiteValue.int) ?? .null }
}

struct SQLiteRow {
    let statement: OpaquePointer
    func isNull(_ i: Int32) -> Bool { sqlite3_column_type(statement, i) == SQLITE_NULL }
    func int(_ i: Int32) -> Int { Int(sqlite3_column_int64(statement, i)) }
    func text(_ i: Int32) -> String? {
        guard let p = sqlite3_column_text(statement, i) else { return nil }
        return String(cString: p)
    }
    func blob(_ i: Int32) -> Data {
        let n = Int(sqlite3_column_bytes(statement, i))
        guard n > 0, let p = sqlite3_column_blob(statement, i) else { return Data() }
        return Data(bytes: p, count: n)
    }
    func bytes(_ i: Int32) -> [UInt8] {
        let n = Int(sqlite3_column_bytes(statement, i))
        guard n > 0, let p = sqlite3_column_blob(statement, i) else { return [] }
        return Array(UnsafeRawBufferPointer(start: p, count: n))
    }
}
