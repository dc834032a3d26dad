import Foundation

/// Why a TDX quote or measurement could not be made.
public struct TDXError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
