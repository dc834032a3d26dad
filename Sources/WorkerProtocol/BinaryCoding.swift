import Foundation

/// The binary forms of the messages that carry traffic: a ``ChannelPayload`` inside the sealed
/// channel, and a `sealed` message on the wire (its frame body is one marker byte and the sealed
/// box, not JSON with the box in base64). Requests and answers are the gateway's hot path: each
/// one used to pass through two JSON encodings and two base64 expansions of the same bytes.
///
/// Layout: big-endian integers; strings and byte fields as a 4-byte length and that many bytes.
///
/// Threat: the peer at the other end of the channel (a worker's host owner, or a gateway) sending
/// payloads with lengths that point past the end, truncated fields, unknown tags, trailing bytes
/// or strings that are not UTF-8 (anyone else on the path is stopped by the channel's
/// authentication before this decoder, and reaches only the frame decoding). Every read is bounds-checked against the bytes at hand before anything is
/// copied, and any of these is a ``FrameError/malformed(_:)``, never a crash or an allocation of
/// the claimed size.
extension ChannelPayload {
    private enum Tag: UInt8 {
        case request = 1, head, data, end, failure, cancel, sealedRequest, usage, challenge, ended
    }

    /// The number of bytes ``encoded()`` returns, without encoding.
    public var encodedSize: Int {
        switch self {
        case .request(_, let method, let path, let body, let rid):
            9 + 16 + method.utf8.count + path.utf8.count + body.count + rid.utf8.count
        case .head(_, _, let contentType): 9 + 8 + 4 + contentType.utf8.count
        case .data(_, let bytes): 9 + 4 + bytes.count
        case .end, .cancel: 9
        case .failure(_, let message): 9 + 4 + message.utf8.count
        case .sealedRequest(_, let path, let envelope, let rid):
            9 + 12 + path.utf8.count + envelope.count + rid.utf8.count
        case .usage(_, let counts): 9 + 4 + counts.count
        case .challenge(let nonce): 9 + 4 + nonce.count
        case .ended(let code, let message, let judged):
            9 + 8 + code.utf8.count + message.utf8.count + 1 + (judged.map { 4 + $0.count } ?? 0)
        }
    }

    /// The payload's bytes, as sealed into the channel. Fields are at most 4 GiB - 1 bytes (the
    /// channel's messages are capped at 1 MiB long before that).
    public func encoded() -> Data {
        var out = BinaryWriter()
        switch self {
        case .request(let id, let method, let path, let body, let requestID):
            out.tag(Tag.request.rawValue, id)
            out.string(method)
            out.string(path)
            out.bytes(body)
            out.string(requestID)
        case .head(let id, let status, let contentType):
            out.tag(Tag.head.rawValue, id)
            out.integer(UInt64(bitPattern: Int64(status)))
            out.string(contentType)
        case .data(let id, let bytes):
            out.tag(Tag.data.rawValue, id)
            out.bytes(bytes)
        case .end(let id): out.tag(Tag.end.rawValue, id)
        case .failure(let id, let message):
            out.tag(Tag.failure.rawValue, id)
            out.string(message)
        case .cancel(let id): out.tag(Tag.cancel.rawValue, id)
        case .sealedRequest(let id, let path, let envelope, let requestID):
            out.tag(Tag.sealedRequest.rawValue, id)
            out.string(path)
            out.bytes(envelope)
            out.string(requestID)
        case .usage(let id, let counts):
            out.tag(Tag.usage.rawValue, id)
            out.bytes(counts)
        case .challenge(let nonce):
            out.tag(Tag.challenge.rawValue, 0)
            out.bytes(nonce)
        case .ended(let code, let message, let judged):
            out.tag(Tag.ended.rawValue, 0)
            out.string(code)
            out.string(message)
            out.byte(judged == nil ? 0 : 1)
            if let judged { out.bytes(judged) }
        }
        return out.data
    }

