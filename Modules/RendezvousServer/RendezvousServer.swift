import Foundation
import Logging
import MonotonicTime
import NIOCore
import NIOPosix
import Store
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
            alternate = try await DatagramHost.bind(host: host, port: alternatePort, group: group, logger: logger) {
                STUNOnlyService()
            }
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
}
