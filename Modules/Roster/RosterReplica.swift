import Addressing
import DequeModule
import Wire

/// A client's copy of the server's roster, kept up to date by roster deltas and look-up
/// answers: a sans-I/O core with no clock, whose every change costs the same at 10 peers
/// as at 100 000 (a dictionary update and two ``SortedChunks`` updates; no copy of the
/// table, no sort, no array insertion that moves the whole list).
///
/// - Versions: each record carries the roster version of the client's last change; a record
///   is applied only when it is newer than what the replica holds or remembers of a
///   departed client (a bounded set of tombstones), so late, repeated or reordered datagrams
///   never undo a newer change. Versions compare within one server epoch; a new epoch (a
///   restarted server) starts the comparison over.
/// - Sessions: after ``beginSession()`` everything held is *stale* until a record confirms
///   it; when the feed says it is whole (``RosterDelta/synced``), stale clients are dropped
///   (in the complete scope they are reported as gone: they left while nobody was listening).
/// - Keys are pinned at first sight: a record with other keys for a client held is not
///   taken and is reported (``Change/keyChanged(_:)``).
/// - Acknowledgements: ``acknowledgement`` is what to put in the next roster ack.
public struct RosterReplica: Sendable {
    /// One client as held.
    public struct Peer: Hashable, Sendable {
        public var info: PeerInfo
        public var order: UInt64
        public var version: UInt64
    }

    /// How a client the replica did not hold came to it.
    public enum Arrival: Hashable, Sendable {
        /// News: it registered (or came back) while the replica was whole.
        case registered
        /// Part of a listing: the roster after registering, or again after a gap.
        case listed
        /// An answer to a question (a look-up), or a server instruction naming it (a punch).
        case answered
    }

    /// What a delta or an answer changed, for the owner to act on and the user to hear.
    public enum Change: Hashable, Sendable {
        /// A client the replica did not hold.
        case joined(PeerInfo, Arrival)
        case updated(PeerInfo, previous: PeerInfo)
        case left(ClientID, LeaveReason, Endpoint)
        /// The server announced other keys for a held client than the pinned ones.
        case keyChanged(ClientID)
        /// The server now pushes this scope.
        case scopeChanged(RosterScope)
        /// The copy is whole: every change in scope up to the feed's version is in.
        case synced(registered: Int)
    }

    private struct OrderKey: Comparable, Sendable {
        var order: UInt64
        var id: ClientID
        static func < (a: OrderKey, b: OrderKey) -> Bool { (a.order, a.id) < (b.order, b.id) }
    }

    public let selfID: ClientID
    public private(set) var scope: RosterScope = .complete
    /// How many clients the server said are registered (itself included).
    public private(set) var registeredCount = 0
    /// Whether the copy is whole (a synced delta arrived since the last session began).
    public private(set) var isSynced = false
    private var epoch: UInt32?
    private var headerVersion: UInt64 = 0
    private var peers: [ClientID: Peer] = [:]
    private var stale: Set<ClientID> = []
    private var tombstones: [ClientID: UInt64] = [:]
    private var tombstoneOrder: Deque<ClientID> = []
    private let maxTombstones: Int
    private var byOrder: SortedChunks<OrderKey>
    private var names: SortedChunks<ClientID>
    private var largestReceived: UInt32 = 0
    private var receivedBits: UInt64 = 0

    /// - Parameter maxTombstones: how many departed clients' versions are remembered.
    public init(selfID: ClientID, maxTombstones: Int = 4096, chunkCapacity: Int = 512) {
        self.selfID = selfID
        self.maxTombstones = max(1, maxTombstones)
        byOrder = SortedChunks(chunkCapacity: chunkCapacity)
        names = SortedChunks(chunkCapacity: chunkCapacity)
    }

    /// Clients held.
    public var count: Int { peers.count }

    public func peer(_ id: ClientID) -> Peer? { peers[id] }

