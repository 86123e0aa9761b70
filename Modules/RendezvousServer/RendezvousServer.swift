import Logging
import NIOCore
import NIOPosix
import TransportPosix

/// Runs a rendezvous server until it is told to stop.
public enum RendezvousServer {
    /// Binds `host:port`, prints `server program starts....` and serves until
    /// SIGINT or SIGTERM, then closes the socket and returns.
    /// - Parameter alternatePort: a second port that answers STUN only, for clients'
    ///   NAT-behaviour probes (0: none).
    public static func run(host: String, port: Int, alternatePort: Int = 0, configuration: RendezvousService.Configuration,
                           logger: Logger, printLine: @escaping @Sendable (String) -> Void) async throws {
        let signals = TerminationSignal.install()
        let group = MultiThreadedEventLoopGroup.singleton
        var configuration = configuration
        configuration.registry.alternatePort = UInt16(clamping: alternatePort)
        let finalConfiguration = configuration
        let server = try await DatagramHost.bind(host: host, port: port, group: group, logger: logger,
                                                 receiveBufferBytes: 4 << 20) {
            RendezvousService(configuration: finalConfiguration, logger: logger, printLine: printLine)
        }
        var alternate: DatagramHost<STUNOnlyService>?
        if alternatePort != 0 {
            alternate = try await DatagramHost.bind(host: host, port: alternatePort, group: group, logger: logger) {
                STUNOnlyService()
            }
        }
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
        await server.close()
        await alternate?.close()
    }
}
