import Crypto
import HolePunch
import Identity
import KeepAlive
import MonotonicTime
import NATGrouping
import Relay
import Roster
import Wire

/// Proves that a source address receives datagrams: the cookie of a challenge, checked
/// when it comes back, and dated, so that a registration can be told fresh from replayed.
/// The server implements it with a keyed MAC; tests with a fake.
public protocol AddressValidator: Sendable {
    /// A cookie for a challenge sent to `source` at `now`.
    func cookie(for source: Endpoint, now: Instant) -> Token128
    /// When `cookie` was issued, if this validator made it for `source` and it is still
    /// within ``cookieLifetime`` at `now`; `nil` for anything else.
    func issueTime(of cookie: Token128, for source: Endpoint, now: Instant) -> Instant?
    /// How long a cookie is accepted after it was issued.
    var cookieLifetime: Duration { get }
}

/// The rendezvous server's registration state machine, for both dialects.
///
/// Feed it decoded datagrams with ``receive(_:from:now:)`` (classic) and
/// ``receive(_:bytes:from:now:random:)`` (extended) and clock ticks with ``sweep(now:)`` and
/// ``flushRoster(now:)`` (at ``rosterDeadline``); it returns the ``Action``s to perform —
/// datagrams to send and events to report — and performs none itself. Every notice goes
/// to each recipient in its own dialect.
///
/// Rules:
/// - A new ID registers. A classic newcomer gets the list of everyone already registered
///   (each `ID PUBLIC:PORT`, followed by `ID@private:IP` when the two are judged to be
///   behind the same NAT), then every classic client, the newcomer included, gets the
///   newcomer's line. natchat/2 subscribers hear of registrations, moves and departures
///   through their roster feed (``RosterPublisher``): coalesced, acknowledged, resent, and
///   past the roster limit only for the clients they asked about or talked to. Any natchat/2
///   client may look a client up (``ExtendedMessage/lookup(id:query:peer:counter:tag:)``)
///   or list IDs by prefix (``ExtendedMessage/listQuery(id:query:prefix:offset:limit:counter:tag:)``).
/// - The same ID from the same endpoint is a refresh: it counts as a keep-alive and the
///   client gets the list again; nobody else is told.
/// - The same ID from another endpoint while the holder is alive is refused, and the
///   newcomer is told why. If the holder has been silent past the timeout it is evicted
///   first and the newcomer takes the ID.
/// - Classic keep-alives and `@exit` count only from the endpoint that registered the ID,
///   and never touch an ID held by an extended client. Extended ones count only with a
///   valid tag under the session key and a counter higher than the last (no replay); from a
///   new source address they move the registration (a NAT rebinding).
/// - An extended registration must echo the cookie of a challenge sent to its source
///   address (so the server never sends a list to an address that did not ask for it) and
///   be signed by the key it carries. The ID is bound to that key while registered: the
///   same key may re-register from anywhere, another key is refused.
/// - Only fresh proof touches a client (liveness, endpoint, counters). A registration is
///   fresh when its cookie was issued after the cookie its ID's current session began with
///   (or, for an ID that left less than a cookie lifetime ago, after the cookie of its last
///   session). The very registration a session began with, received again, is answered with
///   the same `registered` and changes nothing; an older one is a replay and gets nothing.
///   Session messages are fresh when their counter is higher than the last accepted one.
/// - A client silent for strictly more than the keep-alive timeout is evicted at the next
///   sweep; everyone left is told it is off-line.
public struct Registry: Sendable {
    /// Limits and rules.
    public struct Configuration: Sendable {
        /// How long a client may stay silent before eviction (30 s classic).
        public var keepAliveTimeout: Duration
        /// The keep-alive interval the server asks extended clients for.
        public var keepAliveInterval: Duration
        /// The same-NAT rule used to decide who gets whose private address.
        public var sameNATRule: SameNATRule
        /// The most clients registered at once; more are refused.
        public var maxClients: Int
        /// Whether classic (seed-dialect) clients may register.
        public var acceptClassic: Bool
        /// The server's second port for NAT-behaviour probes (0: none), told to extended clients.
        public var alternatePort: UInt16
        public var relay: RelayLimiter<ClientID>.Configuration
        public var punch: PunchCoordinator.Configuration
        /// Most registered clients for which natchat/2 subscribers are pushed the whole
        /// roster; past it they are pushed only the clients they asked about or talked to.
        public var rosterLimit: Int
        /// Most clients one subscriber's interest holds.
        public var rosterInterestLimit: Int
        /// Coalescing, retransmission and window of each subscriber's roster feed.
        public var rosterFeed: RosterFeedConfiguration
        /// Look-ups and list queries one client may make per second (twice as many at once).
        public var queriesPerSecond: Double

        public init(keepAliveTimeout: Duration = .seconds(30), keepAliveInterval: Duration = .seconds(10),
                    sameNATRule: SameNATRule = .classic, maxClients: Int = 100_000, acceptClassic: Bool = true,
                    alternatePort: UInt16 = 0, relay: RelayLimiter<ClientID>.Configuration = .init(),
                    punch: PunchCoordinator.Configuration = .init(), rosterLimit: Int = 1000, rosterInterestLimit: Int = 256,
                    rosterFeed: RosterFeedConfiguration = .init(), queriesPerSecond: Double = 20) {
            self.rosterLimit = rosterLimit
            self.rosterInterestLimit = rosterInterestLimit
            self.rosterFeed = rosterFeed
            self.queriesPerSecond = queriesPerSecond
            self.keepAliveTimeout = keepAliveTimeout
            self.keepAliveInterval = keepAliveInterval
            self.sameNATRule = sameNATRule
            self.maxClients = maxClients
            self.acceptClassic = acceptClassic
            self.alternatePort = alternatePort
            self.relay = relay
            self.punch = punch
        }
    }

