import Foundation

/// Where a PostgreSQL database is and how to reach it: `postgres://USER@HOST[:PORT]/DATABASE`
/// with optional `?sslmode=disable|verify-full&sslrootcert=FILE`, or a Unix socket directory as
/// `postgres://USER@/DATABASE?host=/run/postgresql[&port=5432]` (the port names the socket file).
///
/// Threat: a password in the URL is on the command line, which every local user reads in the
/// process list; such a URL is refused, and the password comes from a file or the environment.
/// Threat: a network in the middle of the gateway and the database reads evidence and rewrites
/// the chain's rows; `sslmode=verify-full` checks the server's certificate and name. There is no
/// `require` (encryption without a checked certificate), which a machine in the middle satisfies.
public struct PostgresLocation: Sendable, Equatable, CustomStringConvertible {
    public enum TLSMode: String, Sendable, Equatable {
        case disable
        case verifyFull = "verify-full"
    }

    public let host: String?
    public let port: Int
    public let socketDirectory: String?
    public let user: String
    public let database: String
    public var password: String?
    public let tls: TLSMode
    /// CA certificates (PEM) for `verify-full`; nil: the system's trust store.
    public let rootCertificate: String?

    public init(url text: String, password: String? = nil) throws {
        guard let url = URLComponents(string: text), url.scheme == "postgres" || url.scheme == "postgresql" else {
            throw StoreError("--database \(Self.redacted(text)): not a postgres:// URL")
        }
        guard url.password == nil else {
            throw StoreError(
                "--database: the URL holds a password, which every local user can read in the process list; put it in a file (--database-password-file) or CCGATE_DATABASE_PASSWORD"
            )
        }
        guard let user = url.user, !user.isEmpty else {
            throw StoreError("--database \(text): name the database user (postgres://USER@HOST/DATABASE)")
        }
        let database = url.path.hasPrefix("/") ? String(url.path.dropFirst()) : url.path
        guard !database.isEmpty, !database.contains("/") else {
            throw StoreError("--database \(text): name the database (postgres://USER@HOST/DATABASE)")
        }
        var options = [String: String]()
        for item in url.queryItems ?? [] {
            guard options[item.name] == nil else {
                throw StoreError("--database \(text): option '\(item.name)' is given twice")
            }
            guard ["sslmode", "sslrootcert", "host", "port"].contains(item.name), let value = item.value, !value.isEmpty
            else {
                throw StoreError(
                    "--database \(text): unknown or empty option '\(item.name)' (known: sslmode, sslrootcert, host, port)"
                )
            }
            options[item.name] = value
        }
        guard let tls = TLSMode(rawValue: options["sslmode"] ?? "disable") else {
            throw StoreError(
                "--database \(text): sslmode must be disable or verify-full (require does not check the server and is not offered)"
            )
        }
        guard options["sslrootcert"] == nil || tls == .verifyFull else {
            throw StoreError("--database \(text): sslrootcert is used only with sslmode=verify-full")
        }
        if let socket = options["host"] {
            guard socket.hasPrefix("/"), (url.host ?? "").isEmpty else {
                throw StoreError(
                    "--database \(text): host= names a Unix socket directory (an absolute path) and no host")
            }
            guard tls == .disable else { throw StoreError("--database \(text): no TLS over a Unix socket") }
            host = nil
            socketDirectory = socket
        } else {
            guard let h = url.host, !h.isEmpty else { throw StoreError("--database \(text): name the host") }
            // Threat: a network in the middle asks for the password in clear text and then writes
            // the chain. Off this machine, the operator says which: verify-full, or disable.
            guard options["sslmode"] != nil || ["localhost", "127.0.0.1", "::1", "[::1]"].contains(h) else {
                throw StoreError(
                    "--database \(text): \(h) is not this machine: add sslmode=verify-full (with sslrootcert=CA.pem for a private CA), or sslmode=disable to send the password and the chain unencrypted"
                )
            }
            host = h
            socketDirectory = nil
        }
        if let p = options["port"] {
            guard let n = Int(p), url.port == nil else {
                throw StoreError("--database \(text): port= is a number, given once (in the URL or as port=)")
            }
            port = n
        } else {
            port = url.port ?? 5432
        }
        guard (1...65535).contains(port) else { throw StoreError("--database \(text): port \(port) is out of range") }
        self.user = user
        self.database = database
        self.password = password
        self.tls = tls
        rootCertificate = options["sslrootcert"]
    }

    /// The server's socket file, for a Unix-socket location.
    public var socketPath: String? { socketDirectory.map { "\($0)/.s.PGSQL.\(port)" } }

    /// The location without secrets (there are none in it), as logs and errors name it.
    public var description: String {
        let place = host.map { "\($0):\(port)" } ?? (socketPath ?? "?")
        return "postgres://\(user)@\(place)/\(database)"
    }

    static func redacted(_ text: String) -> String {
        guard var url = URLComponents(string: text) else { return "(a URL that does not parse)" }
        guard url.password != nil else { return text }
        url.password = "***"
        return url.string ?? "(unreadable URL)"
    }

    /// The password from `file` (its first line), else `CCGATE_DATABASE_PASSWORD`, else none.
    public static func password(file: String?, environment: [String: String]) throws -> String? {
        if let file {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw StoreError("--database-password-file \(file): cannot read it")
            }
            let line =
                text.split(separator: "\n", omittingEmptySubsequences: false).first.map {
                    String($0.hasSuffix("\r") ? $0.dropLast() : $0)
                } ?? ""
            guard !line.isEmpty else { throw StoreError("--database-password-file \(file): the first line is empty") }
            return line
        }
        return environment["CCGATE_DATABASE_PASSWORD"]
    }
}
