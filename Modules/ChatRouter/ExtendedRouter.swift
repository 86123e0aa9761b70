import Addressing
import Delivery
import HolePunch
import Identity
import MonotonicTime
import NATGrouping
import Roster
import Wire

/// The chat client's peers and routing for the extended dialect (natchat/2).
///
/// A sans-I/O core: feed it what the server says (``handleServerMessage(_:now:)``), what
/// peers send directly (``handlePeerMessage(_:bytes:from:now:)``), typed chats
/// (``sendChat(to:text:now:)``) and timeouts; each input returns its ``Output``s in order:
/// messages for the server (the owner's ``ClientSession``-style session seals them),
/// datagrams for peers (already authenticated) and events for the user.
///
/// - **Roster.** What the client knows of the registered clients is a ``RosterReplica``:
///   deltas from the server's feed are applied (and acknowledged) in time that does not grow
///   with the roster, and pinned keys live there. The client never decides on its own that
///   an ID is not registered: a chat to an ID it does not hold is held while the server is
///   asked (``ExtendedMessage/lookup(id:query:peer:)``, resent until the
///   message's deadline), and goes out when the answer comes; only the server's "no" gives
///   ``Event/noSuchPeer(_:)``. Datagrams from a peer it does not hold make it ask too.
/// - **Links.** Per peer it talks to, a ``PathAgent`` finds and holds a direct path; until it
///   has one, chats go through the server's relay. Links are made on first use, so a roster
///   of 100 000 costs no agent per peer.
/// - **Delivery.** Chats are acknowledged and retransmitted (``ReliableSender``), and shown
///   once (``DuplicateFilter``). Every peer datagram names its addressee and is
///   authenticated under the pair key only the two peers can derive (chat is sealed with
///   it, so the relay can neither read nor alter it).
/// - **Mailbox.** A chat for a peer that is offline, or that did not acknowledge it, goes to
///   the server's mailbox when the peer's ID is claimed, sealed end to end to the claim's
///   keys; mail that waited for us is opened, shown once and acknowledged (see
///   `ExtendedRouter+Mailbox.swift`).
public struct ExtendedRouter: Sendable, SansIOCore {
    /// How a message travelled.
    public enum Route: Hashable, Sendable {
        case direct(Endpoint)
        case relayed
    }

    /// Why a chat was given up.
    public enum UndeliveredReason: Hashable, Sendable {
        /// The peer did not acknowledge it before the deadline.
        case notAcknowledged
        /// The server never answered whether the peer is registered.
        case serverSilent
        /// The peer left before acknowledging it.
        case peerLeft
        /// The server's mailbox would not queue it (the peer was offline, or did not answer).
        case mailboxRefused(DepositRefusal)
        /// The server did not answer the request to queue it for an offline peer.
        case mailboxSilent
        /// It could not be sealed to the peer's claim keys (malformed keys, too long, or keys
        /// other than the ones pinned for the peer this session).
        case unsealable
    }

