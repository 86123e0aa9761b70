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

@Suite("DatagramHost extra sockets")
struct DatagramHostExtraSocketTests {
    /// A driver opens an extra socket, sends from it, gets the answer on it (named by its
    /// number, not as the main socket's), and after closing it hears nothing there.
    @Test func anExtraSocketSendsAndReceivesApartFromTheMainOne() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        let echo = try await DatagramHost.bind(host: "127.0.0.1", port: 0, group: group, logger: logger) { EchoDriver() }
        let node = try await DatagramHost.bind(host: "127.0.0.1", port: 0, group: group, logger: logger) { RecordingDriver() }
        let echoEndpoint = try #require(echo.localAddress.flatMap { Endpoint($0) })
        let mainPort = try #require(node.localAddress?.port)

        try await node.performAndWait { _, output, _ in
            output.openSocket(7)
            output.send(Array("via 7".utf8), to: echoEndpoint, fromSocket: 7)
        }
        var heard: [RecordingDriver.Heard] = []
        for _ in 0..<200 where heard.isEmpty {
            try await Task.sleep(for: .milliseconds(10))
            heard = try await node.performAndWait { driver, _, _ in driver.heard }
        }
        let first = try #require(heard.first)
        #expect(first.socket == 7)
        #expect(first.text == "via 7")
        // The echo saw another source port than the main socket's.
        let seenBy = try await echo.performAndWait { driver, _, _ in driver.sources }
        #expect(seenBy.count == 1 && seenBy.first.map { Int($0.port) != mainPort } == true)

        // Closed: the echo's next datagram to that port reaches nobody.
        let extraEndpoint = try #require(seenBy.first)
        try await node.performAndWait { _, output, _ in output.closeSocket(7) }
        try await echo.performAndWait { _, output, _ in output.send(Array("late".utf8), to: extraEndpoint) }
        try await Task.sleep(for: .milliseconds(200))
        heard = try await node.performAndWait { driver, _, _ in driver.heard }
        #expect(heard.count == 1)
        let stats = try await node.statistics()
        #expect(stats.datagramsSent == 1)

        await node.close()
        await echo.close()
        try await group.shutdownGracefully()
    }
}

private final class EchoDriver: DatagramDriver {
    var sources: [Endpoint] = []
    func receive(_ payload: ByteBuffer, from source: Endpoint, now: Instant, output: inout DatagramOutput) {
        sources.append(source)
        output.send(buffer: payload, to: source)
    }
    func timeout(now: Instant, output: inout DatagramOutput) {}
    func nextDeadline() -> Instant? { nil }
}

private final class RecordingDriver: DatagramDriver {
    struct Heard: Sendable, Hashable {
        var socket: Int?
        var text: String
    }
    var heard: [Heard] = []
    func receive(_ payload: ByteBuffer, from source: Endpoint, now: Instant, output: inout DatagramOutput) {
        heard.append(Heard(socket: nil, text: String(buffer: payload)))
    }
    func receive(_ payload: ByteBuffer, from source: Endpoint, onSocket socket: Int, now: Instant, output: inout DatagramOutput) {
        heard.append(Heard(socket: socket, text: String(buffer: payload)))
    }
    func timeout(now: Instant, output: inout DatagramOutput) {}
    func nextDeadline() -> Instant? { nil }
}
