import MonotonicTime
import Wire

/// The path to one peer and the hole punching that finds it, as a pure state machine in the
/// style of an ICE agent: feed it the server's punch instruction, verified pings and pongs,
/// and timeouts; take connectivity checks to send with ``pollTransmit()`` (the owner
/// encodes and authenticates them), path changes with ``pollEvent()``, and the next wake-up
/// from ``nextDeadline``.
///
/// - Every candidate (private endpoints, the public endpoint the server saw, and any
///   address a valid ping came from) is checked with a ping carrying a transaction ID,
///   both IDs and the pair token; the first pong whose source is the pinged endpoint makes
///   that endpoint the path (a private one replaces a public one if it verifies later).
/// - Checks repeat with backoff until a round deadline. A failed round leaves the peer on
///   the relay and asks the server for another round after a cool-down (growing), and only
///   while someone is still talking to the peer.
/// - On a direct path, keep-alive pings hold the NAT mappings; three missed in a row (or a
///   suspicion from unacknowledged chat plus two quick misses) lose the path: back to the
///   relay and punching starts again.
/// - When both NATs make punching hopeless (see ``PunchFeasibility``) only private
///   candidates are checked and the peer stays on the relay.
public struct PathAgent: Sendable {
    /// How a candidate was learned.
    public enum CandidateKind: Int, Hashable, Sendable, Comparable, CustomStringConvertible {
        case peerReflexive = 0
        case publicEndpoint = 1
        case privateEndpoint = 2

        public static func < (a: CandidateKind, b: CandidateKind) -> Bool { a.rawValue < b.rawValue }

        public var description: String {
            switch self {
            case .peerReflexive: "direct"
            case .publicEndpoint: "direct"
            case .privateEndpoint: "private"
            }
        }
    }

    /// Where datagrams to the peer go now.
    public enum Path: Hashable, Sendable, CustomStringConvertible {
        /// Nothing is set up yet.
        case none
        /// Through the rendezvous server.
        case relayed
        /// Straight to this endpoint, verified by a ping/pong.
        case direct(Endpoint, CandidateKind)

        public var description: String {
            switch self {
            case .none: "none yet"
            case .relayed: "relayed"
            case .direct(let endpoint, let kind): "\(kind) \(endpoint)"
            }
        }

        public var directEndpoint: Endpoint? {
            if case .direct(let endpoint, _) = self { return endpoint }
            return nil
        }
    }

    /// A connectivity check to send.
    public enum Check: Hashable, Sendable {
        case ping(transaction: UInt64)
        case pong(transaction: UInt64, observed: Endpoint)
    }

    /// Something the owner should know.
    public enum Event: Hashable, Sendable {
        case pathChanged(Path)
        /// A round of checks ended without a verified pair.
        case roundFailed(round: UInt32)
    }

    /// Timings.
    public struct Configuration: Hashable, Sendable {
        public var firstCheckInterval: Duration = .milliseconds(100)
        public var maxCheckInterval: Duration = .milliseconds(800)
        public var roundDuration: Duration = .seconds(6)
        public var keepAliveInterval: Duration = .seconds(5)
        public var keepAliveAnswerTimeout: Duration = .milliseconds(1500)
        public var missesToLosePath = 3
        /// Cool-downs between failed rounds (the last repeats). Longer than a NAT's UDP
        /// conntrack timeout (30 s on Linux): a stray entry that a check left on a NAT
        /// without a WAN firewall must expire before the next round, whose first mover is
        /// the other side (see ``PunchCoordinator``).
        public var retryCooldowns: [Duration] = [.seconds(35), .seconds(35), .seconds(60), .seconds(120)]
        /// Punching is retried only while the peer was talked to this recently.
        public var interestWindow: Duration = .seconds(120)

        public init() {}
    }

    struct Candidate: Hashable, Sendable {
        var endpoint: Endpoint
        var kind: CandidateKind
    }

    enum Phase: Hashable, Sendable {
        case idle
        /// Asked the server for a round; waiting for its punch message.
        case awaitingPunch(since: Instant)
        case punching(round: UInt32, startAt: Instant, deadline: Instant, nextCheck: Instant, interval: Duration)
        case connected(lastHeard: Instant, nextPing: Instant, misses: Int, awaitingSince: Instant?)
        case coolingDown(until: Instant)
        /// Punching cannot work between these NATs (and no private candidate answered).
        case relayOnly
    }

