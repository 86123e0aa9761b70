import Addressing
import MonotonicTime
import Roster
import Wire

/// The registry's roster publisher: who among the natchat/2 subscribers must hear of which
/// change, through each one's ``RosterFeed``. A sub-machine of ``Registry`` (which owns the
/// table and builds the records); it does no I/O and reads no clock.
///
/// - Versions: every visible change (a registration, a move, a changed NAT kind or private
///   endpoint, a departure) takes the next roster version; records carry it.
/// - Scope: while at most ``Configuration/limit`` clients are registered, every subscriber
///   hears of every change (``RosterScope/complete``). Past it, a terminal user could not
///   read the list anyway, and pushing every join to every subscriber would make a join cost
///   the server and each subscriber in proportion to the roster: subscribers then hear only
///   of the clients they asked about or talked to (``RosterScope/interest``), and list and
///   complete by asking. The scope comes back to complete below 90 % of the limit (so a
///   roster hovering at the limit does not flip every join).
/// - Interest: a look-up or a punch request records that a subscriber cares about a client
///   (both ways for a punch); each subscriber's interest is bounded (the oldest is forgotten).
/// - Joins cost the same at any roster size: a change marks the feeds that must hear of it
///   (all of them in the complete scope, which holds at most `limit` clients; its watchers
///   past it), and feeds coalesce what they send.
struct RosterPublisher: Sendable {
    struct Configuration: Hashable, Sendable {
        /// Most registered clients for which subscribers hold the whole roster.
        var limit: Int = 1000
        /// Most clients one subscriber's interest holds.
        var interestLimit: Int = 256
        var feed: RosterFeed<ClientID, Note>.Configuration = .init()
    }

    /// What a record of a changed client needs beyond the table: a departed client's last word.
    enum Note: Hashable, Sendable {
        case present
        case absent(version: UInt64, reason: LeaveReason, publicEndpoint: Endpoint)
    }

    let configuration: Configuration
    let epoch: UInt32
    private(set) var version: UInt64 = 0
    private(set) var scope: RosterScope = .complete
    private var feeds: [ClientID: RosterFeed<ClientID, Note>] = [:]
    /// Per subscriber, the clients it asked about or talked to, oldest first.
    private var interests: [ClientID: [ClientID]] = [:]
    /// Per client, the subscribers interested in it.
    private var watchers: [ClientID: Set<ClientID>] = [:]
    /// Feeds that may have something to send or resend.
    private var busy: Set<ClientID> = []
    /// When ``flush(now:build:)`` is next due; recomputed at each flush.
    private(set) var nextDeadline: Instant?

    init(configuration: Configuration, epoch: UInt32) {
        self.configuration = configuration
        self.epoch = epoch
    }

    var subscriberCount: Int { feeds.count }

    func isSubscribed(_ id: ClientID) -> Bool { feeds[id] != nil }

    /// The version for the change being made.
    mutating func nextVersion() -> UInt64 {
        version += 1
        return version
    }

    /// Starts (or restarts, for a new session) `subscriber`'s feed: everything in scope
    /// is marked for it. `everyone` lists the registered clients.
    mutating func subscribe(_ subscriber: ClientID, everyone: () -> [ClientID], now: Instant) {
        var feed = feeds[subscriber] ?? RosterFeed(configuration: configuration.feed)
        feed.reset()
        switch scope {
        case .complete:
            for id in everyone() where id != subscriber { feed.mark(id, .present) }
        case .interest:
            for id in interests[subscriber] ?? [] { feed.mark(id, .present) }
        }
        feeds[subscriber] = feed
        wake(subscriber, now: now)
    }

    /// `subscriber` left, or registered again without subscribing.
    mutating func unsubscribe(_ subscriber: ClientID) {
        feeds[subscriber] = nil
        busy.remove(subscriber)
        for id in interests.removeValue(forKey: subscriber) ?? [] {
            watchers[id]?.remove(subscriber)
            if watchers[id]?.isEmpty == true { watchers[id] = nil }
        }
    }

