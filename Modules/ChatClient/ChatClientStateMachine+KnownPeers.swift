import Addressing
import ChatRouter
import HolePunch
import Identity
import KnownPeers
import MonotonicTime
import Wire

/// Known peers: a peer's key is remembered once the user has chatted with it (a chat shown
/// from it, or one it acknowledged), and from then on every sighting of its keys, whichever
/// path showed them (the roster, a look-up, a punch), is checked against the key remembered
/// (``ChatClientStateMachine/knownPeers``). A peer that shows another key is held (chat to
/// and from it stops) until `@trust`; the table is saved through
/// ``ChatClientStateMachine/Output/saveKnownPeers(_:)``, at most once per
/// ``ChatClientStateMachine/Configuration/knownPeersSaveDelay``.
extension ChatClientStateMachine {
    /// The wall-clock time of an instant of the machine's clock: the driver gives one
    /// instant's Unix time at start, and the machine counts from there (a wall-clock step
    /// during a run is not followed; dates in the known-peers file, and the date a mailbox
    /// message says it was written, are to the second). The router's, which it is given.
    public typealias WallClock = ExtendedRouter.WallClock

    /// Checks a peer's keys, as the roster, a look-up or a punch showed them, against the
    /// known peers; holds the peer when they differ, releases it when the pinned key is back.
    /// `pin`: remember the key of a peer not known yet (the user chatted with it); otherwise
    /// a peer not known is left alone, so that the file holds the peers talked to, not
    /// everyone the server lists.
    mutating func vet(_ info: PeerInfo, pin: Bool = false, now: Instant) {
        guard info.dialect == .extended, let keys = info.keys else { return }
        vet(info.id, fingerprint: IdentityKey.fingerprint(of: keys), pin: pin, now: now)
    }

    /// Checks the key (its fingerprint) a natchat/2 peer showed (in the roster, a look-up, a
    /// punch, or the claim a mailbox message is sealed to), as ``vet(_:pin:now:)``.
    mutating func vet(_ id: ClientID, fingerprint: String, pin: Bool = false, now: Instant) {
        guard id != configuration.id, let table = knownPeers else { return }
        guard pin || table.whois(server: configuration.knownPeersServer, id: id.rawValue) != nil else { return }
        let unixNow = configuration.wallClock.unixSeconds(at: now)
        switch knownPeers?.observe(server: configuration.knownPeersServer, id: id.rawValue, fingerprint: fingerprint, now: unixNow) {
        case .new, nil:
            break
        case .known:
            _ = withNatchat2 { $0.router.release(id) }
        case .changed(let pinned, let seen):
            _ = withNatchat2 { $0.router.hold(id) }
            emit(.peerKeyChanged(id, pinned: pinned, seen: seen))
        case .stillHeld:
            _ = withNatchat2 { $0.router.hold(id) }
        }
        scheduleKnownPeersSave(now: now)
    }

    /// A message from the mailbox, signed by the key `signedBy` (a fingerprint): shown, and
    /// its key pinned if `from` is not known yet, unless `from` is known with another key;
    /// then it is not shown as from `from` (a warning instead; the router acknowledged it, so
    /// the server does not resend it: the key that signed it is not `from`'s as far as this
    /// client knows, and holding it would hold nothing that `@trust` could release).
    mutating func receivedMail(from: ClientID, text: String, sentAt: UInt64, signedBy: String, now: Instant) {
        if let record = knownPeers?.whois(server: configuration.knownPeersServer, id: from.rawValue), record.fingerprint != signedBy {
            return emit(.mailRejected(from: from, .otherKey(seen: signedBy, known: record.fingerprint)))
        }
        emit(.mail(from: from, text: text, sentAt: sentAt))
        vet(from, fingerprint: signedBy, pin: true, now: now)
    }

