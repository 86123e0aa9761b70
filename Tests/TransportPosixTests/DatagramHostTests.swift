import Addressing
import Logging
import MonotonicTime
import NIOCore
import NIOPosix
import Testing
import Transport
import TransportPosix

@Suite("DatagramHost binding")
struct DatagramHostBindingTests {
    /// A second node on a port already in use must fail to bind (and say so), not share the
    /// first one's datagrams: no SO_REUSEADDR.
    @Test func aPortInUseIsRefused() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        let first = try await DatagramHost.bind(host: "127.0.0.1", port: 0, group: group, logger: logger) { SilentDriver() }
        let port = try #require(first.localAddress?.port)
        await #expect(throws: (any Error).self) {
            _ = try await DatagramHost.bind(host: "127.0.0.1", port: port, group: group, logger: logger) { SilentDriver() }
        }
        // Once the first is closed, the port is free at once (UDP has no TIME_WAIT).
        await first.close()
        let again = try await DatagramHost.bind(host: "127.0.0.1", port: port, group: group, logger: logger) { SilentDriver() }
        await again.close()
        try await group.shutdownGracefully()
    }
}

private final class SilentDriver: DatagramDriver {
    func receive(_ payload: ByteBuffer, from source: Endpoint, now: Instant, output: inout DatagramOutput) {}
    func timeout(now: Instant, output: inout DatagramOutput) {}
    func nextDeadline() -> Instant? { nil }
}
