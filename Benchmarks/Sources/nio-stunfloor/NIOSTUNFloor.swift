// nio-stunfloor: the least a SwiftNIO server can do to answer STUN Binding requests, as a
// yardstick for natchat-server. The socket options of natchat's TransportPosix
// (`DatagramSocketOptions`: vector reads of 64, one read per readiness event), one flush per
// read batch, replies written in place into one buffer per batch, natchat's in-place STUN
// reader and writer, and nothing else: no driver, no registry, no statistics.
// natchat-server ÷ this is what natchat's own layers cost; this ÷ stunmin is what SwiftNIO's
// per-datagram path costs.
import Addressing
import Glibc
import NIOCore
import NIOPosix
import STUN
import Transport
import TransportPosix

final class BindingResponder: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    // Replies are written into one buffer per read batch and sliced only when flushed:
    // slicing earlier would share the storage and make the next write copy it.
    private var replies: ByteBuffer
    private var queued: [(address: SocketAddress, start: Int, length: Int)] = []

    init(allocator: ByteBufferAllocator) {
        replies = allocator.buffer(capacity: DatagramSocketOptions.vectorReadCount * STUN.bindingSuccessLength)
        queued.reserveCapacity(DatagramSocketOptions.vectorReadCount)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        guard let transaction = STUN.bindingRequestTransaction(envelope.data.readableBytesView),
              let source = Endpoint(envelope.remoteAddress) else { return }
        let start = replies.writerIndex
        let written = replies.writeWithUnsafeMutableBytes(minimumWritableBytes: STUN.bindingSuccessLength) {
            STUN.writeBindingSuccess(transaction, mapped: source, into: $0)
        }
        if written > 0 { queued.append((envelope.remoteAddress, start, written)) }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if !queued.isEmpty {
            for (address, start, length) in queued {
                guard let reply = replies.getSlice(at: start, length: length) else { continue }
                context.write(wrapOutboundOut(AddressedEnvelope(remoteAddress: address, data: reply)), promise: nil)
            }
            context.flush()
            queued.removeAll(keepingCapacity: true)
            replies.clear()
        }
        context.fireChannelReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {}
}

@main
enum NIOSTUNFloor {
    static func main() throws {
        let arguments = CommandLine.arguments
        guard arguments.count >= 3, let port = Int(arguments[2]) else {
            let usage = "usage: nio-stunfloor HOST PORT [SECONDS]\n"
            _ = usage.withCString { write(2, $0, strlen($0)) }
            exit(2)
        }
        let lifetime = arguments.count >= 4 ? UInt32(arguments[3]) ?? 60 : 60
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let channel = try DatagramSocketOptions.apply(to: DatagramBootstrap(group: group))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(BindingResponder(allocator: channel.allocator))
                }
            }
            .bind(host: arguments[1], port: port).wait()
        sleep(lifetime)  // like stunmin: serve for a fixed time, then exit
        try? channel.close().wait()
        try group.syncShutdownGracefully()
    }
}
