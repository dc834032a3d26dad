import Foundation

/// A one-line progress bar on standard error, drawn only when it is a terminal.
final class ProgressBar: @unchecked Sendable {
    private let lock = NSLock()
    private let enabled = isatty(STDERR_FILENO) == 1
    private var lastDraw = Date.distantPast
    let label: String

    init(_ label: String) { self.label = label }

    func update(done: Int, total: Int?, unit: String) {
        guard enabled else { return }
        lock.withLock {
            let now = Date()
            guard now.timeIntervalSince(lastDraw) > 0.1 else { return }
            lastDraw = now
            draw(done: done, total: total, unit: unit)
        }
    }

    private func draw(done: Int, total: Int?, unit: String) {
        var line = "\r\(label) "
        if let total, total > 0 {
            let fraction = min(1, Double(done) / Double(total))
            let filled = Int(fraction * 30)
            line += "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: 30 - filled) + "] "
            line += "\(done)/\(total) \(unit)"
        } else {
            line += "\(done) \(unit)"
        }
        FileHandle.standardError.write(Data(line.utf8))
    }

    func finish(done: Int, total: Int?, unit: String) {
        guard enabled else { return }
        lock.withLock { draw(done: done, total: total ?? done, unit: unit) }
        FileHandle.standardError.write(Data("\n".utf8))
    }
}
