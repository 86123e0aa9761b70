import Addressing
import AddressDiscovery
import ChatRouter
import ClientSession
import HolePunch
import Identity
import KnownPeers
import MonotonicTime
import NATGrouping
import STUN
import Wire

/// The whole chat client as one sans-I/O state machine: datagrams, typed commands and clock
/// ticks in; datagrams to send, ``ClientEvent``s for the user, ``Diagnostic``s for the log and
/// completion answers out (``Output``), returned by every input in order.
///
/// It composes the client's cores and turns their outputs into its own:
/// - ``ClientSession`` — registration, dialect, keep-alives, the session's seal;
/// - the peer tables, as ``Peers``: the seed's ``ChatRouter`` until the server answers in
///   natchat/2, then an ``ExtendedRouter`` (roster, paths, reliable chat) — one or the
///   other, never both;
/// - ``MappingProbe`` — the NAT classification after the first natchat/2 registration;
/// - ``KnownPeers`` — the keys of peers seen in earlier sessions: a peer that shows another
///   key is held until `@trust` (see ``knownPeers``).
///
/// ``ChatClientService`` drives it from a socket and a timer; tests drive it with a fake clock.
public struct ChatClientStateMachine: Sendable, SansIOCore {
    /// Client settings.
    public struct Configuration: Sendable {
        public var id: ClientID
        /// The first server to register with.
        public var server: Endpoint
        /// The servers to move to, in order, when the current one stops answering (see
        /// ``ClientSession`` for the rule); empty: one server.
        public var fallbackServers: [Endpoint]
        /// The private address reported at registration.
        public var privateAddress: IPv4Address
        /// The local UDP port (reported with the private address in natchat/2).
        public var localPort: UInt16
        public var keepAliveInterval: Duration
        /// The port same-NAT classic peers listen on (the classic dialect gives only their IP).
        public var peerPrivatePort: UInt16
        /// First wait before re-sending an unanswered registration (see ``ClientSession``).
        public var registrationRetry: Duration
        /// Propose natchat/2; `false` speaks the seed's protocol only.
        public var offerExtended: Bool
        public var pathConfiguration: PathAgent.Configuration
        /// The long-term key pair that the ID is bound to in natchat/2.
        public var identity: IdentityKey
        /// Entries `@show_list` prints at most before it pages (at least 1).
        public var listPageSize: Int
        /// The peers known from earlier sessions (as loaded from the known-peers file);
        /// `nil`: no peer's key is checked beyond the session's own pins (`--known-peers none`).
        public var knownPeers: KnownPeers?
        /// The server as the known-peers table names it: the user's `host:port` (default:
        /// ``server``'s address and port, or every server's, comma-separated). It stays the
        /// same when the client moves to another server: peers are remembered per list.
        public var knownPeersServer: String
        /// The Unix time of one instant, for the known-peers dates.
        public var wallClock: WallClock
        /// How long a change to the known peers waits before it is saved (changes in the
        /// meantime go with it), so that the file is not written for every datagram.
        public var knownPeersSaveDelay: Duration
        /// Whether a cone NAT is checked for remapping after unsolicited inbound
        /// (``Output/runRemapProbe(primary:alternate:)``).
        public var remapProbe = true

        /// The page size when the terminal's height is unknown.
        public static let defaultListPageSize = 50

        public init(id: ClientID, server: Endpoint, fallbackServers: [Endpoint] = [], privateAddress: IPv4Address,
                    identity: IdentityKey = IdentityKey(),
                    localPort: UInt16 = 10081,
                    keepAliveInterval: Duration = .seconds(10), peerPrivatePort: UInt16 = 10081,
                    registrationRetry: Duration = .seconds(1), offerExtended: Bool = true,
                    pathConfiguration: PathAgent.Configuration = .init(), listPageSize: Int = defaultListPageSize,
                    knownPeers: KnownPeers? = KnownPeers(), knownPeersServer: String? = nil, wallClock: WallClock = WallClock(),
                    knownPeersSaveDelay: Duration = .seconds(1)) {
            self.id = id
            self.server = server
            self.fallbackServers = fallbackServers
            self.privateAddress = privateAddress
            self.localPort = localPort
            self.keepAliveInterval = keepAliveInterval
            self.peerPrivatePort = peerPrivatePort
            self.registrationRetry = registrationRetry
            self.offerExtended = offerExtended
            self.pathConfiguration = pathConfiguration
            self.identity = identity
            self.listPageSize = listPageSize
            self.knownPeers = knownPeers
            var servers = [server]
            for fallback in fallbackServers where !servers.contains(fallback) { servers.append(fallback) }
            self.knownPeersServer = knownPeersServer ?? servers.map { "\($0)" }.joined(separator: ",")
            self.wallClock = wallClock
            self.knownPeersSaveDelay = knownPeersSaveDelay
        }
    }

