import Addressing
import Identity
import MonotonicTime
import Store
import Wire

// Several servers sharing one database (a cluster): remote entries, claims the database
// decides, punches and relays across servers. The driver moves records between the registry
// and the database; the registry never waits on it (docs/several-servers.md).

extension Registry {
    /// This server's name in its cluster (`nil`: it serves alone).
    public var clusterName: String? { cluster?.name }

    /// Registrations waiting for the database to decide their claims.
    public var pendingClaimCount: Int { cluster?.pending.count ?? 0 }

    /// Whether the database answered the last time it was asked, by this registry or its
    /// link (`true` alone).
    public var databaseReachable: Bool { cluster?.databaseReachable ?? true }

    /// The link's word on the database (it answers, or it stopped answering). While it does
    /// not, a registration of an ID this registry knows the registrant owns is not parked.
    public mutating func setDatabaseReachable(_ reachable: Bool) {
        cluster?.databaseReachable = reachable
    }

    /// The other servers, with whether their heartbeat is recent.
    public var clusterServers: [(name: String, endpoint: Endpoint?, alive: Bool)] {
        cluster?.peers.map { ($0.name, $0.endpoint, $0.alive) } ?? []
    }

    /// How many registered clients belong to other servers (a scan: for tests and status).
    public var remoteCount: Int { entries.entries.reduce(0) { $0 + ($1.isLocal ? 0 : 1) } }

    /// Joins a cluster as `name`, with the servers' shared `secret` (from the database): from
    /// now on a registration's claim is decided by the database (``Output/confirmClaim(_:)``),
    /// the registry publishes its clients' presence (``Output/publish(_:)``), and it takes in
    /// the other servers' (``applyPresence(_:now:)``, ``updateServers(_:unixTime:now:)``).
    /// Call it before the first datagram.
    public mutating func joinCluster(name: String, secret: [UInt8], now: Instant) {
        cluster = ClusterMembership(name: name, secret: secret)
        let atLeast = unixMillis(now) << 8
        mailbox?.useClusterSerials(tag: Self.serialTag(of: name), atLeast: atLeast)
    }

