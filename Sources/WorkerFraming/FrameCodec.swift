import Foundation
import NIOCore
import WorkerProtocol

/// Decodes length-prefixed frames into messages (JSON, or binary for `sealed`).
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
        context.fireChannelRead(wrapInboundOut(try WireMessage(frameBody: body.readableBytesView)))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws
        -> DecodingState
    {
        while try decode(context: context, buffer: &buffer) == .continue {}
        if buffer.readableBytes > 0 { throw FrameError.malformed("connection closed inside a frame") }
        return .needMoreData
    }
}

/// Encodes messages as length-prefixed frames.
public struct WireFrameEncoder: MessageToByteEncoder {
    public typealias OutboundIn = WireMessage
    public init() {}

    public func encode(data: WireMessage, out: inout ByteBuffer) throws {
        let body = try data.frameBody()
        guard body.count <= WireFrameDecoder.maxFrameSize else { throw FrameError.tooLarge(body.count) }
        out.writeInteger(UInt32(body.count))
        out.writeBytes(body)
    }
}
