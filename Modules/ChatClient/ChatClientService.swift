import AddressDiscovery
import ChatRouter
import HolePunch
import Identity
import KeepAlive
import Logging
import MonotonicTime
import NATGrouping
import NIOCore
import STUN
import Transport
import Wire

/// The chat client's driver: registration and dialect negotiation, keep-alives, the NAT
/// probe, the peer tables and typed commands.
///
/// It proposes the extended dialect inside its classic registration. A natchat server
/// answers with a challenge and the client goes on in the extended dialect (hole punching,
/// relay, acknowledged chat: ``ExtendedRouter``); the seed's server answers with classic
/// lists and the client stays classic (``ChatRouter``). It is a ``DatagramDriver``: the
/// transport feeds it datagrams and timeouts on one event loop; commands reach it through
/// ``handle(_:now:output:)``; what the user should read goes to `display`.
public final class ChatClientService: DatagramDriver {
    /// Client settings.
    public struct Configuration: Sendable {
        public var id: ClientID
        public var server: Endpoint
        /// The private address reported at registration.
        public var privateAddress: IPv4Address
        /// The local UDP port (reported with the private address in the extended dialect).
        public var localPort: UInt16
        public var keepAliveInterval: Duration
        /// The port same-NAT classic peers listen on (the classic dialect gives only their IP).
        public var peerPrivatePort: UInt16
        /// First wait before re-sending an unanswered registration (doubles up to the keep-alive interval).
        public var registrationRetry: Duration
        /// Propose the extended dialect (natchat/2); `false` speaks the seed's protocol only.
        public var offerExtended: Bool
        public var pathConfiguration: PathAgent.Configuration
        /// The long-term key pair that the ID is bound to in the extended dialect.
        public var identity: IdentityKey
        /// Entries `@show_list` prints at most before it pages (at least 1).
        public var listPageSize: Int

        /// The page size when the terminal's height is unknown.
        public static let defaultListPageSize = 50