    /// The work the ordered views did so far (comparisons and moves; see ``SortedChunks/work``).
    public var work: Int { byOrder.work + names.work }

    /// Up to `limit` clients in registration order, from position `offset`.
    public func listed(from offset: Int, limit: Int) -> [ClientID] {
        byOrder.elements(from: offset, limit: limit).map(\.id)
    }

    /// Every held client's ID in registration order (one pass).
    public var listedIDs: [ClientID] { byOrder.sorted.map(\.id) }

    /// Up to `limit` held IDs that start with `prefix` (as text, character by character), sorted.
    public func completions(of prefix: String, limit: Int) -> [ClientID] {
        let start = names.rank { $0.rawValue >= prefix }
        let scalars = prefix.unicodeScalars
        return names.elements(from: start, limit: Int.max) { $0.rawValue.unicodeScalars.starts(with: scalars) }
            .lazy.filter { $0.rawValue.hasPrefix(prefix) }.prefix(limit).map { $0 }
    }

    /// What to acknowledge: the largest delta number received and the 64 before it.
    public var acknowledgement: (largest: UInt32, received: UInt64)? {
        largestReceived == 0 ? nil : (largestReceived, receivedBits)
    }

    /// A new session with the server: its feed numbers from 1 again, and what is held is
    /// stale until confirmed.
    ///
    /// `newServer`: the session is with another server (the client failed over). Its epoch
    /// and versions need not compare with the ones held, so they are forgotten (as for a
    /// restarted server): any present record of the new feed confirms a client held, and
    /// only its absence from the whole feed makes it leave.
    public mutating func beginSession(newServer: Bool = false) {
        largestReceived = 0
        receivedBits = 0
        stale = Set(peers.keys)
        isSynced = false
        if newServer {
            for id in Array(peers.keys) { peers[id]?.version = 0 }
            tombstones.removeAll()
            tombstoneOrder.removeAll()
            epoch = nil
            headerVersion = 0
        }
    }

    /// Stops holding every client for which `keep` is false, telling nobody (the interest
    /// scope: they did not leave, the server just stops pushing them).
    public mutating func retain(where keep: (ClientID) -> Bool) {
        for id in Array(peers.keys) where !keep(id) { drop(id) }
    }

    /// Applies one delta; returns what changed, in order.
    public mutating func apply(_ delta: RosterDelta) -> [Change] {
        noteReceived(delta.sequence)
        var changes: [Change] = []
        adoptEpoch(delta.epoch)
        if delta.version >= headerVersion {
            headerVersion = delta.version
            registeredCount = Int(delta.registered)
            if delta.scope != scope {
                scope = delta.scope
                isSynced = false
                changes.append(.scopeChanged(scope))
            }
        }
        for record in delta.records { apply(record, arrival: isSynced ? .registered : .listed, into: &changes) }
        if delta.synced, !isSynced {
            isSynced = true
            for id in stale {
                guard let gone = peers[id] else { continue }
                drop(id)
                if scope == .complete { changes.append(.left(id, .offline, gone.info.publicEndpoint)) }
            }
            stale.removeAll()
            changes.append(.synced(registered: registeredCount))
        }
        return changes
    }

    /// Applies a look-up answer: `found`, or (when `nil`) the server's word at roster version
    /// `version` that `peer` is not registered.
    public mutating func applyLookup(epoch: UInt32, version: UInt64, peer: ClientID, found: RosterEntry?) -> [Change] {
        adoptEpoch(epoch)
        var changes: [Change] = []
        if let found {
            apply(.present(found), arrival: .answered, into: &changes)
        } else if let held = peers[peer], held.version < version {
            apply(.absent(peer, version: version, reason: .offline, publicEndpoint: held.info.publicEndpoint), arrival: .answered,
                  into: &changes)
        }
        return changes
    }

