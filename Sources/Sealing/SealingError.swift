import Crypto
import Foundation

/// Why sealing or opening failed. Deliberately coarse: a caller learns that a message was not
/// authentic, never which byte was wrong.
public enum SealingError: Error, Equatable, CustomStringConvertible {
    case badPublicKey
    case openFailed
    case replayed(expected: UInt64, got: UInt64)
    case tooLarge(Int)

    public var description: String {
        switch self {
        case .badPublicKey: "not an X25519 public key"
        case .openFailed: "message failed authentication"
        case .replayed(let expected, let got):
            "out-of-order or replayed message: expected sequence \(expected), got \(got)"
        case .tooLarge(let n): "message of \(n) bytes exceeds the limit"
        }
    }
}