    /// What the driver should do.
    public enum Output: Hashable, Sendable {
        /// Send this datagram.
        case send([UInt8], to: Endpoint)
        /// Send this datagram from a probe socket (port probing; see ``ExtendedRouter``).
        case sendFromProbeSocket([UInt8], to: Endpoint, socket: ExtendedRouter.ProbeSocket)
        /// Open `count` probe sockets for `peer` (numbered `0..<count`): bound to the chat
        /// socket's address, any port; what arrives on them comes back through
        /// ``receive(_:from:socket:now:)``.
        case openProbeSockets(peer: ClientID, count: Int)
        /// Close `peer`'s probe sockets except `keeping` (`nil`: all).
        case closeProbeSockets(peer: ClientID, keeping: Int?)
        /// Tell the user.
        case event(ClientEvent)
        /// Write this to the log.
        case diagnostic(Diagnostic)
        /// The answer to Tab completion request `request`: peer IDs, sorted.
        case completion(request: Int, ids: [String])
        /// Save these known peers (every server's), off the event loop.
        case saveKnownPeers([KnownPeers.Record])
        /// Run a ``RemapProbe`` against these two server ports from a fresh socket (never the
        /// chat socket, whose flow to the main port it would spoil), and hand its outcome to
        /// ``remapProbeFinished(_:now:)``.
        case runRemapProbe(primary: Endpoint, alternate: Endpoint)
    }

    /// How many peers a listing (the first roster, a resynchronisation) shows as joins
    /// before it sums the rest up in one event (``ClientEvent/moreOnline(_:)``).
    public static let joinLinesPerListing = 20
    /// Most IDs one Tab completion offers.
    public static let completionLimit = 200

    /// The peer tables: which one depends on the dialect the server answered in.
    enum Peers: Sendable {
        /// The seed's peer table and its list order, while negotiating and in a classic session.
        case classic(ChatRouter, RosterIndex)
        case natchat2(Natchat2Peers)
        /// Only while a method changes the payload in place (so the tables are not copied).
        case modifying
    }

    /// The natchat/2 peer table and the shell's business with it.
    struct Natchat2Peers: Sendable {
        var router: ExtendedRouter
        /// Listing joins shown and not shown since the roster last synced.
        var joinsShown = 0
        var joinsHidden = 0
        /// `@show_list` pages and Tab completions waiting for the server (past its roster limit).
        var listings: [UInt32: PendingListing] = [:]
        var completions: [UInt32: (request: Int, prefix: String)] = [:]
    }

    /// A `@show_list` page being gathered from the server's answers.
    struct PendingListing: Sendable {
        var prefix: String?
        var page: Int
        var pageSize: Int
        var entries: [ListEntry] = []
        var total = 0
    }

