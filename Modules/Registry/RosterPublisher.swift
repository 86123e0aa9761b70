import Addressing
import HeapModule
import MonotonicTime
import Roster
import Wire

/// The registry's roster publisher: who among the natchat/2 subscribers must hear of which
/// change, through each one's ``RosterFeed``. A sub-machine of ``Registry`` (which owns the
/// table and builds the records); it does no I/O and reads no clock.
///
/// - Versions: every visible change (a registration, a move, a changed NAT kind or private
///   endpoint, a departure) takes the next roster version; records carry it.
/// - Scope: while at most ``Configuration/limit`` clients are registered, and the whole
///   roster pushed to every subscriber is at most ``Configuration/fanOutLimit`` records
///   (registered × subscribers), every subscriber hears of every change
///   (``RosterScope/complete``). Past the first bound a terminal user could not read the list
///   anyway; past the second, the pushes would cost the server more than the registrations
///   they announce (each join is one record per subscriber, and at 100 subscribers that is
///   more work than the registration itself). Subscribers then hear only of the clients they
///   asked about or talked to (``RosterScope/interest``), and list and complete by asking.
///   The scope comes back to complete below 90 % of both bounds (so a roster hovering at a
///   bound does not flip every join).
/// - Interest: a look-up or a punch request records that a subscriber cares about a client
///   (both ways for a punch); each subscriber's interest is bounded (the oldest is forgotten).
/// - Joins cost the same at any roster size: a change marks the feeds that must hear of it
///   (all of them in the complete scope, which holds at most `limit` clients; its watchers
///   past it), and feeds coalesce what they send.
/// - Only feeds that are due are visited: each feed's next deadline waits in a min-heap, so
///   an acknowledgement or a mark costs its own feed, not a walk over every subscriber (with
///   S subscribers acknowledging every join, a walk made a join cost S²).
struct RosterPublisher: Sendable {
    struct Configuration: Hashable, Sendable {
        /// Most registered clients for which subscribers hold the whole roster.
        var limit: Int = 1000
        /// Most records a push of the whole roster to every subscriber may take (registered ×
        /// subscribers) for the scope to be complete.
        var fanOutLimit: Int = 20_000
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
    /// Each feed's next deadline, earliest first. A feed's entry goes stale when its deadline
    /// moves (``scheduled`` says which entry is current): a move costs one insertion and no
    /// search, and stale entries are dropped when they reach the top, so the top is always
    /// current.
    private var wakeUps = Heap<WakeUp>()
    /// The deadline of each feed's current entry in ``wakeUps``.
    private var scheduled: [ClientID: Instant] = [:]

    /// A feed's turn in ``wakeUps``.
    private struct WakeUp: Comparable, Sendable {
        var at: Instant
        var subscriber: ClientID
        static func < (a: WakeUp, b: WakeUp) -> Bool { a.at < b.at }
        static func == (a: WakeUp, b: WakeUp) -> Bool { a.at == b.at && a.subscriber == b.subscriber }
    }

    /// When ``handleTimeout(now:registered:record:)`` is next due.
    var nextDeadline: Instant? { wakeUps.min?.at }

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
    /// is marked for it.
    /// `everyone` lists the registered clients with their records' sizes, `sizeOf` one's.
    mutating func subscribe(_ subscriber: ClientID, everyone: () -> [(ClientID, Int)], sizeOf: (ClientID) -> Int?, now: Instant) {
        var feed = feeds[subscriber] ?? RosterFeed(configuration: configuration.feed)
        feed.reset()
        switch scope {
        case .complete:
            for (id, size) in everyone() where id != subscriber { feed.mark(id, .present, size: size) }
        case .interest:
            for id in interests[subscriber] ?? [] {
                guard let size = sizeOf(id) else { continue }
                feed.mark(id, .present, size: size)
            }
        }
        feeds[subscriber] = feed
        reschedule(subscriber)
    }

    /// `subscriber` left, or registered again without subscribing.
    mutating func unsubscribe(_ subscriber: ClientID) {
        feeds[subscriber] = nil
        scheduled[subscriber] = nil
        dropStaleWakeUps()
        for id in interests.removeValue(forKey: subscriber) ?? [] {
            watchers[id]?.remove(subscriber)
            if watchers[id]?.isEmpty == true { watchers[id] = nil }
        }
    }

