import Delivery
import HolePunch
import Identity
import MonotonicTime
import NATGrouping
import Wire

/// The chat client's peer table and routing for the extended dialect (natchat/2).
///
/// Pure state: feed it what the server says (``handleServerMessage(_:now:)``), what peers
/// send directly (``handlePeerMessage(_:from:now:)``), typed chats (``sendChat(to:text:now:)``)
/// and timeouts; take datagrams with ``pollTransmit()`` and user-facing events with
/// ``pollEvent()``. Per peer, a ``PathAgent`` finds and holds a direct path; until it has
/// one, chats go through the server's relay. Chats are acknowledged and retransmitted
/// (``ReliableSender``), and shown once (``DuplicateFilter``). Every peer datagram names
/// its addressee and is authenticated under the pair key that only the two peers can derive
/// (chat is sealed with it, so the relay can neither read nor alter it): a datagram that
/// reaches the wrong host (colliding private addresses) or is forged is dropped. A peer's
/// keys are pinned for the session; a change is reported and not taken.
public struct ExtendedRouter: Sendable {
    /// How a message travelled.
    public enum Route: Hashable, Sendable {
        case direct(Endpoint)
        case relayed
    }

    /// What the user should hear about.
    public enum Event: Hashable, Sendable {
        case joined(PeerInfo)
        case updated(PeerInfo)
        case left(ClientID, LeaveReason, Endpoint)
        case chat(from: ClientID, text: String, route: Route)
        case delivered(to: ClientID, messageID: UInt64, attempts: Int)
        case undelivered(to: ClientID, text: String)
        case pathChanged(ClientID, PathAgent.Path)
        /// The server announced other keys for a peer than the ones pinned: ignored, loudly.
        case keyChanged(ClientID)
        /// A datagram claiming to be from a peer failed authentication.
        case forged(claimedFrom: ClientID)
    }

    /// A datagram to send.
    public struct Transmit: Hashable, Sendable {
        public var bytes: [UInt8]
        public var destination: Endpoint
    }

    /// Why a chat cannot be sent.
    public enum SendError: Error, Hashable, Sendable {
        case unknownPeer(ClientID)
        case tooManyInFlight
    }

    struct PeerState: Sendable {
        var info: PeerInfo
        var agent: PathAgent
        var order: UInt64
        var pinnedKeys: PublicKeys?
        var pairKey: KeyBytes?
    }

    public let selfID: ClientID
    public var server: Endpoint
    private let identity: IdentityKey
    private var sessionKey: KeyBytes
    private var counter: UInt64 = 0
    private var recentTags: [Token128] = []
    /// This client's own NAT kind (from its probe), used to skip hopeless punching.
    public var natKind: NATKind = .unknown
    private var peers: [ClientID: PeerState] = [:]
    private var nextOrder: UInt64 = 0
    private var sender: ReliableSender
    private var duplicates = DuplicateFilter()
    private var transactionSeed: UInt64
    private let pathConfiguration: PathAgent.Configuration
    private var transmits: [Transmit] = []
    private var events: [Event] = []

    public init(selfID: ClientID, server: Endpoint, identity: IdentityKey, sessionKey: KeyBytes, firstMessageID: UInt64,
                transactionSeed: UInt64, pathConfiguration: PathAgent.Configuration = .init(),
                delivery: ReliableSender.Configuration = .init()) {
        self.selfID = selfID
        self.server = server
        self.identity = identity
        self.sessionKey = sessionKey
        self.transactionSeed = transactionSeed
        self.pathConfiguration = pathConfiguration
        sender = ReliableSender(firstID: firstMessageID, configuration: delivery)
    }

    /// Registered peers in the order the server announced them, with their current path.
    public var roster: [(info: PeerInfo, path: PathAgent.Path)] {
        peers.values.sorted { $0.order < $1.order }.map { ($0.info, $0.agent.path) }
    }

    /// Peer IDs, sorted (for Tab completion).
    public var peerIDs: [ClientID] { peers.keys.sorted() }

    public func peer(_ id: ClientID) -> PeerInfo? { peers[id]?.info }

    public func path(to id: ClientID) -> PathAgent.Path? { peers[id]?.agent.path }

    /// Messages still waiting for an acknowledgement.
    public var messagesInFlight: Int { sender.count }

    // MARK: - Input

