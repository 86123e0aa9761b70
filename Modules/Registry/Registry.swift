import Crypto
import HolePunch
import Identity
import KeepAlive
import MonotonicTime
import NATGrouping
import Relay
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
/// ``receive(_:from:now:random:)`` (extended) and clock ticks with ``sweep(now:)``; it
/// returns the ``Action``s to perform — datagrams to send and events to report — and
/// performs none itself. Every notice goes to each recipient in its own dialect.
///
/// Rules:
/// - A new ID registers; the newcomer gets the list of everyone already registered
///   (classic: each `ID PUBLIC:PORT`, followed by `ID@private:IP` when the two are judged
///   to be behind the same NAT), then every client, the newcomer included, gets the
///   newcomer's line (extended clients: a ``ExtendedMessage/peer(_:)`` notice).
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

        public init(keepAliveTimeout: Duration = .seconds(30), keepAliveInterval: Duration = .seconds(10),
                    sameNATRule: SameNATRule = .classic, maxClients: Int = 100_000, acceptClassic: Bool = true,
                    alternatePort: UInt16 = 0, relay: RelayLimiter<ClientID>.Configuration = .init(),
                    punch: PunchCoordinator.Configuration = .init()) {
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
        /// The highest counter accepted on this session.
        public var lastCounter: UInt64
        /// When the cookie that this session's registration echoed was issued: a registration
        /// is fresh only with a later cookie.
        public var cookieIssuedAt: Instant
        /// The server's randomness in this session's key.
        public var nonce: Token128
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
             cookieIssuedAt: Instant = .zero, nonce: Token128 = .zero, privateEndpoints: [Endpoint] = [], natKind: NATKind = .unknown,
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
            self.nonce = nonce
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
    private var subscriberIDs: Set<ClientID> = []
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
    public init(configuration: Configuration = Configuration(), validator: any AddressValidator = RejectingValidator(),
                serverKey: Curve25519.KeyAgreement.PrivateKey = .init(), now: Instant = .zero) {
        self.configuration = configuration
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

    /// The clients that get roster notices, in registration order. Only these cost anything
    /// when someone joins or leaves: headless extended clients do not subscribe, so their
    /// joins cost the server the same at 100 clients as at 100 000.
    var subscribers: [Entry] {
        subscriberIDs.compactMap { entries[$0] }.sorted { $0.sequence < $1.sequence }
    }

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
            return register(newcomer, now: now)
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
            return leave(entry, reason: .unregistered)
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
            case .repeated(let holder):
                // The registration this session began with, again (its answer was lost, or it
                // was captured and replayed): the same answer, and nothing touched.
                return [.report(.ignoredExtended(from: source, .repeatedRegistration)), registeredMessage(holder)]
            case .replayed:
                return [.report(.ignoredExtended(from: source, .replayed))]
            }
            let nonce = Token128.random(using: &random)
            guard let sessionKey = SessionCrypto.sessionKey(privateKey: serverKey, peerPublicKey: keys.agreement,
                                                            cookie: cookie, nonce: nonce, id: id)
            else { return [.report(.ignoredExtended(from: source, .badSignature))] }
            let privateAddress = privateEndpoints.first?.address ?? source.address
            let newcomer = Entry(id: id, publicEndpoint: source, privateAddress: privateAddress, sequence: 0, dialect: .extended,
                                 sessionKey: sessionKey, keys: keys, cookieIssuedAt: issued, nonce: nonce,
                                 privateEndpoints: privateEndpoints, natKind: natKind, subscribed: subscribe)
            if let holder = entries[id], holder.dialect == .extended, holder.keys == keys, holder.publicEndpoint != source {
                // The key holder itself, from a new address (restarted behind a new mapping): it
                // proves the key, so the registration moves rather than being refused.
                var moved = newcomer
                moved.sequence = holder.sequence
                store(moved)
                liveness.touch(id, now: now)
                var actions: [Action] = [.report(.moved(moved, from: holder.publicEndpoint)), registeredMessage(moved)]
                actions += listMessages(for: moved, includingSelf: false)
                for recipient in subscribers where recipient.id != id { actions += announce(moved, to: recipient) }
                return actions
            }
            return register(newcomer, now: now)
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
            store(entry)
            if previous != source {
                actions.append(.report(.moved(entry, from: previous)))
            }
            actions.append(.sendExtended(.keepAliveAck(publicEndpoint: source), to: source))
            if changed {
                // Classic clients see only the public endpoint: tell them only when it moved.
                for recipient in subscribers where recipient.id != id && (previous != source || recipient.dialect == .extended) {
                    actions += announce(entry, to: recipient)
                }
            }
            return actions
        case .exit(let id, let counter, _):
            guard let entry = session(id, counter: counter, bytes: bytes) else {
                return [.report(.ignoredExtended(from: source, .badTag))]
            }
            return leave(entry, reason: .unregistered)
        case .connect(let id, let peerID, let counter, let tag):
            guard let entry = session(id, counter: counter, bytes: bytes) else {
                return sessionRefusal(id, tag: tag, bytes: bytes, source: source)
            }
            liveness.touch(id, now: now)
            guard let peer = entries[peerID], peer.dialect == .extended, peerID != id else {
                return [.report(.ignoredExtended(from: source, .peerUnavailable))]
            }
            let instructions = punch.connect(id, to: peerID, now: now, random: &random)
            var actions: [Action] = []
            for instruction in instructions {
                guard let recipient = entries[instruction.recipient], let other = entries[instruction.peer] else { continue }
                let message = ExtendedMessage.punch(peer: peerInfo(other, for: recipient), round: instruction.round,
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
        case .challenge, .registered, .refused, .peer, .peerLeft, .punch, .relayed, .keepAliveAck, .unknownSession,
             .ping, .pong, .chat, .chatAck:
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
        case repeated(Entry)
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
            if issued == holder.cookieIssuedAt, holder.publicEndpoint == source { return .repeated(holder) }
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
        let remaining = subscribers
        for entry in gone {
            for other in remaining { if let notice = departure(entry, reason: .offline, to: other) { actions.append(notice) } }
        }
        return actions
    }

    // MARK: - Shared transitions

    private mutating func register(_ candidate: Entry, now: Instant) -> [Action] {
        let id = candidate.id
        let source = candidate.publicEndpoint
        if id.isReserved { return refuse(id, from: source, .reservedID, dialect: candidate.dialect) }
        var actions: [Action] = []
        if let holder = entries[id] {
            if holder.publicEndpoint == source, holder.dialect == candidate.dialect, holder.keys == candidate.keys {
                var refreshed = candidate
                refreshed.sequence = holder.sequence
                store(refreshed)
                liveness.touch(id, now: now)
                actions.append(.report(.refreshed(refreshed)))
                if refreshed.dialect == .extended { actions.append(registeredMessage(refreshed)) }
                actions += listMessages(for: refreshed, includingSelf: refreshed.dialect == .classic)
                if !holder.hasSamePrivateEndpoints(as: refreshed) || holder.natKind != refreshed.natKind {
                    for recipient in subscribers where recipient.id != id && recipient.dialect == .extended {
                        actions += announce(refreshed, to: recipient)
                    }
                }
                return actions
            }
            guard liveness.isExpired(id, now: now) else { return refuse(id, from: source, .idInUse, dialect: candidate.dialect) }
            // The holder is past its timeout but not yet swept: evict it now so the ID is free.
            forgetHelpers(id)
            entries.removeValue(forKey: id)
            liveness.remove(id)
            rememberDeparture(holder)
            actions.append(.report(.evicted(holder)))
            for other in subscribers { if let notice = departure(holder, reason: .offline, to: other) { actions.append(notice) } }
        }
        guard entries.count < configuration.maxClients else {
            return actions + refuse(id, from: source, .full, dialect: candidate.dialect)
        }
        var newcomer = candidate
        newcomer.sequence = nextSequence
        nextSequence += 1
        if newcomer.dialect == .extended { actions.append(registeredMessage(newcomer)) }
        actions += listMessages(for: newcomer, includingSelf: false)
        store(newcomer)
        liveness.touch(id, now: now)
        actions.append(.report(.registered(newcomer)))
        for recipient in subscribers where !(recipient.id == id && newcomer.dialect == .extended) {
            actions += announce(newcomer, to: recipient)
        }
        return actions
    }

    private mutating func leave(_ entry: Entry, reason: LeaveReason) -> [Action] {
        forgetHelpers(entry.id)
        entries.removeValue(forKey: entry.id)
        liveness.remove(entry.id)
        rememberDeparture(entry)
        var actions: [Action] = [.report(.unregistered(entry))]
        for other in subscribers { if let notice = departure(entry, reason: reason, to: other) { actions.append(notice) } }
        return actions
    }

    private mutating func store(_ entry: Entry) {
        if entry.subscribed { subscriberIDs.insert(entry.id) } else { subscriberIDs.remove(entry.id) }
        if let old = entries[entry.id], old.publicEndpoint != entry.publicEndpoint, extendedByEndpoint[old.publicEndpoint] == entry.id {
            extendedByEndpoint[old.publicEndpoint] = nil
        }
        entries.store(entry)
        if entry.dialect == .extended { extendedByEndpoint[entry.publicEndpoint] = entry.id }
    }

    private mutating func forgetHelpers(_ id: ClientID) {
        subscriberIDs.remove(id)
        if let entry = entries[id], extendedByEndpoint[entry.publicEndpoint] == id { extendedByEndpoint[entry.publicEndpoint] = nil }
        punch.forget(id)
        relayLimiter.forget(id)
    }

    private func registeredMessage(_ entry: Entry) -> Action {
        let millis = UInt32(clamping: configuration.keepAliveInterval.nanosecondsClamped / 1_000_000)
        return .sendExtended(.registered(serverKey: Array(serverKey.publicKey.rawRepresentation), publicEndpoint: entry.publicEndpoint,
                                         keepAliveMillis: millis, alternatePort: configuration.alternatePort, nonce: entry.nonce),
                             to: entry.publicEndpoint)
    }

    /// The list `recipient` should get: everyone registered (itself too when `includingSelf`).
    private func listMessages(for recipient: Entry, includingSelf: Bool) -> [Action] {
        guard recipient.subscribed else { return [] }
        var actions: [Action] = []
        for entry in clients where includingSelf || entry.id != recipient.id {
            actions += announce(entry, to: recipient)
        }
        return actions
    }

    /// Tells `recipient` about `entry`, in the recipient's dialect (nothing to a client that
    /// did not subscribe to the roster).
    private func announce(_ entry: Entry, to recipient: Entry) -> [Action] {
        guard recipient.subscribed else { return [] }
        switch recipient.dialect {
        case .classic:
            var actions: [Action] = [.send(.peer(entry.id, entry.publicEndpoint), to: recipient.publicEndpoint)]
            if configuration.sameNATRule.isSameNAT(recipient.position, entry.position) {
                actions.append(.send(.peerPrivate(entry.id, entry.privateAddress), to: recipient.publicEndpoint))
            }
            return actions
        case .extended:
            return [.sendExtended(.peer(peerInfo(entry, for: recipient)), to: recipient.publicEndpoint)]
        }
    }

    /// What `recipient` may know of `entry`: private endpoints only as a same-NAT hint
    /// (the same public address), since they are probed, not trusted.
    private func peerInfo(_ entry: Entry, for recipient: Entry) -> PeerInfo {
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

    private func departure(_ entry: Entry, reason: LeaveReason, to recipient: Entry) -> Action? {
        guard recipient.subscribed else { return nil }
        switch recipient.dialect {
        case .classic:
            let message: ClassicMessage = reason == .offline
                ? .offline(entry.id, entry.publicEndpoint) : .unregistered(entry.id, entry.publicEndpoint)
            return .send(message, to: recipient.publicEndpoint)
        case .extended:
            return .sendExtended(.peerLeft(entry.id, reason: reason, publicEndpoint: entry.publicEndpoint), to: recipient.publicEndpoint)
        }
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
