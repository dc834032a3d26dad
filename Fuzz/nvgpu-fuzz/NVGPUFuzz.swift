import AttestationCore
import Foundation
import NVGPUVerifier

// NVIDIA GPU evidence under libFuzzer (`make fuzz`): an input starting with `<` is read as a
// reference integrity manifest (libxml2 and libxmlsec1 through the C target), anything else as
// an attestation report, verified whole under the chain in `$CCGATE_FUZZ_NVGPU_CHAIN`. Built
// with `-DFUZZING` and `-sanitize=fuzzer,address`, libFuzzer provides `main`; otherwise this is
// a replayer: `nvgpu-fuzz FILE...` runs each file once.

let fuzzChain: [UInt8] = {
    guard let path = ProcessInfo.processInfo.environment["CCGATE_FUZZ_NVGPU_CHAIN"],
        let data = FileManager.default.contents(atPath: path)
    else { return [] }
    return [UInt8](data)
}()

let fuzzTime = Date(timeIntervalSince1970: 1_719_792_000)  // 2024-07-01T00:00:00Z, inside the manifests' windows
let fuzzVerifier = NVGPUReportVerifier()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    if bytes.first == UInt8(ascii: "<") {
        _ = try? ReferenceManifest.verified(bytes, at: fuzzTime)
    } else {
        let verdict = fuzzVerifier.verify(.init(report: bytes, chainPEM: fuzzChain), expectedNonce: nil, at: fuzzTime)
        // Every refusal carries a documented code.
        if let code = verdict.reason, !ReasonCode.all.contains(code) { fatalError("undocumented reason \(code)") }
    }
    return 0
}

#if FUZZING
    /// SwiftPM links executables with `main` aliased to `nvgpu_fuzz_main`; hand control to libFuzzer's driver.
    @_silgen_name("LLVMFuzzerRunDriver")
    func runFuzzerDriver(
        _ argc: UnsafeMutablePointer<Int32>,
        _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
        _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
    ) -> Int32

    @_cdecl("nvgpu_fuzz_main")
    public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
        var count = argc
        var vector = argv
        return runFuzzerDriver(&count, &vector, fuzzOne)
    }
#else
    @main
    struct Replay {
        static func main() {
            var count = 0
            for path in CommandLine.arguments.dropFirst() {
                guard let data = FileManager.default.contents(atPath: path) else {
                    FileHandle.standardError.write(Data("nvgpu-fuzz: cannot read \(path)\n".utf8))
                    exit(2)
                }
                _ = data.withUnsafeBytes { fuzzOne($0.bindMemory(to: UInt8.self).baseAddress, data.count) }
                count += 1
            }
            print("nvgpu-fuzz: replayed \(count) inputs without a crash")
        }
    }
#endif