    /// What the user should hear about.
    public enum Event: Hashable, Sendable {
        /// A client the roster did not hold, and how it came (news, a listing, an answer).
        case joined(PeerInfo, RosterReplica.Arrival)
        case updated(PeerInfo)
        case left(ClientID, LeaveReason, Endpoint)
        /// The server pushes another part of the roster (past its limit: only peers talked to
        /// or asked about).
        case rosterScopeChanged(RosterScope, registered: Int)
        /// The roster copy is whole.
        case rosterSynced(registered: Int)
        case chat(from: ClientID, text: String, route: Route)
        case delivered(to: ClientID, messageID: UInt64, attempts: Int)
        case undelivered(to: ClientID, text: String, reason: UndeliveredReason)
        /// The server says `id` is not registered: a chat waiting for it is dropped.
        case noSuchPeer(ClientID, text: String)
        /// The server has not answered a look-up of `id` yet; the router keeps asking.
        case lookupPending(ClientID)
        /// A chat for a classic peer, found by a look-up: the owner sends it in the classic dialect.
        case classicChatDue(PeerInfo, text: String)
        case pathChanged(ClientID, PathAgent.Path)
        /// A user ping (``ping(_:timeout:now:)``) was answered on `path` after `roundTrip`.
        case pingAnswered(ClientID, path: PathAgent.Path, roundTrip: Duration)
        /// No answer to a user ping on `path` within `after`.
        case pingUnanswered(ClientID, path: PathAgent.Path, after: Duration)
        /// The server announced other keys for a peer than the ones pinned: ignored, loudly.
        case keyChanged(ClientID)
        /// A datagram claiming to be from a peer failed authentication.
        case forged(claimedFrom: ClientID)
        /// A chat for a held peer (``hold(_:)``) was not sent.
        case chatHeld(to: ClientID, text: String)
        /// A chat from a held peer was dropped unacknowledged (once per message: the sender's
        /// retransmissions are not reported again, and one that comes after
        /// ``release(_:)`` is shown).
        case chatFromHeldPeer(ClientID)
        /// An answer to ``listIDs(prefix:offset:limit:now:)``.
        case listAnswered(query: UInt32, total: Int, offset: Int, entries: [ListEntry])
        /// No answer to that query came in time.
        case listUnanswered(query: UInt32)
        /// A chat went to the server's mailbox for `to` (``MailReason``): stored as `serial`,
        /// kept `keptSeconds` or until `to` has it.
        case queued(to: ClientID, text: String, serial: UInt64, keptSeconds: UInt32, reason: MailReason)
        /// A message that waited in the server's mailbox, opened and signed by the key whose
        /// fingerprint is `signedBy` (checked against the roster's key for `from`, when it
        /// holds one; the owner checks it against what it remembers). `sentAt`: the sender's
        /// clock, `queuedAt`: the server's (Unix seconds). Each serial is reported once.
        case mail(from: ClientID, text: String, sentAt: UInt64, queuedAt: UInt64, signedBy: String)
        /// What a port-probing attempt with the peer did (for the log: `probing bob: ...`).
        case probing(ClientID, PortProbe.Report)
        /// A message that waited in the server's mailbox was not shown (it was acknowledged).
        case mailRejected(from: ClientID, MailRejection)
        /// The recipient of mailbox message `serial` has it. `queuedThisSession`: this router
        /// queued it (else it was queued by an earlier run of the client).
        case mailDelivered(to: ClientID, serial: UInt64, queuedThisSession: Bool)
    }

    /// What the owner should do.
    public enum Output: Hashable, Sendable {
        /// Send this message to the server, sealed under the session (counter and tag).
        case sendToServer(ExtendedMessage)
        /// Send this datagram to a peer (it is authenticated under the pair key already).
        case send([UInt8], to: Endpoint)
        /// Send this datagram to a peer from one of the probe sockets (port probing; a path
        /// found that way keeps using its socket).
        case sendFromProbeSocket([UInt8], to: Endpoint, socket: ProbeSocket)
        /// Open `count` probe sockets for the agent of `peer` (numbered `0..<count`), bound
        /// to the chat socket's address with any port; hand in what arrives on them with
        /// ``handlePeerMessage(_:bytes:from:socket:now:)``.
        case openProbeSockets(peer: ClientID, count: Int)
        /// Close `peer`'s probe sockets except `keeping` (`nil`: all).
        case closeProbeSockets(peer: ClientID, keeping: Int?)
        /// Tell the user.
        case event(Event)
    }

    /// One of the sockets a peer's path agent opened for port probing.
    public struct ProbeSocket: Hashable, Sendable {
        public var peer: ClientID
        public var index: Int

        public init(peer: ClientID, index: Int) {
            self.peer = peer
            self.index = index
        }
    }

    /// Why a chat cannot be sent.
    public enum SendError: Error, Hashable, Sendable {
        case tooManyInFlight
    }