    /// Holds `info` if it is not held yet, from a message that vouches for it without a
    /// version (the server's punch instruction): any later record replaces it.
    public mutating func learn(_ info: PeerInfo) -> [Change] {
        guard info.id != selfID else { return [] }
        if let held = peers[info.id] {
            if let pinned = held.info.keys, let offered = info.keys, pinned != offered { return [.keyChanged(info.id)] }
            return []
        }
        let entry = RosterEntry(info: info, order: .max, version: tombstones[info.id] ?? 0)
        peers[info.id] = Peer(info: info, order: entry.order, version: entry.version)
        byOrder.insert(OrderKey(order: entry.order, id: info.id))
        names.insert(info.id)
        return [.joined(info, .answered)]
    }

    // MARK: - Internals

    private mutating func noteReceived(_ sequence: UInt32) {
        guard sequence != 0 else { return }
        if sequence > largestReceived {
            let shift = UInt64(sequence - largestReceived)
            receivedBits = largestReceived == 0 || shift > 64 ? 0 : (shift == 64 ? 1 << 63 : receivedBits << shift | 1 << (shift - 1))
            largestReceived = sequence
        } else if sequence < largestReceived {
            let distance = UInt64(largestReceived - sequence - 1)
            if distance < 64 { receivedBits |= 1 << distance }
        }
    }

    private mutating func adoptEpoch(_ newEpoch: UInt32) {
        guard epoch != newEpoch else { return }
        if epoch != nil {
            // A restarted server numbers versions from scratch: ours mean nothing to it.
            for id in Array(peers.keys) { peers[id]?.version = 0 }
            tombstones.removeAll()
            tombstoneOrder.removeAll()
        }
        epoch = newEpoch
        headerVersion = 0
    }

    private mutating func apply(_ record: RosterRecord, arrival: Arrival, into changes: inout [Change]) {
        let id = record.id
        guard id != selfID else { return }
        if let held = peers[id] {
            guard record.version > held.version else {
                // The same state again: a resynchronisation confirms what is held.
                if record.version == held.version, case .present = record { stale.remove(id) }
                return
            }
            stale.remove(id)
            switch record {
            case .present(let entry):
                if let pinned = held.info.keys, let offered = entry.info.keys, pinned != offered {
                    peers[id]?.version = entry.version
                    changes.append(.keyChanged(id))
                    return
                }
                var info = entry.info
                info.keys = held.info.keys ?? entry.info.keys
                if entry.order != held.order {
                    byOrder.remove(OrderKey(order: held.order, id: id))
                    byOrder.insert(OrderKey(order: entry.order, id: id))
                }
                peers[id] = Peer(info: info, order: entry.order, version: entry.version)
                if info != held.info { changes.append(.updated(info, previous: held.info)) }
            case .absent(_, let version, let reason, let endpoint):
                drop(id)
                remember(id, version: version)
                changes.append(.left(id, reason, endpoint))
            }
            return
        }
        if let tombstone = tombstones[id], record.version <= tombstone { return }
        switch record {
        case .present(let entry):
            peers[id] = Peer(info: entry.info, order: entry.order, version: entry.version)
            byOrder.insert(OrderKey(order: entry.order, id: id))
            names.insert(id)
            changes.append(.joined(entry.info, arrival))
        case .absent(_, let version, _, _):
            remember(id, version: version)
        }
    }

    private mutating func drop(_ id: ClientID) {
        guard let held = peers.removeValue(forKey: id) else { return }
        stale.remove(id)
        byOrder.remove(OrderKey(order: held.order, id: id))
        names.remove(id)
    }

    private mutating func remember(_ id: ClientID, version: UInt64) {
        if tombstones.updateValue(max(version, tombstones[id] ?? 0), forKey: id) == nil {
            tombstoneOrder.append(id)
            if tombstoneOrder.count > maxTombstones, let oldest = tombstoneOrder.popFirst() { tombstones[oldest] = nil }
        }
    }
}
