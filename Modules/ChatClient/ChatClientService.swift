import AddressDiscovery
import Addressing
import ChatRouter
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

    public init(configuration: Configuration, sinks: Sinks, logger: Logger) {
        machine = ChatClientStateMachine(configuration: configuration)
        self.sinks = sinks
        self.logger = logger
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

    private func log(_ diagnostic: Diagnostic) {
        switch diagnostic {
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