    public let selfID: ClientID
    public let peerID: ClientID
    public let configuration: Configuration
    public private(set) var path: Path = .none
    private(set) var phase: Phase = .idle
    private var armed = false
    private var candidates: [Candidate] = []
    private var outstanding: [UInt64: (endpoint: Endpoint, sentAt: Instant)] = [:]
    private var lastTriggered: [Endpoint: Instant] = [:]
    private var nextTransaction: UInt64
    private var failedRounds = 0
    private var lastInterest: Instant?
    private var wantsConnect = false
    private var hopeless = false
    private var transmits: [(check: Check, destination: Endpoint)] = []
    private var events: [Event] = []

    public init(selfID: ClientID, peerID: ClientID, transactionSeed: UInt64, configuration: Configuration = Configuration()) {
        self.selfID = selfID
        self.peerID = peerID
        self.configuration = configuration
        nextTransaction = transactionSeed
    }

    /// Whether a punch instruction arrived (checks are answered only then).
    public var isArmed: Bool { armed }

    /// The peer's verified direct endpoint, if any.
    public var directEndpoint: Endpoint? { path.directEndpoint }

    /// Whether a round is in progress.
    public var isPunching: Bool {
        if case .punching = phase { return true }
        return false
    }

    /// Someone wants to talk to the peer: start a round unless one is running, a path
    /// exists, or a cool-down is on. Call ``pollConnectRequest()`` to learn whether to ask
    /// the server.
    public mutating func noteInterest(now: Instant) {
        lastInterest = now
        switch phase {
        case .idle:
            requestRound(now: now)
        case .relayOnly, .connected, .punching, .awaitingPunch, .coolingDown:
            break
        }
        if path == .none { setPath(.relayed) }
    }

    /// `true` once per needed `connect` request to the server.
    public mutating func pollConnectRequest() -> Bool {
        defer { wantsConnect = false }
        return wantsConnect
    }

    /// The server's punch message for this peer: its candidates and the round.
    public mutating func handlePunch(peer: PeerInfo, round: UInt32, delay: Duration, selfNATKind: NATKind, now: Instant) {
        armed = true
        var fresh: [Candidate] = peer.privateEndpoints.map { Candidate(endpoint: $0, kind: .privateEndpoint) }
        hopeless = !PunchFeasibility.canPunch(selfNATKind, peer.natKind)
        if !hopeless { fresh.append(Candidate(endpoint: peer.publicEndpoint, kind: .publicEndpoint)) }
        // Keep learned peer-reflexive candidates; replace the rest. An endpoint learned both
        // ways keeps the server's label (a ping from a private address is still private).
        let learned = candidates.filter { $0.kind == .peerReflexive && !hopeless }
        candidates = fresh + learned.filter { candidate in !fresh.contains { $0.endpoint == candidate.endpoint } }
        if lastInterest == nil { lastInterest = now }
        if case .connected = phase {
            // Already direct: the peer asked for a round (it lost its side). Answer its checks
            // and check again ourselves.
        }
        guard !candidates.isEmpty else {
            phase = .relayOnly
            if path != .relayed { setPath(.relayed) }
            return
        }
        let start = now + delay
        phase = .punching(round: round, startAt: start, deadline: start + configuration.roundDuration,
                          nextCheck: start, interval: configuration.firstCheckInterval)
        if path == .none { setPath(.relayed) }
        runTimers(now: now)
    }

    /// A ping from the peer that the caller verified (addressed to us, from the peer, with a
    /// valid tag) arrived from `source`: answer it, and check `source` back.
    public mutating func handlePing(transaction: UInt64, from source: Endpoint, now: Instant) {
        armed = true
        transmits.append((.pong(transaction: transaction, observed: source), source))
        // At most one triggered check per source per check interval: without this, two
        // sources that both work would trigger checks at each other for ever.
        let checkPending = lastTriggered[source].map { now - $0 < configuration.firstCheckInterval } ?? false
        if case .connected(_, let nextPing, let misses, let awaiting) = phase {
            if directEndpoint == source {
                phase = .connected(lastHeard: now, nextPing: nextPing, misses: misses, awaitingSince: awaiting)
                return
            }
            // Already direct elsewhere: check this source back only if it would be a better
            // path and no check to it is in flight (else two working paths ping-pong forever).
            let kind = candidates.first(where: { $0.endpoint == source })?.kind ?? .peerReflexive
            if case .direct(_, let currentKind) = path, kind > currentKind, !checkPending {
                triggerCheck(to: source, now: now)
            }
            return
        }
        if !candidates.contains(where: { $0.endpoint == source }) {
            candidates.append(Candidate(endpoint: source, kind: .peerReflexive))
        }
        // A triggered check: the peer's packets reach us from `source`, so ours may reach it.
        if !checkPending { triggerCheck(to: source, now: now) }
        if case .idle = phase { startImplicitRound(now: now) }
        if case .coolingDown = phase { startImplicitRound(now: now) }
    }

