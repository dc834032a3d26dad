import Foundation
import Synchronization

/// A real PostgreSQL server from Debian's packages, made with initdb in a temporary directory,
/// listening on a free loopback port (and a Unix socket in that directory) with password
/// (SCRAM) authentication. One server serves the whole test process (``shared``); each test
/// takes a database of its own (``createDatabase()``). Stopped when the process exits.
public final class PostgresServer: @unchecked Sendable {
    public let port: Int
    public let directory: URL
    public let user = "ccgate"
    public let password: String
    /// The file holding `password` (for `--database-password-file`).
    public let passwordFile: URL
    private let process: Process
    private let binaries: URL
    private let counter = Mutex(0)

    public enum StartError: Error, CustomStringConvertible {
        case notInstalled
        case didNotStart(String)
        public var description: String {
            switch self {
            case .notInstalled: "PostgreSQL's server is not installed (scripts/setup installs the postgresql package)"
            case .didNotStart(let s): "PostgreSQL did not start: \(s)"
            }
        }
    }

    private static let started = Mutex<Result<PostgresServer, any Error>?>(nil)

    /// The process's server, started on first use.
    public static func shared() async throws -> PostgresServer {
        try await offPool {
            try started.withLock { state in
                if state == nil { state = Result { try PostgresServer() } }
                return try state!.get()
            }
        }
    }

