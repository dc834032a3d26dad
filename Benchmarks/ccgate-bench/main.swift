// Benchmarks for ccgate. Each figure is printed beside a baseline measured in the same run on the
// same machine, so the ratio, not the absolute number, is what compares across machines.
import Foundation
import Logging

/// Writes straight to standard output, unbuffered, so that progress shows while a long run goes on.
func print(_ items: Any..., separator: String = " ", terminator: String = "\n") {
    FileHandle.standardOutput.write(Data((items.map { "\($0)" }.joined(separator: separator) + terminator).utf8))
}

// Figures only: the gateway and worker logs would drown them.
LoggingSystem.bootstrap { _ in SwiftLogNoOpLogHandler() }

let only = ProcessInfo.processInfo.environment["CCGATE_BENCH_ONLY"]
if only == nil || only == "tpm" { tpmBench() }
if only == nil || only == "dcap" { dcapBench() }
if only == "dcap-cases" { dcapCasesBench() }
if only == nil || only == "inference" { inferenceBench() }
let done = DispatchSemaphore(value: 0)
Task.detached {
    if only == nil || only == "audit" {
        do { try await auditBench() } catch { print("ccgate bench: audit failed: \(error)") }
    }
    if only == "audit-postgres" {
        do { try await postgresAuditBench() } catch { print("ccgate bench: audit-pg failed: \(error)") }
    }
    if only == nil || only == "gateway" {
        do { try await gatewayBench() } catch { print("ccgate bench: gateway failed: \(error)") }
    }
    done.signal()
}
done.wait()
