import Addressing
import Admission
import Crypto
import HolePunch
import Identity
import KeepAlive
import MonotonicTime
import NATGrouping
import Roster
import Store
import Wire

/// The rendezvous server's registration state machine, for both dialects.
///
/// The code is split by concern: the classic dialect (`Registry+Classic.swift`), natchat/2
/// (`Registry+NatchatTwo.swift`), the in-place fast paths (`Registry+InPlace.swift`), the
/// shared transitions and sweeps (`Registry+Transitions.swift`), the roster
/// (`Registry+Roster.swift`, `RosterPublisher.swift`), the entry and its table.
///
/// Feed it decoded datagrams with ``receive(_:from:now:)`` (classic) and
/// ``receive(_:bytes:from:now:random:)`` (natchat/2) and clock ticks with
/// ``handleTimeout(now:)`` at ``nextDeadline`` (the sweep, and the roster datagrams that are
/// due; ``flushRoster(now:)`` sends only the latter); it returns the ``Output``s to perform —
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
/// - The same ID from the same endpoint is a refresh: it counts as a keep-alive; a classic
///   client gets the list again, a natchat/2 client a new session (and its feed starts over);
///   nobody else is told unless something they see changed.
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
///   session). The very registration a session began with, received again, is ignored and
///   changes nothing; an older one is a replay and gets nothing.
///   Session messages are fresh when their counter is higher than the last accepted one.
/// - A client silent for strictly more than the keep-alive timeout is evicted at the next
///   sweep; everyone left is told it is off-line.
public struct Registry: Sendable, SansIOCore {
    /// Limits and rules.
    public struct Configuration: Sendable {
        /// How long a client may stay silent before eviction (30 s classic).
        public var keepAliveTimeout: Duration
        /// How often silent clients are swept out (10 s classic): a client is evicted at the
        /// first sweep after it has been silent for more than the timeout.
        public var sweepInterval: Duration
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
        /// Most records a push of the whole roster to every natchat/2 subscriber may take
        /// (registered × subscribers) for subscribers to be pushed the whole roster; past it,
        /// as past ``rosterLimit``, they are pushed only what they asked about or talked to.
        public var rosterFanOutLimit: Int
        /// Most clients one subscriber's interest holds.
        public var rosterInterestLimit: Int
        /// Coalescing, retransmission and window of each subscriber's roster feed.
        public var rosterFeed: RosterFeedConfiguration
        /// Look-ups and list queries one client may make per second (twice as many at once).
        public var queriesPerSecond: Double
        /// How long an ID's claim lives after its owner's latest registration; `nil`: no
        /// claims (nothing outlives a session, as with `--store memory`).
        public var claimTTL: Duration?
        /// The mailbox's limits (it exists when claims do: mail waits for claimed IDs only).
        public var mailbox: MailboxConfiguration
        /// Path reports one client may make per minute, and at once: a client reports once per
        /// punch attempt that settles (about one a round per peer it talks to), so this bounds
        /// how far one client can skew the outcome counters without losing honest reports.
        public var pathReportsPerMinute: Double = 12
        /// Path reports one client may make at once (several peers settling together).
        public var pathReportBurst: Double = 8

        public init(keepAliveTimeout: Duration = .seconds(30), sweepInterval: Duration = .seconds(10),
                    keepAliveInterval: Duration = .seconds(10),
                    sameNATRule: SameNATRule = .classic, maxClients: Int = 100_000, acceptClassic: Bool = true,
                    alternatePort: UInt16 = 0, relay: RelayLimiter<ClientID>.Configuration = .init(),
                    punch: PunchCoordinator.Configuration = .init(), rosterLimit: Int = 1000, rosterFanOutLimit: Int = 20_000,
                    rosterInterestLimit: Int = 256,
                    rosterFeed: RosterFeedConfiguration = .init(), queriesPerSecond: Double = 20,
                    claimTTL: Duration? = nil, mailbox: MailboxConfiguration = .init()) {
            self.claimTTL = claimTTL
            self.mailbox = mailbox
            self.sweepInterval = sweepInterval
            self.rosterLimit = rosterLimit
            self.rosterFanOutLimit = rosterFanOutLimit
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
        /// A registration whose claim the shared database must decide, while
        /// ``ClusterMembership/pendingLimit`` others already wait for theirs: the client
        /// registers again on its own schedule.
        case claimQueueFull
        /// A path report over the client's rate (or about itself).
        case pathReportRateLimited
        /// The registration the client's current session began with, received again (a
        /// retransmission, or a replay): not answered, and nothing changes (a replay proves
        /// nothing about the client being alive now; see docs/security.md).
        case repeatedRegistration
    }