    public private(set) var configuration: Configuration
    public internal(set) var session: ClientSession
    var peers: Peers
    var probe: MappingProbe?
    var random = SystemRandomNumberGenerator()
    /// Datagrams that decoded to nothing, for diagnostics.
    public private(set) var malformedCount = 0
    /// The peers known from this and earlier sessions, on every server (`nil`: off).
    public internal(set) var knownPeers: KnownPeers?
    /// The table's revision last handed to ``Output/saveKnownPeers(_:)``.
    var savedKnownPeersRevision: UInt64
    /// When the changes to the known peers are to be saved (`nil`: nothing waits).
    var knownPeersSaveDue: Instant?
    /// What the input being handled has to say (returned, in order, when it ends).
    var outputs: [Output] = []
    /// A change to our own claim asked of the server (`--release-id`, `--rotate-identity`).
    var claimChange: PendingClaimChange?
    /// The server whose session was lost when the session moved to another one: the move is
    /// announced once registered elsewhere (``ClientEvent/serverChanged(from:to:publicEndpoint:)``).
    var serverLeft: Endpoint?
    /// The mapping probe was under way with a server the session left: it starts again with
    /// the next server that registers us.
    var probeAfterMove = false

    public init(configuration: Configuration) {
        self.configuration = configuration
        session = ClientSession(configuration: .init(
            id: configuration.id, server: configuration.server, fallbackServers: configuration.fallbackServers,
            privateEndpoint: Endpoint(address: configuration.privateAddress, port: configuration.localPort),
            identity: configuration.identity, keepAliveInterval: configuration.keepAliveInterval,
            registrationRetry: configuration.registrationRetry, offerNatchat2: configuration.offerExtended))
        peers = .classic(ChatRouter(selfID: configuration.id, server: configuration.server, privatePort: configuration.peerPrivatePort),
                         RosterIndex(selfID: configuration.id))
        knownPeers = configuration.knownPeers
        savedKnownPeersRevision = configuration.knownPeers?.revision ?? 0
    }

    // MARK: - What it knows

    /// The dialect the session speaks.
    public var dialect: ClientSession.Dialect { session.dialect }

    /// Whether the server has confirmed the registration (in either dialect).
    public var isRegistered: Bool { session.isRegistered }

    /// The server the client talks to now (it changes when the client fails over): only its
    /// datagrams are taken as the server's.
    public var server: Endpoint { session.server }

    /// Our NAT's kind, once the probe classified it.
    public var natKind: NATKind { session.natKind }

    /// The seed's peer table (`nil` in a natchat/2 session).
    public var classicRouter: ChatRouter? {
        if case .classic(let router, _) = peers { return router }
        return nil
    }

    /// The natchat/2 peer table (`nil` until the server answered in natchat/2).
    public var natchat2Router: ExtendedRouter? {
        if case .natchat2(let natchat2) = peers { return natchat2.router }
        return nil
    }

    // MARK: - Inputs

    /// Records the port the socket was bound to (when the configuration asked for any port).
    public mutating func localPortChosen(_ port: UInt16) {
        guard port != 0 else { return }
        configuration.localPort = port
        session.localPortChosen(port)
    }

    /// Sets how many entries a `@show_list` page holds (the terminal was resized).
    public mutating func setListPageSize(_ size: Int) {
        configuration.listPageSize = size
    }

    /// Sends the registration and starts the keep-alive schedule.
    public mutating func start(now: Instant) -> [Output] {
        runSession(session.start(now: now), now: now)
        return takeOutputs()
    }

    /// One datagram from `source`. `socket`: the probe socket it arrived on (`nil`: the chat
    /// socket); a probe socket carries only its peer's checks and chat, nothing of the server's.
    public mutating func receive(_ bytes: [UInt8], from source: Endpoint, socket: ExtendedRouter.ProbeSocket? = nil,
                                 now: Instant) -> [Output] {
        guard !session.hasLeft else { return [] }
        if let socket {
            guard ExtendedMessage.looksExtended(bytes), let message = try? ExtendedMessage.decode(bytes) else {
                malformedCount += 1
                return []
            }
            if let routerOutputs = withNatchat2({
                $0.router.handlePeerMessage(message, bytes: bytes, from: source, socket: socket, now: now)
            }) {
                runRouter(routerOutputs, now: now)
            }
            return takeOutputs()
        }
        if STUN.looksLikeSTUN(bytes) {
            if let message = try? STUN.decode(bytes), var active = probe {
                let probeOutputs = active.receive(message, from: source)
                probe = active
                runProbe(probeOutputs, now: now)
            }
            return takeOutputs()
        }
        do {
            if ExtendedMessage.looksExtended(bytes) {
                receiveNatchat2(try ExtendedMessage.decode(bytes), bytes: bytes, from: source, now: now)
            } else {
                receiveClassic(try ClassicMessage.decode(bytes), from: source, now: now)
            }
        } catch {
            malformedCount += 1
            outputs.append(.diagnostic(.malformed(from: source, reason: "\(error)")))
        }
        return takeOutputs()
    }