    /// Decodes ``encoded()``'s bytes: the whole of `bytes`, nothing left over.
    public init(decoding bytes: Data) throws(FrameError) {
        var input = BinaryReader(bytes)
        let raw = try input.byte()
        guard let tag = Tag(rawValue: raw) else { throw .malformed("unknown channel payload \(raw)") }
        let id = try input.integer()
        switch tag {
        case .request:
            self = .request(
                id: id, method: try input.string(), path: try input.string(), body: try input.bytes(),
                requestID: try input.string())
        case .head:
            let status = Int64(bitPattern: try input.integer())
            guard let status = Int(exactly: status) else { throw .malformed("status out of range") }
            self = .head(id: id, status: status, contentType: try input.string())
        case .data: self = .data(id: id, bytes: try input.bytes())
        case .end: self = .end(id: id)
        case .failure: self = .failure(id: id, message: try input.string())
        case .cancel: self = .cancel(id: id)
        case .sealedRequest:
            self = .sealedRequest(
                id: id, path: try input.string(), envelope: try input.bytes(), requestID: try input.string())
        case .usage: self = .usage(id: id, counts: try input.bytes())
        case .challenge: self = .challenge(nonce: try input.bytes())
        case .ended:
            let code = try input.string()
            let message = try input.string()
            let judged: Data? =
                switch try input.byte() {
                case 0: nil
                case 1: try input.bytes()
                default: throw .malformed("bad flag")
                }
            self = .ended(code: code, message: message, judged: judged)
        }
        guard input.atEnd else { throw .malformed("\(input.remaining) bytes after the channel payload") }
        if case .challenge = self, id != 0 { throw .malformed("a control payload with a request id") }
        if case .ended = self, id != 0 { throw .malformed("a control payload with a request id") }
    }
}

extension WireMessage {
    /// The first byte of a `sealed` message's frame body. JSON bodies begin with `{`.
    static let sealedMarker: UInt8 = 0x01

    /// The frame body for this message: the marker and the box for `sealed`, JSON for the rest.
    public func frameBody() throws -> Data {
        if case .sealed(let box) = self { return Data([Self.sealedMarker]) + box }
        return try JSONEncoder().encode(self)
    }

    /// Decodes a frame body (``frameBody()``). A `sealed` message in JSON is refused: each
    /// message has one form.
    public init<Bytes: Collection<UInt8>>(frameBody body: Bytes) throws(FrameError) {
        guard let first = body.first else { throw .empty }
        if first == Self.sealedMarker {
            self = .sealed(Data(body.dropFirst()))
            return
        }
        do {
            self = try JSONDecoder().decode(WireMessage.self, from: Data(body))
        } catch {
            throw .malformed(String(describing: error).prefix(200).description)
        }
    }
}

/// Appends big-endian integers and length-prefixed fields.
struct BinaryWriter {
    var data = Data()

    mutating func byte(_ value: UInt8) { data.append(value) }

    mutating func integer(_ value: UInt64) {
        withUnsafeBytes(of: value.bigEndian) { data.append(contentsOf: $0) }
    }

    mutating func tag(_ tag: UInt8, _ id: UInt64) {
        byte(tag)
        integer(id)
    }

    mutating func bytes(_ value: Data) {
        precondition(value.count <= UInt32.max, "a field of 4 GiB or more")
        withUnsafeBytes(of: UInt32(value.count).bigEndian) { data.append(contentsOf: $0) }
        data.append(value)
    }

    mutating func string(_ value: String) { bytes(Data(value.utf8)) }
}

/// Reads what ``BinaryWriter`` writes, every read checked against the bytes left.
struct BinaryReader {
    private let data: Data
    private var offset: Int

    init(_ data: Data) {
        self.data = data
        offset = data.startIndex
    }

    var remaining: Int { data.endIndex - offset }
    var atEnd: Bool { remaining == 0 }

    private mutating func take(_ count: Int) throws(FrameError) -> Data {
        guard count >= 0, count <= remaining else { throw .malformed("a field runs past the end of the payload") }
        defer { offset += count }
        return data[offset..<offset + count]
    }

    mutating func byte() throws(FrameError) -> UInt8 { try take(1).first! }

    mutating func integer() throws(FrameError) -> UInt64 {
        try take(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    }

    mutating func bytes() throws(FrameError) -> Data {
        let length = try take(4).reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        return Data(try take(Int(length)))
    }

    mutating func string() throws(FrameError) -> String {
        let raw = try bytes()
        guard let text = String(validating: raw, as: UTF8.self) else { throw .malformed("a string is not UTF-8") }
        return text
    }
}