    /// Why a registration was refused.
    public enum Refusal: Hashable, Sendable, CustomStringConvertible {
        case idInUse
        /// The ID is claimed by another natchat/2 key (or, for a classic client, by a key).
        case claimed
        case reservedID
        case full
        case classicDisabled
        /// Several servers: the shared database, which decides new claims, cannot be reached
        /// (and the ID is not one this server knows the registrant owns).
        case claimUnavailable

        public var description: String {
            switch self {
            case .claimUnavailable: "new IDs cannot be claimed now (the database is unreachable); try again later"
            case .idInUse: "the ID is in use from another address"
            case .claimed: "the ID is claimed by another key"
            case .reservedID: "the ID is reserved"
            case .full: "the server is full"
            case .classicDisabled: "this server accepts natchat/2 clients only"
            }
        }
    }

    /// Something that happened, for the operator's screen and logs. The cases that carry an
    /// entry are indirect, so that an ``Output`` (and every array of them) stays the size of a
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
        /// A client reported how a punch attempt with `peer` settled (rate-limited per client):
        /// the server's driver counts the outcomes, which only clients can see.
        case pathReport(ClientID, peer: ClientID, PathOutcome)
        /// A sealed message was queued in the mailbox for offline `to`.
        case mailQueued(from: ClientID, to: ClientID, bytes: Int)
        /// `to` acknowledged a mailbox message from `from` (an ID's raw value: it may be gone).
        case mailDelivered(from: String, to: ClientID)
        /// Several servers: a client of another server appeared or changed (a remote entry).
        indirect case remoteChanged(Entry, home: String)
        /// Several servers: a client of another server left, or its server is gone.
        indirect case remoteLeft(Entry, home: String)
        /// Several servers: this server's client registered with another server since; its
        /// entry here became a remote entry (no departure is announced).
        indirect case movedAway(Entry, to: String)
        /// Several servers: another server's heartbeat stopped (`alive: false`) or came back.
        case serverStatus(name: String, alive: Bool)
        /// Several servers: a datagram from a source that is not a server of the cluster, or
        /// a replay, or for a client that is not registered here.
        case ignoredServerDatagram(from: Endpoint)
    }

    /// What the caller must do.
    public enum Output: Hashable, Sendable {
        case send(ClassicMessage, to: Endpoint)
        case sendExtended(ExtendedMessage, to: Endpoint)
        case report(Event)
        /// A durable change for the store's writer (applied in batches, off the event loop).
        case persist(StoreChange)
        /// Several servers: this client's presence changed; the driver writes it to the shared
        /// database in batches (keep-alives never cause one).
        indirect case publish(PresenceRecord)
        /// Several servers: a registration waits for the database to decide this claim; the
        /// driver asks it (``ClusterStore/claim(_:ttl:at:)``), fetches the mail of a granted
        /// ID, and calls ``Registry/claimDecided(_:outcome:mail:now:random:)``.
        indirect case confirmClaim(ClaimRecord)
        /// Several servers: a datagram for another server, authenticated already.
        case sendToServer([UInt8], to: Endpoint)
    }

    public private(set) var configuration: Configuration
    var entries = ClientTable()
    /// Classic clients, who are all pushed the roster as it changes.
    var classicSubscriberIDs: Set<ClientID> = []
    var roster: RosterPublisher
    /// Every registered ID, sorted: list queries and prefixes without a scan.
    var sortedIDs = SortedChunks<ClientID>()
    var queryBuckets: [ClientID: TokenBucket] = [:]
    /// Path reports' budgets, per client (see ``allowPathReport(_:now:)``).
    var pathReportBuckets: [ClientID: TokenBucket] = [:]
    /// Extended clients by the endpoint they were last seen at (may hold stale keys; checked on use).
    var extendedByEndpoint: [Endpoint: ClientID] = [:]
    var liveness: LivenessTable<ClientID>
    /// For IDs whose extended client left or was evicted less than a cookie lifetime ago:
    /// the issue time of the cookie its last session began with. A registration of the ID
    /// must bring a later cookie (a captured registration replayed after the client died
    /// must not bring it back). Entries older than a cookie lifetime are pruned at sweeps:
    /// their cookies cannot pass any more.
    var departedCookies: [ClientID: Instant] = [:]
    var nextSequence: UInt64 = 0
    /// When the next sweep is due (`nil` while nobody has registered since the last emptied one).
    var nextSweep: Instant?
    var punch: PunchCoordinator
    var relayLimiter: RelayLimiter<ClientID>
    let validator: any AddressValidator
    let serverKey: Curve25519.KeyAgreement.PrivateKey
    /// The IDs' claims (`nil` when ``Configuration/claimTTL`` is).
    var claimBook: ClaimBook?
    /// Mail for offline claimed IDs (`nil` without claims).
    var mailbox: Mailbox?
    /// Wall-clock time at ``startInstant``: claims live for days, so they are dated in Unix
    /// seconds, mapped from the monotonic instants the registry is given.
    let unixTimeAtStart: Int64
    let startInstant: Instant
    /// The cluster this server belongs to (`nil`: it serves alone).
    var cluster: ClusterMembership?