    /// A message from the rendezvous server (the caller checked its source).
    public mutating func handleServerMessage(_ message: ExtendedMessage, now: Instant) {
        switch message {
        case .peer(let info):
            guard info.id != selfID else { return }
            if var state = peers[info.id] {
                if let pinned = state.pinnedKeys, let offered = info.keys, pinned != offered {
                    events.append(.keyChanged(info.id))
                    return
                }
                let moved = state.info.publicEndpoint != info.publicEndpoint
                state.info = info
                state.info.keys = state.pinnedKeys ?? info.keys
                if state.pinnedKeys == nil, let keys = info.keys { pin(&state, keys) }
                peers[info.id] = state
                events.append(.updated(info))
                if moved, state.agent.directEndpoint != nil {
                    // Its NAT mapping changed: the direct path will be re-verified by keep-alives.
                    peers[info.id]?.agent.suspectPath(now: now)
                }
            } else {
                let agent = PathAgent(selfID: selfID, peerID: info.id, transactionSeed: nextTransactionSeed(),
                                      configuration: pathConfiguration)
                var state = PeerState(info: info, agent: agent, order: nextOrder)
                if let keys = info.keys { pin(&state, keys) }
                peers[info.id] = state
                nextOrder += 1
                events.append(.joined(info))
            }
        case .peerLeft(let id, let reason, let endpoint):
            guard peers.removeValue(forKey: id) != nil else { return }
            duplicates.forget(id)
            for message in sender.cancel(peer: id) { events.append(.undelivered(to: id, text: message.text)) }
            events.append(.left(id, reason, endpoint))
        case .punch(let info, let round, let delayMillis):
            guard info.id != selfID, info.dialect == .extended else { return }
            if peers[info.id] == nil { handleServerMessage(.peer(info), now: now) }
            guard peers[info.id]?.pairKey != nil, peers[info.id]?.pinnedKeys == info.keys else { return }
            peers[info.id]?.info.publicEndpoint = info.publicEndpoint
            peers[info.id]?.info.privateEndpoints = info.privateEndpoints
            peers[info.id]?.info.natKind = info.natKind
            peers[info.id]?.agent.handlePunch(peer: info, round: round, delay: .milliseconds(Int64(delayMillis)),
                                              selfNATKind: natKind, now: now)
            drainAgent(info.id, now: now)
        case .relayed(let from, let payload):
            guard let inner = try? ExtendedMessage.decode(payload) else { return }
            handleRelayed(inner, bytes: payload, from: from, now: now)
        case .register, .keepAlive, .exit, .connect, .relay, .challenge, .registered, .refused, .keepAliveAck,
             .unknownSession, .ping, .pong, .chat, .chatAck:
            return
        }
    }

    /// A peer-to-peer message that arrived directly from `source` (`bytes` as received).
    /// Dropped unless it names us as addressee, comes from a known extended peer and
    /// authenticates under that pair's key.
    public mutating func handlePeerMessage(_ message: ExtendedMessage, bytes: [UInt8], from source: Endpoint, now: Instant) {
        switch message {
        case .ping(let from, let to, let transaction, _):
            guard verifyTag(bytes, from: from, to: to) else { return }
            peers[from]?.agent.handlePing(transaction: transaction, from: source, now: now)
            drainAgent(from, now: now)
        case .pong(let from, let to, let transaction, _, _):
            guard verifyTag(bytes, from: from, to: to) else { return }
            peers[from]?.agent.handlePong(transaction: transaction, from: source, now: now)
            drainAgent(from, now: now)
        case .chat(let from, let to, let messageID, let sealed):
            guard let text = openChat(sealed, from: from, to: to, messageID: messageID) else { return }
            peers[from]?.agent.noteHeard(from: source, now: now)
            receiveChat(from: from, messageID: messageID, text: text, route: .direct(source), now: now)
        case .chatAck(let from, let to, let messageID, _):
            guard verifyTag(bytes, from: from, to: to) else { return }
            peers[from]?.agent.noteHeard(from: source, now: now)
            acknowledge(messageID, from: from)
        default:
            return
        }
    }

    /// Sends `text` to peer `id` reliably: on the direct path when there is one, else
    /// through the relay while a direct path is set up.
    public mutating func sendChat(to id: ClientID, text: String, now: Instant) throws(SendError) {
        guard peers[id]?.pairKey != nil else { throw .unknownPeer(id) }
        let message: ReliableSender.Message
        do {
            message = try sender.enqueue(text, to: id, now: now)
        } catch {
            throw .tooManyInFlight
        }
        peers[id]?.agent.noteInterest(now: now)
        drainAgent(id, now: now)
        transmit(message, now: now)
    }

    /// Call at ``nextDeadline``.
    public mutating func handleTimeout(now: Instant) {
        for id in peers.keys {
            if let deadline = peers[id]?.agent.nextDeadline, deadline <= now {
                peers[id]?.agent.handleTimeout(now: now)
                drainAgent(id, now: now)
            }
        }
        let (retransmit, expired) = sender.due(now: now)
        for message in retransmit { transmit(message, now: now) }
        for message in expired { events.append(.undelivered(to: message.peer, text: message.text)) }
    }

    public var nextDeadline: Instant? {
        let agentDeadlines = peers.values.compactMap(\.agent.nextDeadline)
        return (agentDeadlines + [sender.nextDeadline].compactMap { $0 }).min()
    }

    public mutating func pollTransmit() -> Transmit? {
        transmits.isEmpty ? nil : transmits.removeFirst()
    }

    public mutating func pollEvent() -> Event? {
        events.isEmpty ? nil : events.removeFirst()
    }

    /// Forgets every peer (the server session was lost; a new registration relists them).
    /// Pinned keys are kept: a peer that comes back with other keys is still reported.
    public mutating func resetPeers() {
        for id in peers.keys {
            peers[id]?.agent.reset()
        }
    }