    /// One registered client, held inline: the registry keeps entries densely in chunks
    /// (see ``ClientTable``), so a client costs its stride and no heap block of its own.
    /// The session key itself is not kept, only its HMAC midstates: tags are all the server
    /// checks with it.
    public struct Entry: Hashable, Sendable {
        public var id: ClientID
        public var publicEndpoint: Endpoint
        public var privateAddress: IPv4Address
        public var dialect: Dialect
        public var natKind: NATKind
        /// Whether the roster and its changes are pushed to this client (always for classic
        /// clients; extended clients choose at registration).
        public var subscribed: Bool
        /// Registration order, for listing clients in the order they came.
        public var sequence: UInt64
        /// The roster version of the last change visible to peers.
        public var version: UInt64 = 0
        /// The highest counter accepted on this session.
        public var lastCounter: UInt64
        /// When the cookie that this session's registration echoed was issued: a registration
        /// is fresh only with a later cookie.
        public var cookieIssuedAt: Instant
        /// The keys the ID is bound to (extended clients).
        public var keys: PublicKeys?
        /// The extended session key's HMAC midstates (`nil` for classic clients).
        public var sessionMAC: SessionMAC?
        // Nearly every client reports one private endpoint: kept inline, the rest (at most
        // ExtendedMessage.maxPrivateEndpoints - 1) in an array that is empty for most.
        private var firstPrivateEndpoint: Endpoint?
        private var otherPrivateEndpoints: [Endpoint]

        init(id: ClientID, publicEndpoint: Endpoint, privateAddress: IPv4Address, sequence: UInt64,
             dialect: Dialect = .classic, sessionKey: KeyBytes? = nil, keys: PublicKeys? = nil, lastCounter: UInt64 = 0,
             cookieIssuedAt: Instant = .zero, privateEndpoints: [Endpoint] = [], natKind: NATKind = .unknown,
             subscribed: Bool = true) {
            self.id = id
            self.publicEndpoint = publicEndpoint
            self.privateAddress = privateAddress
            self.dialect = dialect
            self.natKind = natKind
            self.subscribed = subscribed
            self.sequence = sequence
            self.lastCounter = lastCounter
            self.cookieIssuedAt = cookieIssuedAt
            self.keys = keys
            self.sessionMAC = sessionKey?.mac
            firstPrivateEndpoint = privateEndpoints.first
            otherPrivateEndpoints = Array(privateEndpoints.dropFirst())
        }

        /// Whether `other` reported the same private endpoints (without building either array).
        func hasSamePrivateEndpoints(as other: Entry) -> Bool {
            firstPrivateEndpoint == other.firstPrivateEndpoint && otherPrivateEndpoints == other.otherPrivateEndpoints
        }

        /// Private endpoints an extended client reported.
        public var privateEndpoints: [Endpoint] {
            get {
                guard let firstPrivateEndpoint else { return [] }
                return [firstPrivateEndpoint] + otherPrivateEndpoints
            }
            set {
                firstPrivateEndpoint = newValue.first
                otherPrivateEndpoints = Array(newValue.dropFirst())
            }
        }

        var position: NATPosition {
            NATPosition(publicAddress: publicEndpoint.address, privateAddress: privateAddress)
        }
    }

    /// The registered clients, dense: entries in fixed-size chunks (filled in order, so
    /// memory follows the number of clients, and never moved, so growing leaves no old
    /// storage behind in the heap) and a dictionary from ID to position. A removal moves the
    /// last entry into the hole. (A dictionary of entries would write all of its slots, 1.3
    /// to 2.7 per client, each the size of an entry; one growing array would leave its old
    /// buffers in the heap, about as much again.)
    struct ClientTable: Sendable {
        static var chunkSize: Int { 1024 }
        private var chunks: [[Entry]] = []
        /// Chunks allocated, the spare included (for tests of the spare rule).
        var chunkCount: Int { chunks.count }
        private var positions: [ClientID: Int] = [:]
        private(set) var count = 0

        /// Every entry, in storage order.
        var entries: FlattenSequence<[[Entry]]> { chunks.joined() }

        subscript(id: ClientID) -> Entry? { positions[id].map { self[position: $0] } }

        /// Adds `entry`, or replaces the one with its ID (keyed by the entry itself, so an
        /// entry can never be filed under another ID).
        mutating func store(_ entry: Entry) {
            if let position = positions[entry.id] {
                self[position: position] = entry
            } else {
                append(entry)
            }
        }

        /// Where `id`'s entry is, if registered (valid until the next removal).
        func position(of id: ClientID) -> Int? { positions[id] }

        /// Where the entry whose ID is exactly `idBytes` (as received, not validated) is.
        func position(idBytes: UnsafeRawBufferPointer) -> Int? {
            guard let position = positions[ClientID(lookingUp: idBytes)],
                  self[position: position].id.rawValue.utf8.elementsEqual(idBytes)
            else { return nil }
            return position
        }

        subscript(position position: Int) -> Entry {
            get { chunks[position / Self.chunkSize][position % Self.chunkSize] }
            set { chunks[position / Self.chunkSize][position % Self.chunkSize] = newValue }
        }

        /// Records the counter of an accepted datagram in place (the per-datagram write).
        mutating func setLastCounter(_ counter: UInt64, at position: Int) {
            chunks[position / Self.chunkSize][position % Self.chunkSize].lastCounter = counter
        }

        private mutating func append(_ entry: Entry) {
            let chunk = count / Self.chunkSize
            if chunk == chunks.count {
                var storage: [Entry] = []
                storage.reserveCapacity(Self.chunkSize)
                chunks.append(storage)
            }
            chunks[chunk].append(entry)
            positions[entry.id] = count
            count += 1
        }

        @discardableResult
        mutating func removeValue(forKey id: ClientID) -> Entry? {
            guard let position = positions.removeValue(forKey: id) else { return nil }
            count -= 1
            let last = chunks[count / Self.chunkSize].removeLast()
            // One emptied chunk is kept as a spare, so that a count going back and forth
            // across a chunk boundary does not allocate and free a chunk each time.
            if count % Self.chunkSize == 0, chunks.count > count / Self.chunkSize + 1 { chunks.removeLast() }
            guard position < count else { return last }
            let removed = self[position: position]
            self[position: position] = last
            positions[last.id] = position
            return removed
        }
    }

