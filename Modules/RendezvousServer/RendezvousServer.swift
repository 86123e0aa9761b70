import Foundation
import Logging
import MonotonicTime
import NIOCore
import NIOPosix
import Store
import Synchronization
import TransportPosix

/// Runs a rendezvous server until it is told to stop.
public enum RendezvousServer {
    /// Binds `host:port`, prints `server program starts....` and serves until
    /// SIGINT or SIGTERM, then closes the socket and returns.
    /// - Parameters:
    ///   - alternatePort: a second port that answers STUN only, for clients' NAT-behaviour
    ///     probes (0: none).
    ///   - store: the durable store, opened; its contents are loaded before the socket is
    ///     bound (a store that cannot be read stops the server here, with the store's error),
    ///     and changes go to it in batches through a ``StoreWriter`` off the event loop,
    ///     flushed when the server stops. `nil`: nothing is kept (`--store memory`).
    ///   - cluster: several servers share `store` (a ``ClusterStore``): the link that joins
    ///     this server to the others (before the socket is bound) and runs while it serves.
    ///   - admin: where the admin HTTP listener binds (`nil`: none).
    public static func run(host: String, port: Int, alternatePort: Int = 0, configuration: RendezvousService.Configuration,
                           store: (any DurableStore)? = nil, cluster: ClusterLink? = nil, admin: AdminEndpoint? = nil, logger: Logger,
                           printLine: @escaping @Sendable (String) -> Void) async throws {
        let stored = try store?.load() ?? StoreSnapshot()
        var hooks: RendezvousService.ClusterHooks?
        if let cluster {
            let secret = try await cluster.join()
            hooks = cluster.hooks(secret: secret)
            logger.info("cluster", metadata: ["name": "\(cluster.configuration.name)", "advertise": "\(cluster.configuration.advertise)"])
        }
        let clusterHooks = hooks
        let writer = store.map { store in
            StoreWriter(store: store, onError: { error in
                logger.error("store write failed; the changes are kept and retried", metadata: ["error": "\(error)"])
            })
        }
        if let store {
            logger.info("store", metadata: ["location": "\(store.location)", "claims": "\(stored.claims.count)",
                                            "mail": "\(stored.mail.count)"])
        } else {
            logger.info("store", metadata: ["location": "memory (nothing is kept)"])
        }
        let persist: (@Sendable (StoreChange) -> Void)? = writer.map { writer in { @Sendable change in writer.enqueue(change) } }
        let unixTime = Int64(Date().timeIntervalSince1970)
        let startedAt = SystemClock().now()
        let signals = TerminationSignal.install()
        let group = MultiThreadedEventLoopGroup.singleton
        var configuration = configuration
        configuration.registry.alternatePort = UInt16(clamping: alternatePort)
        let finalConfiguration = configuration
        let server = try await DatagramHost.bind(host: host, port: port, group: group, logger: logger,
                                                 receiveBufferBytes: 4 << 20) {
            RendezvousService(configuration: finalConfiguration, logger: logger, now: startedAt, stored: stored, unixTime: unixTime,
                              persist: persist, cluster: clusterHooks, printLine: printLine)
        }
        var alternate: DatagramHost<STUNOnlyService>?
        if alternatePort != 0 {
            // A change-port request to the alternate port is answered from the main one.
            let primary = server
            alternate = try await DatagramHost.bind(host: host, port: alternatePort, group: group, logger: logger) {
                STUNOnlyService { bytes, destination in
                    primary.perform { _, output, _ in output.send(bytes, to: destination) }
                }
            }
        }
        let admin = try await startAdmin(admin, server: server, writer: writer, cluster: cluster, storeLocation: store?.location,
                                          group: group,
                                          startedAt: startedAt, logger: logger) {
            cluster?.stop()
            await server.close()
            await alternate?.close()
            try? writer?.close()
        }
        let linkTask = cluster.map { link in Task { await link.run(host: server) } }
        printLine("server program starts....")
        logger.info("listening", metadata: ["address": "\(server.localAddress.map { "\($0)" } ?? "?")"])
        let signal = await signals.wait()
        logger.info("stopping", metadata: ["signal": "\(signal)"])
        let counters = try? await server.performAndWait { service, _, _ in service.counters }
        if let counters {
            logger.info("final counters", metadata: ["registrations": "\(counters.registrations)",
                                                     "stun": "\(counters.stunRequests)", "relayed": "\(counters.relayedDatagrams)",
                                                     "malformed": "\(counters.malformed)", "ignored": "\(counters.ignored)",
                                                     "refused": "\(counters.refused)", "evictions": "\(counters.evictions)"])
        }
        admin?.sampler.cancel()
        await admin?.listener.close()
        linkTask?.cancel()
        cluster?.stop()
        await linkTask?.value
        await server.close()
        await alternate?.close()
        do {
            try writer?.close()
        } catch {
            logger.error("store: the last changes could not be written", metadata: ["error": "\(error)"])
        }
    }

