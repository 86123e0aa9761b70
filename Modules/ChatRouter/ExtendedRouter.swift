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
/// Pure state: feed it what the server says (``handleServerMessage(_:now:)``), what peers
/// send directly (``handlePeerMessage(_:bytes:from:now:)``), typed chats
/// (``sendChat(to:text:now:)``) and timeouts; take datagrams with ``pollTransmit()`` and
/// user-facing events with ``pollEvent()``.
///
/// - **Roster.** What the client knows of the registered clients is a ``RosterReplica``:
///   deltas from the server's feed are applied (and acknowledged) in time that does not grow
///   with the roster, and pinned keys live there. The client never decides on its own that
///   an ID is not registered: a chat to an ID it does not hold is held while the server is
///   asked (``ExtendedMessage/lookup(id:query:peer:counter:tag:)``, resent until the
///   message's deadline), and goes out when the answer comes; only the server's "no" gives
///   ``Event/noSuchPeer(_:)``. Datagrams from a peer it does not hold make it ask too.
/// - **Links.** Per peer it talks to, a ``PathAgent`` finds and holds a direct path; until it
///   has one, chats go through the server's relay. Links are made on first use, so a roster
///   of 100 000 costs no agent per peer.
/// - **Delivery.** Chats are acknowledged and retransmitted (``ReliableSender``), and shown
///   once (``DuplicateFilter``). Every peer datagram names its addressee and is
///   authenticated under the pair key only the two peers can derive (chat is sealed with
///   it, so the relay can neither read nor alter it).
public struct ExtendedRouter: Sendable {
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
        /// The server announced other keys for a peer than the ones pinned: ignored, loudly.
        case keyChanged(ClientID)
        /// A datagram claiming to be from a peer failed authentication.
        case forged(claimedFrom: ClientID)
        /// An answer to ``listIDs(prefix:offset:limit:now:)``.
        case listAnswered(query: UInt32, total: Int, offset: Int, entries: [ListEntry])
        /// No answer to that query came in time.
        case listUnanswered(query: UInt32)
    }

    /// A datagram to send.
    public struct Transmit: Hashable, Sendable {
        public var bytes: [UInt8]
        public var destination: Endpoint
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
        public init() {}
    }

    /// A peer this client talks to: its path and pair key.
    struct Link: Sendable {
        var agent: PathAgent
        var pairKey: KeyBytes
    }

    /// A look-up in flight, and the chats waiting for its answer.
    struct Lookup: Sendable {
        var query: UInt32
        var nextSend: Instant
        var interval: Duration
        var startedAt: Instant
        var noticed = false
        var waiting: [(text: String, deadline: Instant)] = []
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
    public var server: Endpoint
    private let identity: IdentityKey
    private var sessionKey: KeyBytes
    private var counter: UInt64 = 0
    private var recentTags: [Token128] = []
    /// This client's own NAT kind (from its probe), used to skip hopeless punching.
    public var natKind: NATKind = .unknown
    public private(set) var roster: RosterReplica
    private var links: [ClientID: Link] = [:]
    private var lookups: [ClientID: Lookup] = [:]
    private var lists: [UInt32: ListRequest] = [:]
    private var nextQuery: UInt32 = 1
    private var sender: ReliableSender
    private var duplicates = DuplicateFilter()
    private var transactionSeed: UInt64
    private let pathConfiguration: PathAgent.Configuration
    private let queries: QueryConfiguration
    private var transmits: [Transmit] = []
    private var events: [Event] = []

    public init(selfID: ClientID, server: Endpoint, identity: IdentityKey, sessionKey: KeyBytes, firstMessageID: UInt64,
                transactionSeed: UInt64, pathConfiguration: PathAgent.Configuration = .init(),
                delivery: ReliableSender.Configuration = .init(), queries: QueryConfiguration = .init()) {
        self.selfID = selfID
        self.server = server
        self.identity = identity
        self.sessionKey = sessionKey
        self.transactionSeed = transactionSeed
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

    // MARK: - Input

    /// A message from the rendezvous server (the caller checked its source).
    public mutating func handleServerMessage(_ message: ExtendedMessage, now: Instant) {
        switch message {
        case .roster(let delta):
            let changes = roster.apply(delta)
            if let (largest, received) = roster.acknowledgement {
                let selfID = self.selfID
                transmits.append(Transmit(bytes: sessionMessage(.rosterAck(id: selfID, largest: largest, received: received)),
                                          destination: server))
            }
            apply(changes, now: now)
        case .lookupResult(let query, let epoch, let version, let peer, let found):
            guard let lookup = lookups[peer], lookup.query == query else { return }
            lookups[peer] = nil
            apply(roster.applyLookup(epoch: epoch, version: version, peer: peer, found: found), now: now)
            guard let info = roster.peer(peer)?.info, found != nil else {
                for waiting in lookup.waiting { events.append(.noSuchPeer(peer, text: waiting.text)) }
                return
            }
            for waiting in lookup.waiting {
                if info.dialect == .classic {
                    events.append(.classicChatDue(info, text: waiting.text))
                } else {
                    try? send(waiting.text, to: peer, now: now)
                }
            }
        case .listPage(let query, let total, let offset, let entries):
            guard lists.removeValue(forKey: query) != nil else { return }
            events.append(.listAnswered(query: query, total: Int(total), offset: Int(offset), entries: entries))
        case .punch(let info, let round, let delayMillis):
            guard info.id != selfID, info.dialect == .extended else { return }
            apply(roster.learn(info), now: now)
            guard let held = roster.peer(info.id), held.info.keys == info.keys, link(for: info.id) != nil else { return }
            links[info.id]?.agent.handlePunch(peer: info, round: round, delay: .milliseconds(Int64(delayMillis)),
                                              selfNATKind: natKind, now: now)
            drainAgent(info.id, now: now)
        case .relayed(let from, let payload):
            guard let inner = try? ExtendedMessage.decode(payload) else { return }
            handleRelayed(inner, bytes: payload, from: from, now: now)
        case .register, .keepAlive, .exit, .connect, .relay, .rosterAck, .lookup, .listQuery, .challenge, .registered,
             .refused, .keepAliveAck, .unknownSession, .ping, .pong, .chat, .chatAck:
            return
        }
    }

    /// A peer-to-peer message that arrived directly from `source` (`bytes` as received).
    /// Dropped unless it names us as addressee, comes from a known extended peer and
    /// authenticates under that pair's key.
    public mutating func handlePeerMessage(_ message: ExtendedMessage, bytes: [UInt8], from source: Endpoint, now: Instant) {
        switch message {
        case .ping(let from, let to, let transaction):
            guard verifyTag(bytes, from: from, to: to, now: now) else { return }
            links[from]?.agent.handlePing(transaction: transaction, from: source, now: now)
            drainAgent(from, now: now)
        case .pong(let from, let to, let transaction, _):
            guard verifyTag(bytes, from: from, to: to, now: now) else { return }
            links[from]?.agent.handlePong(transaction: transaction, from: source, now: now)
            drainAgent(from, now: now)
        case .chat(let from, let to, let messageID, let sealed):
            guard let text = openChat(sealed, from: from, to: to, messageID: messageID, now: now) else { return }
            links[from]?.agent.noteHeard(from: source, now: now)
            receiveChat(from: from, messageID: messageID, text: text, route: .direct(source), now: now)
        case .chatAck(let from, let to, let messageID):
            guard verifyTag(bytes, from: from, to: to, now: now) else { return }
            links[from]?.agent.noteHeard(from: source, now: now)
            acknowledge(messageID, from: from)
        default:
            return
        }
    }

    /// Sends `text` to peer `id` reliably: on the direct path when there is one, else
    /// through the relay while a direct path is set up. For an ID the roster does not hold,
    /// the server is asked first and the chat waits for the answer (until its deadline).
    /// A classic peer's chat comes back as ``Event/classicChatDue(_:text:)``.
    public mutating func sendChat(to id: ClientID, text: String, now: Instant) throws(SendError) {
        guard let held = roster.peer(id) else {
            ask(about: id, now: now)
            lookups[id]?.waiting.append((text, now + sender.configuration.deadline))
            return
        }
        if held.info.dialect == .classic {
            events.append(.classicChatDue(held.info, text: text))
            return
        }
        try send(text, to: id, now: now)
    }

    /// Asks the server for the registered IDs starting with `prefix`, sorted, from the
    /// `offset`-th on; the answer comes as ``Event/listAnswered(query:total:offset:entries:)``
    /// (or ``Event/listUnanswered(query:)``). Returns the query's number.
    /// `within` bounds the wait (default ``QueryConfiguration/listDeadline``).
    @discardableResult
    public mutating func listIDs(prefix: String, offset: Int, limit: Int, within: Duration? = nil, now: Instant) -> UInt32 {
        let query = takeQueryNumber()
        lists[query] = ListRequest(prefix: prefix, offset: offset, limit: limit, nextSend: now, interval: queries.firstRetry,
                                   deadline: now + (within ?? queries.listDeadline))
        sendDueQueries(now: now)
        return query
    }

    /// Call at ``nextDeadline``.
    public mutating func handleTimeout(now: Instant) {
        for id in Array(links.keys) {
            if let deadline = links[id]?.agent.nextDeadline, deadline <= now {
                links[id]?.agent.handleTimeout(now: now)
                drainAgent(id, now: now)
            }
        }
        let (retransmit, expired) = sender.due(now: now)
        for message in retransmit { transmit(message, now: now) }
        for message in expired { events.append(.undelivered(to: message.peer, text: message.text, reason: .notAcknowledged)) }
        sendDueQueries(now: now)
    }

    public var nextDeadline: Instant? {
        var deadlines = links.values.compactMap(\.agent.nextDeadline)
        if let next = sender.nextDeadline { deadlines.append(next) }
        for lookup in lookups.values {
            deadlines.append(lookup.nextSend)
            if let first = lookup.waiting.first?.deadline { deadlines.append(first) }
            if !lookup.noticed, !lookup.waiting.isEmpty { deadlines.append(lookup.startedAt + queries.pendingNotice) }
        }
        for request in lists.values { deadlines.append(min(request.nextSend, request.deadline)) }
        return deadlines.min()
    }

    public mutating func pollTransmit() -> Transmit? {
        transmits.isEmpty ? nil : transmits.removeFirst()
    }

    public mutating func pollEvent() -> Event? {
        events.isEmpty ? nil : events.removeFirst()
    }

    /// The server session was lost: every path starts over (a new registration brings a new
    /// session and a resynchronised roster). Pinned keys are kept.
    public mutating func resetPeers() {
        for id in links.keys { links[id]?.agent.reset() }
    }

    /// Whether `key` is this session's key (a repeated `registered` for the same session).
    public func usesSessionKey(_ key: KeyBytes) -> Bool { sessionKey == key }

    /// A new session with the server (after registering again).
    public mutating func resetSession(sessionKey: KeyBytes) {
        self.sessionKey = sessionKey
        counter = 0
        // Answers to the old session's messages must not end the new one.
        recentTags.removeAll()
        roster.beginSession()
    }

    // MARK: - Internals

    private mutating func apply(_ changes: [RosterReplica.Change], now: Instant) {
        for change in changes {
            switch change {
            case .joined(let info, let arrival):
                events.append(.joined(info, arrival))
            case .updated(let info, let previous):
                events.append(.updated(info))
                if previous.publicEndpoint != info.publicEndpoint, links[info.id]?.agent.directEndpoint != nil {
                    // Its NAT mapping changed: the direct path will be re-verified by checks.
                    links[info.id]?.agent.suspectPath(now: now)
                }
            case .left(let id, let reason, let endpoint):
                forget(id)
                events.append(.left(id, reason, endpoint))
            case .keyChanged(let id):
                events.append(.keyChanged(id))
            case .scopeChanged(let scope):
                if scope == .interest {
                    // The server now pushes only peers talked to or asked about: hold just those.
                    let links = self.links, lookups = self.lookups
                    roster.retain { links[$0] != nil || lookups[$0] != nil }
                }
                events.append(.rosterScopeChanged(scope, registered: roster.registeredCount))
            case .synced(let registered):
                events.append(.rosterSynced(registered: registered))
            }
        }
    }

    /// A peer left: its link, its in-flight chats (reported) and its duplicate memory go.
    private mutating func forget(_ id: ClientID) {
        links[id] = nil
        duplicates.forget(id)
        for message in sender.cancel(peer: id) { events.append(.undelivered(to: id, text: message.text, reason: .peerLeft)) }
    }

    private mutating func send(_ text: String, to id: ClientID, now: Instant) throws(SendError) {
        guard link(for: id) != nil else { return }
        let message: ReliableSender.Message
        do {
            message = try sender.enqueue(text, to: id, now: now)
        } catch {
            throw .tooManyInFlight
        }
        links[id]?.agent.noteInterest(now: now)
        drainAgent(id, now: now)
        transmit(message, now: now)
    }

    /// The link to `id`, made on first use from the pinned keys (`nil`: not a natchat/2 peer held).
    private mutating func link(for id: ClientID) -> Link? {
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

    /// Starts a look-up of `id` unless one is running.
    private mutating func ask(about id: ClientID, now: Instant) {
        guard lookups[id] == nil, id != selfID else { return }
        lookups[id] = Lookup(query: takeQueryNumber(), nextSend: now, interval: queries.firstRetry, startedAt: now)
        sendDueQueries(now: now)
    }

    private mutating func takeQueryNumber() -> UInt32 {
        defer { nextQuery &+= 1 }
        return nextQuery
    }

    /// Sends (again) the look-ups and list queries that are due, gives up those past their
    /// deadline, and tells the user once when a look-up for a waiting chat is slow.
    private mutating func sendDueQueries(now: Instant) {
        for id in Array(lookups.keys) {
            guard var lookup = lookups[id] else { continue }
            let (expired, kept) = (lookup.waiting.filter { now >= $0.deadline }, lookup.waiting.filter { now < $0.deadline })
            for waiting in expired { events.append(.undelivered(to: id, text: waiting.text, reason: .serverSilent)) }
            lookup.waiting = kept
            if !expired.isEmpty, kept.isEmpty, now - lookup.startedAt >= sender.configuration.deadline {
                lookups[id] = nil
                continue
            }
            if !lookup.noticed, !lookup.waiting.isEmpty, now >= lookup.startedAt + queries.pendingNotice {
                lookup.noticed = true
                events.append(.lookupPending(id))
            }
            if now >= lookup.nextSend {
                if lookup.waiting.isEmpty, now - lookup.startedAt >= sender.configuration.deadline {
                    // Nobody waits (a datagram from an unknown peer started it): give up quietly.
                    lookups[id] = nil
                    continue
                }
                let (selfID, query) = (self.selfID, lookup.query)
                transmits.append(Transmit(bytes: sessionMessage(.lookup(id: selfID, query: query, peer: id)), destination: server))
                lookup.nextSend = now + lookup.interval
                lookup.interval = min(lookup.interval * 2, queries.maxRetry)
            }
            lookups[id] = lookup
        }
        for query in Array(lists.keys) {
            guard var request = lists[query] else { continue }
            if now >= request.deadline {
                lists[query] = nil
                events.append(.listUnanswered(query: query))
                continue
            }
            guard now >= request.nextSend else { continue }
            let selfID = self.selfID
            transmits.append(Transmit(bytes: sessionMessage(.listQuery(id: selfID, query: query, prefix: request.prefix,
                                                                       offset: UInt32(clamping: request.offset),
                                                                       limit: UInt16(clamping: request.limit))),
                                      destination: server))
            request.nextSend = now + request.interval
            request.interval = min(request.interval * 2, queries.maxRetry)
            lists[query] = request
        }
    }

    /// Checks a pair tag; a datagram from a peer the roster does not hold makes the client
    /// ask the server about it (the next retransmission can then be checked).
    private mutating func verifyTag(_ bytes: [UInt8], from: ClientID, to: ClientID, now: Instant) -> Bool {
        guard to == selfID else { return false }
        guard let key = link(for: from)?.pairKey else {
            if roster.peer(from) == nil { ask(about: from, now: now) }
            return false
        }
        guard SessionCrypto.verifyAuthenticated(bytes, key: key) else {
            events.append(.forged(claimedFrom: from))
            return false
        }
        return true
    }

    private mutating func openChat(_ sealed: [UInt8], from: ClientID, to: ClientID, messageID: UInt64, now: Instant) -> String? {
        guard to == selfID else { return nil }
        guard let key = link(for: from)?.pairKey else {
            if roster.peer(from) == nil { ask(about: from, now: now) }
            return nil
        }
        guard let text = SessionCrypto.open(sealed, from: from, to: to, messageID: messageID, key: key) else {
            events.append(.forged(claimedFrom: from))
            return nil
        }
        guard !text.unicodeScalars.contains(where: ClassicMessage.isForbiddenInText) else { return nil }
        return text
    }

    private mutating func handleRelayed(_ inner: ExtendedMessage, bytes: [UInt8], from: ClientID, now: Instant) {
        // The server vouches for `from`; the inner message must agree, name us, and
        // authenticate under the pair key (end to end: the relay cannot forge it).
        switch inner {
        case .chat(let innerFrom, let to, let messageID, let sealed) where innerFrom == from:
            guard let text = openChat(sealed, from: from, to: to, messageID: messageID, now: now) else { return }
            receiveChat(from: from, messageID: messageID, text: text, route: .relayed, now: now)
        case .chatAck(let innerFrom, let to, let messageID) where innerFrom == from:
            guard verifyTag(bytes, from: from, to: to, now: now) else { return }
            acknowledge(messageID, from: from)
        default:
            return
        }
    }

    private mutating func receiveChat(from: ClientID, messageID: UInt64, text: String, route: Route, now: Instant) {
        guard let key = links[from]?.pairKey else { return }
        let ack = SessionCrypto.sealed(.chatAck(from: selfID, to: from, messageID: messageID), key: key)
        switch route {
        case .direct(let source): transmits.append(Transmit(bytes: ack, destination: source))
        case .relayed: sendViaRelay(ack, to: from)
        }
        if duplicates.firstSighting(of: messageID, from: from) {
            events.append(.chat(from: from, text: text, route: route))
        }
    }

    private mutating func acknowledge(_ messageID: UInt64, from peer: ClientID) {
        if let message = sender.acknowledge(messageID, from: peer) {
            events.append(.delivered(to: peer, messageID: message.id, attempts: message.attempts))
        }
    }

    /// Attempt 1 takes the direct path when there is one; retries alternate with the relay,
    /// so a path that broke silently costs one retransmission timeout, not the message.
    private mutating func transmit(_ message: ReliableSender.Message, now: Instant) {
        guard let link = links[message.peer],
              let sealed = SessionCrypto.seal(message.text, from: selfID, to: message.peer, messageID: message.id, key: link.pairKey)
        else { return }
        let chat = ExtendedMessage.chat(from: selfID, to: message.peer, messageID: message.id, sealed: sealed).encode()
        if let direct = link.agent.directEndpoint, message.attempts % 2 == 1 {
            transmits.append(Transmit(bytes: chat, destination: direct))
        } else {
            sendViaRelay(chat, to: message.peer)
        }
        if message.attempts > 1 { links[message.peer]?.agent.suspectPath(now: now) }
        drainAgent(message.peer, now: now)
    }

    private mutating func sendViaRelay(_ payload: [UInt8], to peer: ClientID) {
        let selfID = self.selfID
        let bytes = sessionMessage(.relay(id: selfID, to: peer, payload: payload))
        transmits.append(Transmit(bytes: bytes, destination: server))
    }

    /// Whether `tag` is the tag of one of the last messages this client sent the server
    /// (so an answer that echoes it is an answer to us, not to a forgery).
    public func sentRecently(tag: Token128) -> Bool {
        recentTags.contains { $0.constantTimeEquals(tag) }
    }

    /// Encodes a client→server message with the next counter and its tag under the session key.
    public mutating func sessionMessage(_ message: ExtendedMessage) -> [UInt8] {
        counter += 1
        let bytes = SessionCrypto.sealed(message, counter: counter, key: sessionKey)
        recentTags.append(Token128(bytes: bytes.suffix(16)))
        if recentTags.count > 32 { recentTags.removeFirst(recentTags.count - 32) }
        return bytes
    }

    private mutating func drainAgent(_ id: ClientID, now: Instant) {
        guard var link = links[id] else { return }
        if link.agent.pollConnectRequest() {
            let selfID = self.selfID
            let bytes = sessionMessage(.connect(id: selfID, peer: id))
            transmits.append(Transmit(bytes: bytes, destination: server))
        }
        while let (check, destination) = link.agent.pollTransmit() {
            let message: ExtendedMessage = switch check {
            case .ping(let transaction): .ping(from: selfID, to: id, transaction: transaction)
            case .pong(let transaction, let observed): .pong(from: selfID, to: id, transaction: transaction, observed: observed)
            }
            transmits.append(Transmit(bytes: SessionCrypto.sealed(message, key: link.pairKey), destination: destination))
        }
        while let event = link.agent.pollEvent() {
            if case .pathChanged(let path) = event { events.append(.pathChanged(id, path)) }
        }
        links[id] = link
    }

    private mutating func nextTransactionSeed() -> UInt64 {
        transactionSeed = transactionSeed &* 6364136223846793005 &+ 1442695040888963407
        return transactionSeed
    }
}
