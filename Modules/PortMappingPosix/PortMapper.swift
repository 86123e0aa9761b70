#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import AddressDiscovery
import Addressing
import Dispatch
import Logging
import MonotonicTime
import NIOCore
import PortMapping
import Synchronization
import Transport
import TransportPosix

/// Keeps a UDP port of ours mapped on the gateway: PCP, then NAT-PMP (``PortMappingClient``
/// on a UDP socket of its own), then UPnP IGD (``UPnPGateway``, on a dedicated queue since
/// miniupnpc blocks). Reports each change through the callback given to
/// ``start(_:group:logger:onChange:)`` and deletes the mapping at ``shutdown(timeout:)``.
///
/// Log lines (`--log-level info`): `port mapping: PCP granted 203.0.113.5:10081 for 7200 s`,
/// `port mapping: PCP renewed …`, `port mapping: none (PCP no answer, NAT-PMP no answer,
/// UPnP no IGD)`, `port mapping: deleted (PCP)`.
public final class PortMapper: Sendable {
    /// What to map and how.
    public struct Options: Sendable {
        /// The local UDP port to map (the chat socket's).
        public var internalPort: UInt16
        /// The gateway to ask with PCP and NAT-PMP; `nil`: the default route's (`/proc/net/route`).
        public var gateway: IPv4Address?
        /// Our LAN address; `nil`: the source address the kernel picks towards the gateway.
        public var clientAddress: IPv4Address?
        /// Seconds asked for with PCP and NAT-PMP.
        public var lifetime: UInt32 = 7200
        /// The UPnP lease, seconds (renewed at half of it, at most every 2 minutes).
        public var upnpLease: UInt32 = 3600
        /// The protocols to try.
        public var protocols: Set<MappingProtocol> = Set(MappingProtocol.allCases)

        /// Options for mapping `internalPort`; the rest has defaults.
        public init(internalPort: UInt16) { self.internalPort = internalPort }
    }

    /// The PCP / NAT-PMP core on the mapper's socket.
    final class Driver: DatagramDriver {
        var client: PortMappingClient?
        let events: @Sendable (PortMappingClient.Output) -> Void

        init(client: PortMappingClient?, events: @escaping @Sendable (PortMappingClient.Output) -> Void) {
            self.client = client
            self.events = events
        }

        func receive(_ payload: ByteBuffer, from source: Endpoint, now: Instant, output: inout DatagramOutput) {
            guard var core = client else { return }
            let outputs = core.handleReceive(Array(payload.readableBytesView), from: source, now: now)
            client = core
            run(outputs, output: &output)
        }

        func timeout(now: Instant, output: inout DatagramOutput) {
            guard var core = client else { return }
            let outputs = core.handleTimeout(now: now)
            client = core
            run(outputs, output: &output)
        }

        func nextDeadline() -> Instant? { client?.nextDeadline }

        func start(now: Instant, output: inout DatagramOutput) {
            guard var core = client else {
                events(.unavailable(PortMappingClient.Report()))
                return
            }
            let outputs = core.start(now: now)
            client = core
            run(outputs, output: &output)
        }

        func close(now: Instant, output: inout DatagramOutput) {
            guard var core = client else {
                events(.closed(deleted: false))
                return
            }
            let outputs = core.close(now: now)
            client = core
            run(outputs, output: &output)
        }

        func run(_ outputs: [PortMappingClient.Output], output: inout DatagramOutput) {
            for item in outputs {
                if case .send(let bytes, let destination) = item {
                    output.send(bytes, to: destination)
                } else {
                    events(item)
                }
            }
        }
    }

    /// The UPnP side's state; touched on ``queue`` only.
    final class UPnPState: @unchecked Sendable {
        var gateway: UPnPGateway?
        var mapping: Mapping?
    }

    private let options: Options
    private let logger: Logger
    private let onChange: @Sendable (Mapping?) -> Void
    private let queue = DispatchQueue(label: "natchat.port-mapping.upnp")
    private let upnp = UPnPState()
    private let state = Mutex<(current: Mapping?, closed: Bool, host: DatagramHost<Driver>?)>((nil, false, nil))
    private let pcpClosed = DispatchSemaphore(value: 0)

    private init(options: Options, logger: Logger, onChange: @escaping @Sendable (Mapping?) -> Void) {
        self.options = options
        self.logger = logger
        self.onChange = onChange
    }

    /// The mapping held now, if any.
    public var current: Mapping? { state.withLock { $0.current } }

