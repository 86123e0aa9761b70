import Logging
import NIOCore
import NIOPosix
import Transport

/// Runs a rendezvous server until it is told to stop.
public enum RendezvousServer {
    /// Binds `host:port`, prints `server program starts....` and serves until
    /// SIGINT or SIGTERM, then closes the socket and returns.
    public static func run(host: String, port: Int, configuration: RendezvousService.Configuration,
                           logger: Logger, printLine: @escaping @Sendable (String) -> Void) async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let server = try await DatagramHost.bind(host: host, port: port, group: group, logger: logger) {
            RendezvousService(configuration: configuration, logger: logger, printLine: printLine)
        }
        printLine("server program starts....")
        logger.info("listening", metadata: ["address": "\(server.localAddress.map { "\($0)" } ?? "?")"])
        let signal = await TerminationSignal.wait()
        logger.info("stopping", metadata: ["signal": "\(signal)"])
        let counters = try? await server.performAndWait { service, _, _ in service.counters }
        if let counters {
            logger.info("final counters", metadata: ["registrations": "\(counters.registrations)",
                                                     "malformed": "\(counters.malformed)", "ignored": "\(counters.ignored)",
                                                     "refused": "\(counters.refused)", "evictions": "\(counters.evictions)"])
        }
        await server.close()
    }
}