    /// Why a datagram changed nothing.
    public enum Ignored: Hashable, Sendable {
        case unknownID
        case wrongEndpoint
        case notForServer
        case heldByExtendedClient
        case badTag
        case replayed
        case badCookie
        case badSignature
        case peerUnavailable
        case relayRateLimited
        /// A look-up or list query over the client's rate.
        case queryRateLimited
        /// The registration the client's current session began with, received again: answered
        /// with the same `registered`, nothing else changes.
        case repeatedRegistration
    }

    /// Why a registration was refused.
    public enum Refusal: Hashable, Sendable, CustomStringConvertible {
        case idInUse
        case reservedID
        case full
        case classicDisabled

        public var description: String {
            switch self {
            case .idInUse: "the ID is in use from another address"
            case .reservedID: "the ID is reserved"
            case .full: "the server is full"
            case .classicDisabled: "this server accepts natchat/2 clients only"
            }
        }
    }

    /// Something that happened, for the operator's screen and logs. The cases that carry an
    /// entry are indirect, so that an ``Action`` (and every array of them) stays the size of a
    /// message, not of an entry.
    public enum Event: Hashable, Sendable {
        indirect case registered(Entry)
        indirect case refreshed(Entry)
        indirect case moved(Entry, from: Endpoint)
        indirect case unregistered(Entry)
        indirect case evicted(Entry)
        case refused(ClientID, from: Endpoint, Refusal)
        case ignored(ClassicMessage, from: Endpoint, Ignored)
        case ignoredExtended(from: Endpoint, Ignored)
        case relayed(from: ClientID, to: ClientID, bytes: Int)
        case punchRound(ClientID, ClientID, round: UInt32)
    }

    /// What the caller must do.
    public enum Action: Hashable, Sendable {
        case send(ClassicMessage, to: Endpoint)
        case sendExtended(ExtendedMessage, to: Endpoint)
        case report(Event)
    }

    public private(set) var configuration: Configuration
    private var entries = ClientTable()
    /// Classic clients, who are all pushed the roster as it changes.
    private var classicSubscriberIDs: Set<ClientID> = []
    private var roster: RosterPublisher
    /// Every registered ID, sorted: list queries and prefixes without a scan.
    private var sortedIDs = SortedChunks<ClientID>()
    private var queryBuckets: [ClientID: TokenBucket] = [:]
    /// Extended clients by the endpoint they were last seen at (may hold stale keys; checked on use).
    private var extendedByEndpoint: [Endpoint: ClientID] = [:]
    private var liveness: LivenessTable<ClientID>
    /// For IDs whose extended client left or was evicted less than a cookie lifetime ago:
    /// the issue time of the cookie its last session began with. A registration of the ID
    /// must bring a later cookie (a captured registration replayed after the client died
    /// must not bring it back). Entries older than a cookie lifetime are pruned at sweeps:
    /// their cookies cannot pass any more.
    private var departedCookies: [ClientID: Instant] = [:]
    private var nextSequence: UInt64 = 0
    private var punch: PunchCoordinator
    private var relayLimiter: RelayLimiter<ClientID>
    private let validator: any AddressValidator
    private let serverKey: Curve25519.KeyAgreement.PrivateKey

    /// - Parameters:
    ///   - validator: makes and checks registration cookies.
    ///   - serverKey: the server's X25519 key for session keys (random per process).
    ///   - rosterEpoch: random per process, so clients tell a restarted server's roster
    ///     versions from the last one's.
    public init(configuration: Configuration = Configuration(), validator: any AddressValidator = RejectingValidator(),
                serverKey: Curve25519.KeyAgreement.PrivateKey = .init(), now: Instant = .zero, rosterEpoch: UInt32 = 1) {
        self.configuration = configuration
        roster = RosterPublisher(configuration: .init(limit: configuration.rosterLimit, interestLimit: configuration.rosterInterestLimit,
                                                      feed: configuration.rosterFeed),
                                 epoch: rosterEpoch)
        self.validator = validator
        self.serverKey = serverKey
        liveness = LivenessTable(timeout: configuration.keepAliveTimeout)
        punch = PunchCoordinator(configuration: configuration.punch)
        relayLimiter = RelayLimiter(configuration: configuration.relay, now: now)
    }

    /// Number of registered clients.
    public var count: Int { entries.count }

    /// The registered clients in registration order.
    public var clients: [Entry] { entries.entries.sorted { $0.sequence < $1.sequence } }

    /// The classic clients, who get every roster notice at once, in registration order.
    /// natchat/2 subscribers hear through their feeds; headless natchat/2 clients do not
    /// subscribe at all.
    var classicSubscribers: [Entry] {
        classicSubscriberIDs.compactMap { entries[$0] }.sorted { $0.sequence < $1.sequence }
    }

    /// The scope natchat/2 subscribers are pushed now.
    public var rosterScope: RosterScope { roster.scope }

    /// How many natchat/2 clients have a roster feed.
    public var rosterSubscriberCount: Int { roster.subscriberCount }

    /// When ``flushRoster(now:)`` is next due (`nil`: no feed has anything to send).
    public var rosterDeadline: Instant? { roster.nextDeadline }

    /// The entry for `id`, if registered.
    public func entry(for id: ClientID) -> Entry? { entries[id] }

    /// How many departed sessions' cookie times are remembered (see the freshness rule).
    public var departedCount: Int { departedCookies.count }

    /// Whether an extended client is registered at `endpoint` (it proved it receives there).
    public func hasExtendedClient(at endpoint: Endpoint) -> Bool {
        guard let id = extendedByEndpoint[endpoint], let entry = entries[id] else { return false }
        return entry.publicEndpoint == endpoint && entry.dialect == .extended
    }

