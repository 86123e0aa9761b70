import DequeModule
import MonotonicTime

/// One subscriber's reliable, coalesced stream of roster changes, on the server: which
/// clients changed since the subscriber last heard, which datagrams are in flight, what to
/// send again. A sans-I/O core: the owner marks changes (``mark(_:_:size:)``), reports
/// acknowledgements (``acknowledge(largest:received:now:)``), and at ``nextDeadline`` takes
/// the datagrams due from ``handleTimeout(now:)``.
///
/// - It holds *which* clients changed, not what they changed to: a datagram is built from
///   the registry's state when it is sent, so a client that changed five times in a burst is
///   sent once, as it is now (a "dirty set", as Tailscale's map updates coalesce peers).
///   `Note` is what the owner needs to build a record it can no longer read from its table
///   (a departed client's last endpoint and reason).
/// - Coalescing: a datagram that is not full waits until ``Configuration/flushInterval``
///   after the last one, so a subscriber gets at most one partial datagram per interval
///   however fast clients join; a full datagram's worth goes at once (within the window).
/// - Reliability: datagrams are numbered; acknowledgements carry the largest number seen and
///   a bitmap of the 64 before it (QUIC's ACK frame, in miniature). A datagram unacknowledged
///   after the retransmission timeout, or with ``Configuration/reorderThreshold`` later ones
///   acknowledged, is lost: its clients are marked again (unless a later datagram carries
///   them) and go in a new datagram with the state of the moment. At most
///   ``Configuration/window`` datagrams are in flight.
/// - ``Batch/synced`` tells the subscriber its copy is whole: nothing is waiting and nothing
///   else is in flight. Until a synced datagram is acknowledged after a reset, an empty one
///   is sent for the purpose.
public struct RosterFeed<ID: Hashable & Sendable, Note: Sendable>: Sendable, SansIOCore {
    public typealias Configuration = RosterFeedConfiguration

    /// One datagram to send.
    public struct Batch {
        public var sequence: UInt32
        public var items: [(id: ID, note: Note)]
        public var synced: Bool

        @inlinable
        init(sequence: UInt32, items: [(id: ID, note: Note)], synced: Bool) {
            self.sequence = sequence
            self.items = items
            self.synced = synced
        }
    }

    @usableFromInline
    struct InFlight: Sendable {
        @usableFromInline var items: [(id: ID, note: Note)]
        @usableFromInline var sizes: [Int]
        @usableFromInline var sentAt: Instant
        @usableFromInline var synced: Bool

        @inlinable
        init(items: [(id: ID, note: Note)], sizes: [Int], sentAt: Instant, synced: Bool) {
            self.items = items
            self.sizes = sizes
            self.sentAt = sentAt
            self.synced = synced
        }
    }

    public let configuration: Configuration
    @usableFromInline var waitingOrder: Deque<ID> = []
    @usableFromInline var waiting: [ID: (note: Note, size: Int)] = [:]
    @usableFromInline var inFlight: [UInt32: InFlight] = [:]
    /// The newest datagram in flight that carries each client.
    @usableFromInline var carriedBy: [ID: UInt32] = [:]
    @usableFromInline var nextSequence: UInt32 = 1
    @usableFromInline var lastSent: Instant?
    @usableFromInline var retransmitTimeout: Duration
    @usableFromInline var needsSyncedNotice = true