    /// Starts asking; returns at once. `onChange` is called with each new mapping and with
    /// `nil` when one is lost or deleted, on the mapper's threads.
    public static func start(_ options: Options, group: any EventLoopGroup, logger: Logger,
                             onChange: @escaping @Sendable (Mapping?) -> Void) -> PortMapper {
        let mapper = PortMapper(options: options, logger: logger, onChange: onChange)
        let gateway = options.gateway ?? PortMapper.defaultGateway()
        var client: PortMappingClient?
        let clientProtocols = options.protocols.intersection([.pcp, .natpmp])
        if let gateway, !clientProtocols.isEmpty {
            let clientAddress = options.clientAddress
                ?? (try? PrivateAddress.routedSourceAddress(towards: Endpoint(address: gateway, port: portMappingServerPort)))
            if let clientAddress {
                var configuration = PortMappingClient.Configuration(gateway: gateway, clientAddress: clientAddress,
                                                                    internalPort: options.internalPort)
                configuration.lifetime = options.lifetime
                configuration.protocols = clientProtocols
                var random = SystemRandomNumberGenerator()
                client = PortMappingClient(configuration: configuration, random: &random)
            }
        }
        if client == nil { logger.debug("port mapping: no default gateway for PCP and NAT-PMP") }
        do {
            let host = try DatagramHost<Driver>.bindBlocking(host: "0.0.0.0", port: 0, group: group, logger: logger,
                                                             receiveBufferBytes: 64 * 1024) { [client] in
                Driver(client: client) { [weak mapper] event in mapper?.handle(event) }
            }
            mapper.state.withLock { $0.host = host }
            host.perform { driver, output, now in driver.start(now: now, output: &output) }
        } catch {
            logger.info("port mapping: PCP and NAT-PMP skipped (cannot bind a socket: \(error))")
            mapper.startUPnP(after: PortMappingClient.Report())
        }
        return mapper
    }

    /// Deletes the mapping (PCP or NAT-PMP lifetime 0, UPnP DeletePortMapping) and closes the
    /// socket, waiting at most `timeout` for the gateway. Blocks: not on an event loop.
    public func shutdown(timeout: Duration = .seconds(1)) {
        let host = state.withLock { state -> DatagramHost<Driver>? in
            state.closed = true
            return state.host
        }
        let deadline = DispatchTime.now() + .nanoseconds(Int(timeout.components.seconds) * 1_000_000_000
                                                           + Int(timeout.components.attoseconds / 1_000_000_000))
        let upnpDone = DispatchSemaphore(value: 0)
        queue.async { [upnp, logger] in
            if let gateway = upnp.gateway, let mapping = upnp.mapping {
                switch gateway.deleteMapping(externalPort: mapping.external.port) {
                case .success: logger.info("port mapping: deleted (UPnP)")
                case .failure(let failure): logger.info("port mapping: not deleted (UPnP \(failure))")
                }
                upnp.mapping = nil
            }
            upnpDone.signal()
        }
        if let host {
            host.perform { driver, output, now in driver.close(now: now, output: &output) }
            _ = pcpClosed.wait(timeout: deadline)
        }
        _ = upnpDone.wait(timeout: deadline)
        if let host { Task { await host.close() } }
    }

    // MARK: - Events

    private func handle(_ event: PortMappingClient.Output) {
        switch event {
        case .send:
            break
        case .mapped(let mapping):
            logger.info("port mapping: \(mapping.via) granted \(mapping.external) for \(mapping.lifetimeSeconds) s")
            publish(mapping)
        case .renewed(let mapping):
            logger.info("port mapping: \(mapping.via) renewed \(mapping.external) for \(mapping.lifetimeSeconds) s")
            state.withLock { $0.current = mapping }
        case .lost(let mapping):
            logger.info("port mapping: \(mapping.via) mapping \(mapping.external) lost; asking again")
            publish(nil)
        case .unavailable(let report):
            startUPnP(after: report)
        case .closed(let deleted):
            if let mapping = state.withLock({ $0.current }), mapping.via != .upnp {
                logger.info("port mapping: \(deleted ? "deleted" : "not deleted (no answer)") (\(mapping.via))")
            }
            pcpClosed.signal()
        }
    }

    private func publish(_ mapping: Mapping?) {
        let changed = state.withLock { state -> Bool in
            defer { state.current = mapping }
            return state.current != mapping
        }
        if changed { onChange(mapping) }
    }

    private var isClosed: Bool { state.withLock { $0.closed } }

    // MARK: - UPnP (on `queue`)

    private func startUPnP(after report: PortMappingClient.Report) {
        let prefix = report.attempts.isEmpty ? "" : "\(report), "
        guard options.protocols.contains(.upnp) else {
            logger.info("port mapping: none (\(report.attempts.isEmpty ? "nothing tried" : "\(report)"))")
            return
        }
        queue.async { [self] in
            guard !isClosed else { return }
            switch UPnPGateway.discover(delayMilliseconds: 2000) {
            case .failure(let failure):
                logger.info("port mapping: none (\(prefix)UPnP \(failure))")
            case .success(let gateway):
                upnp.gateway = gateway
                guard !isClosed else { return }
                if let failure = addUPnP(gateway) {
                    logger.info("port mapping: none (\(prefix)UPnP \(failure))")
                }
            }
        }
    }