    /// Carries out one typed command (`@exit` unregisters).
    public mutating func handle(_ command: Command, now: Instant) -> [Output] {
        switch command {
        case .showList(let prefix, let page):
            showList(prefix: prefix, page: page, now: now)
        case .chat(let to, let text):
            chat(to: to, text: text, now: now)
        case .trust(let id):
            trust(id, now: now)
        case .whois(let id):
            whois(id)
        case .status:
            emit(.status(statusReport(now: now)))
        case .ping(let id):
            ping(id, now: now)
        case .help:
            emit(.help)
        case .exit:
            runSession(session.leave(now: now), now: now)
            saveKnownPeersIfDue(now: now, force: true)
        }
        return takeOutputs()
    }

    /// Unregisters (once) and stops every timer; known peers not saved yet are saved now.
    public mutating func leave(now: Instant) -> [Output] {
        runSession(session.leave(now: now), now: now)
        saveKnownPeersIfDue(now: now, force: true)
        return takeOutputs()
    }

    public mutating func handleTimeout(now: Instant) -> [Output] {
        guard !session.hasLeft else { return [] }
        runSession(session.handleTimeout(now: now), now: now)
        if var active = probe {
            let probeOutputs = active.handleTimeout(now: now)
            probe = active
            runProbe(probeOutputs, now: now)
        }
        if let routerOutputs = withNatchat2({ $0.router.handleTimeout(now: now) }) {
            runRouter(routerOutputs, now: now)
        }
        saveKnownPeersIfDue(now: now)
        sendClaimChangeIfDue(now: now)
        return takeOutputs()
    }

    public var nextDeadline: Instant? {
        guard !session.hasLeft else { return nil }
        return [session.nextDeadline, probe?.nextDeadline, natchat2Router?.nextDeadline, knownPeersSaveDue, claimChangeDue]
            .compactMap { $0 }.min()
    }

    // MARK: - Datagrams

    private mutating func receiveNatchat2(_ message: ExtendedMessage, bytes: [UInt8], from source: Endpoint, now: Instant) {
        // A late datagram from a server the session left is a stranger's.
        let fromServer = source == session.server
        switch message {
        case .challenge, .registered, .refused, .keepAliveAck, .unknownSession:
            guard fromServer else { return ignored(source, message) }
            runSession(session.handleServerMessage(message, now: now), now: now)
            if case .registered = message { sendClaimChangeIfDue(now: now) }
        case .claimChanged(let id, let keys):
            guard fromServer else { return ignored(source, message) }
            runSession(session.handleServerMessage(message, now: now), now: now)
            claimChanged(id, keys: keys)
        case .roster, .lookupResult, .listPage, .punch, .relayed, .claimResult, .depositResult, .mail, .mailDelivered:
            guard fromServer else { return ignored(source, message) }
            runSession(session.handleServerMessage(message, now: now), now: now)
            if case .lookupResult(_, _, _, _, let found?) = message, natchat2Router != nil {
                // The chats waiting for this answer go out as the router takes it: the key is
                // checked first, so that none goes to a key that differs from the one known.
                vet(found.info, now: now)
            }
            if case .claimResult(_, let peer, let keys?, _) = message, natchat2Router != nil {
                // Likewise for mail: it is sealed to the claim's keys as the router takes them.
                vet(peer, fingerprint: IdentityKey.fingerprint(of: keys), now: now)
            }
            if let routerOutputs = withNatchat2({ $0.router.handleServerMessage(message, now: now) }) {
                runRouter(routerOutputs, now: now)
            }
        case .ping, .pong, .chat, .chatAck:
            if let routerOutputs = withNatchat2({ $0.router.handlePeerMessage(message, bytes: bytes, from: source, now: now) }) {
                runRouter(routerOutputs, now: now)
            }
        case .register, .keepAlive, .exit, .connect, .relay, .rosterAck, .lookup, .listQuery, .claimLookup, .deposit, .mailAck,
             .releaseClaim, .rotateKey, .pathReport, .serverPunch, .serverRelay:
            ignored(source, message)
        }
    }