    /// Timings of look-ups and list queries.
    public struct QueryConfiguration: Hashable, Sendable {
        public var firstRetry: Duration = .milliseconds(400)
        public var maxRetry: Duration = .seconds(2)
        /// When the user is told the server has not answered a look-up yet.
        public var pendingNotice: Duration = .seconds(3)
        /// A list query unanswered this long is given up.
        public var listDeadline: Duration = .seconds(5)
        /// A chat that waited for a look-up keeps the deadline it was typed with, but gets
        /// at least this long after the answer to be delivered: an answer that comes just
        /// before the deadline must not send a message and give up on it at once (5 s is
        /// five attempts with the reliable sender's default backoff).
        public var leastDeliveryWindow: Duration = .seconds(5)
        /// A chat handed to the mailbox (its peer is offline, or did not acknowledge it) gets
        /// at least this long for the claim look-up and the deposit to be answered.
        public var mailWindow: Duration = .seconds(10)
        public init() {}
    }

    /// A peer this client talks to: its path and pair key.
    struct Link: Sendable {
        var agent: PathAgent
        var pairKey: KeyBytes
        /// When an authenticated datagram from the peer last arrived (for `@status`).
        var lastHeard: Instant?
        /// The round trip through the relay, from answered `@ping`s (nothing else measures it).
        var relayRoundTrip: RoundTripEstimate?
    }

    /// A chat from a held peer that was reported.
    struct HeldChat: Hashable, Sendable {
        var from: ClientID
        var messageID: UInt64
    }

    /// A chat waiting for a look-up. `mailboxTried`: it went to the mailbox once already
    /// (the server then said the peer is online), so its deadline is not extended again.
    struct WaitingChat: Sendable {
        var text: String
        var deadline: Instant
        var mailboxTried = false
    }

    /// A look-up in flight, and the chats waiting for its answer.
    struct Lookup: Sendable {
        var query: UInt32
        var nextSend: Instant
        var interval: Duration
        var startedAt: Instant
        var noticed = false
        var waiting: [WaitingChat] = []
    }

    struct ListRequest: Sendable {
        var prefix: String
        var offset: Int
        var limit: Int
        var nextSend: Instant
        var interval: Duration
        var deadline: Instant
    }

    public let selfID: ClientID
    let identity: IdentityKey
    /// This client's own NAT kind (from its probe), used to skip hopeless punching.
    public var natKind: NATKind = .unknown
    /// Whether our gateway holds a port mapping for the chat socket that the server passes
    /// on to peers (they can reach us at it from anywhere).
    public var hasPortMapping = false
    public internal(set) var roster: RosterReplica
    var links: [ClientID: Link] = [:]
    var lookups: [ClientID: Lookup] = [:]
    var lists: [UInt32: ListRequest] = [:]
    var nextQuery: UInt32 = 1
    var sender: ReliableSender
    var duplicates = DuplicateFilter()
    /// Peers whose chat is held: nothing is sent to them, and their chats are dropped.
    public private(set) var heldPeers: Set<ClientID> = []
    /// Chats from held peers already reported, so that retransmissions are not.
    var heldChatsReported: Set<HeldChat> = []
    /// Past this many reported held chats, more are dropped without a report (a held peer
    /// cannot grow the set without bound).
    static let heldChatsReportedLimit = 1024
    /// The Unix time of the instants given to the router (for the date a mailbox message
    /// says it was written).
    public var wallClock = WallClock()
    /// Chats on their way to the server's mailbox, by the query number of the request in flight.
    var mailSends: [UInt32: MailSend] = [:]
    /// Mailbox messages this session received (shown once), and in which order (the oldest
    /// is forgotten past ``mailSeenLimit``).
    var mailSeen: Set<UInt64> = []
    var mailSeenOrder: [UInt64] = []
    static let mailSeenLimit = 4096
    /// Serials of the messages this session queued (for ``Event/mailDelivered(to:serial:queuedThisSession:)``).
    var mailQueued: Set<UInt64> = []
    /// Mailbox messages from held peers already reported (by serial).
    var heldMailReported: Set<HeldChat> = []
    private var transactionSeed: UInt64
    /// User pings (`@ping`) waiting for their pongs, by transaction.
    var userPings: [UInt64: UserPing] = [:]
    /// The next user ping's transaction: a sequence of its own, apart from the path agents'.
    var nextUserPingTransaction: UInt64
    private let pathConfiguration: PathAgent.Configuration
    let queries: QueryConfiguration
    /// What the input being handled has to say (returned, in order, when it ends).
    var outputs: [Output] = []