    /// A pong the caller verified arrived from `source`.
    public mutating func handlePong(transaction: UInt64, from source: Endpoint, now: Instant) {
        guard let sent = outstanding.removeValue(forKey: transaction), sent.endpoint == source else { return }
        let kind = candidates.first(where: { $0.endpoint == source })?.kind ?? .peerReflexive
        switch phase {
        case .connected(let heard, let nextPing, let misses, let awaiting):
            if let current = directEndpoint, current != source {
                guard case .direct(_, let currentKind) = path, kind > currentKind else {
                    // A pong on another path says nothing about the current one: keep counting its misses.
                    phase = .connected(lastHeard: heard, nextPing: nextPing, misses: misses, awaitingSince: awaiting)
                    return
                }
                setPath(.direct(source, kind))
            }
            phase = .connected(lastHeard: now, nextPing: nextPing, misses: 0, awaitingSince: nil)
        default:
            setPath(.direct(source, kind))
            failedRounds = 0
            phase = .connected(lastHeard: now, nextPing: now + configuration.keepAliveInterval, misses: 0, awaitingSince: nil)
        }
    }

    /// Traffic from the peer arrived on the direct path (a chat, an ack): it is alive.
    public mutating func noteHeard(from source: Endpoint, now: Instant) {
        guard case .connected(_, let nextPing, _, _) = phase, directEndpoint == source else { return }
        phase = .connected(lastHeard: now, nextPing: nextPing, misses: 0, awaitingSince: nil)
    }

    /// A chat sent on the direct path went unacknowledged: check the path now.
    public mutating func suspectPath(now: Instant) {
        guard case .connected(let heard, _, let misses, let awaiting) = phase else { return }
        if awaiting == nil {
            phase = .connected(lastHeard: heard, nextPing: now, misses: max(misses, configuration.missesToLosePath - 2),
                               awaitingSince: nil)
            runTimers(now: now)
        }
    }

    /// The peer left or the server session was lost: forget everything.
    public mutating func reset() {
        phase = .idle
        armed = false
        candidates = []
        outstanding = [:]
        failedRounds = 0
        if path != .none { setPath(.none) }
    }

    /// Call at ``nextDeadline``.
    public mutating func handleTimeout(now: Instant) { runTimers(now: now) }

    /// When the agent next needs ``handleTimeout(now:)``.
    public var nextDeadline: Instant? {
        switch phase {
        case .idle, .relayOnly: nil
        case .awaitingPunch(let since): since + .seconds(3)
        case .punching(_, _, let deadline, let nextCheck, _): min(deadline, nextCheck)
        case .connected(_, let nextPing, _, let awaiting):
            awaiting.map { min($0 + configuration.keepAliveAnswerTimeout, nextPing) } ?? nextPing
        case .coolingDown(let until): until
        }
    }

    public mutating func pollTransmit() -> (check: Check, destination: Endpoint)? {
        transmits.isEmpty ? nil : transmits.removeFirst()
    }

    public mutating func pollEvent() -> Event? {
        events.isEmpty ? nil : events.removeFirst()
    }

    // MARK: - Internals

    private mutating func requestRound(now: Instant) {
        wantsConnect = true
        phase = .awaitingPunch(since: now)
    }

    private mutating func startImplicitRound(now: Instant) {
        phase = .punching(round: 0, startAt: now, deadline: now + configuration.roundDuration,
                          nextCheck: now + configuration.firstCheckInterval, interval: configuration.firstCheckInterval)
    }

