import Addressing
import MonotonicTime
import Wire

/// The server's side of hole punching: numbered rounds per pair of clients.
///
/// When either client of a pair asks to connect, both are told to punch (the caller sends
/// the two ``Instruction``s together); one may be told to wait ``Configuration/secondMoverDelay``:
///
/// - A NAT that lets a stray packet leave a conntrack entry behind (forcing a new port for
///   the flow it later opens; ``NATKind/endpointIndependentRemappedByInbound``) must see its
///   own side's first packet leave before the peer's arrives. When exactly one side's NAT
///   is known to be of that kind, that side moves first in every round: its early checks die
///   at the peer's firewall without a trace, and the peer's, sent later, find the mapping
///   open. The round succeeds the first time instead of after a 35 s cool-down.
/// - Otherwise round 1 starts both at once, and later rounds alternate which side goes
///   first, so a NAT of that kind that the probe could not classify still gets its side to
///   lead within two rounds. When both sides' NATs are of that kind, no order works: only
///   first packets that cross (a start skew below the one-way delay between the peers) do,
///   so such pairs are started at once in every round.
public struct PunchCoordinator: Sendable {
    public struct Configuration: Hashable, Sendable {
        /// Requests for the same pair closer together than this are one round.
        public var sameRoundWindow: Duration = .seconds(2)
        public var secondMoverDelay: Duration = .milliseconds(800)
        /// Most pairs remembered; the least recently used are forgotten first.
        public var maxPairs = 200_000
        public init() {}
    }

    /// What to tell one side.
    public struct Instruction: Hashable, Sendable {
        public var recipient: ClientID
        public var peer: ClientID
        public var round: UInt32
        public var delay: Duration
    }

    struct PairKey: Hashable, Sendable {
        var first: ClientID
        var second: ClientID

        init(_ a: ClientID, _ b: ClientID) {
            (first, second) = a < b ? (a, b) : (b, a)
        }
    }

    struct PairState: Sendable {
        var round: UInt32
        var lastRoundAt: Instant
    }

    public let configuration: Configuration
    private var pairs: [PairKey: PairState] = [:]

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
    }

    public var pairCount: Int { pairs.count }

    /// `requester` asks to reach `peer`: the instructions for both (the requester first).
    /// `natKinds` are the two clients' NAT kinds as they reported them.
    public mutating func connect(_ requester: ClientID, to peer: ClientID,
                                 natKinds: (requester: NATKind, peer: NATKind) = (.unknown, .unknown),
                                 now: Instant) -> [Instruction] {
        let key = PairKey(requester, peer)
        var state = pairs[key] ?? PairState(round: 0, lastRoundAt: now - configuration.sameRoundWindow * 2)
        if now - state.lastRoundAt >= configuration.sameRoundWindow || state.round == 0 {
            state.round += 1
            state.lastRoundAt = now
        }
        pairs[key] = state
        if pairs.count > configuration.maxPairs, let oldest = pairs.min(by: { $0.value.lastRoundAt < $1.value.lastRoundAt })?.key {
            pairs[oldest] = nil
        }
        var firstDelay = Duration.zero
        var secondDelay = Duration.zero
        let remapping = natKinds.requester == .endpointIndependentRemappedByInbound
        let peerRemapping = natKinds.peer == .endpointIndependentRemappedByInbound
        if remapping != peerRemapping {
            // The side whose NAT remaps after a stray packet leads, every round.
            let leader = remapping ? requester : peer
            if leader == key.first { secondDelay = configuration.secondMoverDelay } else { firstDelay = configuration.secondMoverDelay }
        } else if state.round >= 2, !(remapping && peerRemapping) {
            // The first ID (in sort order) leads on even rounds, the second on odd ones.
            if state.round % 2 == 0 { secondDelay = configuration.secondMoverDelay } else { firstDelay = configuration.secondMoverDelay }
        }
        let delayFor = { (id: ClientID) in id == key.first ? firstDelay : secondDelay }
        return [Instruction(recipient: requester, peer: peer, round: state.round, delay: delayFor(requester)),
                Instruction(recipient: peer, peer: requester, round: state.round, delay: delayFor(peer))]
    }

    /// Forgets every pair `id` is in (it left).
    public mutating func forget(_ id: ClientID) {
        pairs = pairs.filter { $0.key.first != id && $0.key.second != id }
    }
}
