import Addressing
import Identity
import MonotonicTime
import Store
import Wire

/// The registry's membership in a cluster of servers that share one database, a sub-machine
/// of ``Registry``: who the other servers are and where they listen, the key that
/// authenticates datagrams between them, and the registrations waiting for the database to
/// decide their claims.
///
/// Registries in a cluster show each other's clients as their own (remote entries, see
/// ``Registry/applyPresence(_:now:)``), coordinate punches across servers and relay through
/// each other (``ExtendedMessage/serverPunch(target:peer:round:delayMillis:)``,
/// ``ExtendedMessage/serverRelay(from:to:payload:)``).
struct ClusterMembership: Sendable {
    /// Another server, as the database lists it.
    struct Peer: Hashable, Sendable {
        var name: String
        var endpoint: Endpoint?
        var heartbeat: Int64
        /// Its heartbeat is recent: its clients are shown.
        var alive: Bool
    }

    /// A registration parked until the database decides its ID's claim.
    struct PendingRegistration: Sendable {
        var datagram: ExtendedDatagram
        var bytes: [UInt8]
        var source: Endpoint
        var keys: PublicKeys
    }

    /// Most registrations waiting for the database at once; more are dropped (their clients
    /// retry, as after a lost datagram).
    static let pendingLimit = 4096

    /// This server's name in the cluster.
    let name: String
    /// The cluster key (server datagrams carry the session trailer under it).
    let key: KeyBytes
    /// The next counter for a datagram to another server: microseconds of wall-clock time at
    /// least, so that a restarted server's counters stay above the ones it used before.
    var nextCounter: UInt64 = 0
    /// Index `i` (from 1; 0 is this server in ``Registry/Entry/home``) is `peers[i - 1]`.
    var peers: [Peer] = []
    var indexByName: [String: UInt16] = [:]
    /// Replay windows of authenticated senders, by source (as many as there are servers).
    var replay: [Endpoint: ReplayWindow] = [:]
    var pending: [ClientID: PendingRegistration] = [:]
    /// When each remote entry's session began (its home's ``PresenceRecord/sessionStart``):
    /// a departure of a later session, from another server, ends it too.
    var remoteSessionStarts: [ClientID: Int64] = [:]
    /// Whether the last claim the driver reported came back from the database.
    var databaseReachable = true

    init(name: String, secret: [UInt8]) {
        self.name = name
        key = SessionCrypto.clusterKey(secret: secret)
    }

    /// The index for a server named `name`, made when new.
    mutating func index(of name: String) -> UInt16 {
        if let index = indexByName[name] { return index }
        peers.append(Peer(name: name, endpoint: nil, heartbeat: 0, alive: true))
        let index = UInt16(clamping: peers.count)
        indexByName[name] = index
        return index
    }

    func peer(_ index: UInt16) -> Peer? {
        guard index >= 1, Int(index) <= peers.count else { return nil }
        return peers[Int(index) - 1]
    }

    /// A datagram to another server, with its counter and tag.
    mutating func seal(_ message: ExtendedMessage, unixMicros: UInt64) -> [UInt8] {
        nextCounter = max(nextCounter &+ 1, unixMicros)
        return SessionCrypto.sealed(message, counter: nextCounter, key: key)
    }

    /// Whether `bytes` (a server datagram with `counter`) come from a server of the cluster
    /// (an endpoint the database lists), carry a valid tag under the cluster key and a counter
    /// not seen before from `source` (which is then recorded). The replay windows are kept per
    /// source: a datagram accepted from anywhere else could be replayed once from each
    /// address an attacker can send from.
    mutating func accept(_ bytes: [UInt8], counter: UInt64, from source: Endpoint) -> Bool {
        guard peers.contains(where: { $0.endpoint == source }), SessionCrypto.verifyAuthenticated(bytes, key: key) else {
            return false
        }
        var window = replay[source] ?? ReplayWindow()
        guard window.accept(counter) else { return false }
        replay[source] = window
        return true
    }
}

/// The counters accepted from one sender: the highest, and which of the 64 below it were
/// seen. Datagrams between servers may be reordered, so a counter below the highest is
/// accepted once, within the window (IPsec's anti-replay window, RFC 4303 §3.4.3).
struct ReplayWindow: Hashable, Sendable {
    var highest: UInt64 = 0
    var seen: UInt64 = 0

    mutating func accept(_ counter: UInt64) -> Bool {
        if counter > highest {
            let shift = counter - highest
            seen = shift >= 64 ? 0 : seen << shift
            seen |= 1
            highest = counter
            return true
        }
        let offset = highest - counter
        guard offset < 64, seen & (1 << offset) == 0 else { return false }
        seen |= 1 << offset
        return true
    }
}