    // MARK: - Classic dialect

    /// Handles one decoded classic datagram that arrived from `source` at `now`.
    public mutating func receive(_ message: ClassicMessage, from source: Endpoint, now: Instant) -> [Action] {
        switch message {
        case .register(let id, let privateAddress, let offers):
            if offers.contains(ExtendedMessage.offer) {
                // A natchat/2 client: prove its address first; the registration follows in
                // the extended dialect. The challenge is smaller than the request.
                return [.sendExtended(.challenge(cookie: validator.cookie(for: source, now: now)), to: source)]
            }
            if let holder = entries[id], holder.dialect == .extended {
                // From the holder's own address this can only be a forgery: tell nobody.
                if holder.publicEndpoint == source { return [.report(.ignored(message, from: source, .heldByExtendedClient))] }
                return refuse(id, from: source, .idInUse, dialect: .classic)
            }
            guard configuration.acceptClassic else { return refuse(id, from: source, .classicDisabled, dialect: .classic) }
            let newcomer = Entry(id: id, publicEndpoint: source, privateAddress: privateAddress, sequence: 0)
            return register(newcomer, answer: nil, now: now)
        case .keepAlive(let id):
            guard let entry = entries[id] else { return [.report(.ignored(message, from: source, .unknownID))] }
            guard entry.dialect == .classic else { return [.report(.ignored(message, from: source, .heldByExtendedClient))] }
            guard entry.publicEndpoint == source else { return [.report(.ignored(message, from: source, .wrongEndpoint))] }
            liveness.touch(id, now: now)
            return []
        case .unregister(let id):
            guard let entry = entries[id] else { return [.report(.ignored(message, from: source, .unknownID))] }
            guard entry.dialect == .classic else { return [.report(.ignored(message, from: source, .heldByExtendedClient))] }
            guard entry.publicEndpoint == source else { return [.report(.ignored(message, from: source, .wrongEndpoint))] }
            return leave(entry, reason: .unregistered, now: now)
        case .peer, .peerPrivate, .unregistered, .offline, .chat, .serverNotice:
            return [.report(.ignored(message, from: source, .notForServer))]
        }
    }

    // MARK: - Extended dialect

