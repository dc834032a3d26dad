import AttestationCore
import Foundation
import TDXVerifier

// The DCAP quote parser under libFuzzer (`make fuzz`). Built with `-DFUZZING` and
// `-sanitize=fuzzer,address`, libFuzzer provides `main` and calls `LLVMFuzzerTestOneInput`;
// otherwise this is a replayer: `dcap-fuzz FILE...` runs each file once.

/// Collateral that matches the shared sample quote, so inputs near a real quote reach the deep
/// checks; read once from `$CCGATE_FUZZ_COLLATERAL` (an envelope or a bundle).
let fuzzCollateral: Collateral? = {
    guard let path = ProcessInfo.processInfo.environment["CCGATE_FUZZ_COLLATERAL"],
        let data = FileManager.default.contents(atPath: path),
        let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
        let fields = (object["collateral"] as? [String: String]) ?? (object as? [String: String])
    else { return nil }
    return try? Collateral.read(fields).get()
}()

let fuzzTime = Date(timeIntervalSince1970: 1_752_919_234)  // 2025-07-19T10:00:34Z, inside the sample's window

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    QuoteExercise.run(bytes, collateral: fuzzCollateral, at: fuzzTime)
    return 0
}

#if FUZZING
    /// SwiftPM links executables with `main` aliased to `dcap_fuzz_main`; hand control to libFuzzer's driver.
    @_silgen_name("LLVMFuzzerRunDriver")
    func runFuzzerDriver(
        _ argc: UnsafeMutablePointer<Int32>,
        _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
        _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
    ) -> Int32

    @_cdecl("dcap_fuzz_main")
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
                    FileHandle.standardError.write(Data("dcap-fuzz: cannot read \(path)\n".utf8))
                    exit(2)
                }
                _ = data.withUnsafeBytes { fuzzOne($0.bindMemory(to: UInt8.self).baseAddress, data.count) }
                count += 1
            }
            print("dcap-fuzz: replayed \(count) inputs without a crash")
        }
    }
#endif
