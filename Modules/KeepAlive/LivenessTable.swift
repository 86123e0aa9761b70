import MonotonicTime

/// The server's side of keep-alive: when each client was last heard, and which have been
/// silent for longer than the timeout.
///
/// A client is expired when it has been silent for *strictly more* than ``timeout``
/// (the seed's `time() - last > 30`): silent for exactly the timeout, it survives that
/// sweep. ``handleTimeout(now:)`` (the sweep: it returns the expired keys) costs time in
/// proportion to the entries it looks at, not to the table: touches are queued in time order
/// and stale queue entries are skipped lazily.
///
/// The queue is bounded by the number of keys, not by how often they are touched: once it
/// holds more than twice as many entries as there are keys (plus a constant), the stale
/// ones (a key's older touches) are dropped in one pass that keeps the order. Without that,
/// a client sending keep-alives as fast as it could would grow it by an entry per datagram
/// for a whole timeout (at 170 000 keep-alives a second, 120 MB).
public struct LivenessTable<Key: Hashable & Sendable>: Sendable, SansIOCore {
    /// A key silent for more than the timeout (removed from the table).
    public typealias Output = Key

    /// How long a client may stay silent.
    public var timeout: Duration

    private var lastHeard: [Key: Instant] = [:]
    private var queue: [(key: Key, heard: Instant)] = []
    private var queueHead = 0

    public init(timeout: Duration = .seconds(30)) {
        self.timeout = timeout
    }

    /// Number of live entries.
    public var count: Int { lastHeard.count }

    /// When `key` was last heard, if it is in the table.
    public func lastHeard(_ key: Key) -> Instant? { lastHeard[key] }

    /// Whether `key` is in the table and has been silent for more than the timeout at `now`.
    public func isExpired(_ key: Key, now: Instant) -> Bool {
        guard let heard = lastHeard[key] else { return false }
        return now - heard > timeout
    }

    /// Records that `key` was heard at `now` (adds it when new).
    public mutating func touch(_ key: Key, now: Instant) {
        if let previous = lastHeard[key], previous >= now { return }
        lastHeard[key] = now
        queue.append((key, now))
        if queue.count - queueHead > 2 * lastHeard.count + Self.compactionSlack { dropStaleQueueEntries() }
    }

    /// Queue entries beyond twice the number of keys before stale ones are dropped.
    static var compactionSlack: Int { 4096 }

    /// Queued touches, stale ones included (for tests of the bound).
    var queuedCount: Int { queue.count - queueHead }

    /// Keeps only each key's latest touch, in queue order: the entries ``handleTimeout(now:)`` would
    /// not skip. Amortised over the appends since the last pass, a constant per touch.
    private mutating func dropStaleQueueEntries() {
        var kept = 0
        for index in queueHead..<queue.count where lastHeard[queue[index].key] == queue[index].heard {
            queue[kept] = queue[index]
            kept += 1
        }
        queue.removeLast(queue.count - kept)
        queueHead = 0
    }

    /// Forgets `key` (it left).
    public mutating func remove(_ key: Key) {
        lastHeard[key] = nil
    }

    /// When the oldest queued touch passes the timeout (it may be a key touched again since:
    /// then that wake-up expires nothing and the next is later).
    public var nextDeadline: Instant? {
        guard queueHead < queue.count else { return nil }
        return queue[queueHead].heard + timeout + .nanoseconds(1)
    }

    /// Removes and returns every key silent for more than the timeout at `now`, oldest first.
    public mutating func handleTimeout(now: Instant) -> [Key] {
        var expired: [Key] = []
        while queueHead < queue.count {
            let entry = queue[queueHead]
            guard now - entry.heard > timeout else { break }
            queueHead += 1
            if lastHeard[entry.key] == entry.heard {
                lastHeard[entry.key] = nil
                expired.append(entry.key)
            }
        }
        compactQueueIfWorthIt()
        return expired
    }

    private mutating func compactQueueIfWorthIt() {
        if queueHead > 1024, queueHead * 2 > queue.count {
            queue.removeFirst(queueHead)
            queueHead = 0
        } else if queueHead == queue.count {
            queue.removeAll(keepingCapacity: true)
            queueHead = 0
        }
    }
}