    /// Adds (or renews) the UPnP mapping and schedules the next renewal; the failure, if any.
    private func addUPnP(_ gateway: UPnPGateway) -> UPnPGateway.Failure? {
        let external: IPv4Address
        switch gateway.externalAddress() {
        case .failure(let failure): return failure
        case .success(let address): external = address
        }
        let wanted = upnp.mapping?.external.port ?? options.internalPort
        var result = gateway.addMapping(externalPort: wanted, internalPort: options.internalPort, leaseSeconds: options.upnpLease)
        if case .failure = result, upnp.mapping == nil {
            // 718 ConflictInMappingEntry and the like: let the gateway pick a port.
            result = gateway.addAnyMapping(internalPort: options.internalPort, leaseSeconds: options.upnpLease)
        }
        switch result {
        case .failure(let failure):
            if let old = upnp.mapping {
                logger.info("port mapping: UPnP mapping \(old.external) lost (\(failure))")
                upnp.mapping = nil
                publish(nil)
            }
            return failure
        case .success(let port):
            let mapping = Mapping(via: .upnp, internalPort: options.internalPort, external: Endpoint(address: external, port: port),
                                  lifetimeSeconds: options.upnpLease)
            let renewal = upnp.mapping == mapping
            upnp.mapping = mapping
            logger.info("port mapping: UPnP \(renewal ? "renewed" : "granted") \(mapping.external) for \(mapping.lifetimeSeconds) s")
            publish(mapping)
            let seconds = max(1, min(Int(options.upnpLease / 2), 120))
            queue.asyncAfter(deadline: .now() + .seconds(seconds)) { [self] in
                guard !isClosed, let gateway = upnp.gateway else { return }
                _ = addUPnP(gateway)
            }
            return nil
        }
    }

    // MARK: - Probe

    /// `natchat --probe`'s `PortMapping:` line: which protocols the gateway answers, asked
    /// in parallel (PCP ANNOUNCE, NAT-PMP external address, SSDP for an IGD), within about
    /// `timeout`. Creates no mapping. Blocks.
    public static func probe(gateway: IPv4Address? = nil, group: any EventLoopGroup, logger: Logger,
                             timeout: Duration = .milliseconds(2500)) -> Set<MappingProtocol> {
        let found = Mutex<Set<MappingProtocol>>([])
        let done = DispatchSemaphore(value: 0)
        let deadline = DispatchTime.now() + .milliseconds(Int(timeout.components.seconds) * 1000
                                                            + Int(timeout.components.attoseconds / 1_000_000_000_000_000))
        DispatchQueue(label: "natchat.port-mapping.probe").async {
            // SSDP answers come within the MX (1 s); miniupnpc then waits as long for more.
            if case .success = UPnPGateway.discover(delayMilliseconds: 1000, onlyIGD: true) {
                found.withLock { _ = $0.insert(.upnp) }
            }
            done.signal()
        }
        var host: DatagramHost<ProbeDriver>?
        if let gateway = gateway ?? defaultGateway(),
           let client = try? PrivateAddress.routedSourceAddress(towards: Endpoint(address: gateway, port: portMappingServerPort)) {
            host = try? DatagramHost<ProbeDriver>.bindBlocking(host: "0.0.0.0", port: 0, group: group, logger: logger,
                                                               receiveBufferBytes: 64 * 1024) {
                ProbeDriver(probe: PortMappingProbe(gateway: gateway, clientAddress: client)) { answered in
                    found.withLock { $0.formUnion(answered) }
                    done.signal()
                }
            }
            host?.perform { driver, output, now in driver.start(now: now, output: &output) }
        } else {
            done.signal()
        }
        _ = done.wait(timeout: deadline)
        _ = done.wait(timeout: deadline)
        if let host { Task { await host.close() } }
        return found.withLock { $0 }
    }

    final class ProbeDriver: DatagramDriver {
        var probe: PortMappingProbe
        let settled: @Sendable (Set<MappingProtocol>) -> Void

        init(probe: PortMappingProbe, settled: @escaping @Sendable (Set<MappingProtocol>) -> Void) {
            self.probe = probe
            self.settled = settled
        }

        func start(now: Instant, output: inout DatagramOutput) { run(probe.start(now: now), output: &output) }

        func receive(_ payload: ByteBuffer, from source: Endpoint, now: Instant, output: inout DatagramOutput) {
            run(probe.handleReceive(Array(payload.readableBytesView), from: source, now: now), output: &output)
        }

        func timeout(now: Instant, output: inout DatagramOutput) { run(probe.handleTimeout(now: now), output: &output) }

        func nextDeadline() -> Instant? { probe.nextDeadline }

        private func run(_ outputs: [PortMappingProbe.Output], output: inout DatagramOutput) {
            for item in outputs {
                switch item {
                case .send(let bytes, let destination): output.send(bytes, to: destination)
                case .settled(let answered): settled(answered)
                }
            }
        }
    }

    // MARK: - The default route

    /// The default route's gateway from `/proc/net/route`; `nil` where there is none (or no
    /// such file).
    public static func defaultGateway(path: String = "/proc/net/route") -> IPv4Address? {
        guard let file = fopen(path, "r") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while bytes.count < 1 << 20 {
            let count = fread(&buffer, 1, buffer.count, file)
            if count <= 0 { break }
            bytes.append(contentsOf: buffer[0..<count])
        }
        return DefaultRoute.gateway(procNetRoute: String(decoding: bytes, as: UTF8.self))
    }
}
