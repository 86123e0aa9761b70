import AddressDiscovery
import Addressing
import Dispatch
import Logging
import MonotonicTime
import NIOCore
import NIOPosix
import PortMapping
import PortMappingPosix
import STUN
import Synchronization
import Transport
import TransportPosix

/// `natchat --probe`: asks a STUN server (natchat-server, coturn, any RFC 8489 server) for
/// this socket's mapped address and, with an alternate port, classifies the NAT mapping.
public enum ProbeRunner {
    typealias ProbeDriver = STUNProbeDriver<MappingProbe>

    /// Runs the probe; returns the outcome (kind `.unknown` and no mapping when nobody answered).
    public static func run(server: Endpoint, alternatePort: UInt16, bindAddress: String, port: Int,
                           logger: Logger) throws -> MappingProbe.Outcome {
        let done = Mutex<MappingProbe.Outcome?>(nil)
        let semaphore = DispatchSemaphoreBox()
        let alternate = alternatePort == 0 ? nil : Endpoint(address: server.address, port: alternatePort)
        let host = try DatagramHost<ProbeDriver>.bindBlocking(host: bindAddress, port: port,
                                                               group: MultiThreadedEventLoopGroup.singleton, logger: logger) {
            var random = SystemRandomNumberGenerator()
            let probe = MappingProbe(primary: server, alternate: alternate, localEndpoint: nil, random: &random)
            return ProbeDriver(probe: probe) { outcome in
                let first = done.withLock { value -> Bool in
                    guard value == nil else { return false }
                    value = outcome
                    return true
                }
                if first { semaphore.signal() }
            }
        }
        host.perform { driver, output, now in driver.start(now: now, output: &output) }
        semaphore.wait()
        let outcome = done.withLock { $0 } ?? MappingProbe.Outcome(kind: .unknown, primaryMapping: nil, alternateMapping: nil)
        host.performBlocking { _, _, _ in }
        Task { await host.close() }
        // "No NAT" needs our own address, which only the caller knows from the route.
        if let mapped = outcome.primaryMapping, let local = host.localAddress?.port,
           mapped.port == UInt16(clamping: local),
           (try? PrivateAddress.routedSourceAddress(towards: server)) == mapped.address {
            return MappingProbe.Outcome(kind: .none, primaryMapping: mapped, alternateMapping: outcome.alternateMapping)
        }
        return outcome
    }
}

extension ProbeRunner {
    /// Starts asking the gateway which port mapping protocols it answers
    /// (``PortMapper/probe(gateway:group:logger:timeout:)``: PCP, NAT-PMP, UPnP IGD, at most
    /// 2.5 s), on a thread of its own so that it runs beside the STUN probe.
    public static func startPortMappingProbe(logger: Logger) -> PortMappingProbeTask {
        PortMappingProbeTask(logger: logger)
    }
}

/// A port mapping probe running beside `natchat --probe`'s STUN probe.
public final class PortMappingProbeTask: Sendable {
    private let result = Mutex<Set<MappingProtocol>?>(nil)
    private let done = DispatchSemaphoreBox()

    init(logger: Logger) {
        DispatchQueue.global().async { [self] in
            let found = PortMapper.probe(group: MultiThreadedEventLoopGroup.singleton, logger: logger)
            result.withLock { $0 = found }
            done.signal()
        }
    }

    /// Waits for the probe (bounded: it gives up after 2.5 s) and returns what answered.
    public func wait() -> Set<MappingProtocol> {
        done.wait()
        return result.withLock { $0 } ?? []
    }

    /// Like tailscale netcheck's line: `PortMapping: PCP, NAT-PMP, UPnP` (the protocols the
    /// gateway answered, in the order natchat asks them), or `PortMapping: none`.
    public func line() -> String {
        let found = wait()
        let names = MappingProtocol.allCases.filter(found.contains).map(\.rawValue)
        return "PortMapping: \(names.isEmpty ? "none" : names.joined(separator: ", "))"
    }
}

/// A tiny semaphore (Dispatch's, behind a name that reads well here).
final class DispatchSemaphoreBox: Sendable {
    private let semaphore = DispatchSemaphore(value: 0)
    func signal() { semaphore.signal() }
    func wait() { semaphore.wait() }
}
