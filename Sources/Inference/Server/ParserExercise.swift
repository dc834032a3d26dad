import Foundation

/// The engine's parsers of what clients send, on arbitrary bytes, for the fuzzer (`make fuzz`)
/// and the mutation tests: HTTP/1.1 requests read from the bytes as from a socket (pipelined,
/// until the bytes end or a request is refused), and each body through the JSON parser.
///
/// Threat: a client of the engine's API (the worker forwards what developers send) with bytes
/// built to crash or stall the parsers. Every input must end in requests or a refusal with a
/// 4xx/501 status, never a crash; a body that parses must serialize to JSON that parses to the
/// same value.
public enum ParserExercise {
    public enum Outcome: Sendable, Equatable {
        /// A request read whole: its method, path, body size, and whether the body is JSON.
        case request(method: String, path: String, bodyBytes: Int, json: Bool)
        /// The parser's refusal, answered with this status.
        case refused(status: Int)
    }

    public static func run(_ bytes: [UInt8]) -> [Outcome] {
        var reader = SocketReader(fd: -1, buffer: bytes)
        var outcomes = [Outcome]()
        while true {
            do {
                guard let request = try reader.readRequest() else { return outcomes }
                outcomes.append(
                    .request(
                        method: request.method, path: request.path, bodyBytes: request.body.count,
                        json: json(request.body)))
            } catch let error as HTTPParseError {
                precondition([400, 413, 431, 501].contains(error.status), "unexpected status \(error.status)")
                outcomes.append(.refused(status: error.status))
                return outcomes
            } catch {
                preconditionFailure("the reader threw \(error)")
            }
        }
    }

    /// Whether `body` is JSON; when it is, its serialization must parse to the same value.
    public static func json(_ body: Data) -> Bool {
        guard let value = try? JSONValue.parse(body) else { return false }
        let again = try? JSONValue.parse(value.serialized)
        precondition(again == value, "JSON did not survive serializing: \(value.serialized.prefix(200))")
        return true
    }
}