    /// Handles one decoded extended datagram that arrived from `source` at `now`; `bytes`
    /// is the datagram as received (its tag or signature covers it).
    public mutating func receive<G: RandomNumberGenerator>(_ message: ExtendedMessage, bytes: [UInt8], from source: Endpoint,
                                                           now: Instant, random: inout G) -> [Action] {
        switch message {
        case .register(let id, let cookie, let privateEndpoints, let natKind, let keys, let signature, let subscribe):
            guard let issued = validator.issueTime(of: cookie, for: source, now: now) else {
                return [.report(.ignoredExtended(from: source, .badCookie))]
            }
            guard SessionCrypto.verifyRegistration(bytes, keys: keys, signature: signature) else {
                return [.report(.ignoredExtended(from: source, .badSignature))]
            }
            switch freshness(ofRegistration: id, keys: keys, cookieIssuedAt: issued, from: source) {
            case .fresh:
                break
            case .repeated:
                // The registration this session began with, again (a duplicate, or captured
                // and replayed): nothing is touched and nothing answered. A client whose answer
                // was lost asks for a new challenge, whose cookie is fresh.
                return [.report(.ignoredExtended(from: source, .repeatedRegistration))]
            case .replayed:
                return [.report(.ignoredExtended(from: source, .replayed))]
            }
            let nonce = Token128.random(using: &random)
            guard let sessionKey = SessionCrypto.sessionKey(privateKey: serverKey, peerPublicKey: keys.agreement,
                                                            cookie: cookie, nonce: nonce, id: id)
            else { return [.report(.ignoredExtended(from: source, .badSignature))] }
            let privateAddress = privateEndpoints.first?.address ?? source.address
            let newcomer = Entry(id: id, publicEndpoint: source, privateAddress: privateAddress, sequence: 0, dialect: .extended,
                                 sessionKey: sessionKey, keys: keys, cookieIssuedAt: issued,
                                 privateEndpoints: privateEndpoints, natKind: natKind, subscribed: subscribe)
            let answer = registeredMessage(to: source, nonce: nonce, cookie: cookie)
            if let holder = entries[id], holder.dialect == .extended, holder.keys == keys, holder.publicEndpoint != source {
                // The key holder itself, from a new address (restarted behind a new mapping): it
                // proves the key, so the registration moves rather than being refused.
                var moved = newcomer
                moved.sequence = holder.sequence
                moved.version = roster.nextVersion()
                store(moved)
                liveness.touch(id, now: now)
                startFeed(moved, now: now)
                var actions: [Action] = [.report(.moved(moved, from: holder.publicEndpoint)), answer]
                actions += published(moved, publicEndpointChanged: true, now: now)
                return actions
            }
            return register(newcomer, answer: answer, now: now)
        case .keepAlive(let id, let natKind, let counter, let tag):
            guard var entry = session(id, counter: counter, bytes: bytes) else {
                return sessionRefusal(id, tag: tag, bytes: bytes, source: source)
            }
            liveness.touch(id, now: now)
            var actions: [Action] = []
            let previous = entry.publicEndpoint
            let changed = previous != source || entry.natKind != natKind
            entry.publicEndpoint = source
            entry.natKind = natKind
            if changed { entry.version = roster.nextVersion() }
            store(entry)
            if previous != source {
                actions.append(.report(.moved(entry, from: previous)))
            }
            actions.append(.sendExtended(.keepAliveAck(publicEndpoint: source), to: source))
            if changed { actions += published(entry, publicEndpointChanged: previous != source, now: now) }
            return actions
        case .exit(let id, let counter, _):
            guard let entry = session(id, counter: counter, bytes: bytes) else {
                return [.report(.ignoredExtended(from: source, .badTag))]
            }
            return leave(entry, reason: .unregistered, now: now)
        case .connect(let id, let peerID, let counter, let tag):
            guard let entry = session(id, counter: counter, bytes: bytes) else {
                return sessionRefusal(id, tag: tag, bytes: bytes, source: source)
            }
            liveness.touch(id, now: now)
            guard let peer = entries[peerID], peer.dialect == .extended, peerID != id else {
                return [.report(.ignoredExtended(from: source, .peerUnavailable))]
            }
            // Both talk to each other now: each hears of the other's changes at any roster size.
            roster.noteInterest(of: id, in: peerID)
            roster.noteInterest(of: peerID, in: id)
            let instructions = punch.connect(id, to: peerID, now: now)
            var actions: [Action] = []
            for instruction in instructions {
                guard let recipient = entries[instruction.recipient], let other = entries[instruction.peer] else { continue }
                let message = ExtendedMessage.punch(peer: Self.peerInfo(other, for: recipient), round: instruction.round,
                                                    delayMillis: UInt32(clamping: instruction.delay.nanosecondsClamped / 1_000_000))
                actions.append(.sendExtended(message, to: recipient.publicEndpoint))
            }
            actions.append(.report(.punchRound(entry.id, peer.id, round: instructions.first?.round ?? 0)))
            return actions
        case .relay(let id, let to, let payload, let counter, let tag):
            guard session(id, counter: counter, bytes: bytes) != nil else {
                return sessionRefusal(id, tag: tag, bytes: bytes, source: source)
            }
            guard let peer = entries[to], peer.dialect == .extended else {
                return [.report(.ignoredExtended(from: source, .peerUnavailable))]
            }
            guard relayLimiter.allow(id, bytes: payload.count, now: now) else {
                return [.report(.ignoredExtended(from: source, .relayRateLimited))]
            }
            return [.sendExtended(.relayed(from: id, payload: payload), to: peer.publicEndpoint),
                    .report(.relayed(from: id, to: to, bytes: payload.count))]
        case .rosterAck(let id, let largest, let received, let counter, let tag):
            guard session(id, counter: counter, bytes: bytes) != nil else {
                return sessionRefusal(id, tag: tag, bytes: bytes, source: source)
            }
            liveness.touch(id, now: now)
            roster.acknowledge(id, largest: largest, received: received, now: now)
            return []
        case .lookup(let id, let query, let peerID, let counter, let tag):
            guard let entry = session(id, counter: counter, bytes: bytes) else {
                return sessionRefusal(id, tag: tag, bytes: bytes, source: source)
            }
            liveness.touch(id, now: now)
            guard allowQuery(id, now: now) else { return [.report(.ignoredExtended(from: source, .queryRateLimited))] }
            // Interest even in a client not registered (yet): when it comes, the asker hears.
            roster.noteInterest(of: id, in: peerID)
            let found = entries[peerID].map { RosterEntry(info: Self.peerInfo($0, for: entry), order: $0.sequence, version: $0.version) }
            return [.sendExtended(.lookupResult(query: query, epoch: roster.epoch, version: roster.version, peer: peerID, found: found),
                                  to: entry.publicEndpoint)]
        case .listQuery(let id, let query, let prefix, let offset, let limit, let counter, let tag):
            guard let entry = session(id, counter: counter, bytes: bytes) else {
                return sessionRefusal(id, tag: tag, bytes: bytes, source: source)
            }
            liveness.touch(id, now: now)
            guard allowQuery(id, now: now) else { return [.report(.ignoredExtended(from: source, .queryRateLimited))] }
            return [.sendExtended(listPage(query: query, prefix: prefix, offset: offset, limit: limit), to: entry.publicEndpoint)]
        case .challenge, .registered, .refused, .roster, .lookupResult, .listPage, .punch, .relayed, .keepAliveAck,
             .unknownSession, .ping, .pong, .chat, .chatAck:
            return [.report(.ignoredExtended(from: source, .notForServer))]
        }
    }

    /// Acknowledges an authenticated keep-alive read in place from the receive buffer, when
    /// it changes nothing but liveness: it comes from the endpoint the client registered at,
    /// with the same NAT kind, a valid tag and a fresh counter. That is nearly every datagram a
    /// busy server gets (each client, every 10 s), and this path allocates nothing.
    ///
    /// Returns `false`, having changed nothing, for anything else; decode the datagram then
    /// and hand it to ``receive(_:bytes:from:now:random:)``, which handles every case
    /// (moves, replays, unknown sessions) with the same rules.
    public mutating func acknowledgeKeepAlive(_ datagram: UnsafeRawBufferPointer, from source: Endpoint, now: Instant) -> Bool {
        guard let frame = ExtendedMessage.KeepAliveFrame(datagram),
              let index = registeredIndex(idBytes: frame.idBytes, at: source)
        else { return false }
        let entry = entries[position: index]
        guard entry.dialect == .extended, entry.publicEndpoint == source, entry.natKind == frame.natKind,
              frame.counter > entry.lastCounter, let mac = entry.sessionMAC,
              mac.isValid(frame.tag, for: frame.authenticated)
        else { return false }
        entries.setLastCounter(frame.counter, at: index)
        liveness.touch(entry.id, now: now)
        return true
    }

    /// What a signed registration with a valid cookie proves.
    private enum RegistrationFreshness {
        /// A cookie issued after the one of the ID's current or last session: a new session.
        case fresh
        /// The very registration the holder's current session began with.
        case repeated
        /// An older cookie: captured and replayed, or overtaken by a newer session.
        case replayed
    }

    private func freshness(ofRegistration id: ClientID, keys: PublicKeys, cookieIssuedAt issued: Instant,
                           from source: Endpoint) -> RegistrationFreshness {
        if let holder = entries[id] {
            // Another key (or a classic holder) is for the ID-binding rules to decide.
            guard holder.dialect == .extended, holder.keys == keys else { return .fresh }
            if issued > holder.cookieIssuedAt { return .fresh }
            // A cookie is bound to its address: the same issue time from the holder's
            // endpoint is the same cookie.
            if issued == holder.cookieIssuedAt, holder.publicEndpoint == source { return .repeated }
            return .replayed
        }
        if let departed = departedCookies[id], issued <= departed { return .replayed }
        return .fresh
    }