    /// - Parameters:
    ///   - validator: makes and checks registration cookies.
    ///   - serverKey: the server's X25519 key for session keys (random per process).
    ///   - rosterEpoch: random per process, so clients tell a restarted server's roster
    ///     versions from the last one's.
    ///   - unixTime: the wall-clock time (Unix seconds) at `now`, for dating claims.
    public init(configuration: Configuration = Configuration(), validator: any AddressValidator = RejectingValidator(),
                serverKey: Curve25519.KeyAgreement.PrivateKey = .init(), now: Instant = .zero, rosterEpoch: UInt32 = 1,
                unixTime: Int64 = 0) {
        self.configuration = configuration
        claimBook = configuration.claimTTL.map { ClaimBook(ttl: $0.components.seconds) }
        mailbox = configuration.claimTTL.map { _ in Mailbox(configuration: configuration.mailbox) }
        unixTimeAtStart = unixTime
        startInstant = now
        roster = RosterPublisher(configuration: .init(limit: configuration.rosterLimit, fanOutLimit: configuration.rosterFanOutLimit,
                                                      interestLimit: configuration.rosterInterestLimit,
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

    /// This server's own registered clients by dialect (remote entries of a cluster are
    /// `count` minus both). Kept as clients come and go, so reading it costs O(1): the admin
    /// listener reads it on the event loop at every scrape.
    public var localClientCounts: (classic: Int, extended: Int) {
        (entries.localClassicCount, entries.localExtendedCount)
    }

    /// Takes in what the store holds (at start, before any datagram): the claims.
    public mutating func restore(_ snapshot: StoreSnapshot) {
        claimBook?.restore(snapshot.claims)
        mailbox?.restore(snapshot.mail)
    }

    /// How many messages wait in the mailbox.
    public var mailCount: Int { mailbox?.count ?? 0 }

    /// How many claims the registry holds (live or not yet scanned out).
    public var claimCount: Int { claimBook?.count ?? 0 }

    /// When `id` was claimed (Unix seconds), while its claim lives.
    public func claimedSince(_ id: ClientID, now: Instant) -> Int64? {
        claimBook?.claim(of: id, at: unixTime(now))?.claimedAt
    }

    /// The Unix time at `now`.
    func unixTime(_ now: Instant) -> Int64 {
        unixTimeAtStart + (now - startInstant).components.seconds
    }

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

    /// When ``handleTimeout(now:)`` is next needed: the next sweep, roster datagram or mail.
    public var nextDeadline: Instant? {
        // No array: the driver asks after every datagram.
        Self.earliest(Self.earliest(nextSweep, roster.nextDeadline), mailbox?.nextDeadline)
    }

    static func earliest(_ a: Instant?, _ b: Instant?) -> Instant? {
        guard let a else { return b }
        guard let b else { return a }
        return min(a, b)
    }

    /// What is due at `now`: the sweep for silent clients (every ``Configuration/sweepInterval``
    /// while anyone is registered) and the roster datagrams.
    public mutating func handleTimeout(now: Instant) -> [Output] {
        var actions: [Output] = []
        if let due = nextSweep, now >= due {
            actions += sweep(now: now)
            nextSweep = entries.count > 0 ? now + configuration.sweepInterval : nil
            let at = unixTime(now)
            if let changes = claimBook?.expire(at: at) { actions += changes.map(Output.persist) }
            if let changes = mailbox?.expire(unixTime: at, now: now) { actions += changes.map(Output.persist) }
        }
        if let due = roster.nextDeadline, now >= due { actions += flushRoster(now: now) }
        if let due = mailbox?.nextDeadline, now >= due { actions += deliverMail(now: now) }
        return actions
    }

    /// The entry for `id`, if registered.
    public func entry(for id: ClientID) -> Entry? { entries[id] }

    /// How many departed sessions' cookie times are remembered (see the freshness rule).
    public var departedCount: Int { departedCookies.count }

    /// Whether an extended client is registered at `endpoint` (it proved it receives there).
    public func hasExtendedClient(at endpoint: Endpoint) -> Bool {
        guard let id = extendedByEndpoint[endpoint], let entry = entries[id] else { return false }
        return entry.publicEndpoint == endpoint && entry.dialect == .extended && entry.isLocal
    }

}
