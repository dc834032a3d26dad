import Foundation

#if !ENGINE_PARSERS_INLINE
    import Inference
#endif

// The engine's HTTP request reader and JSON parser under libFuzzer (`make fuzz`). Built with
// `-DFUZZING` and `-sanitize=fuzzer,address`, libFuzzer provides `main` and calls
// `LLVMFuzzerTestOneInput`; otherwise this is a replayer: `engine-fuzz FILE...` runs each file
// once. (scripts/fuzz compiles it with the parsers' own source files, -DENGINE_PARSERS_INLINE, so
// the fuzzing build needs neither Vulkan nor the shader plugin.) A crash, or a broken property checked by `ParserExercise` (a status other than 4xx/501, a
// JSON value that does not survive serializing), is a finding.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    _ = ParserExercise.run(bytes)
    // The same bytes as a body alone, so the JSON parser sees inputs the HTTP framing would cut.
    _ = ParserExercise.json(Data(bytes))
    return 0
}

#if FUZZING
    /// SwiftPM links executables with `main` aliased to `engine_fuzz_main`; hand control to
    /// libFuzzer's driver.
    @_silgen_name("LLVMFuzzerRunDriver")
    func runFuzzerDriver(
        _ argc: UnsafeMutablePointer<Int32>,
        _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
        _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
    ) -> Int32

    @_cdecl("engine_fuzz_main")
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
                    FileHandle.standardError.write(Data("engine-fuzz: cannot read \(path)\n".utf8))
                    exit(2)
                }
                _ = data.withUnsafeBytes { fuzzOne($0.bindMemory(to: UInt8.self).baseAddress, data.count) }
                count += 1
            }
            print("engine-fuzz: replayed \(count) inputs without a crash")
        }
    }
#endif