    /// Remembers the cookie time of a departing extended client's session (see ``departedCookies``).
    private mutating func rememberDeparture(_ entry: Entry) {
        // Bounded like the table itself; past that, a replay could bring back a departed ID
        // until its cookie expires (a cookie lifetime at most).
        guard entry.dialect == .extended, departedCookies.count < configuration.maxClients else { return }
        departedCookies[entry.id] = max(entry.cookieIssuedAt, departedCookies[entry.id] ?? entry.cookieIssuedAt)
    }

    /// Where the entry whose ID is `idBytes` (as received) is, if one is; the callers then
    /// check that it is registered at `source`. The endpoint's own extended client is tried
    /// first (hashing six bytes); several IDs registered from one socket, as a load
    /// generator's clients are, are found by ID.
    private func registeredIndex(idBytes: UnsafeRawBufferPointer, at source: Endpoint) -> Int? {
        if let id = extendedByEndpoint[source], id.rawValue.utf8.elementsEqual(idBytes) { return entries.position(of: id) }
        return entries.position(idBytes: idBytes)
    }

    /// What ``forwardRelay(_:from:now:)`` decided.
    public enum RelayDecision: Hashable, Sendable {
        /// Send the ``ExtendedMessage/relayed(from:payload:)`` datagram here.
        case forward(to: Endpoint)
        /// An authentic request over the relay limit: dropped (the counter is spent).
        case rateLimited
        /// Not decided here: decode the datagram and use the general path.
        case useGeneralPath
    }

    /// Checks and accounts a relay request read in place: the sender is at its registered
    /// endpoint with a valid tag and a fresh counter, and the peer is a registered extended
    /// client. Records the counter and the relay budget and allocates nothing; the caller
    /// writes the relayed datagram (``ExtendedMessage/RelayFrame/writeRelayed(into:)``).
    ///
    /// Anything else is ``RelayDecision/useGeneralPath``, with nothing changed: decode the
    /// datagram then and hand it to ``receive(_:bytes:from:now:random:)``, which answers
    /// every case with the same rules.
    public mutating func forwardRelay(_ frame: ExtendedMessage.RelayFrame, from source: Endpoint, now: Instant) -> RelayDecision {
        guard let index = registeredIndex(idBytes: frame.idBytes, at: source) else { return .useGeneralPath }
        let entry = entries[position: index]
        guard entry.dialect == .extended, entry.publicEndpoint == source, frame.counter > entry.lastCounter,
              let mac = entry.sessionMAC, mac.isValid(frame.tag, for: frame.authenticated),
              let peerPosition = entries.position(idBytes: frame.toBytes),
              case let peer = entries[position: peerPosition], peer.dialect == .extended
        else { return .useGeneralPath }
        entries.setLastCounter(frame.counter, at: index)
        guard relayLimiter.allow(entry.id, bytes: frame.payload.count, now: now) else { return .rateLimited }
        return .forward(to: peer.publicEndpoint)
    }

    /// The answer to a session message that did not pass: a valid tag with a stale counter
    /// is a replay and gets nothing; anything else (no such session, a tag that does not
    /// verify: the server restarted) gets ``ExtendedMessage/unknownSession(_:echo:)``
    /// echoing the tag, which only the real sender recognises.
    private func sessionRefusal(_ id: ClientID, tag: Token128, bytes: [UInt8], source: Endpoint) -> [Action] {
        if let entry = entries[id], let mac = entry.sessionMAC, SessionCrypto.verifyAuthenticated(bytes, mac: mac) {
            return [.report(.ignoredExtended(from: source, .replayed))]
        }
        return [.sendExtended(.unknownSession(id, echo: tag), to: source)]
    }

    /// The extended entry for `id` when `bytes` carry a valid tag under its session key and
    /// a fresh counter (which is then recorded).
    private mutating func session(_ id: ClientID, counter: UInt64, bytes: [UInt8]) -> Entry? {
        guard var entry = entries[id], entry.dialect == .extended, let mac = entry.sessionMAC,
              SessionCrypto.verifyAuthenticated(bytes, mac: mac), counter > entry.lastCounter
        else { return nil }
        entry.lastCounter = counter
        store(entry)
        return entry
    }

    // MARK: - Sweep

    /// Evicts every client silent for more than the timeout at `now` and tells the rest.
    public mutating func sweep(now: Instant) -> [Action] {
        let lifetime = validator.cookieLifetime
        if !departedCookies.isEmpty {
            departedCookies = departedCookies.filter { now - $0.value <= lifetime }
        }
        let expired = liveness.expire(now: now)
        guard !expired.isEmpty else { return [] }
        var actions: [Action] = []
        var gone: [Entry] = []
        for id in expired {
            guard entries[id] != nil else { continue }
            forgetHelpers(id)
            guard let entry = entries.removeValue(forKey: id) else { continue }
            rememberDeparture(entry)
            gone.append(entry)
            actions.append(.report(.evicted(entry)))
        }
        let remaining = classicSubscribers
        for entry in gone { actions += departed(entry, reason: .offline, notifying: remaining, now: now) }
        updateRosterScope(now: now)
        return actions
    }

    // MARK: - Shared transitions