    private mutating func receiveClassic(_ message: ClassicMessage, from source: Endpoint, now: Instant) {
        guard let classicOutputs = withClassic({ router, index in
            let answered = router.receive(message, from: source)
            index.track(message, in: router)
            return answered
        }) else {
            // A natchat/2 session expects only classic peers' chats; nothing proves who sent them.
            if case .chat(let from, let text) = message {
                emit(.chat(from: from, text: text, origin: .unverifiedClassicPeer))
            } else if case .serverNotice(let text) = message, source == session.server {
                emit(.serverNotice(text))
            }
            return
        }
        runClassic(classicOutputs, now: now)
        if classicRouter?.isRegistered == true, session.dialect == .negotiating {
            runSession(session.handleClassicRegistration(now: now), now: now)
        }
    }

    // MARK: - Commands

    private mutating func chat(to id: ClientID, text: String, now: Instant) {
        if let classicOutputs = withClassic({ router, _ in router.chat(to: id, text: text) }) {
            return runClassic(classicOutputs, now: now)
        }
        do {
            let routerOutputs = try withNatchat2 { natchat2 throws(ExtendedRouter.SendError) in
                try natchat2.router.sendChat(to: id, text: text, now: now)
            }
            runRouter(routerOutputs ?? [], now: now)
        } catch {
            emit(.tooManyInFlight(to: id))
        }
    }

    // MARK: - Running the cores' outputs

    mutating func runSession(_ sessionOutputs: [ClientSession.Output], now: Instant) {
        for output in sessionOutputs {
            switch output {
            case .send(let bytes, let destination):
                outputs.append(.send(bytes, to: destination))
            case .registered(let endpoint, let alternatePort):
                var router = ExtendedRouter(selfID: configuration.id, identity: configuration.identity,
                                            firstMessageID: random.next() >> 1, transactionSeed: random.next(),
                                            pathConfiguration: configuration.pathConfiguration)
                router.natKind = session.natKind
                router.hasPortMapping = session.mappedEndpoint != nil
                router.wallClock = configuration.wallClock
                for id in heldPeerIDs() { router.hold(id) }
                peers = .natchat2(Natchat2Peers(router: router))
                emit(.registered(configuration.id, publicEndpoint: endpoint, .natchat2(keyFingerprint: configuration.identity.fingerprint)))
                startProbe(alternatePort: alternatePort, now: now)
            case .registeredAgain(let endpoint):
                let left = serverLeft
                serverLeft = nil
                _ = withNatchat2 { natchat2 in
                    // Another server numbers its roster its own way: what is held is checked
                    // against its feed afresh (peers in both rosters are neither left nor joined).
                    natchat2.router.beginSession(newServer: left != nil)
                    natchat2.joinsShown = 0
                    natchat2.joinsHidden = 0
                }
                if let left, left != session.server {
                    emit(.serverChanged(from: left, to: session.server, publicEndpoint: endpoint))
                } else {
                    emit(.registeredAgain(configuration.id, publicEndpoint: endpoint))
                }
                if probeAfterMove {
                    probeAfterMove = false
                    startProbe(alternatePort: session.alternatePort, now: now)
                }
            case .serverChanged(let from, let to):
                followServer(from: from, to: to)
            case .publicEndpointMoved(let endpoint):
                emit(.publicEndpointChanged(endpoint))
            case .sessionLost(let loss):
                // With another server to go to, the move is told in one line once it is made.
                if loss != .serverSilent || !session.hasFallbacks { emit(.registeringAgain(loss)) }
                if loss == .unknownSession, let routerOutputs = withNatchat2({ $0.router.resetPeers() }) {
                    runRouter(routerOutputs, now: now)
                }
            case .serverNotice(let text):
                emit(.serverNotice(text))
            case .refused(let text):
                emit(.registrationRefused(text))
            }
        }
    }

