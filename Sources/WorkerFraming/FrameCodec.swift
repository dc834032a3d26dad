import Foundation
import NIOCore
import WorkerProtocol

/// Decodes length-prefixed JSON frames into messages.
///
/// Cap: ``WireMessage/maxFrameSize``, checked on the length prefix before the body is buffered.
public struct WireFrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = WireMessage
    public static let maxFrameSize = WireMessage.maxFrameSize

    public init() {}

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return .needMoreData }
        guard length > 0 else { throw FrameError.empty }
        guard length <= UInt32(Self.maxFrameSize) else { throw FrameError.tooLarge(Int(length)) }
        guard buffer.readableBytes >= 4 + Int(length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 4)
        let body = buffer.readSlice(length: Int(length))!
        context.fireChannelRead(wrapInboundOut(try Self.message(from: body)))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws
        -> DecodingState
    {
        while try decode(context: context, buffer: &buffer) == .continue {}
        if buffer.readableBytes > 0 { throw FrameError.malformed("connection closed inside a frame") }
        return .needMoreData
    }

    static func message(from body: ByteBuffer) throws -> WireMessage {
        do {
            return try JSONDecoder().decode(WireMessage.self, from: Data(body.readableBytesView))
        } catch {
            throw FrameError.malformed(String(describing: error).prefix(200).description)
        }
    }
}

/// Encodes messages as length-prefixed JSON frames.
public struct WireFrameEncoder: MessageToByteEncoder {
    public typealias OutboundIn = WireMessage
    public init() {}

    public func encode(data: WireMessage, out: inout ByteBuffer) throws {
        let json = try JSONEncoder().encode(data)
        guard json.count <= WireFrameDecoder.maxFrameSize else { throw FrameError.tooLarge(json.count) }
        out.writeInteger(UInt32(json.count))
        out.writeBytes(json)
    }
}
