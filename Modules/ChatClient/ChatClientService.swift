#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import AddressDiscovery
import Addressing
import ChatRouter
import HolePunch
import ClientSession
import KnownPeers
import Logging
import MonotonicTime
import NATGrouping
import NIOCore
import Transport
import Wire

/// The chat client's driver: a ``DatagramDriver`` around a ``ChatClientStateMachine``.
///
/// The transport feeds it datagrams and timeouts on one event loop; commands and Tab
/// completion reach it through ``handle(_:now:output:)`` and
/// ``completePeerIDs(prefix:now:output:answer:)``. Whatever the state machine answers it
/// performs in one place (``run(_:output:)``): datagrams go to the socket, events to the
/// ``Sinks``, diagnostics to the log, completions to whoever asked.
public final class ChatClientService: DatagramDriver {
    public typealias Configuration = ChatClientStateMachine.Configuration

    /// Where the service's events go.
    public struct Sinks: Sendable {
        /// Every event for the user, in order.
        public var event: @Sendable (ClientEvent) -> Void
        /// The known peers to save (called on the event loop: hand the writing to another thread).
        public var saveKnownPeers: @Sendable ([KnownPeers.Record]) -> Void = { _ in }
        /// Runs a ``RemapProbe`` from a fresh socket against (main port, alternate port) and
        /// hands the outcome back through ``ChatClientService/remapProbeFinished(_:now:output:)``
        /// (the runner does; by default nothing runs, and the NAT stays a plain cone).
        public var runRemapProbe: @Sendable (Endpoint, Endpoint) -> Void = { _, _ in }

        public init(event: @escaping @Sendable (ClientEvent) -> Void,
                    saveKnownPeers: @escaping @Sendable ([KnownPeers.Record]) -> Void = { _ in }) {
            self.event = event
            self.saveKnownPeers = saveKnownPeers
        }

        /// The shell's sinks: each event's lines (``ShellFormatter``) go to `display`; a
        /// refused registration also goes to `registrationRefused` (the client cannot go on);
        /// known peers to save go to `saveKnownPeers`.
        public init(display: @escaping @Sendable (String) -> Void,
                    registrationRefused: @escaping @Sendable (String) -> Void = { _ in },
                    saveKnownPeers: @escaping @Sendable ([KnownPeers.Record]) -> Void = { _ in }) {
            event = { event in
                for line in ShellFormatter.lines(for: event) { display(line) }
                if case .registrationRefused(let text) = event { registrationRefused(text) }
            }
            self.saveKnownPeers = saveKnownPeers
        }
    }

    /// The client's state; everything it knows is read from here.
    public private(set) var machine: ChatClientStateMachine
    private let sinks: Sinks
    private let logger: Logger
    /// Tab completions waiting for their answer, by request number.
    private var completions: [Int: @Sendable ([String]) -> Void] = [:]
    private var nextCompletion = 0
    /// The probe sockets open (port probing), by the transport's number for each, and back.
    private var probeSockets: [ExtendedRouter.ProbeSocket: Int] = [:]
    private var probeSocketsByNumber: [Int: ExtendedRouter.ProbeSocket] = [:]
    private var nextSocketNumber = 1
    /// Most probe sockets open at once, over all peers: the file-descriptor headroom.
    public let probeSocketBudget: Int

    /// `probeSocketBudget`: most probe sockets open at once (default: what the process's
    /// file-descriptor limit leaves, see ``probeSocketHeadroom()``). The configured number of
    /// probe sockets per attempt is clamped to it.
    public init(configuration: Configuration, sinks: Sinks, logger: Logger, probeSocketBudget: Int? = nil) {
        let budget = max(0, probeSocketBudget ?? Self.probeSocketHeadroom())
        var configuration = configuration
        let wanted = configuration.pathConfiguration.portProbe.socketCount
        configuration.pathConfiguration.portProbe.socketCount = min(wanted, budget)
        self.probeSocketBudget = budget
        machine = ChatClientStateMachine(configuration: configuration)
        self.sinks = sinks
        self.logger = logger
        if wanted > budget {
            logger.info("port probing: \(budget) sockets at most (of \(wanted)): the file-descriptor limit leaves no more")
        }
    }

