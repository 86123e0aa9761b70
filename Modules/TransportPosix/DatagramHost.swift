import Logging
import MonotonicTime
import NIOCore
import NIOPosix
import Transport

/// A bound UDP socket with a ``DatagramDriver`` behind it: the whole I/O layer of a
/// natchat node. Create it with ``bind(host:port:group:logger:makeDriver:)``.
public final class DatagramHost<Driver: DatagramDriver>: Sendable {
    /// The largest datagram a node accepts; longer ones are truncated by the read and then
    /// refused by the decoders.
    public static var maxDatagramSize: Int { DatagramSocketOptions.maxDatagramSize }

    /// The channel's local address.
    public let localAddress: SocketAddress?
    private let channel: any Channel
    private let handler: NIOLoopBound<DatagramDriverHandler<Driver>>

    private init(channel: any Channel, handler: NIOLoopBound<DatagramDriverHandler<Driver>>) {
        self.channel = channel
        self.handler = handler
        self.localAddress = channel.localAddress
    }

    /// Binds a UDP socket on `host:port` (port 0 picks one) and attaches the driver that
    /// `makeDriver` builds; `makeDriver` runs on the channel's event loop.
    public static func bind(host: String, port: Int, group: any EventLoopGroup, logger: Logger,
                            receiveBufferBytes: Int = 1 << 20,
                            makeDriver: @escaping @Sendable () -> Driver) async throws -> DatagramHost {
        try await bindFuture(host: host, port: port, group: group, logger: logger,
                             receiveBufferBytes: receiveBufferBytes, makeDriver: makeDriver).get()
    }

    static func bindFuture(host: String, port: Int, group: any EventLoopGroup, logger: Logger,
                           receiveBufferBytes: Int,
                           makeDriver: @escaping @Sendable () -> Driver) -> EventLoopFuture<DatagramHost> {
        let bootstrap = DatagramSocketOptions.apply(to: DatagramBootstrap(group: group), receiveBufferBytes: receiveBufferBytes)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = DatagramDriverHandler(driver: makeDriver(), logger: logger,
                                                        extraSockets: PosixExtraSocketOpener())
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
        return bootstrap.bind(host: host, port: port).flatMap { channel in
            channel.pipeline.handler(type: DatagramDriverHandler<Driver>.self).map { handler in
                DatagramHost(channel: channel, handler: NIOLoopBound(handler, eventLoop: channel.eventLoop))
            }
        }
    }

    /// Runs `body` on the event loop with the driver, an output to queue datagrams in, and
    /// the time; the queued datagrams are sent when it returns.
    public func perform(_ body: @escaping @Sendable (Driver, inout DatagramOutput, Instant) -> Void) {
        let handler = self.handler
        channel.eventLoop.execute {
            handler.value.perform(body)
        }
    }

    /// Like ``perform(_:)``, waiting for it to finish and returning its result.
    public func performAndWait<Result: Sendable>(
        _ body: @escaping @Sendable (Driver, inout DatagramOutput, Instant) -> Result
    ) async throws -> Result {
        let handler = self.handler
        return try await channel.eventLoop.submit {
            var result: Result?
            handler.value.perform { driver, output, now in result = body(driver, &output, now) }
            guard let result else { preconditionFailure("perform runs its body synchronously") }
            return result
        }.get()
    }

    /// The transport's counters.
    public func statistics() async throws -> TransportStatistics {
        let handler = self.handler
        return try await channel.eventLoop.submit { handler.value.statistics }.get()
    }

    /// Closes the socket.
    public func close() async {
        try? await channel.close()
    }

    /// Completes when the socket is closed.
    public var closeFuture: EventLoopFuture<Void> { channel.closeFuture }
}

extension DatagramHost {
    /// ``bind(host:port:group:logger:receiveBufferBytes:makeDriver:)`` for synchronous
    /// callers (a command-line main thread that will own the terminal).
    public static func bindBlocking(host: String, port: Int, group: any EventLoopGroup, logger: Logger,
                                    receiveBufferBytes: Int = 1 << 20,
                                    makeDriver: @escaping @Sendable () -> Driver) throws -> DatagramHost {
        try bindFuture(host: host, port: port, group: group, logger: logger,
                       receiveBufferBytes: receiveBufferBytes, makeDriver: makeDriver).wait()
    }

