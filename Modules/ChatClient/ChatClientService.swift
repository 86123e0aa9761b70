import AddressDiscovery
import Addressing
import ChatRouter
import HolePunch
import Identity
import KeepAlive
import Logging
import MonotonicTime
import NATGrouping
import NIOCore
import Roster
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
        /// First wait before re-sending an unanswered registration (doubles up to 2 s, or the
        /// keep-alive interval when that is shorter).
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
        /// The server refused our registration: the client cannot go on.
        public var registrationRefused: @Sendable (String) -> Void

        public init(display: @escaping @Sendable (String) -> Void,
                    registrationRefused: @escaping @Sendable (String) -> Void = { _ in }) {
            self.display = display
            self.registrationRefused = registrationRefused
        }
    }

    /// How many peers a listing (the first roster, a resynchronisation) shows as
    /// `* ID joined` lines before it sums the rest up in one line.
    public static let joinLinesPerListing = 20
    /// The longest wait between two attempts to register.
    public static let maxRegistrationRetry = Duration.seconds(2)
    /// Most IDs one Tab completion offers.
    public static let completionLimit = 200

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
    /// The classic peer table's IDs, in list order and sorted, updated as peers join and leave.
    private var classicIndex: RosterIndex
    /// The time of the datagram, timer or command being handled (events drained from the
    /// router are handled at that time).
    private var lastNow = Instant.zero
    /// Listing joins shown and not shown since the roster last synced.
    private var listingJoinsShown = 0
    private var listingJoinsHidden = 0
    /// `@show_list` pages and Tab completions waiting for the server (past its roster limit).
    private var pendingListings: [UInt32: PendingListing] = [:]
    private var pendingCompletions: [UInt32: (prefix: String, answer: @Sendable ([String]) -> Void)] = [:]

    /// A `@show_list` page being gathered from the server's answers.
    private struct PendingListing {
        var prefix: String?
        var page: Int
        var pageSize: Int
        var entries: [ListEntry] = []
        var total = 0
    }
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
        lastNow = now
        switch command {
        case .showList(let prefix, let page):
            showList(prefix: prefix, page: page, now: now, output: &output)
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
        if mode == .extended, extended != nil {
            let id = configuration.id
            if let bytes = extended?.sessionMessage(.exit(id: id)) {
                output.send(bytes, to: configuration.server)
            }
        } else {
            output.send(ClassicMessage.unregister(configuration.id).encode(), to: configuration.server)
        }
    }

    // MARK: - Datagrams in

    public func receive(_ payload: ByteBuffer, from source: Endpoint, now: Instant, output: inout DatagramOutput) {
        guard !leaving else { return }
        lastNow = now
        let bytes = payload.readableBytesView
        defer { flushExtended(output: &output) }
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
        case .registered(let serverKey, let endpoint, let keepAliveMillis, let alternatePort, let nonce, let echoed) where fromServer:
            // Only the answer to our latest registration: an earlier one's answer, arriving
            // late, names a session the server has already replaced.
            guard let cookie = registrationCookie, echoed == cookie,
                  let sessionKey = SessionCrypto.sessionKey(privateKey: configuration.identity.agreement, peerPublicKey: serverKey,
                                                            cookie: cookie, nonce: nonce, id: configuration.id)
            else { return }
            let wasRegistering = registrationRetryAt != nil
            lastServerAnswer = now
            registrationRetryAt = nil
            let firstSession = extended == nil
            if extended != nil {
                // The same session acknowledged again (a duplicated answer): keep counting.
                if extended?.usesSessionKey(sessionKey) == false {
                    extended?.resetSession(sessionKey: sessionKey)
                    listingJoinsShown = 0
                    listingJoinsHidden = 0
                }
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
        case .roster, .lookupResult, .listPage, .punch, .relayed:
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
        lastNow = now
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
        if mode == .extended, let last = lastServerAnswer, now - last >= keepAlive.interval * 3 + .seconds(1),
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

    /// Prints page `page` of the roster (of the IDs starting with `prefix`). In classic mode
    /// and in natchat/2 while the client holds the whole roster, from the copy held, in the
    /// order it has always been listed: in natchat/2 our own line, then the peers as
    /// announced; in classic mode the server's order. Past the server's roster limit the
    /// page is asked of the server, sorted by ID.
    private func showList(prefix: String?, page: Int, now: Instant, output: inout DatagramOutput) {
        let pageSize = configuration.listPageSize
        if mode == .extended, let session = extended {
            guard session.roster.scope == .complete else {
                let offset = max(0, (max(1, page) - 1).multipliedReportingOverflow(by: pageSize).partialValue)
                if let query = extended?.listIDs(prefix: prefix ?? "", offset: offset, limit: pageSize, now: now) {
                    pendingListings[query] = PendingListing(prefix: prefix, page: page, pageSize: pageSize)
                }
                flushExtended(output: &output)
                return
            }
            let selfID = configuration.id
            let roster = session.roster
            if let prefix {
                let ids = [selfID] + roster.listedIDs
                let listing = ListPage.make(count: ids.count, id: { ids[$0] }, prefix: prefix, page: page, pageSize: pageSize)
                for position in listing.positions { displayListLine(id: ids[position], session: session) }
                if let footer = listing.footer { sinks.display(footer) }
                return
            }
            // Without a prefix only the page's own entries are read from the roster: position
            // 0 is our own line, position p > 0 the roster's (p - 1)-th peer.
            let listing = ListPage.make(count: roster.count + 1, id: { _ in selfID }, prefix: nil, page: page, pageSize: pageSize)
            if let first = listing.positions.first {
                let peers = roster.listed(from: max(0, first - 1), limit: listing.positions.count)
                for position in listing.positions {
                    let peerIndex = position - 1 - max(0, first - 1)
                    guard position == 0 || peers.indices.contains(peerIndex) else { continue }
                    displayListLine(id: position == 0 ? selfID : peers[peerIndex], session: session)
                }
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

    /// One `@show_list` line of the natchat/2 roster.
    private func displayListLine(id: ClientID, session: ExtendedRouter) {
        if id == configuration.id {
            sinks.display("\(id) \(publicEndpoint.current.map { "\($0)" } ?? "?") (you; NAT: \(natKind))")
            return
        }
        guard let info = session.peer(id), let path = session.path(to: id) else {
            logger.warning("roster lists an unknown peer", metadata: ["id": "\(id)"])
            return
        }
        sinks.display("\(info.id) \(info.publicEndpoint) \(info.dialect == .classic ? "classic" : "\(path)")")
    }

    /// Shows a page the server sent (past its roster limit), asking for the rest of it when
    /// one datagram did not hold it all.
    private func showListed(query: UInt32, total: Int, offset: Int, entries: [ListEntry], now: Instant) {
        guard var pending = pendingListings.removeValue(forKey: query) else { return }
        pending.entries += entries
        pending.total = total
        let first = max(0, (max(1, pending.page) - 1).multipliedReportingOverflow(by: pending.pageSize).partialValue)
        let wanted = max(0, min(pending.pageSize, total - first))
        if pending.entries.count < wanted, !entries.isEmpty,
           let next = extended?.listIDs(prefix: pending.prefix ?? "", offset: first + pending.entries.count,
                                        limit: wanted - pending.entries.count, now: now) {
            pendingListings[next] = pending
            return
        }
        for entry in pending.entries {
            if entry.id == configuration.id {
                sinks.display("\(entry.id) \(publicEndpoint.current.map { "\($0)" } ?? "?") (you; NAT: \(natKind))")
                continue
            }
            let path = entry.dialect == .classic ? "classic" : "\(extended?.path(to: entry.id) ?? PathAgent.Path.none)"
            sinks.display("\(entry.id) \(entry.publicEndpoint) \(path)")
        }
        if let footer = ListPage.footer(total: total, shown: pending.entries.count, first: first, prefix: pending.prefix,
                                        page: max(1, pending.page), size: pending.pageSize) {
            sinks.display(footer)
        }
    }

    /// Peer IDs starting with `prefix` for Tab completion, sorted: from the roster held, or,
    /// past the server's roster limit, from the server (when it does not answer in time, from
    /// the peers held). `answer` is called once, on this service's event loop.
    public func completePeerIDs(prefix: String, now: Instant, output: inout DatagramOutput,
                                answer: @escaping @Sendable ([String]) -> Void) {
        let limit = Self.completionLimit
        switch mode {
        case .negotiating:
            answer([])
        case .classic:
            answer(Array(classicIndex.completionNames.lazy.filter { $0.hasPrefix(prefix) }.prefix(limit)))
        case .extended:
            guard let session = extended else { return answer([]) }
            if session.roster.scope == .complete {
                return answer(session.roster.completions(of: prefix, limit: limit).map(\.rawValue))
            }
            // Within the console's wait, so that a silent server still gives the peers held.
            if let query = extended?.listIDs(prefix: prefix, offset: 0, limit: limit, within: .seconds(2), now: now) {
                pendingCompletions[query] = (prefix, answer)
            }
            flushExtended(output: &output)
        }
    }

    private func chat(to id: ClientID, text: String, now: Instant, output: inout DatagramOutput) {
        if mode == .extended, extended != nil {
            do {
                try extended?.sendChat(to: id, text: text, now: now)
            } catch {
                sinks.display("* cannot send to \(id): too many messages waiting for acknowledgement")
            }
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

    /// Sends a chat to a classic peer the natchat/2 roster holds: classic peers cannot answer
    /// checks, so the seed's same-NAT rule picks the address, as it did.
    private func sendClassicChat(to info: PeerInfo, text: String, output: inout DatagramOutput) {
        let destination = classicSameNATAddress(of: info).map { Endpoint(address: $0, port: configuration.peerPrivatePort) }
            ?? info.publicEndpoint
        output.send(ClassicMessage.chat(from: configuration.id, text: text).encode(), to: destination)
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
        // At most 2 s apart: a registration needs four datagrams to get through (offer,
        // challenge, register, registered), so under 20 % loss on each of the client's two
        // edges one attempt in 0.8⁴ ≈ 41 % succeeds; every 2 s makes 20 attempts in 40 s.
        registrationBackoff = min(registrationBackoff * 2, min(configuration.keepAliveInterval, Self.maxRegistrationRetry))
    }

    private func sendKeepAlive(now: Instant, output: inout DatagramOutput) {
        if mode == .extended, extended != nil {
            let id = configuration.id
            let kind = natKind
            if let bytes = extended?.sessionMessage(.keepAlive(id: id, natKind: kind)) {
                output.send(bytes, to: configuration.server)
            }
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
        while true {
            while let transmit = extended?.pollTransmit() { output.send(transmit.bytes, to: transmit.destination) }
            guard let event = extended?.pollEvent() else { return }
            handle(event, output: &output)
        }
    }

    /// Mirrors in `classicIndex` what `message` did to the classic peer table (the router
    /// has taken it; it decided whether the source may change the table).
    private func trackClassicRoster(after message: ClassicMessage) {
        switch message {
        case .peer(let id, _):
            if router.peer(id) != nil { classicIndex.add(id) }
        case .unregistered(let id, _), .offline(let id, _):
            if router.peer(id) == nil { classicIndex.remove(id) }
        default:
            break
        }
    }

    private func handle(_ event: ExtendedRouter.Event, output: inout DatagramOutput) {
        switch event {
        case .joined(let info, let arrival):
            switch arrival {
            case .registered:
                break
            case .listed:
                // A listing (the roster on registering, or again after a gap) is shown in part:
                // past a screenful the rest is summed up when it is whole.
                guard listingJoinsShown < Self.joinLinesPerListing else {
                    listingJoinsHidden += 1
                    return
                }
                listingJoinsShown += 1
            case .answered:
                // The user asked (a chat to it), or it contacted us: no news to announce.
                return
            }
            sinks.display("* \(info.id) joined (\(info.publicEndpoint))\(info.dialect == .classic ? " [classic]" : "")")
            if info.dialect == .classic, let address = classicSameNATAddress(of: info) {
                sinks.display("* \(info.id) is behind the same NAT (private \(address))")
            }
        case .updated(let info):
            logger.debug("peer updated", metadata: ["id": "\(info.id)", "public": "\(info.publicEndpoint)"])
        case .left(let id, let reason, let endpoint):
            sinks.display("* \(id) is \(reason == .offline ? "off-line" : "unregistered") \(endpoint)")
        case .rosterScopeChanged(.interest, let registered):
            sinks.display("* \(registered) clients are registered: the list is no longer followed; @show_list and Tab ask the server")
        case .rosterScopeChanged(.complete, let registered):
            sinks.display("* \(registered) clients are registered: following the whole list again")
        case .rosterSynced:
            if listingJoinsHidden > 0 {
                sinks.display("* and \(listingJoinsHidden) more online; @show_list lists them")
            }
            listingJoinsShown = 0
            listingJoinsHidden = 0
        case .chat(let from, let text, _):
            sinks.display("From \(from) [\(text)]")
        case .delivered(let to, _, _):
            sinks.display("* delivered to \(to)")
        case .undelivered(let to, let text, .serverSilent):
            sinks.display("* NOT delivered to \(to): \"\(text)\" (the server did not answer whether \(to) is registered)")
        case .undelivered(let to, let text, _):
            sinks.display("* NOT delivered to \(to): \"\(text)\"")
        case .noSuchPeer(let id, _):
            sinks.display("There is no \(id) in registration list.")
        case .lookupPending(let id):
            sinks.display("* the server has not answered yet whether \(id) is registered; still asking")
        case .classicChatDue(let info, let text):
            sendClassicChat(to: info, text: text, output: &output)
        case .listAnswered(let query, let total, let offset, let entries):
            if let completion = pendingCompletions.removeValue(forKey: query) {
                completion.answer(entries.map(\.id.rawValue).filter { $0 != configuration.id.rawValue && $0.hasPrefix(completion.prefix) })
            } else {
                showListed(query: query, total: total, offset: offset, entries: entries, now: lastNow)
            }
        case .listUnanswered(let query):
            if let completion = pendingCompletions.removeValue(forKey: query) {
                completion.answer(extended?.roster.completions(of: completion.prefix, limit: Self.completionLimit).map(\.rawValue) ?? [])
            } else if pendingListings.removeValue(forKey: query) != nil {
                sinks.display("* the server did not answer @show_list; try again")
            }
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