    /// `id` changed (took a version): every feed that must hear of it is marked. `size`: its
    /// record's size.
    mutating func changed(_ id: ClientID, _ note: Note, size: Int, now: Instant) {
        switch scope {
        case .complete:
            for subscriber in Array(feeds.keys) where subscriber != id { mark(subscriber, id, note, size: size, now: now) }
        case .interest:
            for subscriber in watchers[id] ?? [] where subscriber != id { mark(subscriber, id, note, size: size, now: now) }
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
        reschedule(subscriber)
    }

    /// Sets the scope for `registered` clients; on a change every feed starts over in the
    /// new scope.
    mutating func updateScope(registered: Int, everyone: () -> [(ClientID, Int)], sizeOf: (ClientID) -> Int?, now: Instant) {
        let wanted: RosterScope
        let fanOut = registered.multipliedReportingOverflow(by: feeds.count)
        let records = fanOut.overflow ? Int.max : fanOut.partialValue
        switch scope {
        case .complete:
            wanted = registered > configuration.limit || records > configuration.fanOutLimit ? .interest : .complete
        case .interest:
            wanted = registered * 10 <= configuration.limit * 9 && records <= configuration.fanOutLimit - configuration.fanOutLimit / 10
                ? .complete : .interest
        }
        guard wanted != scope else { return }
        scope = wanted
        let all = wanted == .complete ? everyone() : []
        for subscriber in Array(feeds.keys) { subscribe(subscriber, everyone: { all }, sizeOf: sizeOf, now: now) }
    }

    /// The datagrams due at `now`: for each, the subscriber and the delta, built by `build`
    /// from the changes the feed chose (`build` returns `nil` for a change it cannot
    /// describe any more, which is then left out). Only the feeds that are due are visited.
    mutating func handleTimeout(now: Instant, registered: Int,
                                record: (ClientID, ClientID, Note) -> RosterRecord?) -> [(ClientID, RosterDelta)] {
        var out: [(ClientID, RosterDelta)] = []
        var visited: [ClientID] = []
        while let first = wakeUps.min, first.at <= now {
            wakeUps.removeMin()
            let subscriber = first.subscriber
            guard scheduled[subscriber] == first.at else { continue }
            scheduled[subscriber] = nil
            // In place: a copy of the feed would copy its tables on the first change.
            guard let batches = feeds[subscriber]?.handleTimeout(now: now) else { continue }
            for batch in batches {
                let records = batch.items.compactMap { record(subscriber, $0.id, $0.note) }
                out.append((subscriber, RosterDelta(epoch: epoch, sequence: batch.sequence, version: version,
                                                    registered: UInt32(clamping: registered), scope: scope, synced: batch.synced,
                                                    records: records)))
            }
            visited.append(subscriber)
        }
        // After the loop: a feed is visited at most once per call, whatever its next deadline.
        for subscriber in visited { reschedule(subscriber) }
        dropStaleWakeUps()
        return out
    }

    /// Bytes of records in one roster datagram (see ``RosterFeedConfiguration/datagramBudget``).
    var datagramBudget: Int { configuration.feed.datagramBudget }

    private mutating func mark(_ subscriber: ClientID, _ id: ClientID, _ note: Note, size: Int, now: Instant) {
        feeds[subscriber]?.mark(id, note, size: size)
        reschedule(subscriber)
    }

    /// Puts `subscriber`'s feed in ``wakeUps`` at its deadline (none when it is idle).
    private mutating func reschedule(_ subscriber: ClientID) {
        let deadline = feeds[subscriber]?.nextDeadline
        guard deadline != scheduled[subscriber] else { return }
        scheduled[subscriber] = deadline
        if let deadline { wakeUps.insert(WakeUp(at: deadline, subscriber: subscriber)) }
        dropStaleWakeUps()
    }

    private mutating func dropStaleWakeUps() {
        while let first = wakeUps.min, scheduled[first.subscriber] != first.at { wakeUps.removeMin() }
    }
}