    /// Whether `key` is this session's key (a repeated `registered` for the same session).
    public func usesSessionKey(_ key: KeyBytes) -> Bool { sessionKey == key }

    /// A new session with the server (after registering again).
    public mutating func resetSession(sessionKey: KeyBytes) {
        self.sessionKey = sessionKey
        counter = 0
        // Answers to the old session's messages must not end the new one.
        recentTags.removeAll()
    }

    // MARK: - Internals

    private mutating func pin(_ state: inout PeerState, _ keys: PublicKeys) {
        state.pinnedKeys = keys
        state.pairKey = SessionCrypto.pairKey(privateKey: identity.agreement, peerPublicKey: keys.agreement,
                                              selfID: selfID, peerID: state.info.id)
    }

    private mutating func verifyTag(_ bytes: [UInt8], from: ClientID, to: ClientID) -> Bool {
        guard to == selfID, let key = peers[from]?.pairKey else { return false }
        guard SessionCrypto.verifyAuthenticated(bytes, key: key) else {
            events.append(.forged(claimedFrom: from))
            return false
        }
        return true
    }

    private mutating func openChat(_ sealed: [UInt8], from: ClientID, to: ClientID, messageID: UInt64) -> String? {
        guard to == selfID, let key = peers[from]?.pairKey else { return nil }
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
            guard let text = openChat(sealed, from: from, to: to, messageID: messageID) else { return }
            receiveChat(from: from, messageID: messageID, text: text, route: .relayed, now: now)
        case .chatAck(let innerFrom, let to, let messageID, _) where innerFrom == from:
            guard verifyTag(bytes, from: from, to: to) else { return }
            acknowledge(messageID, from: from)
        default:
            return
        }
    }

    private mutating func receiveChat(from: ClientID, messageID: UInt64, text: String, route: Route, now: Instant) {
        guard let key = peers[from]?.pairKey else { return }
        let ack = SessionCrypto.authenticated(.chatAck(from: selfID, to: from, messageID: messageID, tag: .zero), key: key)
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
        guard let state = peers[message.peer], let key = state.pairKey,
              let sealed = SessionCrypto.seal(message.text, from: selfID, to: message.peer, messageID: message.id, key: key)
        else { return }
        let chat = ExtendedMessage.chat(from: selfID, to: message.peer, messageID: message.id, sealed: sealed).encode()
        if let direct = state.agent.directEndpoint, message.attempts % 2 == 1 {
            transmits.append(Transmit(bytes: chat, destination: direct))
            if message.attempts > 1 { peers[message.peer]?.agent.suspectPath(now: now) }
        } else {
            sendViaRelay(chat, to: message.peer)
            if message.attempts > 1 { peers[message.peer]?.agent.suspectPath(now: now) }
        }
        drainAgent(message.peer, now: now)
    }

    private mutating func sendViaRelay(_ payload: [UInt8], to peer: ClientID) {
        let selfID = self.selfID
        let bytes = sessionMessage { .relay(id: selfID, to: peer, payload: payload, counter: $0, tag: .zero) }
        transmits.append(Transmit(bytes: bytes, destination: server))
    }

    /// Whether `tag` is the tag of one of the last messages this client sent the server
    /// (so an answer that echoes it is an answer to us, not to a forgery).
    public func sentRecently(tag: Token128) -> Bool {
        recentTags.contains { $0.constantTimeEquals(tag) }
    }

    /// Encodes a client→server message with the next counter and its tag under the session key.
    public mutating func sessionMessage(_ make: (UInt64) -> ExtendedMessage) -> [UInt8] {
        counter += 1
        let bytes = SessionCrypto.authenticated(make(counter), key: sessionKey)
        recentTags.append(Token128(bytes: bytes.suffix(16)))
        if recentTags.count > 32 { recentTags.removeFirst(recentTags.count - 32) }
        return bytes
    }

    private mutating func drainAgent(_ id: ClientID, now: Instant) {
        guard var agent = peers[id]?.agent else { return }
        if agent.pollConnectRequest() {
            let selfID = self.selfID
            let bytes = sessionMessage { .connect(id: selfID, peer: id, counter: $0, tag: .zero) }
            transmits.append(Transmit(bytes: bytes, destination: server))
        }
        if let key = peers[id]?.pairKey {
            while let (check, destination) = agent.pollTransmit() {
                let message: ExtendedMessage = switch check {
                case .ping(let transaction): .ping(from: selfID, to: id, transaction: transaction, tag: .zero)
                case .pong(let transaction, let observed): .pong(from: selfID, to: id, transaction: transaction, observed: observed, tag: .zero)
                }
                transmits.append(Transmit(bytes: SessionCrypto.authenticated(message, key: key), destination: destination))
            }
        }
        while let event = agent.pollEvent() {
            if case .pathChanged(let path) = event { events.append(.pathChanged(id, path)) }
        }
        peers[id]?.agent = agent
    }

    private mutating func nextTransactionSeed() -> UInt64 {
        transactionSeed = transactionSeed &* 6364136223846793005 &+ 1442695040888963407
        return transactionSeed
    }
}
