import Addressing
import MonotonicTime
import Wire

/// The path to one peer and the hole punching that finds it, as a pure state machine in the
/// style of an ICE agent: feed it the server's punch instruction, verified pings and pongs,
/// and timeouts; each input returns what to do (``Output``): connectivity checks to send
/// (the owner encodes and authenticates them), a punch round to ask the server for, path
/// changes. ``nextDeadline`` is the next wake-up.
///
/// - Every candidate (private endpoints, the public endpoint the server saw, and any
///   address a valid ping came from) is checked with a ping carrying a fresh transaction
///   ID, both IDs and the pair token. A pong counts only when it answers one of our own
///   outstanding checks and comes from the endpoint that check went to; each transaction
///   counts once.
/// - A candidate becomes the path after ``Configuration/confirmationsToSelect`` (2) answered
///   checks: after the first pong a follow-up check goes to that endpoint at once, and its
///   pong selects it. This holds for the first direct path, for going back to direct after
///   the relay, and for switching to a better kind while direct (private beats public).
/// - Checks repeat with backoff until a round deadline. A failed round leaves the peer on
///   the relay and asks the server for another round after a cool-down (growing), and only
///   while someone is still talking to the peer.
/// - On a direct path the agent keeps *consent* in the manner of RFC 7675: consent checks
///   every ``Configuration/keepAliveInterval`` hold the NAT mappings open, and only a pong
///   answering one of them refreshes the path's liveness. A check unanswered for
///   ``Configuration/keepAliveAnswerTimeout`` makes the path suspect: checks then go out
///   every ``Configuration/suspectCheckInterval`` until one is answered. The path is lost
///   (back to the relay, punching starts again) only when no check was answered for
///   ``Configuration/consentTimeout`` *and* the last ``Configuration/missesToLosePath``
///   checks in a row went unanswered. Nothing the peer sends unasked (a ping, a chat, an
///   ack) refreshes consent: any of those could be a captured datagram re-sent from the
///   peer's address, whereas a pong to a fresh transaction cannot be prepared in advance.
/// - When both NATs make punching hopeless (see ``PunchFeasibility``) only private
///   candidates are checked and the peer stays on the relay.
public struct PathAgent: Sendable, SansIOCore {
    /// How a candidate was learned.
    public enum CandidateKind: Int, Hashable, Sendable, Comparable, CustomStringConvertible {
        /// Found by port probing between a hard (endpoint-dependent) and an easy NAT (see
        /// ``PortProbe``): on the hard side a path through one of its probe sockets, on the
        /// easy side the hard side's mapped port. The least preferred: any other kind that
        /// verifies replaces it (and frees the probe socket).
        case probed = -1
        case peerReflexive = 0
        case publicEndpoint = 1
        /// The external endpoint of a port mapping the peer's gateway granted (PCP, NAT-PMP,
        /// UPnP IGD): it takes datagrams from any endpoint, so it beats the public endpoint,
        /// whose NAT may filter or remap.
        case portMapped = 2
        case privateEndpoint = 3

        public static func < (a: CandidateKind, b: CandidateKind) -> Bool { a.rawValue < b.rawValue }

