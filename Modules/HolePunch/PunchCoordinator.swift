import Addressing
import MonotonicTime

/// The server's side of hole punching: numbered rounds per pair of clients.
///
/// When either client of a pair asks to connect, both are told to punch at once (the
/// caller sends the two ``Instruction``s together). Rounds after the first alternate which
/// side goes first, the other starting ``Configuration/secondMoverDelay`` later: when one
/// NAT lets a stray packet leave a conntrack entry behind (forcing a new port for the
/// flow it later opens), the round where that NAT's side moves first still succeeds.
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
    public mutating func connect(_ requester: ClientID, to peer: ClientID, now: Instant) -> [Instruction] {
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
        // Round 1: both at once. Later rounds: the first ID (in sort order) leads on even
        // rounds, the second on odd ones.
        var firstDelay = Duration.zero
        var secondDelay = Duration.zero
        if state.round >= 2 {
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
