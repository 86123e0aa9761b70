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
        roster.subscribe(entry.id, everyone: { table.entries.sorted { $0.sequence < $1.sequence }.map(\.id) }, now: now)
    }

    mutating func updateRosterScope(now: Instant) {
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

    mutating func allowQuery(_ id: ClientID, now: Instant) -> Bool {
        let rate = configuration.queriesPerSecond
        var bucket = queryBuckets[id] ?? TokenBucket(rate: rate, burst: rate * 2, now: now)
        defer { queryBuckets[id] = bucket }
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
}