    public init(selfID: ClientID, identity: IdentityKey, firstMessageID: UInt64,
                transactionSeed: UInt64, pathConfiguration: PathAgent.Configuration = .init(),
                delivery: ReliableSender.Configuration = .init(), queries: QueryConfiguration = .init()) {
        self.selfID = selfID
        self.identity = identity
        self.transactionSeed = transactionSeed
        nextUserPingTransaction = transactionSeed ^ 0x5A5A_5A5A_0000_0000
        self.pathConfiguration = pathConfiguration
        self.queries = queries
        roster = RosterReplica(selfID: selfID)
        sender = ReliableSender(firstID: firstMessageID, configuration: delivery)
    }

    public func peer(_ id: ClientID) -> PeerInfo? { roster.peer(id)?.info }

    /// The path to `id`: `.none` for a peer held but not talked to, `nil` for one not held.
    public func path(to id: ClientID) -> PathAgent.Path? {
        guard roster.peer(id) != nil else { return nil }
        return links[id]?.agent.path ?? PathAgent.Path.none
    }

    /// Messages still waiting for an acknowledgement.
    public var messagesInFlight: Int { sender.count }

    /// Peers with a link (talked to), for tests and diagnostics.
    public var linkedPeers: [ClientID] { links.keys.sorted() }

    // MARK: - Inputs

    /// A message from the rendezvous server (the caller checked its source).
    public mutating func handleServerMessage(_ message: ExtendedMessage, now: Instant) -> [Output] {
        switch message {
        case .roster(let delta):
            let changes = roster.apply(delta)
            if let (largest, received) = roster.acknowledgement {
                outputs.append(.sendToServer(.rosterAck(id: selfID, largest: largest, received: received)))
            }
            apply(changes, now: now)
        case .lookupResult(let query, let epoch, let version, let peer, let found):
            answerLookup(query: query, epoch: epoch, version: version, peer: peer, found: found, now: now)
        case .listPage(let query, let total, let offset, let entries):
            if lists.removeValue(forKey: query) != nil {
                emit(.listAnswered(query: query, total: Int(total), offset: Int(offset), entries: entries))
            }
        case .punch(let info, let round, let delayMillis):
            guard info.id != selfID, info.dialect == .extended else { break }
            apply(roster.learn(info), now: now)
            guard let held = roster.peer(info.id), held.info.keys == info.keys, link(for: info.id) != nil else { break }
            let selfNATKind = natKind
            let mapped = hasPortMapping
            runAgent(info.id) {
                $0.handlePunch(peer: info, round: round, delay: .milliseconds(Int64(delayMillis)), selfNATKind: selfNATKind,
                               selfHasPortMapping: mapped, now: now)
            }
        case .relayed(let from, let payload):
            if let inner = try? ExtendedMessage.decode(payload) { handleRelayed(inner, bytes: payload, from: from, now: now) }
        case .register, .keepAlive, .exit, .connect, .relay, .rosterAck, .lookup, .listQuery, .challenge, .registered,
             .refused, .keepAliveAck, .unknownSession, .ping, .pong, .chat, .chatAck, .claimLookup, .deposit, .mailAck,
             .releaseClaim, .rotateKey, .pathReport, .claimChanged, .serverPunch, .serverRelay:
            break
        case .claimResult(let query, let peer, let keys, _):
            answerClaim(query: query, peer: peer, keys: keys, now: now)
        case .depositResult(let query, let to, let outcome):
            answerDeposit(query: query, to: to, outcome: outcome, now: now)
        case .mail(let serial, let from, let queuedAt, let sealed):
            receiveMail(serial: serial, from: from, queuedAt: queuedAt, sealed: sealed)
        case .mailDelivered(let to, let serial):
            emit(.mailDelivered(to: to, serial: serial, queuedThisSession: mailQueued.remove(serial) != nil))
        }
        return takeOutputs()
    }