    /// Probe sockets the process can open: its soft `RLIMIT_NOFILE` less the descriptors
    /// open now and a reserve of 64 (history, status socket, logs, the event loops' own).
    public static func probeSocketHeadroom() -> Int {
        var limit = rlimit()
        #if os(Linux)
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        #else
        let resource = RLIMIT_NOFILE
        #endif
        guard getrlimit(resource, &limit) == 0 else { return 0 }
        // RLIM_INFINITY is all ones: anything past 2²⁴ is as good as unlimited here.
        let soft = Int(clamping: min(limit.rlim_cur, 1 << 24))
        return max(0, soft - openDescriptors() - 64)
    }

    private static func openDescriptors() -> Int {
        guard let directory = opendir("/proc/self/fd") else { return 64 }
        defer { closedir(directory) }
        var count = 0
        while readdir(directory) != nil { count += 1 }
        return max(0, count - 2)
    }

    /// The dialect the session speaks.
    public var dialect: ClientSession.Dialect { machine.dialect }
    /// Whether the server has confirmed the registration (in either dialect).
    public var isRegistered: Bool { machine.isRegistered }
    public var natKind: NATKind { machine.natKind }
    /// Datagrams that decoded to nothing.
    public var malformedCount: Int { machine.malformedCount }

    /// What `@status` prints at `now` (the status socket serves it).
    public func statusText(now: Instant) -> String { machine.statusText(now: now) }

    /// Sets how many entries a `@show_list` page holds (the terminal was resized).
    public func setListPageSize(_ size: Int) { machine.setListPageSize(size) }

    /// Records the port the socket was bound to (when the configuration asked for any port).
    public func localPortChosen(_ port: UInt16) { machine.localPortChosen(port) }

    /// The ``RemapProbe`` that ``Sinks/runRemapProbe`` ran settled.
    public func remapProbeFinished(_ outcome: RemapProbe.Outcome, now: Instant, output: inout DatagramOutput) {
        run(machine.remapProbeFinished(outcome, now: now), output: &output)
    }

    /// The gateway granted a port mapping for the chat socket, or it ended (`nil`).
    public func portMappingChanged(_ mapped: Endpoint?, now: Instant, output: inout DatagramOutput) {
        run(machine.portMappingChanged(mapped, now: now), output: &output)
    }

    /// Sends the registration and starts the keep-alive schedule.
    public func start(now: Instant, output: inout DatagramOutput) {
        run(machine.start(now: now), output: &output)
    }

    /// Carries out one typed command; returns `false` when the client should quit.
    @discardableResult
    public func handle(_ command: Command, now: Instant, output: inout DatagramOutput) -> Bool {
        run(machine.handle(command, now: now), output: &output)
        return command != .exit
    }

    /// Asks the server to release our claim or hand it to a new key, once registered.
    public func requestClaimChange(_ request: ClaimChangeRequest, now: Instant, output: inout DatagramOutput) {
        run(machine.requestClaimChange(request, now: now), output: &output)
    }

    /// Unregisters (once) and stops keep-alives.
    public func leave(now: Instant, output: inout DatagramOutput) {
        run(machine.leave(now: now), output: &output)
    }

    /// Peer IDs starting with `prefix` for Tab completion, sorted. `answer` is called once,
    /// on this service's event loop (at once from the roster held, or when the server
    /// answers past its roster limit).
    public func completePeerIDs(prefix: String, now: Instant, output: inout DatagramOutput,
                                answer: @escaping @Sendable ([String]) -> Void) {
        let request = nextCompletion
        nextCompletion += 1
        completions[request] = answer
        run(machine.completePeerIDs(prefix: prefix, request: request, now: now), output: &output)
    }

