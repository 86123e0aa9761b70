/// The peers a client recognises, as ssh's `known_hosts` recognises hosts: for each
/// (server, peer ID), the fingerprint of the key pinned at first sight, and when the peer
/// was first and last seen.
///
/// A sans-I/O core: no clock and no file. Dates are wall-clock Unix seconds passed in by
/// the caller; ``KnownPeersFormat`` turns the records into the file's text and back, and
/// ``KnownPeersFile`` reads and writes the file.
///
/// - ``observe(server:id:fingerprint:now:)`` — a peer was shown with this key. The first
///   key is pinned (``Observation/new``); the same key updates *last seen*
///   (``Observation/known``); another key is **not** taken: the peer is *held*
///   (``Observation/changed(pinned:seen:)``) until ``trust(server:id:now:)``.
/// - ``trust(server:id:now:)`` — the user checked the new key out of band: it replaces the
///   pin and the hold ends.
/// - ``whois(server:id:)`` — the record.
///
/// Holds are not persisted: a held peer that shows up again after a restart is held again,
/// because its key still differs from the pin.
public struct KnownPeers: Hashable, Sendable {
    /// Where a peer is known: the server (as the user named it) and the peer's ID there.
    public struct Key: Hashable, Sendable, Comparable {
        public var server: String
        public var id: String

        public init(server: String, id: String) {
            self.server = server
            self.id = id
        }

        public static func < (lhs: Key, rhs: Key) -> Bool {
            (lhs.server, lhs.id) < (rhs.server, rhs.id)
        }
    }

    /// What is known of one peer.
    public struct Record: Hashable, Sendable {
        /// The server as the user named it (`host:port`).
        public var server: String
        public var id: String
        /// The pinned key's fingerprint.
        public var fingerprint: String
        /// When the pinned key was first seen (Unix seconds, UTC).
        public var firstSeen: Int64
        /// When the peer was last seen with the pinned key (Unix seconds, UTC).
        public var lastSeen: Int64
        /// While held: the other key's fingerprint last seen. Not written to the file.
        public var heldFingerprint: String?

        public init(server: String, id: String, fingerprint: String, firstSeen: Int64, lastSeen: Int64,
                    heldFingerprint: String? = nil) {
            self.server = server
            self.id = id
            self.fingerprint = fingerprint
            self.firstSeen = firstSeen
            self.lastSeen = lastSeen
            self.heldFingerprint = heldFingerprint
        }

        public var key: Key { Key(server: server, id: id) }
        /// Whether the peer showed another key than the pinned one and the user has not
        /// trusted it yet.
        public var isHeld: Bool { heldFingerprint != nil }
    }

    /// What one sighting of a peer's key means.
    public enum Observation: Hashable, Sendable {
        /// First sight: the key is pinned now.
        case new
        /// The pinned key (a hold, if any, ends: the peer is back with the key trusted).
        case known
        /// Another key than the pinned one: not taken; the peer is held. Returned when the
        /// hold begins and whenever the key seen differs from the one seen last while held.
        case changed(pinned: String, seen: String)
        /// The same other key as last time, while held: nothing new to tell.
        case stillHeld(pinned: String, seen: String)
    }

    /// What ``trust(server:id:now:)`` did.
    public enum TrustOutcome: Hashable, Sendable {
        /// The held key replaced the pin, and the hold ended.
        case trusted(previous: String, now: String)
        /// The peer is not held: nothing changed.
        case notHeld(fingerprint: String)
        /// No key is pinned for this peer.
        case unknown
    }

    /// *Last seen* moves only when it is at least this old (seconds), so that a busy roster
    /// does not make every sighting a change to write.
    public static let lastSeenResolution: Int64 = 60

    private var records: [Key: Record] = [:]
    /// Counts changes worth writing (pins, trusts, *last seen* moves); holds are not counted.
    public private(set) var revision: UInt64 = 0

    /// A table holding `records` (from the file). A later record of the same key replaces an earlier one.
    public init(records: [Record] = []) {
        for record in records { self.records[record.key] = record }
    }

    /// Every record, sorted by server and ID.
    public var allRecords: [Record] { records.values.sorted { $0.key < $1.key } }

    /// How many peers are known (on every server).
    public var count: Int { records.count }

    /// The record of `id` on `server`, or `nil` when no key is pinned for it.
    public func whois(server: String, id: String) -> Record? {
        records[Key(server: server, id: id)]
    }

    /// Whether `id` on `server` is held (it showed another key than the pinned one).
    public func isHeld(server: String, id: String) -> Bool {
        records[Key(server: server, id: id)]?.isHeld ?? false
    }

    /// The peers held on `server`, sorted.
    public func held(on server: String) -> [String] {
        records.values.filter { $0.server == server && $0.isHeld }.map(\.id).sorted()
    }

    /// `id` on `server` was shown with the key of this `fingerprint` at `now` (Unix seconds).
    public mutating func observe(server: String, id: String, fingerprint: String, now: Int64) -> Observation {
        let key = Key(server: server, id: id)
        guard var record = records[key] else {
            records[key] = Record(server: server, id: id, fingerprint: fingerprint, firstSeen: now, lastSeen: now)
            revision &+= 1
            return .new
        }
        if record.fingerprint == fingerprint {
            let wasHeld = record.isHeld
            record.heldFingerprint = nil
            let moved = now - record.lastSeen >= Self.lastSeenResolution
            if moved { record.lastSeen = now }
            if moved || wasHeld { records[key] = record }
            if moved { revision &+= 1 }
            return .known
        }
        let previous = record.heldFingerprint
        record.heldFingerprint = fingerprint
        records[key] = record
        return previous == fingerprint
            ? .stillHeld(pinned: record.fingerprint, seen: fingerprint)
            : .changed(pinned: record.fingerprint, seen: fingerprint)
    }

    /// The user trusts the key `id` last showed on `server` while held: it replaces the pin
    /// (first and last seen start again at `now`) and the hold ends.
    public mutating func trust(server: String, id: String, now: Int64) -> TrustOutcome {
        let key = Key(server: server, id: id)
        guard let record = records[key] else { return .unknown }
        guard let seen = record.heldFingerprint else { return .notHeld(fingerprint: record.fingerprint) }
        records[key] = Record(server: server, id: id, fingerprint: seen, firstSeen: now, lastSeen: now)
        revision &+= 1
        return .trusted(previous: record.fingerprint, now: seen)
    }

    /// Adds the records of `other` that this table does not have (another process wrote
    /// them to the shared file); this table's own records win.
    public mutating func adopt(missingFrom other: [Record]) {
        for record in other where records[record.key] == nil {
            var adopted = record
            adopted.heldFingerprint = nil
            records[record.key] = adopted
        }
    }
}