    /// A peer-to-peer message that arrived directly from `source` (`bytes` as received).
    /// Dropped unless it names us as addressee, comes from a known natchat/2 peer and
    /// authenticates under that pair's key. `socket`: the probe socket it arrived on (`nil`:
    /// the chat socket); a probe socket takes only its own peer's datagrams.
    public mutating func handlePeerMessage(_ message: ExtendedMessage, bytes: [UInt8], from source: Endpoint,
                                           socket: ProbeSocket? = nil, now: Instant) -> [Output] {
        if let socket {
            switch message {
            case .ping(let from, _, _), .pong(let from, _, _, _), .chat(let from, _, _, _), .chatAck(let from, _, _):
                guard from == socket.peer else { return [] }
            default:
                return []
            }
        }
        switch message {
        case .ping(let from, let to, let transaction):
            if verifyTag(bytes, from: from, to: to, now: now) {
                runAgent(from) { $0.handlePing(transaction: transaction, from: source, socket: socket?.index, now: now) }
            }
        case .pong(let from, let to, let transaction, _):
            if verifyTag(bytes, from: from, to: to, now: now),
               userPings.isEmpty || !answerUserPing(transaction, from: from, via: source, now: now) {
                runAgent(from) { $0.handlePong(transaction: transaction, from: source, socket: socket?.index, now: now) }
            }
        case .chat(let from, let to, let messageID, let sealed):
            if let text = openChat(sealed, from: from, to: to, messageID: messageID, now: now) {
                receiveChat(from: from, messageID: messageID, text: text, route: .direct(source), now: now)
            }
        case .chatAck(let from, let to, let messageID):
            if verifyTag(bytes, from: from, to: to, now: now) { acknowledge(messageID, from: from, now: now) }
        default:
            break
        }
        return takeOutputs()
    }

    /// Sends `text` to peer `id` reliably: on the direct path when there is one, else
    /// through the relay while a direct path is set up. For an ID the roster does not hold,
    /// the server is asked first and the chat waits for the answer (until its deadline).
    /// A classic peer's chat comes back as ``Event/classicChatDue(_:text:)``.
    public mutating func sendChat(to id: ClientID, text: String, now: Instant) throws(SendError) -> [Output] {
        if let held = roster.peer(id) {
            if held.info.dialect == .classic {
                emit(.classicChatDue(held.info, text: text))
            } else {
                try send(text, to: id, firstSent: now, now: now)
            }
        } else {
            ask(about: id, now: now)
            lookups[id]?.waiting.append(WaitingChat(text: text, deadline: now + sender.configuration.deadline))
        }
        return takeOutputs()
    }

    /// Asks the server for the registered IDs starting with `prefix`, sorted, from the
    /// `offset`-th on; the answer comes as ``Event/listAnswered(query:total:offset:entries:)``
    /// (or ``Event/listUnanswered(query:)``). `within` bounds the wait (default
    /// ``QueryConfiguration/listDeadline``). Returns the query's number and the outputs.
    public mutating func listIDs(prefix: String, offset: Int, limit: Int, within: Duration? = nil,
                                 now: Instant) -> (query: UInt32, outputs: [Output]) {
        let query = takeQueryNumber()
        lists[query] = ListRequest(prefix: prefix, offset: offset, limit: limit, nextSend: now, interval: queries.firstRetry,
                                   deadline: now + (within ?? queries.listDeadline))
        sendDueQueries(now: now)
        return (query, takeOutputs())
    }

    public mutating func handleTimeout(now: Instant) -> [Output] {
        for id in Array(links.keys) {
            if let deadline = links[id]?.agent.nextDeadline, deadline <= now {
                runAgent(id) { $0.handleTimeout(now: now) }
            }
        }
        runSender(sender.handleTimeout(now: now), now: now)
        expireUserPings(now: now)
        sendDueQueries(now: now)
        sendDueMail(now: now)
        return takeOutputs()
    }