    public func receive(_ payload: ByteBuffer, from source: Endpoint, now: Instant, output: inout DatagramOutput) {
        run(machine.receive(Array(payload.readableBytesView), from: source, now: now), output: &output)
    }

    /// A datagram on a probe socket.
    public func receive(_ payload: ByteBuffer, from source: Endpoint, onSocket socket: Int, now: Instant,
                        output: inout DatagramOutput) {
        guard let probeSocket = probeSocketsByNumber[socket] else { return }
        run(machine.receive(Array(payload.readableBytesView), from: source, socket: probeSocket, now: now), output: &output)
    }

    /// Probe sockets open now (for tests and diagnostics).
    public var openProbeSocketCount: Int { probeSockets.count }

    public func timeout(now: Instant, output: inout DatagramOutput) {
        run(machine.handleTimeout(now: now), output: &output)
    }

    public func nextDeadline() -> Instant? { machine.nextDeadline }

    /// Performs what the state machine answered, in order.
    private func run(_ outputs: [ChatClientStateMachine.Output], output: inout DatagramOutput) {
        for item in outputs {
            switch item {
            case .send(let bytes, let destination):
                output.send(bytes, to: destination)
            case .sendFromProbeSocket(let bytes, let destination, let socket):
                if let number = probeSockets[socket] { output.send(bytes, to: destination, fromSocket: number) }
            case .openProbeSockets(let peer, let count):
                openProbeSockets(peer: peer, count: count, output: &output)
            case .closeProbeSockets(let peer, let keeping):
                closeProbeSockets(peer: peer, keeping: keeping, output: &output)
            case .event(let event):
                sinks.event(event)
            case .diagnostic(let diagnostic):
                log(diagnostic)
            case .completion(let request, let ids):
                completions.removeValue(forKey: request)?(ids)
            case .saveKnownPeers(let records):
                sinks.saveKnownPeers(records)
            case .runRemapProbe(let primary, let alternate):
                sinks.runRemapProbe(primary, alternate)
            }
        }
    }

    private func openProbeSockets(peer: ClientID, count: Int, output: inout DatagramOutput) {
        var opened = 0
        for index in 0..<max(0, count) where probeSockets.count < probeSocketBudget {
            let socket = ExtendedRouter.ProbeSocket(peer: peer, index: index)
            guard probeSockets[socket] == nil else { continue }
            let number = nextSocketNumber
            nextSocketNumber += 1
            probeSockets[socket] = number
            probeSocketsByNumber[number] = socket
            output.openSocket(number)
            opened += 1
        }
        if opened < count {
            logger.info("probing \(peer): \(opened) of \(count) sockets (file-descriptor budget \(probeSocketBudget))")
        }
    }

    private func closeProbeSockets(peer: ClientID, keeping: Int?, output: inout DatagramOutput) {
        for (socket, number) in probeSockets where socket.peer == peer && socket.index != keeping {
            probeSockets[socket] = nil
            probeSocketsByNumber[number] = nil
            output.closeSocket(number)
        }
    }

    private func log(_ diagnostic: Diagnostic) {
        switch diagnostic {
        case .probing(let id, let report):
            logger.info("probing \(id): \(report)")
        case .malformed(let source, let reason):
            logger.debug("dropped malformed datagram", metadata: ["from": "\(source)", "error": "\(reason)"])
        case .ignored(let source, let what):
            logger.debug("ignored datagram", metadata: ["from": "\(source)", "message": "\(what)"])
        case .forged(let id):
            logger.warning("dropped a datagram claiming to be from \(id) that failed authentication")
        case .peerUpdated(let id, let endpoint):
            logger.debug("peer updated", metadata: ["id": "\(id)", "public": "\(endpoint)"])
        case .rosterListsUnknownPeer(let id):
            logger.warning("roster lists an unknown peer", metadata: ["id": "\(id)"])
        case .remapProbe(let outcome):
            logger.info("NAT \(outcome)")
        }
    }
}
