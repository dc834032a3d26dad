import Foundation

/// Framing errors. The connection that produced one is answered with an `error` message and closed.
public enum FrameError: Error, Equatable, CustomStringConvertible {
    case tooLarge(Int)
    case empty
    case malformed(String)

    public var code: ProtocolErrorCode {
        switch self {
        case .tooLarge: .frameTooLarge
        case .empty, .malformed: .malformedFrame
        }
    }

    public var description: String {
        switch self {
        case .tooLarge(let n): "frame of \(n) bytes exceeds the \(WireMessage.maxFrameSize)-byte limit"
        case .empty: "empty frame"
        case .malformed(let s): "frame is not a valid message: \(s)"
        }
    }
}

extension WireMessage {
    /// The largest frame body either side accepts. A sealed chunk of at most 1 MiB travels as a
    /// binary frame of about that size; frames above 2 MiB are refused before any of their bytes
    /// are buffered.
    public static let maxFrameSize = 2 << 20

    /// The frame bytes for this message (for tests and raw clients).
    public func frame() throws -> Data {
        let body = try frameBody()
        var length = UInt32(body.count).bigEndian
        return Data(bytes: &length, count: 4) + body
    }
}