    /// Registers `candidate`; `answer` is the `registered` message for a natchat/2 client.
    private mutating func register(_ candidate: Entry, answer: Action?, now: Instant) -> [Action] {
        let id = candidate.id
        let source = candidate.publicEndpoint
        if id.isReserved { return refuse(id, from: source, .reservedID, dialect: candidate.dialect) }
        var actions: [Action] = []
        if let holder = entries[id] {
            if holder.publicEndpoint == source, holder.dialect == candidate.dialect, holder.keys == candidate.keys {
                var refreshed = candidate
                refreshed.sequence = holder.sequence
                // Classic peers see only the public endpoint, which has not changed.
                let visible = !holder.hasSamePrivateEndpoints(as: refreshed) || holder.natKind != refreshed.natKind
                refreshed.version = visible ? roster.nextVersion() : holder.version
                store(refreshed)
                liveness.touch(id, now: now)
                actions.append(.report(.refreshed(refreshed)))
                if refreshed.dialect == .extended {
                    if let answer { actions.append(answer) }
                    startFeed(refreshed, now: now)
                } else {
                    actions += classicList(for: refreshed, includingSelf: true)
                }
                if visible { actions += published(refreshed, publicEndpointChanged: false, now: now) }
                return actions
            }
            guard liveness.isExpired(id, now: now) else { return refuse(id, from: source, .idInUse, dialect: candidate.dialect) }
            // The holder is past its timeout but not yet swept: evict it now so the ID is free.
            forgetHelpers(id)
            entries.removeValue(forKey: id)
            liveness.remove(id)
            rememberDeparture(holder)
            actions.append(.report(.evicted(holder)))
            actions += departed(holder, reason: .offline, notifying: classicSubscribers, now: now)
        }
        guard entries.count < configuration.maxClients else {
            return actions + refuse(id, from: source, .full, dialect: candidate.dialect)
        }
        var newcomer = candidate
        newcomer.sequence = nextSequence
        nextSequence += 1
        newcomer.version = roster.nextVersion()
        if newcomer.dialect == .extended {
            if let answer { actions.append(answer) }
        } else {
            actions += classicList(for: newcomer, includingSelf: false)
        }
        store(newcomer)
        sortedIDs.insert(id)
        liveness.touch(id, now: now)
        actions.append(.report(.registered(newcomer)))
        // A classic newcomer gets its own line too, as the seed's server sends it.
        for recipient in classicSubscribers where !(recipient.id == id && newcomer.dialect == .extended) {
            actions += announceClassic(newcomer, to: recipient)
        }
        roster.changed(id, .present, now: now)
        if newcomer.dialect == .extended { startFeed(newcomer, now: now) }
        updateRosterScope(now: now)
        return actions
    }

    private mutating func leave(_ entry: Entry, reason: LeaveReason, now: Instant) -> [Action] {
        forgetHelpers(entry.id)
        entries.removeValue(forKey: entry.id)
        liveness.remove(entry.id)
        rememberDeparture(entry)
        var actions: [Action] = [.report(.unregistered(entry))]
        actions += departed(entry, reason: reason, notifying: classicSubscribers, now: now)
        updateRosterScope(now: now)
        return actions
    }

    /// Tells the roster that `entry` (already stored, its version taken) changed: its feeds,
    /// and the classic clients when its public endpoint is new to them.
    private mutating func published(_ entry: Entry, publicEndpointChanged: Bool, now: Instant) -> [Action] {
        roster.changed(entry.id, .present, now: now)
        guard publicEndpointChanged else { return [] }
        var actions: [Action] = []
        for recipient in classicSubscribers where recipient.id != entry.id { actions += announceClassic(entry, to: recipient) }
        return actions
    }

    /// Tells the roster and `recipients` (classic) that `entry` (already removed) is gone.
    private mutating func departed(_ entry: Entry, reason: LeaveReason, notifying recipients: [Entry], now: Instant) -> [Action] {
        let version = roster.nextVersion()
        roster.changed(entry.id, .absent(version: version, reason: reason, publicEndpoint: entry.publicEndpoint), now: now)
        sortedIDs.remove(entry.id)
        return recipients.compactMap { departureClassic(entry, reason: reason, to: $0) }
    }

    /// A natchat/2 client's (new) session: its roster feed starts over, or it has none.
    private mutating func startFeed(_ entry: Entry, now: Instant) {
        guard entry.dialect == .extended, entry.subscribed else {
            roster.unsubscribe(entry.id)
            return
        }
        let table = entries
        roster.subscribe(entry.id, everyone: { table.entries.sorted { $0.sequence < $1.sequence }.map(\.id) }, now: now)
    }

    private mutating func updateRosterScope(now: Instant) {
        let table = entries
        roster.updateScope(registered: entries.count, everyone: { table.entries.sorted { $0.sequence < $1.sequence }.map(\.id) },
                           now: now)
    }

    /// The roster datagrams due at `now` (call at ``rosterDeadline``).
    public mutating func flushRoster(now: Instant) -> [Action] {
        let table = entries
        let deltas = roster.flush(now: now, registered: table.count, sizeOf: { id, note in
            switch note {
            case .present:
                guard let entry = table[id] else { return 0 }
                // kind, peerInfo (ID, endpoint, endpoints, NAT kind, dialect, key flag, keys), order, version
                return 1 + (1 + id.rawValue.utf8.count) + 6 + (1 + 6 * entry.privateEndpoints.count) + 3
                    + (entry.keys == nil ? 0 : 64) + 16
            case .absent:
                return 1 + (1 + id.rawValue.utf8.count) + 8 + 1 + 6
            }
        }, record: { subscriber, id, note in
            switch note {
            case .present:
                guard let entry = table[id], let recipient = table[subscriber] else { return nil }
                return .present(RosterEntry(info: Self.peerInfo(entry, for: recipient), order: entry.sequence, version: entry.version))
            case .absent(let version, let reason, let endpoint):
                return .absent(id, version: version, reason: reason, publicEndpoint: endpoint)
            }
        })
        return deltas.compactMap { subscriber, delta in
            table[subscriber].map { .sendExtended(.roster(delta), to: $0.publicEndpoint) }
        }
    }

    private mutating func allowQuery(_ id: ClientID, now: Instant) -> Bool {
        let rate = configuration.queriesPerSecond
        var bucket = queryBuckets[id] ?? TokenBucket(rate: rate, burst: rate * 2, now: now)
        defer { queryBuckets[id] = bucket }
        return bucket.take(now: now)
    }

