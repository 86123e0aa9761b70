import Addressing
import MonotonicTime
import STUN

/// Finds out whether a cone NAT *remaps* a flow after an unsolicited inbound packet
/// arrived on its tuple, with two STUN server ports and RFC 5780's CHANGE-REQUEST.
///
/// Run it from a fresh socket (not the chat socket): it deliberately spoils the flow
/// towards the server's main port for that socket.
///
/// 1. A Binding request with CHANGE-REQUEST (change port) goes to the server's alternate
///    port, and a plain one right behind it. The server answers the first from its main
///    port: a datagram from an endpoint this socket never sent to. A NAT with a WAN firewall
///    drops it without a trace. A NAT without one accepts it into the router itself, and
///    Linux's conntrack keeps an entry for that tuple (30 s, refreshed by each such packet).
///    If it is *forwarded* to us, the NAT filters endpoint-independently and there is nothing
///    to fear (``Outcome/acceptsUnsolicited``).
/// 2. The plain answer says the mapping the alternate port sees. The server handled the
///    change-port request first, so by now its answer has left the server;
///    ``Configuration/settleDelay`` later, a Binding request goes to the main port.
/// 3. The same mapping there: the NAT kept it (``Outcome/keepsMapping``). Another one: the
///    stray entry occupied the tuple, so the NAT gave our flow a new port
///    (``Outcome/remapsAfterUnsolicited``): a peer's check that arrives before our own
///    first packet to it would do the same to the chat socket's flow, and the punch round
///    must let this side send first (``PunchCoordinator``).
///
/// Only meaningful for a NAT whose mapping is endpoint-independent (``MappingProbe`` says
/// so first): a symmetric NAT gives a new mapping per destination anyway.
public struct RemapProbe: Sendable, SansIOCore {
    /// What the owner should do.
    public enum Output: Hashable, Sendable {
        case send([UInt8], to: Endpoint)
        case settled(Outcome)
    }

    /// What the probe found.
    public enum Outcome: Hashable, Sendable, CustomStringConvertible {
        /// The mapping stayed the same after the unsolicited packet.
        case keepsMapping
        /// The flow to the main port got another public port than the one to the alternate
        /// port: the unsolicited packet left an entry that pushed the mapping aside.
        case remapsAfterUnsolicited(alternate: Endpoint, primary: Endpoint)
        /// The answer from the port we never sent to was delivered: endpoint-independent
        /// (or address-dependent) filtering.
        case acceptsUnsolicited
        /// The server did not answer (or does not offer change-port).
        case noAnswer
        /// The server answered the change-port request from the port it was sent to: it does
        /// not honour CHANGE-REQUEST, so nothing was tested.
        case changePortUnsupported

        public var description: String {
            switch self {
            case .keepsMapping: "keeps its mapping after unsolicited inbound"
            case .remapsAfterUnsolicited(let alternate, let primary):
                "remaps after unsolicited inbound (\(alternate) became \(primary))"
            case .acceptsUnsolicited: "accepts unsolicited inbound"
            case .noAnswer: "no answer"
            case .changePortUnsupported: "not tested (the server ignores CHANGE-REQUEST)"
            }
        }
    }

    /// Timings.
    public struct Configuration: Hashable, Sendable {
        public var retransmitInterval: Duration = .milliseconds(300)
        public var maxAttempts = 4
        /// Between the alternate port's answer and the request to the main port: room for
        /// the server's main-port answer, handed to another event loop, to reach the NAT
        /// first. A few milliseconds on any host; 50 ms costs nothing at start-up.
        public var settleDelay: Duration = .milliseconds(50)
        public init() {}
    }

    private enum Phase: Hashable, Sendable {
        /// Change-port and plain requests to the alternate port, resent until answered.
        case poking(attempts: Int, nextSend: Instant)
        case settling(alternate: Endpoint, until: Instant)
        case askingPrimary(alternate: Endpoint, attempts: Int, nextSend: Instant)
        case done(Outcome)
    }

    public let primary: Endpoint
    public let alternate: Endpoint
    public let configuration: Configuration
    private let changeTransaction: STUN.TransactionID
    private let alternateTransaction: STUN.TransactionID
    private let primaryTransaction: STUN.TransactionID
    private var phase: Phase = .poking(attempts: 0, nextSend: .zero)

    public init<G: RandomNumberGenerator>(primary: Endpoint, alternate: Endpoint, random: inout G,
                                          configuration: Configuration = Configuration()) {
        self.primary = primary
        self.alternate = alternate
        self.configuration = configuration
        changeTransaction = .random(using: &random)
        alternateTransaction = .random(using: &random)
        primaryTransaction = .random(using: &random)
    }

    /// The outcome, once settled.
    public var outcome: Outcome? {
        if case .done(let outcome) = phase { return outcome }
        return nil
    }

    /// When the probe next needs ``handleTimeout(now:)``.
    public var nextDeadline: Instant? {
        switch phase {
        case .poking(_, let nextSend), .askingPrimary(_, _, let nextSend): nextSend
        case .settling(_, let until): until
        case .done: nil
        }
    }

    /// The first requests.
    public mutating func start(now: Instant) -> [Output] {
        phase = .poking(attempts: 0, nextSend: now)
        return handleTimeout(now: now)
    }

    public mutating func handleTimeout(now: Instant) -> [Output] {
        switch phase {
        case .poking(let attempts, let nextSend):
            guard now >= nextSend else { return [] }
            guard attempts < configuration.maxAttempts else { return settle(.noAnswer) }
            phase = .poking(attempts: attempts + 1, nextSend: now + configuration.retransmitInterval)
            return [.send(STUN.bindingRequest(changeTransaction, change: .init(changePort: true)), to: alternate),
                    .send(STUN.bindingRequest(alternateTransaction), to: alternate)]
        case .settling(let mapped, let until):
            guard now >= until else { return [] }
            phase = .askingPrimary(alternate: mapped, attempts: 0, nextSend: now)
            return handleTimeout(now: now)
        case .askingPrimary(let mapped, let attempts, let nextSend):
            guard now >= nextSend else { return [] }
            guard attempts < configuration.maxAttempts else { return settle(.noAnswer) }
            phase = .askingPrimary(alternate: mapped, attempts: attempts + 1, nextSend: now + configuration.retransmitInterval)
            return [.send(STUN.bindingRequest(primaryTransaction), to: primary)]
        case .done:
            return []
        }
    }

    /// A STUN message from `source`; answers that do not belong to this probe are ignored.
    public mutating func receive(_ message: STUN.Message, from source: Endpoint, now: Instant) -> [Output] {
        guard case .bindingSuccess(let transaction, let mapped) = message else { return [] }
        if case .done = phase { return [] }
        if transaction == changeTransaction {
            if source == primary { return settle(.acceptsUnsolicited) }
            if source == alternate { return settle(.changePortUnsupported) }
        }
        switch phase {
        case .poking where transaction == alternateTransaction && source == alternate:
            phase = .settling(alternate: mapped, until: now + configuration.settleDelay)
            return []
        case .askingPrimary(let alternateMapping, _, _) where transaction == primaryTransaction && source == primary:
            return settle(mapped == alternateMapping ? .keepsMapping : .remapsAfterUnsolicited(alternate: alternateMapping, primary: mapped))
        default:
            return []
        }
    }

    private mutating func settle(_ outcome: Outcome) -> [Output] {
        phase = .done(outcome)
        return [.settled(outcome)]
    }
}
