/// What several rendezvous servers share through one database: who the servers are, which
/// server each client is registered with (its home) and how peers see it, ID claims decided
/// once for all of them, and the mailbox.
///
/// The servers' cores never wait on it. A server publishes its clients' presence in batches
/// (keep-alives never reach the database), learns of the other servers' clients when the
/// database notifies it (``ClusterStore/presenceNotifications()``, with a short poll behind
/// it), and asks the database only to decide a new claim, which no server can decide alone.

/// One server of a cluster, as the database lists it.
public struct ServerRecord: Hashable, Sendable {
    /// The server's name, unique in the cluster (`--name`; default: the advertised address).
    public var name: String
    /// Where clients and the other servers reach it (`IP:PORT`, `--advertise`).
    public var advertise: String
    /// Its latest heartbeat (Unix seconds): a server silent for longer than the keep-alive
    /// timeout is taken for dead, and its clients for gone.
    public var heartbeat: Int64

    public init(name: String, advertise: String, heartbeat: Int64) {
        self.name = name
        self.advertise = advertise
        self.heartbeat = heartbeat
    }
}

/// Why a client is no longer present.
public enum Departure: UInt8, Hashable, Sendable {
    /// It said goodbye (`@exit`).
    case unregistered = 1
    /// It went silent and its home evicted it (or its home is gone).
    case offline = 2
}

/// A client's presence as its home server publishes it. One record per ID: the latest
/// session wins, whichever server it is on.
public struct PresenceRecord: Hashable, Sendable {
    /// The client's ID (a `ClientID`'s raw value).
    public var id: String
    /// The name of the server it is registered with.
    public var home: String
    /// When its home registered this session (Unix milliseconds). A record for the same ID
    /// from another server replaces this one only with a later session start, so that a
    /// client that moved is not brought back by its old home's late write.
    public var sessionStart: Int64
    /// The client as its home sees it: the wire's `PeerInfo` encoding, private endpoints
    /// included (each server shows those only to recipients behind the same NAT, as it does
    /// for its own clients). Opaque to the store; empty once the client has left.
    public var info: [UInt8]
    /// `nil` while the client is registered; why it left otherwise (the record stays, as a
    /// tombstone, so other servers see the departure, and is pruned later).
    public var departure: Departure?
    /// Assigned by the store when the record is written: increasing, per home, in the order
    /// that home's writes were applied. Ignored on write.
    public var sequence: Int64

    public init(id: String, home: String, sessionStart: Int64, info: [UInt8], departure: Departure? = nil, sequence: Int64 = 0) {
        self.id = id
        self.home = home
        self.sessionStart = sessionStart
        self.info = info
        self.departure = departure
        self.sequence = sequence
    }
}

/// What the database decided about a claim.
public enum ClaimOutcome: Hashable, Sendable {
    /// The claim is the registrant's: new, or its own and renewed. Carries the stored claim
    /// (its `claimedAt` is the first claim's date).
    case granted(ClaimRecord)
    /// Another key holds a live claim on the ID: carries that claim.
    case heldByAnother(ClaimRecord)
}

/// A durable store several servers share (PostgreSQL). Every method may wait on the network:
/// drivers call them off the event loop and feed the results to the cores.
public protocol ClusterStore: DurableStore {
    /// Enters `server` in the cluster (replacing a record of the same name) and returns the
    /// cluster's shared secret, made by the first server that joined: servers authenticate
    /// their datagrams to each other with it.
    func join(_ server: ServerRecord) async throws(StoreError) -> [UInt8]

    /// Records `server`'s heartbeat at `unixTime` and returns every server's record.
    func heartbeat(server: String, at unixTime: Int64) async throws(StoreError) -> [ServerRecord]

    /// Decides a claim for every server at once, atomically: grants `record` when nobody holds
    /// a live claim on its ID (a claim lives `ttl` seconds past its `lastSeen`) or when its
    /// keys hold it (then only `lastSeen` moves on); otherwise names the holder.
    func claim(_ record: ClaimRecord, ttl: Int64, at unixTime: Int64) async throws(StoreError) -> ClaimOutcome

    /// Decides several claims (as ``claim(_:ttl:at:)`` each, in one round trip where the
    /// store can): the outcomes in the order of `records`.
    func claims(_ records: [ClaimRecord], ttl: Int64, at unixTime: Int64) async throws(StoreError) -> [ClaimOutcome]

    /// The mail waiting for any of `recipients`, oldest first.
    func mail(forRecipients recipients: [String]) async throws(StoreError) -> [MailRecord]

    /// The live claim of `id` at `unixTime`, if any (a server that missed a change asks).
    func currentClaim(of id: String, ttl: Int64, at unixTime: Int64) async throws(StoreError) -> ClaimRecord?

    /// Writes presence records in order, as one transaction, and notifies the other servers.
    /// A record replaces the stored one of its ID when the stored one has the same home or
    /// an earlier (or equal) ``PresenceRecord/sessionStart``; otherwise it is dropped.
    func publish(_ records: [PresenceRecord]) async throws(StoreError)

    /// The records `home` wrote after `sequence`, oldest first, at most `limit`.
    func presence(home: String, after sequence: Int64, limit: Int) async throws(StoreError) -> [PresenceRecord]

    /// Marks every present record of `home` departed (`offline`), as one write: what a server
    /// does at start (it knows none of its clients yet) and what the others do for a server
    /// whose heartbeat stopped.
    func retire(home: String) async throws(StoreError)

    /// Deletes departed records written before `unixTime` (tombstones every server has read:
    /// the time is the departure's, not the session start's).
    func prunePresence(before unixTime: Int64) async throws(StoreError)

    /// The mail waiting for `recipient`, oldest first (a server fetches it when the recipient
    /// registers with it: another server may have queued it).
    func mail(for recipient: String) async throws(StoreError) -> [MailRecord]

    /// The names of servers whose presence changed, as the database notifies them. The stream
    /// ends when the store is closed. A server still polls: a notification can be lost with
    /// a connection.
    func presenceNotifications() -> AsyncStream<String>
}

extension ClusterStore {
    /// One ``claim(_:ttl:at:)`` after another (stores without a batch statement).
    public func claims(_ records: [ClaimRecord], ttl: Int64, at unixTime: Int64) async throws(StoreError) -> [ClaimOutcome] {
        var outcomes: [ClaimOutcome] = []
        for record in records { outcomes.append(try await claim(record, ttl: ttl, at: unixTime)) }
        return outcomes
    }

    /// One ``mail(for:)`` after another, oldest first.
    public func mail(forRecipients recipients: [String]) async throws(StoreError) -> [MailRecord] {
        var mail: [MailRecord] = []
        for recipient in Set(recipients) { mail += try await self.mail(for: recipient) }
        return mail.sorted { $0.serial < $1.serial }
    }
}