    public var nextDeadline: Instant? {
        var deadlines = links.values.compactMap(\.agent.nextDeadline)
        if let next = sender.nextDeadline { deadlines.append(next) }
        for ping in userPings.values { deadlines.append(ping.deadline) }
        for lookup in lookups.values {
            deadlines.append(lookup.nextSend)
            if let first = lookup.waiting.first?.deadline { deadlines.append(first) }
            if !lookup.noticed, !lookup.waiting.isEmpty { deadlines.append(lookup.startedAt + queries.pendingNotice) }
        }
        for request in lists.values { deadlines.append(min(request.nextSend, request.deadline)) }
        for mail in mailSends.values { deadlines.append(min(mail.nextSend, mail.deadline)) }
        return deadlines.min()
    }

    /// Holds chat with `id`: chats to it are not sent (``Event/chatHeld(to:text:)``, for
    /// those typed and those waiting for a look-up or on their way to the mailbox), and chats
    /// from it, and mailbox messages from it, are dropped without an acknowledgement
    /// (``Event/chatFromHeldPeer(_:)``, once per message; the server resends mail until it
    /// is acknowledged, so it is shown after ``release(_:)``). The owner holds a peer whose key
    /// differs from the one it remembers from earlier sessions (the KnownPeers module), until
    /// the user trusts the new key.
    public mutating func hold(_ id: ClientID) {
        heldPeers.insert(id)
    }

    /// Ends a hold: chat with `id` goes on (a chat it retransmits is now shown).
    public mutating func release(_ id: ClientID) {
        guard heldPeers.remove(id) != nil else { return }
        heldChatsReported = heldChatsReported.filter { $0.from != id }
        heldMailReported = heldMailReported.filter { $0.from != id }
    }

    /// The server session was lost: every path starts over (the new session brings a
    /// resynchronised roster). Pinned keys are kept.
    public mutating func resetPeers() -> [Output] {
        for id in links.keys { runAgent(id) { $0.reset() } }
        return takeOutputs()
    }

    /// A new session with the server began (after registering again): the roster is
    /// resynchronised from the new session's feed. `newServer`: with another server than the
    /// last session's (failover), whose roster versions need not match the ones held.
    public mutating func beginSession(newServer: Bool = false) {
        roster.beginSession(newServer: newServer)
    }

    // MARK: - Internals

    mutating func emit(_ event: Event) {
        outputs.append(.event(event))
    }

    mutating func takeOutputs() -> [Output] {
        defer { outputs.removeAll(keepingCapacity: true) }
        return outputs
    }

    mutating func apply(_ changes: [RosterReplica.Change], now: Instant) {
        for change in changes {
            switch change {
            case .joined(let info, let arrival):
                emit(.joined(info, arrival))
            case .updated(let info, let previous):
                emit(.updated(info))
                if previous.publicEndpoint != info.publicEndpoint, links[info.id]?.agent.directEndpoint != nil {
                    // Its NAT mapping changed: the direct path will be re-verified by checks.
                    runAgent(info.id) { $0.suspectPath(now: now) }
                }
                if info.mappedEndpoint != nil, previous.mappedEndpoint != info.mappedEndpoint, links[info.id] != nil {
                    // A port mapping makes the peer reachable from anywhere: try again now.
                    runAgent(info.id) { $0.peerGainedPortMapping(now: now) }
                }
            case .left(let id, let reason, let endpoint):
                forget(id, now: now)
                emit(.left(id, reason, endpoint))
            case .keyChanged(let id):
                emit(.keyChanged(id))
            case .scopeChanged(let scope):
                if scope == .interest {
                    // The server now pushes only peers talked to or asked about: hold just those.
                    let links = self.links, lookups = self.lookups
                    roster.retain { links[$0] != nil || lookups[$0] != nil }
                }
                emit(.rosterScopeChanged(scope, registered: roster.registeredCount))
            case .synced(let registered):
                emit(.rosterSynced(registered: registered))
            }
        }
    }

    /// A peer left: its link, its in-flight chats (reported) and its duplicate memory go.
    private mutating func forget(_ id: ClientID, now: Instant) {
        if let link = links[id], link.agent.pathSocket != nil || link.agent.probeRole != nil {
            outputs.append(.closeProbeSockets(peer: id, keeping: nil))
        }
        links[id] = nil
        duplicates.forget(id)
        runSender(sender.cancel(peer: id), now: now)
    }

