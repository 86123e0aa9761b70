import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// The admin HTTP listener's TCP socket: accepts connections on the server's event loop
/// group and gives each the pipeline size limit, idle timeout, NIO's HTTP/1 codec and an
/// ``AdminHTTPHandler``.
///
/// It is bounded so that a scraper gone wrong, or a port scan, cannot cost the UDP service
/// more than a little: at most ``Limits/maxConnections`` connections at once (more are
/// closed as soon as they are accepted), each closed after ``Limits/idleTimeout`` without a
/// read and after one request, whose head may be at most ``Limits/maxRequestBytes``.
public final class AdminListener: Sendable {
    /// The listener's bounds.
    public struct Limits: Sendable, Hashable {
        public var maxConnections: Int
        public var idleTimeout: TimeAmount
        public var maxRequestBytes: Int

        public init(maxConnections: Int = 64, idleTimeout: TimeAmount = .seconds(10), maxRequestBytes: Int = 8192) {
            self.maxConnections = maxConnections
            self.idleTimeout = idleTimeout
            self.maxRequestBytes = maxRequestBytes
        }
    }

    /// The address bound (the port is the real one when 0 was asked for).
    public let localAddress: SocketAddress?
    private let channel: any Channel
    private let connections: ConnectionCount

    private init(channel: any Channel, connections: ConnectionCount) {
        self.channel = channel
        self.connections = connections
        localAddress = channel.localAddress
    }

    /// Connections open now (tests check the bound).
    public var openConnections: Int { connections.open.load(ordering: .relaxed) }

    /// Binds `endpoint` and serves each request with `respond`.
    /// - Throws: NIO's error when the address cannot be bound (in use, not local, invalid).
    public static func bind(_ endpoint: AdminEndpoint, group: any EventLoopGroup, limits: Limits = Limits(),
                            respond: @escaping AdminHTTPHandler.Responder) async throws -> AdminListener {
        let connections = ConnectionCount()
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    guard connections.admit(limit: limits.maxConnections) else {
                        channel.close(promise: nil)
                        return
                    }
                    channel.closeFuture.whenComplete { _ in connections.release() }
                    let pipeline = channel.pipeline.syncOperations
                    try pipeline.addHandler(AdminRequestSizeLimit(limit: limits.maxRequestBytes))
                    try pipeline.addHandler(IdleStateHandler(readTimeout: limits.idleTimeout))
                    try pipeline.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: true)
                    try pipeline.addHandler(AdminHTTPHandler(respond: respond))
                }
            }
            .childChannelOption(.allowRemoteHalfClosure, value: false)
        let channel = try await bootstrap.bind(host: endpoint.host, port: endpoint.port).get()
        return AdminListener(channel: channel, connections: connections)
    }

    /// Stops accepting (connections being answered finish on their own, bounded by the idle timeout).
    public func close() async {
        try? await channel.close()
    }

    /// Open connections, shared by the accepting loop and the connections' loops.
    private final class ConnectionCount: Sendable {
        let open = Atomic<Int>(0)

        /// Counts a new connection if fewer than `limit` are open.
        func admit(limit: Int) -> Bool {
            var current = open.load(ordering: .relaxed)
            while current < limit {
                let (exchanged, original) = open.compareExchange(expected: current, desired: current + 1, ordering: .relaxed)
                if exchanged { return true }
                current = original
            }
            return false
        }

        func release() {
            open.subtract(1, ordering: .relaxed)
        }
    }
}