    /// The admin listener that runs, and the task that samples the last-minute rates.
    struct RunningAdmin {
        let listener: AdminListener
        let sampler: Task<Void, Never>
    }

    /// Binds the admin listener for `server`. An explicit endpoint that cannot be bound runs
    /// `cleanUp` and throws (the operator asked for it: the server must not run without it);
    /// the default one only logs a warning, so that a second server on a host still starts.
    static func startAdmin(_ endpoint: AdminEndpoint?, server: DatagramHost<RendezvousService>, writer: StoreWriter?,
                           cluster: ClusterLink?, storeLocation: String?, group: any EventLoopGroup, startedAt: Instant, logger: Logger,
                           cleanUp: () async -> Void) async throws -> RunningAdmin? {
        guard let endpoint else { return nil }
        let serving = ServingFlag()
        server.closeFuture.whenComplete { _ in serving.stop() }
        let content = AdminContent(storeLocation: storeLocation, inCluster: cluster != nil,
                                   listening: server.localAddress.flatMap { address in
                                       address.ipAddress.flatMap { ip in address.port.map { "\(ip):\($0)" } } } ?? "?") {
            try await snapshot(of: server, writer: writer, cluster: cluster, startedAt: startedAt, serving: serving.isServing)
        }
        let listener: AdminListener
        do {
            listener = try await AdminListener.bind(endpoint, group: group) { route, eventLoop in
                content.respond(route, on: eventLoop)
            }
        } catch {
            guard endpoint.isExplicit else {
                logger.warning("the admin listener is off: its default address cannot be bound (another server on this host?)",
                               metadata: ["address": "\(endpoint)", "error": "\(error)"])
                return nil
            }
            await cleanUp()
            throw AdminListenerError(endpoint: endpoint, underlying: "\(error)")
        }
        logger.info("admin listener", metadata: ["address": "\(listener.localAddress.map { "\($0)" } ?? "\(endpoint)")"])
        let sampler = Task {
            while !Task.isCancelled {
                await content.sample()
                try? await Task.sleep(for: .seconds(5))
            }
        }
        return RunningAdmin(listener: listener, sampler: sampler)
    }

    /// The figures of a running server, read on its event loop (one hop) and from its writer.
    static func snapshot(of server: DatagramHost<RendezvousService>, writer: StoreWriter?, cluster: ClusterLink?, startedAt: Instant,
                         serving: Bool) async throws -> ServerSnapshot {
        let figures = try await server.performAndWait { service, _, _ in
            let registry = service.registry
            let local = registry.localClientCounts
            return ServiceFigures(counters: service.counters, classic: local.classic, extended: local.extended,
                                  remote: registry.count - local.classic - local.extended, mail: registry.mailCount)
        }
        let transport = try await server.statistics()
        let uptime = SystemClock().now() - startedAt
        return ServerSnapshot(counters: figures.counters, transport: transport, classicClients: figures.classic,
                              extendedClients: figures.extended, remoteClients: figures.remote, mailWaiting: figures.mail,
                              store: writer?.statistics, cluster: cluster?.status,
                              uptimeSeconds: Double(uptime.components.seconds) + Double(uptime.components.attoseconds) / 1e18,
                              serving: serving)
    }

    /// What one hop onto the service's event loop reads.
    struct ServiceFigures: Sendable {
        let counters: RendezvousService.Counters
        let classic: Int
        let extended: Int
        let remote: Int
        let mail: Int
    }

    /// Whether the UDP socket is still open (cleared when its channel closes).
    final class ServingFlag: Sendable {
        private let open = Atomic<Bool>(true)
        var isServing: Bool { open.load(ordering: .relaxed) }
        func stop() { open.store(false, ordering: .relaxed) }
    }
}

/// An explicit `--admin` address could not be bound: the server stops (exit 1).
public struct AdminListenerError: Error, CustomStringConvertible {
    /// The address asked for.
    public var endpoint: AdminEndpoint
    /// The socket's error.
    public var underlying: String

    public var description: String {
        "the admin listener cannot bind \(endpoint) (\(underlying)); choose another --admin HOST:PORT, or --admin off"
    }
}