    /// ``perform(_:)``, blocking the calling (non-event-loop) thread until it has run and
    /// its datagrams have been written.
    public func performBlocking(_ body: @escaping @Sendable (Driver, inout DatagramOutput, Instant) -> Void) {
        let handler = self.handler
        try? channel.eventLoop.submit { handler.value.perform(body) }.wait()
    }
}

/// Binds the extra sockets a driver asks for (``DatagramOutput/openSocket(_:)``): NIO datagram
/// channels on the main socket's event loop and address, any port, with the small options of
/// ``DatagramSocketOptions/applyExtra(to:)``.
public struct PosixExtraSocketOpener: ExtraSocketOpener {
    public init() {}

    public func openSocket(host: String, on eventLoop: any EventLoop,
                           initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>) -> EventLoopFuture<any Channel> {
        DatagramSocketOptions.applyExtra(to: DatagramBootstrap(group: eventLoop))
            .channelInitializer(initializer)
            .bind(host: host, port: 0)
    }
}

/// The socket and channel options of every natchat UDP socket, in one place so that a
/// yardstick built on bare SwiftNIO (`Benchmarks/Sources/nio-stunfloor`) measures exactly
/// the configuration natchat runs with.
public enum DatagramSocketOptions {
    /// The largest datagram a node accepts; longer ones are truncated by the read and then
    /// refused by the decoders.
    public static var maxDatagramSize: Int { 2048 }
    /// Datagrams read per `recvmmsg`.
    public static var vectorReadCount: Int { 64 }

    /// `bootstrap` with natchat's options: socket buffers of `receiveBufferBytes`, a bounded
    /// write queue, and vector reads of ``vectorReadCount``.
    ///
    /// No `SO_REUSEADDR`: UDP has no TIME_WAIT to wait out, and with it a second server (or
    /// shell) on a port already in use would bind without an error and silently share, or
    /// steal, the first one's datagrams. Without it the second one fails to bind and says so.
    public static func apply(to bootstrap: DatagramBootstrap, receiveBufferBytes: Int = 1 << 20) -> DatagramBootstrap {
        bootstrap
            .channelOption(.socketOption(.so_rcvbuf), value: SocketOptionValue(receiveBufferBytes))
            .channelOption(.socketOption(.so_sndbuf), value: SocketOptionValue(receiveBufferBytes))
            .channelOption(.writeBufferWaterMark, value: .init(low: 256 * 1024, high: 1024 * 1024))
            // With vector reads NIO splits one receive buffer between the messages of a batch,
            // so the buffer holds a full-sized datagram for each of them.
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: maxDatagramSize * vectorReadCount))
            .channelOption(.datagramVectorReadMessageCount, value: vectorReadCount)
            // One vector read (up to 64 datagrams) per readiness event: NIO otherwise reads again
            // until the socket is empty, which under load is one more recvmmsg per batch that
            // usually finds nothing (3 per batch seen under stunload, now 1). NIO's epoll is
            // level-triggered, so datagrams left over wake the loop again at once.
            .channelOption(.maxMessagesPerRead, value: 1)
    }

    /// Options of an extra socket (a port-probing socket: a few hundred may be open, each
    /// sees a handful of datagrams): 64 KiB socket buffers and one datagram per read, so
    /// that each costs one 2 KiB receive buffer rather than the main socket's 128 KiB.
    public static func applyExtra(to bootstrap: DatagramBootstrap) -> DatagramBootstrap {
        bootstrap
            .channelOption(.socketOption(.so_rcvbuf), value: SocketOptionValue(64 * 1024))
            .channelOption(.socketOption(.so_sndbuf), value: SocketOptionValue(64 * 1024))
            .channelOption(.writeBufferWaterMark, value: .init(low: 16 * 1024, high: 64 * 1024))
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: maxDatagramSize))
            .channelOption(.maxMessagesPerRead, value: 1)
    }
}