    private mutating func runTimers(now: Instant) {
        switch phase {
        case .idle, .relayOnly:
            return
        case .awaitingPunch(let since):
            // The connect request or the punch answer was lost: ask again, while someone
            // still wants to talk to the peer.
            guard now >= since + .seconds(3) else { return }
            if let interest = lastInterest, now - interest <= configuration.interestWindow {
                requestRound(now: now)
            } else {
                phase = .idle
            }
        case .punching(let round, let startAt, let deadline, let nextCheck, let interval):
            if now >= deadline {
                failRound(round: round, now: now)
                return
            }
            guard now >= startAt, now >= nextCheck else { return }
            for candidate in candidates { sendCheck(to: candidate.endpoint, now: now) }
            let next = min(interval * 3 / 2, configuration.maxCheckInterval)
            phase = .punching(round: round, startAt: startAt, deadline: deadline, nextCheck: now + interval, interval: next)
        case .connected(let heard, let nextPing, let misses, let awaiting):
            var misses = misses
            var awaiting = awaiting
            if let since = awaiting, now >= since + configuration.keepAliveAnswerTimeout {
                misses += 1
                awaiting = nil
                if misses >= configuration.missesToLosePath {
                    losePath(now: now)
                    return
                }
                // Missed one: check again soon rather than a whole interval later.
                phase = .connected(lastHeard: heard, nextPing: now, misses: misses, awaitingSince: nil)
                runTimers(now: now)
                return
            }
            if awaiting == nil, now >= nextPing, let endpoint = directEndpoint {
                sendCheck(to: endpoint, now: now)
                phase = .connected(lastHeard: heard, nextPing: now + configuration.keepAliveInterval, misses: misses,
                                   awaitingSince: now)
                return
            }
            phase = .connected(lastHeard: heard, nextPing: nextPing, misses: misses, awaitingSince: awaiting)
        case .coolingDown(let until):
            guard now >= until else { return }
            if let interest = lastInterest, now - interest <= configuration.interestWindow {
                requestRound(now: now)
            } else {
                phase = .idle
            }
        }
    }

    private mutating func triggerCheck(to endpoint: Endpoint, now: Instant) {
        if lastTriggered.count > 32 { lastTriggered.removeAll() }
        lastTriggered[endpoint] = now
        sendCheck(to: endpoint, now: now)
    }

    private mutating func sendCheck(to endpoint: Endpoint, now: Instant) {
        let transaction = nextTransaction
        nextTransaction &+= 1
        outstanding[transaction] = (endpoint, now)
        if outstanding.count > 64 {
            // Bounded: forget the oldest checks (their pongs would be too late to matter).
            let oldest = outstanding.min { $0.value.sentAt < $1.value.sentAt }?.key
            if let oldest { outstanding[oldest] = nil }
        }
        transmits.append((.ping(transaction: transaction), endpoint))
    }

    private mutating func failRound(round: UInt32, now: Instant) {
        events.append(.roundFailed(round: round))
        outstanding.removeAll()
        if hopeless {
            phase = .relayOnly
        } else {
            let cooldowns = configuration.retryCooldowns
            let wait = cooldowns.isEmpty ? .seconds(30) : cooldowns[min(failedRounds, cooldowns.count - 1)]
            failedRounds += 1
            phase = .coolingDown(until: now + wait)
        }
        if path != .relayed { setPath(.relayed) }
    }

    private mutating func losePath(now: Instant) {
        outstanding.removeAll()
        candidates.removeAll { $0.kind == .peerReflexive }
        setPath(.relayed)
        failedRounds = 0
        requestRound(now: now)
    }

    private mutating func setPath(_ newPath: Path) {
        guard newPath != path else { return }
        path = newPath
        events.append(.pathChanged(newPath))
    }
}

/// Whether hole punching can work between two NATs, from their mapping behaviour.
///
/// An endpoint-dependent ("symmetric") NAT gives the peer a port it cannot predict, so a
/// direct path needs the other side to accept packets from anywhere: only a host without
/// NAT does. Unknown kinds are given the benefit of the doubt.
public enum PunchFeasibility {
    public static func canPunch(_ a: NATKind, _ b: NATKind) -> Bool {
        switch (a, b) {
        case (.endpointDependent, .none), (.none, .endpointDependent): true
        case (.endpointDependent, .unknown), (.unknown, .endpointDependent): true
        case (.endpointDependent, _), (_, .endpointDependent): false
        default: true
        }
    }
}
