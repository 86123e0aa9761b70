import NIOCore

/// Closes a connection whose client sends more than `limit` bytes: with one request per
/// connection and no bodies, that bounds the request head (NIO's parser alone allows 80 KiB).
/// It sits before the HTTP decoder.
public final class AdminRequestSizeLimit: ChannelInboundHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer

    private let limit: Int
    private var received = 0

    public init(limit: Int) {
        self.limit = limit
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        received += buffer.readableBytes
        guard received <= limit else {
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(data)
    }
}