    /// A chat with `id` went through (shown from it, or acknowledged by it): its key, the one
    /// the pair key was made from, is remembered if it is not yet.
    mutating func chatted(with id: ClientID, now: Instant) {
        guard let info = natchat2Router?.peer(id) else { return }
        vet(info, pin: true, now: now)
    }

    /// `@trust ID`: the key the peer showed while held replaces the pinned one.
    mutating func trust(_ id: ClientID, now: Instant) {
        let unixNow = configuration.wallClock.unixSeconds(at: now)
        guard knownPeers != nil else { return emit(.knownPeersOff) }
        switch knownPeers?.trust(server: configuration.knownPeersServer, id: id.rawValue, now: unixNow) {
        case .trusted(let previous, let current):
            _ = withNatchat2 { $0.router.release(id) }
            emit(.trusted(id, previous: previous, now: current))
            scheduleKnownPeersSave(now: now)
        case .notHeld(let fingerprint):
            emit(.trustNotNeeded(id, fingerprint: fingerprint))
        case .unknown, nil:
            emit(.nothingPinned(id))
        }
    }

    /// `@whois ID`: the pinned key, its dates, whether the peer is held, and the path.
    mutating func whois(_ id: ClientID) {
        let record = knownPeers?.whois(server: configuration.knownPeersServer, id: id.rawValue)
        let path: WhoisReport.Path
        if id == configuration.id {
            path = .yourself
        } else if let router = natchat2Router {
            if let peer = router.peer(id) {
                path = peer.dialect == .classic ? .classicPeer : .path(router.path(to: id) ?? .none)
            } else {
                path = .notHeld
            }
        } else {
            path = .classicSession
        }
        emit(.whois(WhoisReport(id: id, record: record, path: path, knownPeersOff: knownPeers == nil)))
    }

    /// Holds, in a new router, the peers the table holds (a session that began again).
    func heldPeerIDs() -> [ClientID] {
        (knownPeers?.held(on: configuration.knownPeersServer) ?? []).compactMap { try? ClientID($0) }
    }

    /// A change to save: the save is due after the configured delay (changes in the
    /// meantime go with it).
    mutating func scheduleKnownPeersSave(now: Instant) {
        guard let knownPeers, knownPeers.revision != savedKnownPeersRevision, knownPeersSaveDue == nil else { return }
        knownPeersSaveDue = now + configuration.knownPeersSaveDelay
    }

    /// Emits the save when it is due (`force`: now, if anything changed).
    mutating func saveKnownPeersIfDue(now: Instant, force: Bool = false) {
        guard let knownPeers, knownPeers.revision != savedKnownPeersRevision else {
            knownPeersSaveDue = nil
            return
        }
        guard force || (knownPeersSaveDue.map { $0 <= now } ?? false) else { return }
        knownPeersSaveDue = nil
        savedKnownPeersRevision = knownPeers.revision
        outputs.append(.saveKnownPeers(knownPeers.allRecords))
    }
}

/// What `@whois` found out about a peer.
public struct WhoisReport: Hashable, Sendable {
    /// Where the peer is, as far as this client knows.
    public enum Path: Hashable, Sendable {
        /// A natchat/2 peer the client holds, and its path (`.none` before any chat).
        case path(PathAgent.Path)
        /// A classic peer: it has no key, and chats go to its address.
        case classicPeer
        /// Not in the roster the client holds (offline, or not asked about yet).
        case notHeld
        /// The session is classic: nothing is known of paths or keys.
        case classicSession
        /// The ID is this client's own.
        case yourself
    }

    public var id: ClientID
    /// The known-peers record on this server (`nil`: no key pinned).
    public var record: KnownPeers.Record?
    public var path: Path
    /// Known peers are off (`--known-peers none`): no key is remembered.
    public var knownPeersOff: Bool

    public init(id: ClientID, record: KnownPeers.Record?, path: Path, knownPeersOff: Bool = false) {
        self.id = id
        self.record = record
        self.path = path
        self.knownPeersOff = knownPeersOff
    }
}
