import ChatRouter
import KeepAlive
import Logging
import MonotonicTime
import NIOCore
import Transport
import Wire

/// The chat client's driver: registration, keep-alives, the peer table and commands.
///
/// It is a ``DatagramDriver``, so the transport feeds it datagrams and timeouts on one event
/// loop; typed commands reach it through ``handle(_:now:output:)``. What it has to say to
/// the user goes to `display`, one line at a time.
public final class ChatClientService: DatagramDriver {
    /// Client settings.
    public struct Configuration: Sendable {
        public var id: ClientID
        public var server: Endpoint
        /// The private address reported at registration.
        public var privateAddress: IPv4Address
        public var keepAliveInterval: Duration
        /// The port same-NAT peers listen on (the classic dialect gives only their IP).
        public var peerPrivatePort: UInt16
        /// First wait before re-sending an unanswered registration (doubles up to the keep-alive interval).
        public var registrationRetry: Duration

        public init(id: ClientID, server: Endpoint, privateAddress: IPv4Address,
                    keepAliveInterval: Duration = .seconds(10), peerPrivatePort: UInt16 = 10081,
                    registrationRetry: Duration = .seconds(1)) {
            self.id = id
            self.server = server
            self.privateAddress = privateAddress
            self.keepAliveInterval = keepAliveInterval
            self.peerPrivatePort = peerPrivatePort
            self.registrationRetry = registrationRetry
        }
    }

    /// What the service needs from its surroundings.
    public struct Sinks: Sendable {
        /// A line for the user.
        public var display: @Sendable (String) -> Void
        /// The other peers' IDs changed (for Tab completion).
        public var peersChanged: @Sendable ([String]) -> Void
        /// The server refused our registration: the client cannot go on.
        public var registrationRefused: @Sendable (String) -> Void

        public init(display: @escaping @Sendable (String) -> Void,
                    peersChanged: @escaping @Sendable ([String]) -> Void = { _ in },
                    registrationRefused: @escaping @Sendable (String) -> Void = { _ in }) {
            self.display = display
            self.peersChanged = peersChanged
            self.registrationRefused = registrationRefused
        }
    }

    public private(set) var router: ChatRouter
    private let configuration: Configuration
    private let sinks: Sinks
    private let logger: Logger
    private var keepAlive: KeepAliveSchedule
    private var registrationRetryAt: Instant?
    private var registrationBackoff: Duration
    private var leaving = false
    /// Datagrams that decoded to nothing, for diagnostics.
    public private(set) var malformedCount = 0

    public init(configuration: Configuration, sinks: Sinks, logger: Logger) {
        self.configuration = configuration
        self.sinks = sinks
        self.logger = logger
        router = ChatRouter(selfID: configuration.id, server: configuration.server, privatePort: configuration.peerPrivatePort)
        keepAlive = KeepAliveSchedule(interval: configuration.keepAliveInterval)
        registrationBackoff = configuration.registrationRetry
    }

    /// Sends the registration and starts the keep-alive schedule.
    public func start(now: Instant, output: inout DatagramOutput) {
        sendRegistration(now: now, output: &output)
        keepAlive.start(now: now)
    }

    /// Carries out one typed command; returns `false` when the client should quit.
    @discardableResult
    public func handle(_ command: Command, now: Instant, output: inout DatagramOutput) -> Bool {
        switch command {
        case .showList:
            let roster = router.roster
            if roster.isEmpty { sinks.display("(no registered clients yet)") }
            for peer in roster { sinks.display(ClassicMessage.peer(peer.id, peer.publicEndpoint).text) }
        case .chat(let to, let text):
            switch router.chat(to: to, text: text) {
            case .success(let (message, destination)):
                output.send(message.encode(), to: destination)
            case .failure(.unknownPeer(let id)):
                sinks.display("There is no \(id) in registration list.")
            }
        case .help:
            sinks.display(Command.helpText)
        case .exit:
            leave(now: now, output: &output)
            return false
        }
        return true
    }

    /// Unregisters (once) and stops keep-alives.
    public func leave(now: Instant, output: inout DatagramOutput) {
        guard !leaving else { return }
        leaving = true
        keepAlive.stop()
        registrationRetryAt = nil
        output.send(ClassicMessage.unregister(configuration.id).encode(), to: configuration.server)
    }

    public func receive(_ payload: ByteBuffer, from source: Endpoint, now: Instant, output: inout DatagramOutput) {
        guard !leaving else { return }
        let message: ClassicMessage
        do {
            message = try ClassicMessage.decode(payload.readableBytesView)
        } catch {
            malformedCount += 1
            logger.debug("dropped malformed datagram", metadata: ["from": "\(source)", "error": "\(error)"])
            return
        }
        let peersBefore = router.peerIDs
        for event in router.receive(message, from: source) { show(event) }
        if router.isRegistered { registrationRetryAt = nil }
        let peersAfter = router.peerIDs
        if peersAfter != peersBefore { sinks.peersChanged(peersAfter.map(\.rawValue)) }
    }

    public func timeout(now: Instant, output: inout DatagramOutput) {
        guard !leaving else { return }
        if let retryAt = registrationRetryAt, now >= retryAt, !router.isRegistered {
            sendRegistration(now: now, output: &output)
        }
        if keepAlive.poll(now: now) {
            output.send(ClassicMessage.keepAlive(configuration.id).encode(), to: configuration.server)
        }
    }

    public func nextDeadline() -> Instant? {
        [registrationRetryAt, keepAlive.nextDeadline].compactMap { $0 }.min()
    }

    private func sendRegistration(now: Instant, output: inout DatagramOutput) {
        output.send(ClassicMessage.register(configuration.id, privateAddress: configuration.privateAddress).encode(),
                    to: configuration.server)
        registrationRetryAt = now + registrationBackoff
        registrationBackoff = min(registrationBackoff * 2, configuration.keepAliveInterval)
    }

    private func show(_ event: ChatRouter.Event) {
        switch event {
        case .registered(let endpoint, let peers):
            let others = peers.map(\.id.rawValue)
            let online = others.isEmpty ? "no other clients online" : "online: \(others.joined(separator: " "))"
            sinks.display("* registered as \(configuration.id) (public \(endpoint)); \(online)")
        case .publicEndpointChanged(let endpoint):
            sinks.display("* the server now sees you at \(endpoint)")
        case .joined(let peer):
            sinks.display("* \(peer.id) joined (\(peer.publicEndpoint))")
        case .moved(let peer):
            sinks.display("* \(peer.id) moved to \(peer.publicEndpoint)")
        case .sameNAT(let id, let address):
            sinks.display("* \(id) is behind the same NAT (private \(address))")
        case .unregistered(let id, let endpoint):
            sinks.display("* \(id) is unregistered \(endpoint)")
        case .offline(let id, let endpoint):
            sinks.display("* \(id) is off-line \(endpoint)")
        case .chat(let from, let text, _):
            sinks.display("From \(from) [\(text)]")
        case .serverNotice(let text):
            sinks.display("From server [\(text)]")
            if !router.isRegistered, registrationRetryAt != nil {
                // Before registration, a notice from the server is its refusal.
                registrationRetryAt = nil
                keepAlive.stop()
                sinks.registrationRefused(text)
            }
        case .ignored(let message, let source):
            logger.debug("ignored datagram", metadata: ["from": "\(source)", "message": "\(message.text.prefix(80))"])
        }
    }
}