    /// `id` changed (took a version): every feed that must hear of it is marked.
    mutating func changed(_ id: ClientID, _ note: Note, now: Instant) {
        switch scope {
        case .complete:
            for subscriber in Array(feeds.keys) where subscriber != id { mark(subscriber, id, note, now: now) }
        case .interest:
            for subscriber in watchers[id] ?? [] where subscriber != id { mark(subscriber, id, note, now: now) }
        }
    }

    /// `subscriber` asked about `id` or talked to it: it hears of `id`'s changes from now on.
    mutating func noteInterest(of subscriber: ClientID, in id: ClientID) {
        guard subscriber != id, feeds[subscriber] != nil else { return }
        var list = interests[subscriber] ?? []
        if let existing = list.firstIndex(of: id) {
            list.remove(at: existing)
        } else {
            watchers[id, default: []].insert(subscriber)
            if list.count >= configuration.interestLimit {
                let oldest = list.removeFirst()
                watchers[oldest]?.remove(subscriber)
                if watchers[oldest]?.isEmpty == true { watchers[oldest] = nil }
            }
        }
        list.append(id)
        interests[subscriber] = list
    }

    /// `subscriber` acknowledged roster datagrams.
    mutating func acknowledge(_ subscriber: ClientID, largest: UInt32, received: UInt64, now: Instant) {
        guard feeds[subscriber] != nil else { return }
        feeds[subscriber]?.acknowledge(largest: largest, received: received, now: now)
        wake(subscriber, now: now)
    }

    /// Sets the scope for `registered` clients; on a change every feed starts over in the
    /// new scope.
    mutating func updateScope(registered: Int, everyone: () -> [ClientID], now: Instant) {
        let wanted: RosterScope
        switch scope {
        case .complete: wanted = registered > configuration.limit ? .interest : .complete
        case .interest: wanted = registered * 10 <= configuration.limit * 9 ? .complete : .interest
        }
        guard wanted != scope else { return }
        scope = wanted
        let all = wanted == .complete ? everyone() : []
        for subscriber in Array(feeds.keys) { subscribe(subscriber, everyone: { all }, now: now) }
    }

    /// The datagrams due at `now`: for each, the subscriber and the delta, built by `build`
    /// from the changes the feed chose (`build` returns `nil` for a change it cannot
    /// describe any more, which is then left out).
    mutating func flush(now: Instant, registered: Int, sizeOf: (ClientID, Note) -> Int,
                        record: (ClientID, ClientID, Note) -> RosterRecord?) -> [(ClientID, RosterDelta)] {
        var out: [(ClientID, RosterDelta)] = []
        var next: Instant?
        for subscriber in Array(busy) {
            guard var feed = feeds[subscriber] else {
                busy.remove(subscriber)
                continue
            }
            while true {
                var budget = Self.datagramBudget
                guard let batch = feed.poll(now: now, admitting: { id, note in
                    budget -= sizeOf(id, note)
                    return budget >= 0
                }) else { break }
                let records = batch.items.compactMap { record(subscriber, $0.id, $0.note) }
                out.append((subscriber, RosterDelta(epoch: epoch, sequence: batch.sequence, version: version,
                                                    registered: UInt32(clamping: registered), scope: scope, synced: batch.synced,
                                                    records: records)))
            }
            if let deadline = feed.nextDeadline {
                next = min(next ?? deadline, deadline)
            } else {
                busy.remove(subscriber)
            }
            feeds[subscriber] = feed
        }
        nextDeadline = next
        return out
    }

    /// Bytes of records in one roster datagram: 1 200 keeps it under IPv6's 1 280-byte
    /// minimum MTU with headers.
    static let datagramBudget = 1200 - 26

    private mutating func mark(_ subscriber: ClientID, _ id: ClientID, _ note: Note, now: Instant) {
        feeds[subscriber]?.mark(id, note)
        wake(subscriber, now: now)
    }

    private mutating func wake(_ subscriber: ClientID, now: Instant) {
        busy.insert(subscriber)
        // The feed itself decides (coalescing, window); being early only costs a poll.
        nextDeadline = min(nextDeadline ?? now, now)
    }
}