    /// The link to `id`, made on first use from the pinned keys (`nil`: not a natchat/2 peer held).
    mutating func link(for id: ClientID) -> Link? {
        if let existing = links[id] { return existing }
        guard let held = roster.peer(id), held.info.dialect == .extended, let keys = held.info.keys,
              let pairKey = SessionCrypto.pairKey(privateKey: identity.agreement, peerPublicKey: keys.agreement,
                                                  selfID: selfID, peerID: id)
        else { return nil }
        let made = Link(agent: PathAgent(selfID: selfID, peerID: id, transactionSeed: nextTransactionSeed(),
                                         configuration: pathConfiguration),
                        pairKey: pairKey)
        links[id] = made
        return made
    }

    /// Gives `id`'s path agent an input and turns what it answers into the router's outputs:
    /// checks are authenticated under the pair key, a round request goes to the server.
    mutating func runAgent(_ id: ClientID, _ input: (inout PathAgent) -> [PathAgent.Output]) {
        guard var link = links[id] else { return }
        let before = link.agent.path
        let agentOutputs = input(&link.agent)
        links[id] = link
        for output in agentOutputs {
            switch output {
            case .transmit(let check, let destination):
                outputs.append(.send(SessionCrypto.sealed(checkMessage(check, to: id), key: link.pairKey), to: destination))
            case .transmitFromProbeSocket(let socket, let check, let destination):
                outputs.append(.sendFromProbeSocket(SessionCrypto.sealed(checkMessage(check, to: id), key: link.pairKey),
                                                    to: destination, socket: ProbeSocket(peer: id, index: socket)))
            case .openProbeSockets(let count):
                outputs.append(.openProbeSockets(peer: id, count: count))
            case .closeProbeSockets(let keeping):
                outputs.append(.closeProbeSockets(peer: id, keeping: keeping))
            case .probeReport(let report):
                emit(.probing(id, report))
            case .requestRound:
                outputs.append(.sendToServer(.connect(id: selfID, peer: id)))
            case .pathChanged(let path):
                emit(.pathChanged(id, path))
                if case .direct(_, let kind) = path, before.directEndpoint == nil {
                    // A punch attempt settled on a path: the server counts outcomes.
                    let outcome: PathOutcome = switch kind {
                    case .privateEndpoint: .private
                    case .probed: .probed
                    case .portMapped: .portMapped
                    case .publicEndpoint, .peerReflexive: .direct
                    }
                    outputs.append(.sendToServer(.pathReport(id: selfID, peer: id, outcome: outcome)))
                }
            case .roundFailed:
                // A round settled without a path: the peer stays on the relay.
                outputs.append(.sendToServer(.pathReport(id: selfID, peer: id, outcome: .relayed)))
            }
        }
    }

    private func checkMessage(_ check: PathAgent.Check, to id: ClientID) -> ExtendedMessage {
        switch check {
        case .ping(let transaction): .ping(from: selfID, to: id, transaction: transaction)
        case .pong(let transaction, let observed): .pong(from: selfID, to: id, transaction: transaction, observed: observed)
        }
    }

    /// Queues `bytes` for `peer` at `endpoint` directly: from the probe socket that carries
    /// the peer's path when `endpoint` is that path, else from the chat socket.
    mutating func sendDirect(_ bytes: [UInt8], to endpoint: Endpoint, peer: ClientID) {
        if let agent = links[peer]?.agent, let socket = agent.pathSocket, agent.directEndpoint == endpoint {
            outputs.append(.sendFromProbeSocket(bytes, to: endpoint, socket: ProbeSocket(peer: peer, index: socket)))
        } else {
            outputs.append(.send(bytes, to: endpoint))
        }
    }

    private mutating func nextTransactionSeed() -> UInt64 {
        transactionSeed = transactionSeed &* 6364136223846793005 &+ 1442695040888963407
        return transactionSeed
    }
}