    mutating func runRouter(_ routerOutputs: [ExtendedRouter.Output], now: Instant) {
        for output in routerOutputs {
            switch output {
            case .sendToServer(let message):
                runSession(session.send(message), now: now)
            case .send(let bytes, let destination):
                outputs.append(.send(bytes, to: destination))
            case .sendFromProbeSocket(let bytes, let destination, let socket):
                outputs.append(.sendFromProbeSocket(bytes, to: destination, socket: socket))
            case .openProbeSockets(let peer, let count):
                outputs.append(.openProbeSockets(peer: peer, count: count))
            case .closeProbeSockets(let peer, let keeping):
                outputs.append(.closeProbeSockets(peer: peer, keeping: keeping))
            case .event(let event):
                handle(event, now: now)
            }
        }
    }

    private mutating func runClassic(_ classicOutputs: [ChatRouter.Output], now: Instant) {
        for output in classicOutputs {
            switch output {
            case .send(let bytes, let destination):
                outputs.append(.send(bytes, to: destination))
            case .event(let event):
                handle(event, now: now)
            }
        }
    }

    private mutating func runProbe(_ probeOutputs: [MappingProbe.Output], now: Instant) {
        for output in probeOutputs {
            switch output {
            case .send(let bytes, let destination):
                outputs.append(.send(bytes, to: destination))
            case .settled(let outcome):
                probe = nil
                _ = withNatchat2 { $0.router.natKind = outcome.kind }
                emit(.natClassified(outcome.kind))
                // Tell the server at once, so peers that punch towards us know what to expect.
                runSession(session.learnNATKind(outcome.kind, now: now), now: now)
                requestRemapProbe(after: outcome, now: now)
            }
        }
    }

    /// The session moved to server `to`: the classic tables take the list from there, and a
    /// probe under way with `from` starts again once `to` registers us. Roster, paths and
    /// chats stay (direct paths need no server; what goes through the server is sent again).
    private mutating func followServer(from: Endpoint, to: Endpoint) {
        _ = withClassic { router, _ in router.server = to }
        if session.dialect == .natchat2 { serverLeft = serverLeft ?? from }
        if probe != nil {
            probe = nil
            probeAfterMove = true
        }
    }

    private mutating func startProbe(alternatePort: UInt16, now: Instant) {
        let server = session.server
        let alternate = alternatePort == 0 ? nil : Endpoint(address: server.address, port: alternatePort)
        let local = Endpoint(address: configuration.privateAddress, port: configuration.localPort)
        var started = MappingProbe(primary: server, alternate: alternate, localEndpoint: local, random: &random)
        let probeOutputs = started.start(now: now)
        probe = started
        runProbe(probeOutputs, now: now)
    }

    // MARK: - Helpers

    mutating func emit(_ event: ClientEvent) {
        outputs.append(.event(event))
    }

    private mutating func ignored(_ source: Endpoint, _ message: ExtendedMessage) {
        outputs.append(.diagnostic(.ignored(from: source, what: String("\(message)".prefix(80)))))
    }

    mutating func takeOutputs() -> [Output] {
        defer { outputs.removeAll(keepingCapacity: true) }
        return outputs
    }

    /// Runs `body` on the natchat/2 tables in place; `nil` when the session is not natchat/2.
    mutating func withNatchat2<Result, Failure: Error>(
        _ body: (inout Natchat2Peers) throws(Failure) -> Result
    ) throws(Failure) -> Result? {
        guard case .natchat2(var natchat2) = peers else { return nil }
        peers = .modifying
        defer { peers = .natchat2(natchat2) }
        return try body(&natchat2)
    }

    /// Runs `body` on the classic tables in place; `nil` in a natchat/2 session.
    mutating func withClassic<Result>(_ body: (inout ChatRouter, inout RosterIndex) -> Result) -> Result? {
        guard case .classic(var router, var index) = peers else { return nil }
        peers = .modifying
        defer { peers = .classic(router, index) }
        return body(&router, &index)
    }
}