    /// The low byte of this server's mailbox serials: servers with different tags never
    /// make the same serial (FNV-1a of the name; two names with one tag are named in the docs).
    static func serialTag(of name: String) -> UInt8 {
        var hash: UInt32 = 2_166_136_261
        for byte in name.utf8 { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        return UInt8(truncatingIfNeeded: hash ^ (hash >> 8) ^ (hash >> 16) ^ (hash >> 24))
    }

    /// The servers as the database lists them (each heartbeat): where they listen, and which
    /// are alive. A server whose heartbeat is older than the keep-alive timeout is taken for
    /// dead: its clients that have not moved to another server leave (`offline`).
    public mutating func updateServers(_ servers: [ServerRecord], unixTime: Int64, now: Instant) -> [Output] {
        guard let name = cluster?.name else { return [] }
        let timeout = configuration.keepAliveTimeout.components.seconds
        var actions: [Output] = []
        for server in servers where server.name != name {
            guard let index = cluster?.index(of: server.name), let position = Optional(Int(index) - 1) else { continue }
            let alive = unixTime - server.heartbeat <= timeout
            let wasAlive = cluster?.peers[position].alive ?? true
            cluster?.peers[position].heartbeat = server.heartbeat
            cluster?.peers[position].endpoint = try? Endpoint(parsing: server.advertise)
            cluster?.peers[position].alive = alive
            if wasAlive, !alive {
                actions.append(.report(.serverStatus(name: server.name, alive: false)))
                for entry in entries.entries where entry.home == index {
                    actions += removeRemote(entry, home: server.name, reason: .offline, now: now)
                }
            } else if !wasAlive, alive {
                actions.append(.report(.serverStatus(name: server.name, alive: true)))
            }
        }
        return actions
    }

    /// Takes in presence records other servers published (records of this server are
    /// skipped): their clients appear, change and leave here as remote entries, pushed to
    /// this server's clients as its own are. A record of one of this server's clients with a
    /// later session start means that client registered elsewhere since: its entry becomes
    /// the remote one, and its peers see it move, not leave.
    public mutating func applyPresence(_ records: [PresenceRecord], now: Instant) -> [Output] {
        guard let name = cluster?.name else { return [] }
        var actions: [Output] = []
        for record in records where record.home != name {
            guard let id = try? ClientID(record.id), let home = cluster?.index(of: record.home) else { continue }
            if let departure = record.departure {
                guard let entry = entries[id], !entry.isLocal else { continue }
                let reason: LeaveReason = departure == .unregistered ? .unregistered : .offline
                if entry.home == home {
                    actions += removeRemote(entry, home: record.home, reason: reason, now: now)
                } else if record.sessionStart > sessionStartMillis(entry, now: now) {
                    // It moved to `record.home` and left there before this server read the
                    // move (the database keeps one record per ID, the departure in the end):
                    // the session shown here is over too. Its old home's own departure, an
                    // older session's, is dropped by the database.
                    actions += removeRemote(entry, home: cluster?.peer(entry.home)?.name ?? record.home, reason: reason, now: now)
                }
                continue
            }
            guard let info = try? PeerInfo.decode(record.info), info.id == id else { continue }
            if let holder = entries[id], holder.isLocal {
                guard holder.dialect == .extended, record.sessionStart > sessionStartMillis(holder, now: now) else { continue }
                forgetHelpers(id)
                liveness.remove(id)
                rememberDeparture(holder)
                actions.append(.report(.movedAway(holder, to: record.home)))
            }
            actions += upsertRemote(info, home: home, homeName: record.home, sessionStart: record.sessionStart, now: now)
        }
        return actions
    }

    /// The database decided the claim a parked registration of `id` waits for (`nil`: it
    /// could not be asked). `mail`: what waits for `id` in the shared mailbox (fetched with
    /// a granted claim; it replaces what this server held for `id`).
    public mutating func claimDecided<G: RandomNumberGenerator>(_ id: ClientID, outcome: ClaimOutcome?, mail: [MailRecord] = [],
                                                               now: Instant, random: inout G) -> [Output] {
        guard let parked = cluster?.pending.removeValue(forKey: id) else { return [] }
        switch outcome {
        case .granted(let record):
            cluster?.databaseReachable = true
            claimBook?.learn(record)
            mailbox?.replaceMail(for: id, with: mail)
        case .heldByAnother(let record):
            cluster?.databaseReachable = true
            claimBook?.learn(record)
        case nil:
            cluster?.databaseReachable = false
            // Degraded: an ID this server knows the registrant owns goes on; a new claim waits.
            guard claimBook?.verdict(for: id, keys: parked.keys, at: unixTime(now)) == .owner else {
                return refuse(id, from: parked.source, .claimUnavailable, dialect: .extended)
            }
        }
        let actions = receiveRegistration(parked.datagram, bytes: parked.bytes, from: parked.source, now: now, claimConfirmed: true,
                                          random: &random)
        // A client that held a remote entry here (it registered with another server before)
        // takes it over as a refresh or a move, paths that expect a local holder and so a
        // sweep already due: on a server with no client of its own yet, none is.
        if entries[id]?.isLocal == true {
            if nextSweep == nil { nextSweep = now + configuration.sweepInterval }
            cluster?.remoteSessionStarts[id] = nil
        }
        return actions
    }

    /// Parks a registration until the database decides its claim; asks once per ID.
    mutating func parkForClaim(_ datagram: ExtendedDatagram, bytes: [UInt8], from source: Endpoint, id: ClientID,
                               keys: PublicKeys, now: Instant) -> [Output] {
        let asked = cluster?.pending[id] != nil
        guard asked || (cluster?.pending.count ?? 0) < ClusterMembership.pendingLimit else {
            return [.report(.ignoredExtended(from: source, .claimQueueFull))]
        }
        // The latest registration of the ID is the one that goes on when the answer comes.
        cluster?.pending[id] = ClusterMembership.PendingRegistration(datagram: datagram, bytes: bytes, source: source, keys: keys)
        guard !asked else { return [] }
        let at = unixTime(now)
        return [.confirmClaim(ClaimRecord(id: id.rawValue, signingKey: keys.signing, agreementKey: keys.agreement,
                                          claimedAt: at, lastSeen: at))]
    }

    /// A datagram from another server of the cluster: a punch or a relay for a client here.
    mutating func receiveFromServer(_ datagram: ExtendedDatagram, bytes: [UInt8], from source: Endpoint,
                                    now: Instant) -> [Output] {
        guard let counter = datagram.trailer.counter, cluster?.accept(bytes, counter: counter, from: source) == true else {
            return [.report(.ignoredServerDatagram(from: source))]
        }
        switch datagram.message {
        case .serverPunch(let target, let peer, let round, let delay):
            guard let recipient = entries[target], recipient.isLocal, recipient.dialect == .extended else {
                return [.report(.ignoredServerDatagram(from: source))]
            }
            roster.noteInterest(of: target, in: peer.id)
            return [.sendExtended(.punch(peer: Self.shown(peer, to: recipient), round: round, delayMillis: delay),
                                  to: recipient.publicEndpoint)]
        case .serverRelay(let from, let to, let payload):
            guard let recipient = entries[to], recipient.isLocal, recipient.dialect == .extended else {
                return [.report(.ignoredServerDatagram(from: source))]
            }
            return [.sendExtended(.relayed(from: from, payload: payload), to: recipient.publicEndpoint),
                    .report(.relayed(from: from, to: to, bytes: payload.count))]
        default:
            return [.report(.ignoredServerDatagram(from: source))]
        }
    }

    /// `message` for the home of remote `entry`, authenticated; nothing when its server is
    /// unknown or dead.
    mutating func toHome(of entry: Entry, _ message: ExtendedMessage, now: Instant) -> [Output] {
        let micros = UInt64(clamping: unixMillis(now)) &* 1000
        guard let peer = cluster?.peer(entry.home), peer.alive, let endpoint = peer.endpoint,
              let bytes = cluster?.seal(message, unixMicros: micros)
        else { return [.report(.ignoredExtended(from: entry.publicEndpoint, .peerUnavailable))] }
        return [.sendToServer(bytes, to: endpoint)]
    }

    /// Everything a server knows of `entry` (private endpoints included), for another server.
    static func fullInfo(_ entry: Entry) -> PeerInfo {
        PeerInfo(id: entry.id, publicEndpoint: entry.publicEndpoint, privateEndpoints: entry.privateEndpoints,
                 natKind: entry.natKind, dialect: entry.dialect, keys: entry.keys, claimedSince: entry.claimedSince,
                 mappedEndpoint: entry.mappedEndpoint)
    }

    /// What `recipient` may know of `info`: its private endpoints (and a port mapping in a
    /// private or shared range) only behind the same NAT.
    static func shown(_ info: PeerInfo, to recipient: Entry) -> PeerInfo {
        var shown = info
        if info.publicEndpoint.address != recipient.publicEndpoint.address {
            shown.privateEndpoints = []
            if let mapped = info.mappedEndpoint, mapped.address != info.publicEndpoint.address { shown.mappedEndpoint = nil }
        }
        return shown
    }

    /// The Unix time at `instant`, in milliseconds.
    func unixMillis(_ instant: Instant) -> Int64 {
        unixTimeAtStart &* 1000 &+ Int64(((instant - startInstant) / .milliseconds(1)).rounded(.down))
    }

    /// When `entry`'s session began (Unix milliseconds): its cookie's issue time (a remote
    /// entry: as its home published it).
    func sessionStartMillis(_ entry: Entry, now: Instant) -> Int64 {
        guard entry.isLocal else { return cluster?.remoteSessionStarts[entry.id] ?? 0 }
        return entry.dialect == .extended ? unixMillis(entry.cookieIssuedAt) : unixMillis(now)
    }

    func presenceRecord(_ entry: Entry, now: Instant) -> PresenceRecord {
        PresenceRecord(id: entry.id.rawValue, home: cluster?.name ?? "", sessionStart: sessionStartMillis(entry, now: now),
                       info: Self.fullInfo(entry).encode())
    }

    func departureRecord(_ entry: Entry, reason: LeaveReason, now: Instant) -> PresenceRecord {
        PresenceRecord(id: entry.id.rawValue, home: cluster?.name ?? "", sessionStart: sessionStartMillis(entry, now: now),
                       info: [], departure: reason == .unregistered ? .unregistered : .offline)
    }

    /// Adds or updates the remote entry for `info` (registered with server `home`, in a
    /// session that began at `sessionStart`).
    mutating func upsertRemote(_ info: PeerInfo, home: UInt16, homeName: String, sessionStart: Int64, now: Instant) -> [Output] {
        cluster?.remoteSessionStarts[info.id] = sessionStart
        var entry = Entry(id: info.id, publicEndpoint: info.publicEndpoint,
                          privateAddress: info.privateEndpoints.first?.address ?? info.publicEndpoint.address, sequence: 0,
                          dialect: info.dialect, keys: info.keys, privateEndpoints: info.privateEndpoints, natKind: info.natKind,
                          subscribed: false)
        entry.claimedSince = info.claimedSince
        entry.mappedEndpoint = Self.acceptableMapping(info.mappedEndpoint, publicAddress: info.publicEndpoint.address)
        entry.home = home
        if let keys = info.keys, info.claimedSince != 0 {
            let seen = unixTime(now)
            claimBook?.learn(ClaimRecord(id: info.id.rawValue, signingKey: keys.signing, agreementKey: keys.agreement,
                                         claimedAt: Int64(info.claimedSince), lastSeen: seen))
        }
        if let old = entries[info.id] {
            entry.sequence = old.sequence
            let endpointChanged = old.publicEndpoint != entry.publicEndpoint
            let visible = endpointChanged || !old.hasSamePrivateEndpoints(as: entry) || old.natKind != entry.natKind
                || old.mappedEndpoint != entry.mappedEndpoint || old.keys != entry.keys || old.home != entry.home || old.claimedSince != entry.claimedSince
                || old.dialect != entry.dialect
            entry.version = visible ? roster.nextVersion() : old.version
            store(entry)
            guard visible else { return [] }
            return [.report(.remoteChanged(entry, home: homeName))] + published(entry, publicEndpointChanged: endpointChanged, now: now)
        }
        guard entries.count < configuration.maxClients else {
            cluster?.remoteSessionStarts[info.id] = nil
            return []
        }
        entry.sequence = nextSequence
        nextSequence += 1
        entry.version = roster.nextVersion()
        store(entry)
        sortedIDs.insert(info.id)
        var actions: [Output] = [.report(.remoteChanged(entry, home: homeName))]
        for recipient in classicSubscribers { actions += announceClassic(entry, to: recipient) }
        roster.changed(info.id, .present, size: Self.recordSize(entry), now: now)
        updateRosterScope(now: now)
        return actions
    }

    /// Removes remote `entry` (its home said it left, or its home is gone).
    mutating func removeRemote(_ entry: Entry, home: String, reason: LeaveReason, now: Instant) -> [Output] {
        cluster?.remoteSessionStarts[entry.id] = nil
        forgetHelpers(entry.id)
        entries.removeValue(forKey: entry.id)
        var actions: [Output] = [.report(.remoteLeft(entry, home: home))]
        actions += departed(entry, reason: reason, notifying: classicSubscribers, now: now)
        updateRosterScope(now: now)
        return actions
    }
}
