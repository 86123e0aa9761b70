import Addressing
import Foundation
import Logging
import MonotonicTime
import NIOCore
import NIOPosix
import Registry
@testable import RendezvousServer
import Store
import Testing
import Transport
import TransportPosix
import Wire

// Two real services on 127.0.0.1, each with its ClusterLink, sharing one MemoryClusterStore.
// Every wait is bounded in count and time; nothing is asserted about timing beyond
// "eventually, within N seconds".

private let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

/// One server of the test cluster: its socket, its service and its link.
private struct LinkedServer {
    let link: ClusterLink
    let host: DatagramHost<RendezvousService>
    let task: Task<Void, Never>

    /// Binds a service on 127.0.0.1 (a free port), joins it to `store` as `name` and runs its link.
    static func start(_ name: String, store: MemoryClusterStore, group: MultiThreadedEventLoopGroup,
                      deadAfter: Duration) async throws -> LinkedServer {
        // The link advertises the port, and the service takes the link's hooks: find a free
        // port first (UDP ports are free again as soon as they are closed).
        let probe = try await DatagramHost.bind(host: "127.0.0.1", port: 0, group: group, logger: quiet) { SilentDriver() }
        let port = try #require(probe.localAddress?.port)
        await probe.close()
        var configuration = ClusterLink.Configuration(name: name, advertise: "127.0.0.1:\(port)", claimTTL: 86_400,
                                                      deadAfter: deadAfter)
        configuration.heartbeatInterval = .milliseconds(100)
        configuration.publishInterval = .milliseconds(50)
        configuration.pollInterval = .milliseconds(50)
        let link = ClusterLink(store: store, configuration: configuration, logger: quiet)
        let secret = try await link.join()
        let hooks = link.hooks(secret: secret)
        let registry = Registry.Configuration(keepAliveTimeout: deadAfter, claimTTL: .seconds(86_400))
        let unixTime = Int64(Date().timeIntervalSince1970)
        let host = try await DatagramHost.bind(host: "127.0.0.1", port: port, group: group, logger: quiet) {
            RendezvousService(configuration: .init(registry: registry), logger: quiet, unixTime: unixTime, cluster: hooks,
                              printLine: { _ in })
        }
        let task = Task { await link.run(host: host) }
        return LinkedServer(link: link, host: host, task: task)
    }

    func stop() async {
        task.cancel()
        link.stop()
        await task.value
        await host.close()
    }

    var remoteCount: Int {
        get async throws { try await host.performAndWait { service, _, _ in service.registry.remoteCount } }
    }
}

/// Polls `condition` every 50 ms until it holds, for at most `seconds`.
private func eventually(within seconds: Int, _ condition: () async throws -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + .seconds(seconds)
    for _ in 0..<(seconds * 20 + 1) {
        if try await condition() { return true }
        guard ContinuousClock.now < deadline else { break }
        try await Task.sleep(for: .milliseconds(50))
    }
    return try await condition()
}

@Suite("ClusterLink", .serialized)
struct ClusterLinkTests {
    @Test(.timeLimit(.minutes(1)))
    func presenceTravelsAndASilentServersClientsLeave() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let store = MemoryClusterStore()
        let a = try await LinkedServer.start("a", store: store, group: group, deadAfter: .seconds(3))
        let b = try await LinkedServer.start("b", store: store, group: group, deadAfter: .seconds(3))

        // A presence record published through a's link reaches b's registry.
        let alice = try ClientID("alice")
        let info = PeerInfo(id: alice, publicEndpoint: try Endpoint(parsing: "203.0.113.7:40001"), natKind: .endpointIndependent,
                            dialect: .extended)
        let hooks = a.link.hooks(secret: [])
        hooks.publish(PresenceRecord(id: "alice", home: "a", sessionStart: Int64(Date().timeIntervalSince1970) * 1000,
                                     info: info.encode()))
        #expect(try await eventually(within: 5) { try await b.remoteCount == 1 })
        let seen = try await b.host.performAndWait { service, _, _ in service.registry.entry(for: alice) }
        #expect(seen?.isLocal == false && seen?.publicEndpoint == info.publicEndpoint)
        #expect(a.link.pendingPresenceCount == 0)

        // a stops (its heartbeat with it): once it is older than the keep-alive timeout, b
        // takes a's clients for gone.
        await a.stop()
        #expect(try await eventually(within: 10) { try await b.remoteCount == 0 })
        let status = try await b.host.performAndWait { service, _, _ in service.registry.clusterServers }
        #expect(status.first { $0.name == "a" }?.alive == false)

        // a beats again before anyone retired its clients: b reads a's presence again.
        let beat = try await store.heartbeat(server: "a", at: Int64(Date().timeIntervalSince1970))
        #expect(beat.first { $0.name == "a" }.map { $0.heartbeat > 0 } == true)
        #expect(try await eventually(within: 5) { try await b.remoteCount == 1 })

        await b.stop()
        store.close()
        try await group.shutdownGracefully()
    }
}

private final class SilentDriver: DatagramDriver {
    func receive(_ payload: ByteBuffer, from source: Endpoint, now: Instant, output: inout DatagramOutput) {}
    func timeout(now: Instant, output: inout DatagramOutput) {}
    func nextDeadline() -> Instant? { nil }
}