        public var description: String {
            switch self {
            case .probed: "direct (probed)"
            case .peerReflexive: "direct"
            case .publicEndpoint: "direct"
            case .portMapped: "direct (port map)"
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

    /// What the owner should do.
    public enum Output: Hashable, Sendable {
        /// Send this check (a ping, or the pong answering one) to this endpoint, from the
        /// chat socket.
        case transmit(Check, to: Endpoint)
        /// Send this check from probe socket `socket` (one of those ``openProbeSockets(count:)``
        /// asked for) to this endpoint.
        case transmitFromProbeSocket(Int, Check, to: Endpoint)
        /// Open `count` extra UDP sockets for port probing, numbered `0..<count` (bound to the
        /// chat socket's address, any port). Datagrams that arrive on probe socket `i` are
        /// handed in with `socket: i`.
        case openProbeSockets(count: Int)
        /// Close every probe socket except `keeping` (`nil`: all): a path was found on
        /// `keeping`, or the attempt ended, or the path through it was lost.
        case closeProbeSockets(keeping: Int?)
        /// What a port-probing attempt did (for the log at info).
        case probeReport(PortProbe.Report)
        /// Ask the server for a punch round with the peer (a `connect`).
        case requestRound
        case pathChanged(Path)
        /// A round of checks ended without a verified pair.
        case roundFailed(round: UInt32)
    }

    /// Timings.
    public struct Configuration: Hashable, Sendable {
        public var firstCheckInterval: Duration = .milliseconds(100)
        public var maxCheckInterval: Duration = .milliseconds(800)
        public var roundDuration: Duration = .seconds(6)
        /// How often a direct path is checked while checks are answered (RFC 7675's Tr). The
        /// checks also hold the NAT mappings open: Linux keeps an idle UDP entry 30 s.
        public var keepAliveInterval: Duration = .seconds(5)
        /// A check unanswered this long is a miss, and the path becomes suspect. Round trips
        /// between peers are far shorter; 1.5 s leaves room for a busy peer or a slow link.
        public var keepAliveAnswerTimeout: Duration = .milliseconds(1500)
        /// How often a suspect path is checked (several checks may be outstanding; any
        /// answered one restores consent). 500 ms puts 18 checks into the consent window
        /// (one at 5 s, then 6.5, 7, … 14.5 s after the last answer); see ``consentTimeout``
        /// for what that buys. It costs two small datagrams a second, and only until a check
        /// is answered.
        public var suspectCheckInterval: Duration = .milliseconds(500)
        /// A direct path is given up only when no check was answered for this long (RFC
        /// 7675's consent timeout, which is 30 s there) *and* the last ``missesToLosePath``
        /// checks in a row went unanswered.
        ///
        /// 15 s because chat does not wait for the verdict: retransmissions alternate
        /// between the direct path and the relay, so a path that died costs each message one
        /// retransmission timeout (400 ms) until it is given up, and the sooner it is, the
        /// sooner a new round can find a working one. It is three keep-alive intervals.
        ///
        /// False loss: a check's round trip crosses both hosts' edges twice, so with loss
        /// *p* on each edge it fails with probability 1 − (1 − *p*)⁴. A working path is lost
        /// only when all 18 checks of a window fail: at 20 % per edge that is
        /// 0.59¹⁸ ≈ 7.6 × 10⁻⁵ per keep-alive interval, about once in 18 hours per direction
        /// (with a check every second instead, 10 checks: 0.59¹⁰ ≈ 0.5 %, one flap every
        /// 16 minutes; the earlier rule of three misses in a row: 0.59³ ≈ 21 %, several a
        /// minute). At 10 % per edge it is ≈ 5 × 10⁻⁹.
        public var consentTimeout: Duration = .seconds(15)
        /// At least this many checks in a row must have gone unanswered before the path is
        /// lost, however long the silence: after a process sleep or a stalled timer the
        /// path is checked again before it is given up, not dropped on the clock alone.
        public var missesToLosePath = 5
        /// Answered checks to one endpoint before it becomes the path (two: one pong may be
        /// a fluke of a path that is about to fail, and with the follow-up check sent at once
        /// the second costs one round trip).
        public var confirmationsToSelect = 2
        /// Cool-downs between failed rounds (the last repeats). Longer than a NAT's UDP
        /// conntrack timeout (30 s on Linux): a stray entry that a check left on a NAT
        /// without a WAN firewall must expire before the next round, whose first mover is
        /// the other side (see ``PunchCoordinator``).
        public var retryCooldowns: [Duration] = [.seconds(35), .seconds(35), .seconds(60), .seconds(120)]
        /// Punching is retried only while the peer was talked to this recently.
        public var interestWindow: Duration = .seconds(120)
        /// Port probing between a hard (endpoint-dependent) and an easy (endpoint-independent)
        /// NAT, which plain punching cannot get through; `false`: such pairs stay relayed.
        public var portProbing = true
        /// The bounds of a port-probing attempt (``PortProbe``); its attempt duration is the
        /// round's, its back-offs replace ``retryCooldowns``.
        public var portProbe = PortProbe.Configuration()

        public init() {}
    }

    struct Candidate: Hashable, Sendable {
        var endpoint: Endpoint
        var kind: CandidateKind
        /// The probe socket the candidate is reached from (`nil`: the chat socket).
        var socket: Int? = nil

        var target: Target { Target(endpoint: endpoint, socket: socket) }
    }

    /// Where a check goes: a remote endpoint, from the chat socket (`socket == nil`) or from
    /// a probe socket. A pong verifies only the target its ping went to.
    struct Target: Hashable, Sendable {
        var endpoint: Endpoint
        var socket: Int?
    }

    enum Phase: Hashable, Sendable {
        case idle
        /// Asked the server for a round; waiting for its punch message.
        case awaitingPunch(since: Instant)
        case punching(round: UInt32, startAt: Instant, deadline: Instant, nextCheck: Instant, interval: Duration)
        case connected(Consent)
        case coolingDown(until: Instant)
        /// Punching cannot work between these NATs (and no private candidate answered).
        case relayOnly
    }

    /// Consent to send on the direct path (RFC 7675), kept while ``Phase/connected(_:)``.
    struct Consent: Hashable, Sendable {
        /// When a pong last answered one of our checks to the path (or the path was selected).
        var lastConsent: Instant
        /// When the next check to the path goes out.
        var nextCheck: Instant
        /// When the last check to the path went out.
        var lastCheck: Instant?
        /// Send times of the checks to the path sent since the last answer and not yet missed.
        var pending: [Instant] = []
        /// Checks in a row that went unanswered for ``Configuration/keepAliveAnswerTimeout``.
        var misses = 0
        /// Checking every ``Configuration/suspectCheckInterval`` until an answer comes.
        var suspect = false

        init(now: Instant, nextCheck: Instant) {
            lastConsent = now
            self.nextCheck = nextCheck
        }
    }

    public let selfID: ClientID
    public let peerID: ClientID
    public let configuration: Configuration
    public internal(set) var path: Path = .none
    var phase: Phase = .idle
    var armed = false
    var candidates: [Candidate] = []
    var outstanding: [UInt64: (target: Target, sentAt: Instant)] = [:]
    var lastTriggered: [Target: Instant] = [:]
    /// Answered checks per target that is not (yet) the path, towards ``Configuration/confirmationsToSelect``.
    var confirmations: [Target: Int] = [:]
    /// The port-probing schedule (hard-to-easy pairs only).
    var portProbe: PortProbe
    /// Our side of the pair from the last punch instruction (`nil`: not a hard-to-easy pair).
    public internal(set) var probeRole: PortProbe.Role?
    /// The probes of the attempt (checks to guessed ports, or from probe sockets), apart from
    /// ``outstanding``, which a probe rate would flush; bounded by age (``probeAnswerWindow``).
    var probeChecks: [UInt64: (target: Target, sentAt: Instant)] = [:]
    /// A probe's pong counts only this long after the probe (round trips are far shorter).
    static var probeAnswerWindow: Duration { .seconds(2) }
    /// The probe socket the direct path goes through (`nil`: the chat socket): chat and
    /// consent checks to the peer leave from it.
    public internal(set) var pathSocket: Int?
    var nextTransaction: UInt64
    var failedRounds = 0
    var lastInterest: Instant?
    var hopeless = false
    /// The NAT kinds of the last punch instruction (ours, the peer's), for ``relayReason``.
    var natKinds: (ours: NATKind, peers: NATKind) = (.unknown, .unknown)
    /// The smoothed round trip on the direct path, from the pongs answering our checks to it
    /// (consent checks included): `nil` while there is no direct path. A new path starts a
    /// new estimate; the relay's round trip is not measured here.
    public internal(set) var roundTrip: RoundTripEstimate?
    /// What the input being handled has to say (returned, in order, when it ends).
    var outputs: [Output] = []

    public init(selfID: ClientID, peerID: ClientID, transactionSeed: UInt64, configuration: Configuration = Configuration()) {
        self.selfID = selfID
        self.peerID = peerID
        self.configuration = configuration
        nextTransaction = transactionSeed
        portProbe = PortProbe(configuration: configuration.portProbe, seed: transactionSeed ^ 0x7072_6F62_6500_0000)
    }

    /// Whether a punch instruction arrived (checks are answered only then).
    public var isArmed: Bool { armed }

    /// The peer's verified direct endpoint, if any.
    public var directEndpoint: Endpoint? { path.directEndpoint }

    /// Why the peer is on the relay (`nil` while a direct path is selected): from the phase,
    /// the failed rounds and the NATs.
    public var relayReason: RelayReason? {
        if path.directEndpoint != nil { return nil }
        if hopeless, armed { return .hopeless(ours: natKinds.ours, peers: natKinds.peers) }
        switch phase {
        case .idle: return failedRounds > 0 ? .noAnswerFromCandidates : .notTriedYet
        case .punching where portProbe.isActive: return .probingPorts
        case .awaitingPunch, .punching: return .punchingInProgress
        case .coolingDown where portProbe.failedAttempts > 0: return .portProbingFailed
        case .coolingDown: return .noAnswerFromCandidates
        case .relayOnly: return .hopeless(ours: natKinds.ours, peers: natKinds.peers)
        case .connected: return .punchingInProgress
        }
    }

    /// Whether a round is in progress.
    public var isPunching: Bool {
        if case .punching = phase { return true }
        return false
    }

    /// Someone wants to talk to the peer: start a round unless one is running, a path
    /// exists, or a cool-down is on (``Output/requestRound`` then says to ask the server).
    public mutating func noteInterest(now: Instant) -> [Output] {
        applyNoteInterest(now: now)
        return takeOutputs()
    }

    private mutating func applyNoteInterest(now: Instant) {
        lastInterest = now
        switch phase {
        case .idle:
            requestRound(now: now)
        case .relayOnly, .connected, .punching, .awaitingPunch, .coolingDown:
            break
        }
        if path == .none { setPath(.relayed) }
    }

    /// The server's punch message for this peer: its candidates and the round.
    ///
    /// `selfHasPortMapping`: our gateway granted a port mapping that the server passed on to
    /// peers. Either side's mapping makes that side reachable from any endpoint, as if it had
    /// no NAT, so the pair is judged with `.none` for it (``PunchFeasibility``): a peer
    /// behind a symmetric NAT reaches the mapped endpoint, and the answer goes back through
    /// the connection that packet opened.
    public mutating func handlePunch(peer: PeerInfo, round: UInt32, delay: Duration, selfNATKind: NATKind,
                                     selfHasPortMapping: Bool = false, now: Instant) -> [Output] {
        applyHandlePunch(peer: peer, round: round, delay: delay, selfNATKind: selfHasPortMapping ? .none : selfNATKind,
                         reportedNATKind: selfNATKind, now: now)
        return takeOutputs()
    }

    private mutating func applyHandlePunch(peer: PeerInfo, round: UInt32, delay: Duration, selfNATKind: NATKind,
                                           reportedNATKind: NATKind, now: Instant) {
        armed = true
        var fresh: [Candidate] = peer.privateEndpoints.map { Candidate(endpoint: $0, kind: .privateEndpoint) }
        // A peer with a port mapping is reachable at it from anywhere: judged as no NAT.
        let peersKind = peer.mappedEndpoint == nil ? peer.natKind : .none
        let punchable = PunchFeasibility.canPunch(selfNATKind, peersKind)
        probeRole = punchable || !configuration.portProbing ? nil : PunchFeasibility.portProbeRole(ours: selfNATKind, peers: peersKind)
        hopeless = !punchable && probeRole == nil
        natKinds = (reportedNATKind, peer.natKind)
        if let mapped = peer.mappedEndpoint, !fresh.contains(where: { $0.endpoint == mapped }) {
            fresh.append(Candidate(endpoint: mapped, kind: .portMapped))
        }
        if punchable, !fresh.contains(where: { $0.endpoint == peer.publicEndpoint }) {
            fresh.append(Candidate(endpoint: peer.publicEndpoint, kind: .publicEndpoint))
        }
        if hasProbedPath {
            // A probed path cannot be checked by a new round's candidates (its socket is
            // closed by a new attempt): the peer lost it, so it starts over.
            dropProbedPath()
        }
        // Keep learned peer-reflexive candidates; replace the rest. An endpoint learned both
        // ways keeps the server's label (a ping from a private address is still private).
        let learned = candidates.filter { $0.kind == .peerReflexive && !hopeless && $0.socket == nil }
        candidates = fresh + learned.filter { candidate in !fresh.contains { $0.endpoint == candidate.endpoint } }
        if lastInterest == nil { lastInterest = now }
        if case .connected = phase {
            // Already direct: the peer asked for a round (it lost its side). Answer its checks
            // and check again ourselves.
        }
        guard !candidates.isEmpty || probeRole != nil else {
            phase = .relayOnly
            if path != .relayed { setPath(.relayed) }
            return
        }
        let start = now + delay
        probeChecks = [:]
        if let probeRole {
            // Hard to easy: a port-probing attempt, with the private candidates (if any)
            // checked alongside as in any round.
            phase = .punching(round: round, startAt: start, deadline: start + configuration.portProbe.attemptDuration,
                              nextCheck: start, interval: configuration.firstCheckInterval)
            if path == .none { setPath(.relayed) }
            let easyKind = probeRole == .easy ? selfNATKind : peersKind
            runProbe(portProbe.start(role: probeRole, peerPublic: peer.publicEndpoint, start: start,
                                     easyRemaps: easyKind == .endpointIndependentRemappedByInbound, now: now), now: now)
        } else {
            runProbe(portProbe.stop(), now: now)
            phase = .punching(round: round, startAt: start, deadline: start + configuration.roundDuration,
                              nextCheck: start, interval: configuration.firstCheckInterval)
            if path == .none { setPath(.relayed) }
        }
        runTimers(now: now)
    }

    /// A ping from the peer that the caller verified (addressed to us, from the peer, with a
    /// valid tag) arrived from `source`: answer it, and check `source` back.
    ///
    /// A ping never refreshes consent on the direct path, even from its endpoint: a ping
    /// captured earlier and re-sent with the peer's address as its source verifies just
    /// as well, so it proves nothing about the path now. Only our own checks' pongs do.
    ///
    /// `socket`: the probe socket it arrived on (`nil`: the chat socket); the answer and the
    /// check back leave from the same one.
    public mutating func handlePing(transaction: UInt64, from source: Endpoint, socket: Int? = nil, now: Instant) -> [Output] {
        applyHandlePing(transaction: transaction, from: source, socket: socket, now: now)
        return takeOutputs()
    }

    private mutating func applyHandlePing(transaction: UInt64, from source: Endpoint, socket: Int?, now: Instant) {
        armed = true
        let target = Target(endpoint: source, socket: socket)
        transmit(.pong(transaction: transaction, observed: source), to: target)
        // At most one triggered check per source per check interval: without this, two
        // sources that both work would trigger checks at each other for ever.
        let checkPending = lastTriggered[target].map { now - $0 < configuration.firstCheckInterval } ?? false
        if case .connected = phase {
            if directEndpoint == source, pathSocket == socket { return }
            // Already direct elsewhere: check this source back only if it would be a better
            // path and no check to it is in flight (else two working paths ping-pong forever).
            if case .direct(_, let currentKind) = path, kind(of: target) > currentKind, !checkPending {
                triggerCheck(to: target, now: now)
            }
            return
        }
        if !candidates.contains(where: { $0.target == target }) {
            candidates.append(Candidate(endpoint: source, kind: learnedKind(of: target), socket: socket))
        }
        // A triggered check: the peer's packets reach us from `source`, so ours may reach it.
        if !checkPending { triggerCheck(to: target, now: now) }
        if case .idle = phase { startImplicitRound(now: now) }
        if case .coolingDown = phase { startImplicitRound(now: now) }
    }

    /// A pong the caller verified arrived from `source`. It counts only if it answers one
    /// of our outstanding checks (each transaction once; a replay of an answered one does
    /// nothing), sent to `source` no longer than ``Configuration/consentTimeout`` ago.
    ///
    /// `socket`: the probe socket it arrived on (`nil`: the chat socket). It must be the one
    /// the check left from: a pong that a probe socket's check draws counts only there.
    public mutating func handlePong(transaction: UInt64, from source: Endpoint, socket: Int? = nil, now: Instant) -> [Output] {
        applyHandlePong(transaction: transaction, from: source, socket: socket, now: now)
        return takeOutputs()
    }

    private mutating func applyHandlePong(transaction: UInt64, from source: Endpoint, socket: Int?, now: Instant) {
        let target = Target(endpoint: source, socket: socket)
        if outstanding[transaction] == nil, probeChecks[transaction] != nil {
            return answerProbe(transaction: transaction, from: target, now: now)
        }
        guard let sent = outstanding.removeValue(forKey: transaction), sent.target == target,
              now - sent.sentAt <= configuration.consentTimeout
        else { return }
        let kind = kind(of: target)
        if case .connected(var consent) = phase {
            if source == directEndpoint, socket == pathSocket {
                // Fresh proof that the path works: consent restored.
                roundTrip = .adding(now - sent.sentAt, to: roundTrip)
                consent.lastConsent = now
                consent.misses = 0
                consent.pending = []
                if consent.suspect {
                    consent.suspect = false
                    consent.nextCheck = (consent.lastCheck ?? now) + configuration.keepAliveInterval
                }
                phase = .connected(consent)
                return
            }
            // A pong on another path says nothing about the current one; it may select a
            // better one (once confirmed).
            guard case .direct(_, let currentKind) = path, kind > currentKind, confirm(target, now: now) else { return }
            select(target, kind: kind, now: now)
            roundTrip = RoundTripEstimate(firstSample: now - sent.sentAt)
            return
        }
        if source == directEndpoint, socket == pathSocket {
            // Punching again while still direct (the peer asked for a round): its path is
            // answering, so it stays; no change to show.
            roundTrip = .adding(now - sent.sentAt, to: roundTrip)
            failedRounds = 0
            phase = .connected(Consent(now: now, nextCheck: now + configuration.keepAliveInterval))
            return
        }
        guard confirm(target, now: now) else { return }
        failedRounds = 0
        select(target, kind: kind, now: now)
        roundTrip = RoundTripEstimate(firstSample: now - sent.sentAt)
    }


    /// The peer gained a port mapping since the last round (a roster update said so): a pair
    /// that was relay-only, or cooling down after a failed round, may now have a direct path
    /// at the mapped endpoint. Asks for a round at once (``Output/requestRound``), but only
    /// while someone still talks to the peer (the interest window); otherwise nothing.
    public mutating func peerGainedPortMapping(now: Instant) -> [Output] {
        switch phase {
        case .relayOnly, .coolingDown:
            if let interest = lastInterest, now - interest <= configuration.interestWindow {
                hopeless = false
                requestRound(now: now)
            }
        case .idle, .awaitingPunch, .punching, .connected:
            break
        }
        return takeOutputs()
    }

    /// A chat sent on the direct path went unacknowledged: start checking the path now and
    /// every ``Configuration/suspectCheckInterval`` until a check is answered. The bounds
    /// for losing the path stay as they are: a retransmission is no proof of loss (the
    /// chat or its ack may just have been dropped).
    public mutating func suspectPath(now: Instant) -> [Output] {
        applySuspectPath(now: now)
        return takeOutputs()
    }

    private mutating func applySuspectPath(now: Instant) {
        guard case .connected(var consent) = phase, !consent.suspect else { return }
        consent.suspect = true
        consent.nextCheck = consent.lastCheck.map { max(now, $0 + configuration.suspectCheckInterval) } ?? now
        phase = .connected(consent)
        runTimers(now: now)
    }

    /// The peer left or the server session was lost: forget everything.
    public mutating func reset() -> [Output] {
        applyReset()
        return takeOutputs()
    }

    private mutating func applyReset() {
        phase = .idle
        armed = false
        candidates = []
        outstanding = [:]
        confirmations = [:]
        probeChecks = [:]
        failedRounds = 0
        runProbe(portProbe.stop(), now: .zero)
        if pathSocket != nil {
            pathSocket = nil
            outputs.append(.closeProbeSockets(keeping: nil))
        }
        if path != .none { setPath(.none) }
    }

    /// Call at ``nextDeadline``.
    public mutating func handleTimeout(now: Instant) -> [Output] {
        runTimers(now: now)
        return takeOutputs()
    }

    /// When the agent next needs ``handleTimeout(now:)``.
    public var nextDeadline: Instant? {
        switch phase {
        case .idle, .relayOnly: nil
        case .awaitingPunch(let since): since + .seconds(3)
        case .punching(_, _, let deadline, let nextCheck, _): [deadline, nextCheck, portProbe.nextDeadline].compactMap { $0 }.min()
        case .connected(let consent):
            [consent.nextCheck,
             consent.pending.first.map { $0 + configuration.keepAliveAnswerTimeout },
             consent.misses >= configuration.missesToLosePath ? consent.lastConsent + configuration.consentTimeout : nil]
                .compactMap { $0 }.min()
        case .coolingDown(let until): until
        }
    }

    /// The outputs of the input just handled; one round request at most.
    private mutating func takeOutputs() -> [Output] {
        defer { outputs.removeAll() }
        var requested = false
        return outputs.filter { output in
            guard output == .requestRound else { return true }
            defer { requested = true }
            return !requested
        }
    }
}
