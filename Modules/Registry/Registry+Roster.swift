import Addressing
import Admission
import MonotonicTime
import Roster
import Wire

// The roster as natchat/2 subscribers get it (feeds), and the look-ups and list queries
// any natchat/2 client may make.

extension Registry {
    /// A natchat/2 client's (new) session: its roster feed starts over, or it has none.
    mutating func startFeed(_ entry: Entry, now: Instant) {
        guard entry.dialect == .extended, entry.subscribed else {
            roster.unsubscribe(entry.id)
            return
        }
        let table = entries
        roster.subscribe(entry.id, everyone: { Self.everyone(table) }, sizeOf: { table[$0].map(Self.recordSize) }, now: now)
    }

    mutating func updateRosterScope(now: Instant) {
        let table = entries
        roster.updateScope(registered: entries.count, everyone: { Self.everyone(table) }, sizeOf: { table[$0].map(Self.recordSize) },
                           now: now)
    }

    /// Every registered client in registration order, with the size of its roster record.
    private static func everyone(_ table: ClientTable) -> [(ClientID, Int)] {
        table.entries.sorted { $0.sequence < $1.sequence }.map { ($0.id, recordSize($0)) }
    }

    /// About how many bytes a client's present record takes (its private endpoints counted
    /// even when a recipient does not get them): kind, peer info (ID, endpoint, private
    /// endpoints, NAT kind, dialect, key flag, keys, the claim's date), order, version.
    static func recordSize(_ entry: Entry) -> Int {
        1 + (1 + entry.id.rawValue.utf8.count) + 6 + (1 + 6 * entry.privateEndpointCount) + 3 + (entry.keys == nil ? 0 : 64)
            + (entry.claimedSince == 0 ? 0 : 4) + 16
    }

    /// The size of a departed client's record: kind, ID, version, reason, endpoint.
    static func absentRecordSize(_ id: ClientID) -> Int {
        1 + (1 + id.rawValue.utf8.count) + 8 + 1 + 6
    }

    /// The roster datagrams due at `now` (``handleTimeout(now:)`` sends them when due).
    public mutating func flushRoster(now: Instant) -> [Output] {
        let table = entries
        let deltas = roster.handleTimeout(now: now, registered: table.count, record: { subscriber, id, note in
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

    mutating func allowQuery(_ id: ClientID, now: Instant) -> Bool {
        let rate = configuration.queriesPerSecond
        var bucket = queryBuckets[id] ?? TokenBucket(rate: rate, burst: rate * 2, now: now)
        defer { queryBuckets[id] = bucket }
        return bucket.take(now: now)
    }

    /// Whether a path report from `id` counts: a token bucket per client
    /// (``Configuration/pathReportsPerMinute``, a burst of ``Configuration/pathReportBurst``),
    /// so that a client flooding reports cannot skew the server's punch outcome counters by
    /// more than a few reports a minute.
    mutating func allowPathReport(_ id: ClientID, now: Instant) -> Bool {
        var bucket = pathReportBuckets[id]
            ?? TokenBucket(rate: configuration.pathReportsPerMinute / 60, burst: configuration.pathReportBurst, now: now)
        defer { pathReportBuckets[id] = bucket }
        return bucket.take(now: now)
    }

    /// One page of the IDs starting with `prefix`, sorted, as many as fit a datagram.
    func listPage(query: UInt32, prefix: String, offset: UInt32, limit: UInt16) -> ExtendedMessage {
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
        var budget = roster.datagramBudget
        var listed: [ListEntry] = []
        for id in sortedIDs.elements(from: start + skip, limit: min(Int(limit), ListEntry.maxPerDatagram, total - skip)) {
            guard let entry = entries[id] else { continue }
            budget -= 13 + id.rawValue.utf8.count
            guard budget >= 0 else { break }
            listed.append(ListEntry(id: id, publicEndpoint: entry.publicEndpoint, natKind: entry.natKind, dialect: entry.dialect,
                                    claimedSince: entry.claimedSince))
        }
        return .listPage(query: query, total: UInt32(clamping: total), offset: UInt32(skip), entries: listed)
    }
}
