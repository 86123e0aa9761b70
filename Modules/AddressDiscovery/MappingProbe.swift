import Addressing
import MonotonicTime
import STUN
import Wire

/// Finds this socket's public mapping with STUN and, given a second server port, whether
/// the NAT maps endpoint-independently ("cone") or per destination ("symmetric"), the idea
/// of RFC 5780. Sans-I/O: ``start(now:)``, ``receive(_:from:)`` and ``handleTimeout(now:)``
/// return the datagrams to send and, once it knows, the ``Outcome``.
public struct MappingProbe: Sendable, SansIOCore {
    /// What the owner should do.
    public enum Output: Hashable, Sendable {
        /// Send this Binding request.
        case send([UInt8], to: Endpoint)
        /// The probe is over.
        case settled(Outcome)
    }

    /// What the probe found.
    public struct Outcome: Hashable, Sendable {
        public var kind: NATKind
        /// The mapped address seen by the primary server, if it answered.
        public var primaryMapping: Endpoint?
        /// The mapped address seen at the alternate port, if it answered.
        public var alternateMapping: Endpoint?

        public init(kind: NATKind, primaryMapping: Endpoint?, alternateMapping: Endpoint?) {
            self.kind = kind
            self.primaryMapping = primaryMapping
            self.alternateMapping = alternateMapping
        }
    }

    private struct Target: Sendable {
        var server: Endpoint
        var transaction: STUN.TransactionID
        var mapped: Endpoint?
    }

    private var targets: [Target]
    private let localEndpoint: Endpoint?
    private var attempts = 0
    private let maxAttempts: Int
    private let retransmitInterval: Duration
    private var nextSend: Instant?
    public private(set) var outcome: Outcome?

    /// - Parameters:
    ///   - localEndpoint: this socket's own address and port, to recognise "no NAT".
    public init<G: RandomNumberGenerator>(primary: Endpoint, alternate: Endpoint?, localEndpoint: Endpoint?,
                                          random: inout G, retransmitInterval: Duration = .milliseconds(300),
                                          maxAttempts: Int = 4) {
        targets = [Target(server: primary, transaction: .random(using: &random))]
        if let alternate { targets.append(Target(server: alternate, transaction: .random(using: &random))) }
        self.localEndpoint = localEndpoint
        self.retransmitInterval = retransmitInterval
        self.maxAttempts = maxAttempts
    }

    /// When the probe next needs ``handleTimeout(now:)``.
    public var nextDeadline: Instant? { outcome == nil ? nextSend : nil }

    /// The first requests.
    public mutating func start(now: Instant) -> [Output] { handleTimeout(now: now) }

    /// Requests to (re)send now; after the last attempt times out, the outcome.
    public mutating func handleTimeout(now: Instant) -> [Output] {
        guard outcome == nil else { return [] }
        if let due = nextSend, now < due { return [] }
        if attempts >= maxAttempts { return [.settled(settle())] }
        attempts += 1
        nextSend = now + retransmitInterval
        return targets.filter { $0.mapped == nil }.map { .send(STUN.bindingRequest($0.transaction), to: $0.server) }
    }

    /// Takes a STUN response: the outcome when it was the last answer awaited; nothing for
    /// others, and for responses that do not belong to this probe.
    public mutating func receive(_ message: STUN.Message, from source: Endpoint) -> [Output] {
        guard outcome == nil, case .bindingSuccess(let transaction, let mapped) = message,
              let index = targets.firstIndex(where: { $0.transaction == transaction && $0.server == source })
        else { return [] }
        targets[index].mapped = mapped
        return targets.allSatisfy({ $0.mapped != nil }) ? [.settled(settle())] : []
    }

    /// Whether `message` answers one of this probe's requests from `source`.
    public func isAnswer(_ message: STUN.Message, from source: Endpoint) -> Bool {
        guard case .bindingSuccess(let transaction, _) = message else { return false }
        return targets.contains { $0.transaction == transaction && $0.server == source }
    }

    private mutating func settle() -> Outcome {
        let primary = targets.first?.mapped
        let alternate = targets.count > 1 ? targets[1].mapped : nil
        let kind: NATKind
        if let primary, let localEndpoint, primary == localEndpoint {
            kind = .none
        } else if let primary, let alternate {
            kind = primary == alternate ? .endpointIndependent : .endpointDependent
        } else {
            kind = .unknown
        }
        let settled = Outcome(kind: kind, primaryMapping: primary, alternateMapping: alternate)
        outcome = settled
        return settled
    }
}