    /// One page of the IDs starting with `prefix`, sorted, as many as fit a datagram.
    private func listPage(query: UInt32, prefix: String, offset: UInt32, limit: UInt16) -> ExtendedMessage {
        let start: Int
        let total: Int
        if prefix.isEmpty {
            start = 0
            total = sortedIDs.count
        } else {
            start = sortedIDs.rank { $0.rawValue >= prefix }
            total = max(0, sortedIDs.rank { $0.rawValue >= prefix && !$0.rawValue.hasPrefix(prefix) } - start)
        }
        let skip = min(Int(offset), total)
        var budget = RosterPublisher.datagramBudget
        var listed: [ListEntry] = []
        for id in sortedIDs.elements(from: start + skip, limit: min(Int(limit), ListEntry.maxPerDatagram, total - skip)) {
            guard let entry = entries[id] else { continue }
            budget -= 9 + id.rawValue.utf8.count
            guard budget >= 0 else { break }
            listed.append(ListEntry(id: id, publicEndpoint: entry.publicEndpoint, natKind: entry.natKind, dialect: entry.dialect))
        }
        return .listPage(query: query, total: UInt32(clamping: total), offset: UInt32(skip), entries: listed)
    }

    private mutating func store(_ entry: Entry) {
        if entry.dialect == .classic, entry.subscribed {
            classicSubscriberIDs.insert(entry.id)
        } else {
            classicSubscriberIDs.remove(entry.id)
        }
        if let old = entries[entry.id], old.publicEndpoint != entry.publicEndpoint, extendedByEndpoint[old.publicEndpoint] == entry.id {
            extendedByEndpoint[old.publicEndpoint] = nil
        }
        entries.store(entry)
        if entry.dialect == .extended { extendedByEndpoint[entry.publicEndpoint] = entry.id }
    }

    private mutating func forgetHelpers(_ id: ClientID) {
        classicSubscriberIDs.remove(id)
        roster.unsubscribe(id)
        queryBuckets[id] = nil
        if let entry = entries[id], extendedByEndpoint[entry.publicEndpoint] == id { extendedByEndpoint[entry.publicEndpoint] = nil }
        punch.forget(id)
        relayLimiter.forget(id)
    }

    private func registeredMessage(to endpoint: Endpoint, nonce: Token128, cookie: Token128) -> Action {
        let millis = UInt32(clamping: configuration.keepAliveInterval.nanosecondsClamped / 1_000_000)
        return .sendExtended(.registered(serverKey: Array(serverKey.publicKey.rawRepresentation), publicEndpoint: endpoint,
                                         keepAliveMillis: millis, alternatePort: configuration.alternatePort, nonce: nonce,
                                         cookie: cookie),
                             to: endpoint)
    }

    /// The list a classic `recipient` gets: everyone registered (itself too when `includingSelf`).
    private func classicList(for recipient: Entry, includingSelf: Bool) -> [Action] {
        guard recipient.subscribed else { return [] }
        var actions: [Action] = []
        for entry in clients where includingSelf || entry.id != recipient.id {
            actions += announceClassic(entry, to: recipient)
        }
        return actions
    }

    /// Tells classic `recipient` about `entry`: its line, and its private address when the
    /// seed's rule puts the two behind one NAT.
    private func announceClassic(_ entry: Entry, to recipient: Entry) -> [Action] {
        guard recipient.subscribed, recipient.dialect == .classic else { return [] }
        var actions: [Action] = [.send(.peer(entry.id, entry.publicEndpoint), to: recipient.publicEndpoint)]
        if configuration.sameNATRule.isSameNAT(recipient.position, entry.position) {
            actions.append(.send(.peerPrivate(entry.id, entry.privateAddress), to: recipient.publicEndpoint))
        }
        return actions
    }

    /// What `recipient` may know of `entry`: private endpoints only as a same-NAT hint
    /// (the same public address), since they are probed, not trusted.
    static func peerInfo(_ entry: Entry, for recipient: Entry) -> PeerInfo {
        // The array is built only for the hint (a roster for 100 000 clients would otherwise
        // build one per peer).
        var privates: [Endpoint] = []
        if entry.publicEndpoint.address == recipient.publicEndpoint.address {
            privates = entry.privateEndpoints
            if privates.isEmpty, entry.dialect == .classic {
                privates = [Endpoint(address: entry.privateAddress, port: CandidateOrder.classicClientPort)]
            }
        }
        return PeerInfo(id: entry.id, publicEndpoint: entry.publicEndpoint, privateEndpoints: privates,
                        natKind: entry.natKind, dialect: entry.dialect, keys: entry.keys)
    }

    private func departureClassic(_ entry: Entry, reason: LeaveReason, to recipient: Entry) -> Action? {
        guard recipient.subscribed, recipient.dialect == .classic else { return nil }
        let message: ClassicMessage = reason == .offline
            ? .offline(entry.id, entry.publicEndpoint) : .unregistered(entry.id, entry.publicEndpoint)
        return .send(message, to: recipient.publicEndpoint)
    }

    private func refuse(_ id: ClientID, from source: Endpoint, _ refusal: Refusal, dialect: Dialect) -> [Action] {
        // Kept short when classic is off: the notice goes to an unvalidated address, within 3x.
        let text = refusal == .classicDisabled ? "registration refused: natchat/2 only"
            : "registration refused: ID \(id) - \(refusal)"
        let notice: Action = dialect == .classic
            ? .send(.serverNotice(text), to: source) : .sendExtended(.refused(text: text), to: source)
        return [.report(.refused(id, from: source, refusal)), notice]
    }
}

/// A validator that accepts no cookie: the default for a registry that serves only the
/// classic dialect.
public struct RejectingValidator: AddressValidator {
    public init() {}
    public func cookie(for source: Endpoint, now: Instant) -> Token128 { .zero }
    public func issueTime(of cookie: Token128, for source: Endpoint, now: Instant) -> Instant? { nil }
    public var cookieLifetime: Duration { .zero }
}