    /// Directory of the newest installed server's programs.
    static func binDirectory() throws -> URL {
        let base = URL(fileURLWithPath: "/usr/lib/postgresql")
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: base.path)) ?? []
        for version in versions.sorted(by: { (Int($0) ?? 0) > (Int($1) ?? 0) }) {
            let bin = base.appendingPathComponent(version).appendingPathComponent("bin")
            if FileManager.default.isExecutableFile(atPath: bin.appendingPathComponent("postgres").path) { return bin }
        }
        throw StartError.notInstalled
    }

    /// PostgreSQL refuses to run as root: as root, its programs run as the `postgres` user
    /// (setpriv executes the program in place, so the process started is the server itself).
    static func command(_ program: URL, _ arguments: [String]) -> (URL, [String]) {
        guard getuid() == 0 else { return (program, arguments) }
        return (
            URL(fileURLWithPath: "/usr/bin/setpriv"),
            ["--reuid=postgres", "--regid=postgres", "--init-groups", "--", program.path] + arguments
        )
    }

    private init() throws {
        binaries = try Self.binDirectory()
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("ccgate-pg-\(UUID().uuidString)")
        let data = directory.appendingPathComponent("data")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        password = UUID().uuidString
        passwordFile = directory.appendingPathComponent("password")
        try Data((password + "\n").utf8).write(to: passwordFile)
        if getuid() == 0 {
            guard let owner = getpwnam("postgres") else { throw StartError.didNotStart("there is no postgres user") }
            chown(directory.path, owner.pointee.pw_uid, owner.pointee.pw_gid)
            chown(passwordFile.path, owner.pointee.pw_uid, owner.pointee.pw_gid)
        }
        let (initdb, initArguments) = Self.command(
            binaries.appendingPathComponent("initdb"),
            [
                "-D", data.path, "-U", user, "--pwfile", passwordFile.path, "-A", "scram-sha-256", "-E", "UTF8",
                "--locale", "C", "--no-sync",
            ])
        let made = try ProcessRunner.runBlocking(initdb.path, initArguments)
        guard made.status == 0 else { throw StartError.didNotStart("initdb: \(made.stderr)\(made.stdout)") }
        var lastError = ""
        for _ in 0..<20 {
            let port = Int.random(in: 20_000..<60_000)
            if Swtpm.canConnect(port: port) { continue }
            let (postgres, arguments) = Self.command(
                binaries.appendingPathComponent("postgres"),
                [
                    "-D", data.path, "-p", String(port), "-c", "listen_addresses=127.0.0.1", "-c",
                    "unix_socket_directories=\(directory.path)", "-c", "max_connections=200",
                    // A test server: crash safety of the server itself is not under test.
                    "-c", "fsync=off",
                ])
            let process = Process()
            process.executableURL = postgres
            process.arguments = arguments
            let log = Pipe()
            process.standardError = log
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            let deadline = Date().addingTimeInterval(30)
            while Date() < deadline, process.isRunning {
                let ready = try ProcessRunner.runBlocking(
                    binaries.appendingPathComponent("pg_isready").path, ["-h", "127.0.0.1", "-p", String(port), "-q"])
                if ready.status == 0, process.isRunning {
                    self.port = port
                    self.process = process
                    Self.stopAtExit(process.processIdentifier, directory: directory)
                    try Self.watch(server: process.processIdentifier, directory: directory)
                    // Keep draining the server's log so it never blocks on a full pipe.
                    log.fileHandleForReading.readabilityHandler = { handle in _ = handle.availableData }
                    return
                }
                usleep(100_000)
            }
            if process.isRunning { kill(process.processIdentifier, SIGQUIT) }
            process.waitUntilExit()
            lastError = String(decoding: log.fileHandleForReading.availableData, as: UTF8.self)
        }
        throw StartError.didNotStart(lastError)
    }

    private static let running = Mutex<[(Int32, URL)]>([])
    private static let installed: Void = {
        atexit {
            for (pid, directory) in PostgresServer.running.withLock({ $0 }) {
                // Immediate shutdown: the server and its children exit and release shared memory.
                kill(pid, SIGQUIT)
                var status: Int32 = 0
                for _ in 0..<50 where waitpid(pid, &status, WNOHANG) == 0 { usleep(20_000) }
                try? FileManager.default.removeItem(at: directory)
            }
        }
    }()

    /// A test process that dies without running its exit handlers (a crash, SIGKILL) must not
    /// leave its server behind: a small shell watches this process and stops the server (and
    /// removes its directory) once this process is gone.
    private static func watch(server pid: Int32, directory: URL) throws {
        let watcher = Process()
        watcher.executableURL = URL(fileURLWithPath: "/bin/sh")
        watcher.arguments = [
            "-c",
            // The server is stopped only if its pid file still names it (a pid can be reused).
            "while kill -0 \(getpid()) 2>/dev/null; do sleep 2; done; "
                + "[ \"$(head -n 1 '\(directory.path)/data/postmaster.pid' 2>/dev/null)\" = \(pid) ] && kill -QUIT \(pid); "
                + "sleep 2; rm -rf '\(directory.path)'",
        ]
        watcher.standardOutput = FileHandle.nullDevice
        watcher.standardError = FileHandle.nullDevice
        try watcher.run()
    }

    private static func stopAtExit(_ pid: Int32, directory: URL) {
        _ = installed
        running.withLock { $0.append((pid, directory)) }
    }

    /// A new empty database owned by the test user; returns its name.
    public func createDatabase() throws -> String {
        let name = "t\(getpid())_\(counter.withLock { $0 += 1; return $0 })"
        try psql("postgres", "CREATE DATABASE \(name)")
        return name
    }

    /// Runs `sql` through psql in `database`; returns what psql printed (unaligned, tuples only).
    @discardableResult
    public func psql(_ database: String, _ sql: String) throws -> String {
        let result = try ProcessRunner.runBlocking(
            binaries.appendingPathComponent("psql").path,
            [
                "-h", "127.0.0.1", "-p", String(port), "-U", user, "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c",
                sql,
            ], environment: ["PGPASSWORD": password])
        guard result.status == 0 else { throw StartError.didNotStart("psql \(sql.prefix(60)): \(result.stderr)") }
        return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The URL `ccgate --database` takes for `database` over TCP.
    public func url(_ database: String) -> String { "postgres://\(user)@127.0.0.1:\(port)/\(database)" }

    /// The same database over the server's Unix socket.
    public func socketURL(_ database: String) -> String {
        "postgres://\(user)@/\(database)?host=\(directory.path)&port=\(port)"
    }
}