        public init(id: ClientID, server: Endpoint, privateAddress: IPv4Address, identity: IdentityKey = IdentityKey(),
                    localPort: UInt16 = 10081,
                    keepAliveInterval: Duration = .seconds(10), peerPrivatePort: UInt16 = 10081,
                    registrationRetry: Duration = .seconds(1), offerExtended: Bool = true,
                    pathConfiguration: PathAgent.Configuration = .init(), listPageSize: Int = defaultListPageSize) {
            self.id = id
            self.server = server
            self.privateAddress = privateAddress
            self.localPort = localPort
            self.keepAliveInterval = keepAliveInterval
            self.peerPrivatePort = peerPrivatePort
            self.registrationRetry = registrationRetry
            self.offerExtended = offerExtended
            self.pathConfiguration = pathConfiguration
            self.identity = identity
            self.listPageSize = listPageSize
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

    /// Which dialect the session speaks.
    public enum Mode: Hashable, Sendable {
        case negotiating
        case classic
        case extended
    }

    public private(set) var mode: Mode = .negotiating
    /// The classic peer table (used in classic mode).
    public private(set) var router: ChatRouter
    /// The extended peer table (in extended mode).
    public private(set) var extended: ExtendedRouter?
    public private(set) var natKind: NATKind = .unknown
    private var configuration: Configuration
    private let sinks: Sinks
    private let logger: Logger
    private var keepAlive: KeepAliveSchedule
    private var registrationRetryAt: Instant?
    private var registrationBackoff: Duration
    private var leaving = false
    private var refused = false
    private var publicEndpoint = PublicEndpointObserver()
    private var probe: MappingProbe?
    private var lastServerAnswer: Instant?
    /// The cookie of the registration in flight (it salts the session key).
    private var registrationCookie: Token128?
    private var random = SystemRandomNumberGenerator()
    /// The IDs in each peer table, in list order and sorted, updated as peers join and leave.
    private var classicIndex: RosterIndex
    private var extendedIndex: RosterIndex
    /// Another peer joined or left while handling a datagram: completion must hear about it.
    private var rosterChanged = false
    /// Datagrams that decoded to nothing, for diagnostics.
    public private(set) var malformedCount = 0

    public init(configuration: Configuration, sinks: Sinks, logger: Logger) {
        self.configuration = configuration
        self.sinks = sinks
        self.logger = logger
        router = ChatRouter(selfID: configuration.id, server: configuration.server, privatePort: configuration.peerPrivatePort)
        keepAlive = KeepAliveSchedule(interval: configuration.keepAliveInterval)
        registrationBackoff = configuration.registrationRetry
        classicIndex = RosterIndex(selfID: configuration.id)
        extendedIndex = RosterIndex(selfID: configuration.id)
    }

    /// Whether the server has confirmed the registration (in either dialect).
    public var isRegistered: Bool {
        switch mode {
        case .negotiating: false
        case .classic: router.isRegistered
        case .extended: extended != nil
        }
    }

    /// Sets how many entries a `@show_list` page holds (the terminal was resized).
    public func setListPageSize(_ size: Int) {
        configuration.listPageSize = size
    }

    /// Records the port the socket was bound to (when the configuration asked for any port).
    public func localPortChosen(_ port: UInt16) {
        if port != 0 { configuration.localPort = port }
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
        case .showList(let prefix, let page):
            showList(prefix: prefix, page: page)
        case .chat(let to, let text):
            chat(to: to, text: text, now: now, output: &output)
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
        if mode == .extended, var session = extended {
            let id = configuration.id
            output.send(session.sessionMessage { .exit(id: id, counter: $0, tag: .zero) }, to: configuration.server)
            extended = session
        } else {
            output.send(ClassicMessage.unregister(configuration.id).encode(), to: configuration.server)
        }
    }

    // MARK: - Datagrams in

    public func receive(_ payload: ByteBuffer, from source: Endpoint, now: Instant, output: inout DatagramOutput) {
        guard !leaving else { return }
        let bytes = payload.readableBytesView
        let modeBefore = mode
        defer {
            flushExtended(output: &output)
            let names = index(for: mode).completionNames
            if rosterChanged || (mode != modeBefore && names != index(for: modeBefore).completionNames) {
                rosterChanged = false
                sinks.peersChanged(names)
            }
        }
        if STUN.looksLikeSTUN(bytes) {
            if let message = try? STUN.decode(Array(bytes)), probe?.receive(message, from: source) == true {
                finishProbeIfDone(now: now, output: &output)
            }
            return
        }
        do {
            if ExtendedMessage.looksExtended(bytes) {
                let raw = Array(bytes)
                receiveExtended(try ExtendedMessage.decode(raw), bytes: raw, from: source, now: now, output: &output)
            } else {
                receiveClassic(try ClassicMessage.decode(bytes), from: source, now: now)
            }
        } catch {
            malformedCount += 1
            logger.debug("dropped malformed datagram", metadata: ["from": "\(source)", "error": "\(error)"])
        }
    }

    private func receiveClassic(_ message: ClassicMessage, from source: Endpoint, now: Instant) {
        if mode == .extended {
            // Only classic peers' chats are expected now; nothing proves who sent them.
            if case .chat(let from, let text) = message {
                sinks.display("From \(from) [\(text)] (unverified: classic client)")
            } else if case .serverNotice(let text) = message, source == configuration.server {
                sinks.display("From server [\(text)]")
            }
            return
        }
        let events = router.receive(message, from: source)
        trackClassicRoster(after: message)
        for event in events { show(event) }
        if router.isRegistered, mode == .negotiating {
            mode = .classic
            registrationRetryAt = nil
        }
    }

    private func receiveExtended(_ message: ExtendedMessage, bytes: [UInt8], from source: Endpoint, now: Instant,
                                 output: inout DatagramOutput) {
        let fromServer = source == configuration.server
        switch message {
        case .challenge(let cookie) where fromServer:
            // Only while registering: a challenge we did not ask for (someone sent an offer in
            // our name) must not make us register again.
            guard mode != .classic, registrationRetryAt != nil else { return }
            registrationCookie = cookie
            let privateEndpoint = Endpoint(address: configuration.privateAddress, port: configuration.localPort)
            output.send(SessionCrypto.signedRegistration(id: configuration.id, cookie: cookie, privateEndpoints: [privateEndpoint],
                                                         natKind: natKind, identity: configuration.identity),
                        to: configuration.server)
        case .registered(let serverKey, let endpoint, let keepAliveMillis, let alternatePort, let nonce) where fromServer:
            guard let cookie = registrationCookie,
                  let sessionKey = SessionCrypto.sessionKey(privateKey: configuration.identity.agreement, peerPublicKey: serverKey,
                                                            cookie: cookie, nonce: nonce, id: configuration.id)
            else { return }
            let wasRegistering = registrationRetryAt != nil
            lastServerAnswer = now
            registrationRetryAt = nil
            let firstSession = extended == nil
            if var session = extended {
                // The same session acknowledged again (a repeated registration): keep counting.
                if !session.usesSessionKey(sessionKey) { session.resetSession(sessionKey: sessionKey) }
                extended = session
            } else {
                extended = ExtendedRouter(selfID: configuration.id, server: configuration.server, identity: configuration.identity,
                                          sessionKey: sessionKey, firstMessageID: random.next() >> 1,
                                          transactionSeed: random.next(), pathConfiguration: configuration.pathConfiguration)
                extended?.natKind = natKind
            }
            mode = .extended
            if keepAliveMillis > 0 {
                let interval = min(configuration.keepAliveInterval, .milliseconds(Int64(keepAliveMillis)))
                keepAlive = KeepAliveSchedule(interval: interval)
            }
            keepAlive.start(now: now)
            _ = publicEndpoint.observe(endpoint)
            if firstSession {
                sinks.display("* registered as \(configuration.id) (public \(endpoint)); natchat/2, key \(configuration.identity.fingerprint)")
                startProbe(alternatePort: alternatePort, now: now, output: &output)
            } else if wasRegistering {
                sinks.display("* registered again as \(configuration.id) (public \(endpoint))")
            }
        case .refused(let text) where fromServer:
            sinks.display("From server [\(text)]")
            if !isRegistered { refuse(text) }
        case .keepAliveAck(let endpoint) where fromServer:
            lastServerAnswer = now
            if case .moved(_, let to) = publicEndpoint.observe(endpoint) {
                sinks.display("* the server now sees you at \(to)")
            }
        case .unknownSession(let id, let echo) where fromServer && id == configuration.id:
            // The server lost our session (it restarted): register again at once. Only an
            // answer to one of our own recent messages counts (it echoes that message's tag).
            guard let session = extended, session.sentRecently(tag: echo) else { return }
            if mode == .extended, registrationRetryAt == nil {
                sinks.display("* the server lost our session; registering again")
                extended?.resetPeers()
                registrationBackoff = configuration.registrationRetry
                sendRegistration(now: now, output: &output)
            }
        case .peer, .peerLeft, .punch, .relayed:
            guard fromServer else { return }
            lastServerAnswer = now
            extended?.handleServerMessage(message, now: now)
        case .ping, .pong, .chat, .chatAck:
            extended?.handlePeerMessage(message, bytes: bytes, from: source, now: now)
        default:
            logger.debug("ignored extended message", metadata: ["from": "\(source)"])
        }
    }

    // MARK: - Timers

    public func timeout(now: Instant, output: inout DatagramOutput) {
        guard !leaving else { return }
        if let retryAt = registrationRetryAt, now >= retryAt, !refused {
            sendRegistration(now: now, output: &output)
        }
        if keepAlive.poll(now: now) {
            sendKeepAlive(now: now, output: &output)
        }
        if var activeProbe = probe {
            for (bytes, destination) in activeProbe.poll(now: now) { output.send(bytes, to: destination) }
            probe = activeProbe
            finishProbeIfDone(now: now, output: &output)
        }
        if mode == .extended, let last = lastServerAnswer, now - last > keepAlive.interval * 3 + .seconds(1),
           registrationRetryAt == nil {
            // Three keep-alives unanswered: the server restarted or the path to it broke.
            sinks.display("* the server stopped answering; registering again")
            registrationBackoff = configuration.registrationRetry
            sendRegistration(now: now, output: &output)
            lastServerAnswer = now
        }
        extended?.handleTimeout(now: now)
        flushExtended(output: &output)
    }

    public func nextDeadline() -> Instant? {
        guard !leaving else { return nil }
        var deadlines = [registrationRetryAt, keepAlive.nextDeadline, probe?.nextDeadline, extended?.nextDeadline]
        if mode == .extended, let last = lastServerAnswer {
            deadlines.append(last + keepAlive.interval * 3 + .seconds(1))
        }
        return deadlines.compactMap { $0 }.min()
    }

    // MARK: - Commands

    /// The index of the peer table that `mode` uses.
    private func index(for mode: Mode) -> RosterIndex {
        mode == .extended ? extendedIndex : classicIndex
    }

    /// Prints page `page` of the roster (of the IDs starting with `prefix`), in the order it
    /// has always been listed: in natchat/2 our own line, then the peers as announced; in
    /// classic mode the server's order. Only the page's lines are built.
    private func showList(prefix: String?, page: Int) {
        let pageSize = configuration.listPageSize
        if mode == .extended, let session = extended {
            let index = extendedIndex
            let selfID = configuration.id
            let listing = ListPage.make(count: index.count + 1, id: { $0 == 0 ? selfID : index[$0 - 1] },
                                        prefix: prefix, page: page, pageSize: pageSize)
            for position in listing.positions {
                if position == 0 {
                    sinks.display("\(selfID) \(publicEndpoint.current.map { "\($0)" } ?? "?") (you; NAT: \(natKind))")
                    continue
                }
                let id = index[position - 1]
                guard let info = session.peer(id), let path = session.path(to: id) else {
                    logger.warning("roster index lists an unknown peer", metadata: ["id": "\(id)"])
                    continue
                }
                let pathText = info.dialect == .classic ? "classic" : "\(path)"
                sinks.display("\(info.id) \(info.publicEndpoint) \(pathText)")
            }
            if let footer = listing.footer { sinks.display(footer) }
            return
        }
        let index = classicIndex
        if index.count == 0 {
            sinks.display("(no registered clients yet)")
            return
        }
        let listing = ListPage.make(count: index.count, id: { index[$0] }, prefix: prefix, page: page, pageSize: pageSize)
        for position in listing.positions {
            guard let peer = router.peer(index[position]) else {
                logger.warning("roster index lists an unknown peer", metadata: ["id": "\(index[position])"])
                continue
            }
            sinks.display(ClassicMessage.peer(peer.id, peer.publicEndpoint).text)
        }
        if let footer = listing.footer { sinks.display(footer) }
    }

    private func chat(to id: ClientID, text: String, now: Instant, output: inout DatagramOutput) {
        if mode == .extended, var session = extended {
            guard let info = session.peer(id) else {
                sinks.display("There is no \(id) in registration list.")
                return
            }
            if info.dialect == .classic {
                // Classic peers cannot answer checks: the seed's same-NAT rule decides, as it did.
                let privateAddress = classicSameNATAddress(of: info)
                let destination = privateAddress.map { Endpoint(address: $0, port: configuration.peerPrivatePort) }
                    ?? info.publicEndpoint
                output.send(ClassicMessage.chat(from: configuration.id, text: text).encode(), to: destination)
                return
            }
            do {
                try session.sendChat(to: id, text: text, now: now)
            } catch {
                sinks.display("* cannot send to \(id): too many messages waiting for acknowledgement")
            }
            extended = session
            flushExtended(output: &output)
            return
        }
        switch router.chat(to: id, text: text) {
        case .success(let (message, destination)):
            output.send(message.encode(), to: destination)
        case .failure(.unknownPeer(let id)):
            sinks.display("There is no \(id) in registration list.")
        }
    }

    // MARK: - Internals

    /// The private address of a classic peer that the classic rule puts behind our NAT.
    private func classicSameNATAddress(of info: PeerInfo) -> IPv4Address? {
        guard let ours = publicEndpoint.current, let theirs = info.privateEndpoints.first else { return nil }
        let me = NATPosition(publicAddress: ours.address, privateAddress: configuration.privateAddress)
        let peer = NATPosition(publicAddress: info.publicEndpoint.address, privateAddress: theirs.address)
        return SameNATRule.classic.isSameNAT(me, peer) ? theirs.address : nil
    }

    private func sendRegistration(now: Instant, output: inout DatagramOutput) {
        let offers = configuration.offerExtended && mode != .classic ? [ExtendedMessage.offer] : []
        output.send(ClassicMessage.register(configuration.id, privateAddress: configuration.privateAddress, offers: offers).encode(),
                    to: configuration.server)
        registrationRetryAt = now + registrationBackoff
        registrationBackoff = min(registrationBackoff * 2, configuration.keepAliveInterval)
    }

    private func sendKeepAlive(now: Instant, output: inout DatagramOutput) {
        if mode == .extended, var session = extended {
            let id = configuration.id
            let kind = natKind
            output.send(session.sessionMessage { .keepAlive(id: id, natKind: kind, counter: $0, tag: .zero) },
                        to: configuration.server)
            extended = session
        } else {
            output.send(ClassicMessage.keepAlive(configuration.id).encode(), to: configuration.server)
        }
    }

    private func startProbe(alternatePort: UInt16, now: Instant, output: inout DatagramOutput) {
        let alternate = alternatePort == 0 ? nil : Endpoint(address: configuration.server.address, port: alternatePort)
        let local = Endpoint(address: configuration.privateAddress, port: configuration.localPort)
        var newProbe = MappingProbe(primary: configuration.server, alternate: alternate, localEndpoint: local, random: &random)
        for (bytes, destination) in newProbe.poll(now: now) { output.send(bytes, to: destination) }
        probe = newProbe
    }

    private func finishProbeIfDone(now: Instant, output: inout DatagramOutput) {
        guard let outcome = probe?.outcome else { return }
        probe = nil
        natKind = outcome.kind
        extended?.natKind = outcome.kind
        sinks.display("* NAT: \(outcome.kind)")
        // Tell the server at once, so peers that punch towards us know what to expect.
        sendKeepAlive(now: now, output: &output)
    }

    private func refuse(_ text: String) {
        refused = true
        registrationRetryAt = nil
        keepAlive.stop()
        sinks.registrationRefused(text)
    }

    private func flushExtended(output: inout DatagramOutput) {
        while let transmit = extended?.pollTransmit() { output.send(transmit.bytes, to: transmit.destination) }
        while let event = extended?.pollEvent() {
            trackExtendedRoster(event)
            show(event)
        }
    }

    /// Mirrors in `classicIndex` what `message` did to the classic peer table (the router
    /// has taken it; it decided whether the source may change the table).
    private func trackClassicRoster(after message: ClassicMessage) {
        switch message {
        case .peer(let id, _):
            if router.peer(id) != nil, classicIndex.add(id), id != configuration.id { rosterChanged = true }
        case .unregistered(let id, _), .offline(let id, _):
            if router.peer(id) == nil, classicIndex.remove(id), id != configuration.id { rosterChanged = true }
        default:
            break
        }
    }

    /// Mirrors in `extendedIndex` a join or leave: the extended table adds a peer only with
    /// `.joined` and removes one only with `.left`.
    private func trackExtendedRoster(_ event: ExtendedRouter.Event) {
        switch event {
        case .joined(let info):
            if extendedIndex.add(info.id) { rosterChanged = true }
        case .left(let id, _, _):
            if extendedIndex.remove(id) { rosterChanged = true }
        default:
            break
        }
    }

    private func show(_ event: ExtendedRouter.Event) {
        switch event {
        case .joined(let info):
            sinks.display("* \(info.id) joined (\(info.publicEndpoint))\(info.dialect == .classic ? " [classic]" : "")")
            if info.dialect == .classic, let address = classicSameNATAddress(of: info) {
                sinks.display("* \(info.id) is behind the same NAT (private \(address))")
            }
        case .updated(let info):
            logger.debug("peer updated", metadata: ["id": "\(info.id)", "public": "\(info.publicEndpoint)"])
        case .left(let id, let reason, let endpoint):
            sinks.display("* \(id) is \(reason == .offline ? "off-line" : "unregistered") \(endpoint)")
        case .chat(let from, let text, _):
            sinks.display("From \(from) [\(text)]")
        case .delivered(let to, _, _):
            sinks.display("* delivered to \(to)")
        case .undelivered(let to, let text):
            sinks.display("* NOT delivered to \(to): \"\(text)\"")
        case .pathChanged(let id, let path):
            sinks.display("* path to \(id): \(path)")
        case .keyChanged(let id):
            sinks.display("!!! WARNING: the server announced a different key for \(id); keeping the key pinned at first sight. Someone may be impersonating \(id).")
        case .forged(let id):
            logger.warning("dropped a datagram claiming to be from \(id) that failed authentication")
        }
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
                refuse(text)
            }
        case .ignored(let message, let source):
            logger.debug("ignored datagram", metadata: ["from": "\(source)", "message": "\(message.text.prefix(80))"])
        }
    }
}