    @inlinable
    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
        retransmitTimeout = configuration.initialRetransmitTimeout
    }

    /// Changes waiting to be sent.
    @inlinable public var waitingCount: Int { waiting.count }
    /// Datagrams sent and not yet acknowledged.
    @inlinable public var inFlightCount: Int { inFlight.count }
    /// Whether the subscriber is known to hold everything (nothing waiting or in flight, and
    /// a synced datagram acknowledged).
    @inlinable public var isIdle: Bool { waiting.isEmpty && inFlight.isEmpty && !needsSyncedNotice }

    /// `id` changed. `note`: what a record of it needs that the owner's table may no longer
    /// hold; `size`: about how many bytes its record takes (datagrams are filled up to
    /// ``RosterFeedConfiguration/datagramBudget``).
    @inlinable
    public mutating func mark(_ id: ID, _ note: Note, size: Int) {
        if waiting.updateValue((note, size), forKey: id) == nil { waitingOrder.append(id) }
    }

    /// Starts over (a new session, or a new scope): forgets what is in flight and waiting,
    /// numbers from 1 again, and will tell the subscriber when it is whole.
    @inlinable
    public mutating func reset() {
        waitingOrder.removeAll()
        waiting.removeAll()
        inFlight.removeAll()
        carriedBy.removeAll()
        nextSequence = 1
        lastSent = nil
        retransmitTimeout = configuration.initialRetransmitTimeout
        needsSyncedNotice = true
    }

    /// When ``handleTimeout(now:)`` next has something to do; `nil` when the feed is idle.
    @inlinable public var nextDeadline: Instant? {
        var deadline: Instant?
        // A plain loop (at most ``RosterFeedConfiguration/window`` datagrams): this runs after
        // every mark and acknowledgement of every subscriber.
        for datagram in inFlight.values {
            let expiry = datagram.sentAt + retransmitTimeout
            if deadline.map({ expiry < $0 }) ?? true { deadline = expiry }
        }
        if inFlight.count < configuration.window, !waiting.isEmpty || (needsSyncedNotice && inFlight.isEmpty) {
            let send = waiting.count >= configuration.fullBatch ? (lastSent ?? .zero) : (lastSent.map { $0 + configuration.flushInterval } ?? .zero)
            deadline = min(deadline ?? send, send)
        }
        return deadline
    }

    /// The datagrams due now: timed-out ones are declared lost first, then waiting changes go
    /// in the order they were marked, as many to a datagram as fit its budget.
    @inlinable
    public mutating func handleTimeout(now: Instant) -> [Batch] {
        expireTimedOut(now: now)
        var batches: [Batch] = []
        while let batch = nextBatch(now: now) { batches.append(batch) }
        return batches
    }

    @inlinable
    mutating func nextBatch(now: Instant) -> Batch? {
        guard inFlight.count < configuration.window else { return nil }
        let syncedNoticeDue = needsSyncedNotice && inFlight.isEmpty && waiting.isEmpty
        guard !waiting.isEmpty || syncedNoticeDue else { return nil }
        if waiting.count < configuration.fullBatch, let lastSent, now < lastSent + configuration.flushInterval { return nil }
        var items: [(id: ID, note: Note)] = []
        var sizes: [Int] = []
        var budget = configuration.datagramBudget
        while let id = waitingOrder.first {
            guard let change = waiting[id] else {
                waitingOrder.removeFirst()
                continue
            }
            budget -= change.size
            // The first change is always taken, so a feed can never stall on one record.
            if budget < 0, !items.isEmpty { break }
            waitingOrder.removeFirst()
            waiting[id] = nil
            items.append((id, change.note))
            sizes.append(change.size)
        }
        guard !items.isEmpty || syncedNoticeDue else { return nil }
        let sequence = nextSequence
        nextSequence &+= 1
        let synced = waiting.isEmpty && inFlight.isEmpty
        for item in items { carriedBy[item.id] = sequence }
        inFlight[sequence] = InFlight(items: items, sizes: sizes, sentAt: now, synced: synced)
        lastSent = now
        return Batch(sequence: sequence, items: items, synced: synced)
    }

    /// The subscriber acknowledged `largest` and every `largest - 1 - i` with bit `i` of
    /// `received` set. Numbers never sent are ignored.
    @inlinable
    public mutating func acknowledge(largest: UInt32, received: UInt64, now: Instant) {
        guard largest >= 1, largest < nextSequence else { return }
        var progressed = false
        for sequence in Array(inFlight.keys) where Self.covers(largest: largest, received: received, sequence) {
            guard let datagram = inFlight.removeValue(forKey: sequence) else { continue }
            progressed = true
            if datagram.synced { needsSyncedNotice = false }
            for item in datagram.items where carriedBy[item.id] == sequence { carriedBy[item.id] = nil }
        }
        if progressed { retransmitTimeout = configuration.initialRetransmitTimeout }
        // Packet-threshold loss detection: later datagrams got through, this one did not.
        for sequence in Array(inFlight.keys) where sequence &+ configuration.reorderThreshold <= largest {
            declareLost(sequence)
        }
    }

    @inlinable
    static func covers(largest: UInt32, received: UInt64, _ sequence: UInt32) -> Bool {
        if sequence == largest { return true }
        guard sequence < largest else { return false }
        let distance = largest - sequence - 1
        return distance < 64 && received & (1 << UInt64(distance)) != 0
    }

    @inlinable
    mutating func expireTimedOut(now: Instant) {
        var expired = false
        for (sequence, datagram) in inFlight where now >= datagram.sentAt + retransmitTimeout {
            declareLost(sequence)
            expired = true
        }
        if expired { retransmitTimeout = min(retransmitTimeout * 2, configuration.maxRetransmitTimeout) }
    }

    /// Marks again the clients of a lost datagram that no later datagram carries; a newer
    /// change already waiting wins over the lost note.
    @inlinable
    mutating func declareLost(_ sequence: UInt32) {
        guard let datagram = inFlight.removeValue(forKey: sequence) else { return }
        for (index, item) in datagram.items.enumerated() where carriedBy[item.id] == sequence {
            carriedBy[item.id] = nil
            if waiting[item.id] == nil { mark(item.id, item.note, size: datagram.sizes[index]) }
        }
    }
}

/// Timings and limits of a ``RosterFeed`` (the same for every subscriber).
public struct RosterFeedConfiguration: Hashable, Sendable {
    /// Least time between two datagrams that are not full.
    public var flushInterval: Duration
    /// The first retransmission timeout; it doubles on each timeout up to ``maxRetransmitTimeout``
    /// and comes back down when an acknowledgement arrives.
    public var initialRetransmitTimeout: Duration
    public var maxRetransmitTimeout: Duration
    /// Most datagrams in flight.
    public var window: Int
    /// A datagram is lost once this many later ones are acknowledged (reordering tolerated).
    public var reorderThreshold: UInt32
    /// Waiting changes that make a full datagram (sent without waiting for the interval).
    public var fullBatch: Int
    /// Bytes of records in one datagram: 1 174 keeps a roster datagram (26 bytes of header)
    /// under IPv6's 1 280-byte minimum MTU with the IP and UDP headers.
    public var datagramBudget: Int

    public init(flushInterval: Duration = .milliseconds(50), initialRetransmitTimeout: Duration = .milliseconds(300),
                maxRetransmitTimeout: Duration = .seconds(3), window: Int = 16, reorderThreshold: UInt32 = 3,
                fullBatch: Int = 8, datagramBudget: Int = 1174) {
        self.flushInterval = flushInterval
        self.initialRetransmitTimeout = initialRetransmitTimeout
        self.maxRetransmitTimeout = maxRetransmitTimeout
        self.window = max(1, window)
        self.reorderThreshold = max(1, reorderThreshold)
        self.fullBatch = max(1, fullBatch)
        self.datagramBudget = max(1, datagramBudget)
    }
}
