import Foundation
import Testing

@testable import Gateway

/// The meter's event count (a completion bound and a cut stream's estimate) is the number of
/// lines that start with `data: `, whatever the chunk holds.
@Suite struct EventCountTests {
    /// The count a plain reading gives: split at line feeds, count the lines with the prefix.
    static func reference(_ bytes: Data) -> Int {
        bytes.split(separator: 0x0A).count { $0.starts(with: Data("data: ".utf8)) }
    }

    @Test func countsTheLinesAPlainReadingCounts() {
        #expect(UsageMeter.dataLines(Data("data: a\n\ndata: [DONE]\n\n".utf8)) == 2)
        #expect(UsageMeter.dataLines(Data("data:".utf8)) == 0)
        #expect(UsageMeter.dataLines(Data("xdata: a\n data: b\ndata: ".utf8)) == 1)
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("data: \n\r".utf8) + [0x00, 0xFF]
        for _ in 0..<2_000 {
            let length = Int.random(in: 0..<40, using: &generator)
            let bytes = Data((0..<length).map { _ in alphabet.randomElement(using: &generator)! })
            #expect(UsageMeter.dataLines(bytes) == Self.reference(bytes), "\(Array(bytes))")
        }
    }
}
