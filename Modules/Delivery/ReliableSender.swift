import Addressing
import MonotonicTime

/// Reliable delivery of chat messages over lossy paths: each message gets an ID, is sent
/// again with exponential backoff until acknowledged, and is given up after a deadline.
/// Pure state: the owner sends what its inputs and ``handleTimeout(now:)`` return.
public struct ReliableSender: Sendable, SansIOCore {
    /// What the owner should do.
    public enum Output: Hashable, Sendable {
        /// Send (attempt `message.attempts` of) this message.
        case send(Message)
        /// The peer acknowledged it.
        case delivered(Message)
        /// No acknowledgement before the deadline: given up.
        case expired(Message)
        /// Given up because the peer left.
        case abandoned(Message)
    }

    public struct Configuration: Hashable, Sendable {
        public var initialTimeout: Duration = .milliseconds(400)
        /// Short enough that heavy loss still leaves many tries before the deadline
        /// (20 % loss each way: a round trip gets through 64 % of the time).
        public var maxTimeout: Duration = .seconds(2)
        /// After this long unacknowledged, a message is reported undelivered.
        public var deadline: Duration = .seconds(30)
        /// Most messages in flight at once; more are refused.
        public var maxInFlight = 256
        public init() {}
    }

    /// A message in flight.
    public struct Message: Hashable, Sendable {
        public var id: UInt64
        public var peer: ClientID
        public var text: String
        public var firstSent: Instant
        public var attempts: Int
        var nextRetry: Instant
        var timeout: Duration
    }

    /// Why a message cannot be queued.
    public enum SendError: Error, Hashable, Sendable {
        case tooManyInFlight
    }

    public let configuration: Configuration
    private var inFlight: [UInt64: Message] = [:]
    private var nextID: UInt64

    /// - Parameter firstID: random per session, so a restarted client's IDs do not repeat
    ///   the last session's ones at the receiver's duplicate filter.
    public init(firstID: UInt64, configuration: Configuration = Configuration()) {
        nextID = firstID
        self.configuration = configuration
    }

    public var count: Int { inFlight.count }

    /// Queues `text` for `peer`: attempt 1 goes at once. `firstSent` (default `now`) starts
    /// the deadline: a message that waited (for a look-up) keeps its own.
    public mutating func send(_ text: String, to peer: ClientID, firstSent: Instant? = nil,
                              now: Instant) throws(SendError) -> [Output] {
        guard inFlight.count < configuration.maxInFlight else { throw .tooManyInFlight }
        let message = Message(id: nextID, peer: peer, text: text, firstSent: firstSent ?? now, attempts: 1,
                              nextRetry: now + configuration.initialTimeout, timeout: configuration.initialTimeout)
        nextID &+= 1
        inFlight[message.id] = message
        return [.send(message)]
    }

    /// The peer acknowledged `id`: ``Output/delivered(_:)`` when it was in flight.
    public mutating func acknowledge(_ id: UInt64, from peer: ClientID) -> [Output] {
        guard let message = inFlight[id], message.peer == peer else { return [] }
        inFlight[id] = nil
        return [.delivered(message)]
    }

    /// Messages to send again now (their attempt counts already raised), in message order,
    /// then messages given up (past the deadline).
    public mutating func handleTimeout(now: Instant) -> [Output] {
        var retransmit: [Message] = []
        var expired: [Message] = []
        for (id, var message) in inFlight where now >= message.nextRetry || now - message.firstSent >= configuration.deadline {
            if now - message.firstSent >= configuration.deadline {
                inFlight[id] = nil
                expired.append(message)
                continue
            }
            message.attempts += 1
            message.timeout = min(message.timeout * 2, configuration.maxTimeout)
            message.nextRetry = now + message.timeout
            inFlight[id] = message
            retransmit.append(message)
        }
        return retransmit.sorted { $0.id < $1.id }.map(Output.send) + expired.sorted { $0.id < $1.id }.map(Output.expired)
    }

    /// Drops every message to `peer` (it left): ``Output/abandoned(_:)`` for each, in order.
    public mutating func cancel(peer: ClientID) -> [Output] {
        let gone = inFlight.values.filter { $0.peer == peer }
        for message in gone { inFlight[message.id] = nil }
        return gone.sorted { $0.id < $1.id }.map(Output.abandoned)
    }

    /// The next retry or give-up time, whichever comes first.
    public var nextDeadline: Instant? {
        inFlight.values.map { min($0.nextRetry, $0.firstSent + configuration.deadline) }.min()
    }
}

/// Shows each message once however often it arrives: remembers the last IDs seen per peer
/// (bounded per peer and in the number of peers).
public struct DuplicateFilter: Sendable {
    private var seen: [ClientID: (set: Set<UInt64>, order: [UInt64])] = [:]
    private let perPeer: Int
    private let maxPeers: Int

    public init(perPeer: Int = 1024, maxPeers: Int = 4096) {
        self.perPeer = perPeer
        self.maxPeers = maxPeers
    }

    /// `true` the first time `id` from `peer` is seen.
    public mutating func firstSighting(of id: UInt64, from peer: ClientID) -> Bool {
        var entry = seen[peer] ?? (Set(), [])
        guard entry.set.insert(id).inserted else { return false }
        entry.order.append(id)
        if entry.order.count > perPeer {
            let dropped = entry.order.removeFirst()
            entry.set.remove(dropped)
        }
        if seen[peer] == nil, seen.count >= maxPeers, let victim = seen.keys.first { seen[victim] = nil }
        seen[peer] = entry
        return true
    }

    /// Forgets `peer` (it left; a new session of it starts new IDs).
    public mutating func forget(_ peer: ClientID) { seen[peer] = nil }
}
