import Addressing
import MonotonicTime

/// Asks the gateway for a UDP mapping of one local port with PCP (RFC 6887), then NAT-PMP
/// (RFC 6886), keeps it renewed, notices a gateway that lost its state, and deletes it when
/// closed. Sans-I/O: the owner sends each ``Output/send(_:to:)`` from a UDP socket of its own,
/// hands every datagram from the gateway to ``handleReceive(_:from:now:)`` and calls
/// ``handleTimeout(now:)`` at ``nextDeadline``.
///
/// The sequence, after ``start(now:)``:
/// 1. PCP MAP (random 96-bit nonce, suggested external port = internal port). An answer
///    settles it; a NAT-PMP-only server's "unsupported version", a PCP error or silence
///    after the retransmissions falls back to NAT-PMP.
/// 2. NAT-PMP: the external address request, then the UDP map request.
/// 3. Neither: ``Output/unavailable(_:)`` (the driver tries UPnP next).
///
/// A granted mapping is renewed at half its lifetime (RFC 6887 §11.2.1; RFC 6886 §3.3 says
/// the same) or after ``Configuration/maxRenewInterval``, whichever is sooner. Each answer's
/// epoch is checked as RFC 6887 §8.5 says; a gateway that restarted shows up as ``Output/mapped(_:)``
/// again (the renewal re-created the mapping), not as ``Output/renewed(_:)``.
public struct PortMappingClient: Sendable, SansIOCore {
    /// What the client asks for, and its timings.
    public struct Configuration: Sendable {
        /// The default route's gateway, where PCP and NAT-PMP servers listen.
        public var gateway: IPv4Address
        /// Our address on the LAN: PCP requests carry it and the server compares it with
        /// the datagram's source address.
        public var clientAddress: IPv4Address
        /// The port to map (the chat socket's).
        public var internalPort: UInt16
        /// Seconds asked for. RFC 6886 §3.3 recommends 7200 s.
        public var lifetime: UInt32 = 7200
        /// The waits after each sending of a request; after the last one the gateway is
        /// taken as silent. RFC 6887 §8.1.1 starts at 3 s and RFC 6886 §3.1 at 250 ms with 9
        /// doublings (64 s): a gateway is one LAN hop away and answers within milliseconds
        /// or not at all, so 250 ms, 500 ms and 1 s (1.75 s per protocol) decide without
        /// holding up the next protocol or the chat.
        public var retransmits: [Duration] = [.milliseconds(250), .milliseconds(500), .seconds(1)]
        /// The longest wait between renewals, so that a gateway that restarted (and forgot
        /// the mapping) is noticed soon even with a long lifetime.
        public var maxRenewInterval: Duration = .seconds(120)
        /// The protocols to try, PCP before NAT-PMP.
        public var protocols: Set<MappingProtocol> = [.pcp, .natpmp]

        /// The three facts the client cannot guess; the rest has defaults.
        public init(gateway: IPv4Address, clientAddress: IPv4Address, internalPort: UInt16) {
            self.gateway = gateway
            self.clientAddress = clientAddress
            self.internalPort = internalPort
        }
    }

    /// What the owner should do or know.
    public enum Output: Hashable, Sendable {
        /// Send these bytes to the gateway's port 5351.
        case send([UInt8], to: Endpoint)
        /// A mapping was granted, or changed (another external address or port, or the
        /// gateway restarted and the renewal made it again).
        case mapped(Mapping)
        /// The same mapping was renewed.
        case renewed(Mapping)
        /// The mapping expired before a renewal was answered; the client starts over.
        case lost(Mapping)
        /// No protocol granted a mapping: what each one said.
        case unavailable(Report)
        /// ``close(now:)`` is done: `deleted` when the gateway confirmed the deletion; `false`
        /// when nothing was held, the gateway refused, or it did not answer.
        case closed(deleted: Bool)
    }

    /// How one protocol's attempt ended.
    public enum Attempt: Hashable, Sendable, CustomStringConvertible {
        /// Silence through every retransmission.
        case noAnswer
        /// The server speaks another version (a NAT-PMP server asked with PCP).
        case unsupportedVersion
        /// The server answered with an error.
        case refused(String)
        /// A mapping.
        case granted

        public var description: String {
            switch self {
            case .noAnswer: "no answer"
            case .unsupportedVersion: "unsupported version"
            case .refused(let why): "refused (\(why))"
            case .granted: "granted"
            }
        }
    }

    /// What each protocol tried said, for the log line and the probe.
    public struct Report: Hashable, Sendable, CustomStringConvertible {
        /// In the order tried.
        public var attempts: [(MappingProtocol, Attempt)] {
            get { entries.map { ($0.via, $0.attempt) } }
        }
        struct Entry: Hashable, Sendable {
            var via: MappingProtocol
            var attempt: Attempt
        }
        var entries: [Entry] = []

        /// An empty report.
        public init() {}

        /// Records `attempt` for `via` (replacing an earlier one).
        public mutating func record(_ via: MappingProtocol, _ attempt: Attempt) {
            entries.removeAll { $0.via == via }
            entries.append(Entry(via: via, attempt: attempt))
        }

        /// What `via` said, if it was tried.
        public func attempt(_ via: MappingProtocol) -> Attempt? { entries.first { $0.via == via }?.attempt }

        /// `PCP no answer, NAT-PMP refused (result 2)`.
        public var description: String { entries.map { "\($0.via) \($0.attempt)" }.joined(separator: ", ") }
    }

    enum Step: Hashable, Sendable {
        case pcpMap
        case natpmpAddress
        case natpmpMap(external: IPv4Address)

        var via: MappingProtocol {
            if case .pcpMap = self { return .pcp }
            return .natpmp
        }
    }

    enum Purpose: Hashable, Sendable {
        case create, renew, delete
    }

    /// One request in flight and its retransmissions.
    struct Exchange: Hashable, Sendable {
        var step: Step
        var purpose: Purpose
        /// Sendings so far.
        var sent: Int
        var nextSend: Instant
        /// The NAT-PMP address answer before this map request said the gateway restarted.
        var gatewayRestarted = false
    }

    /// A granted mapping and when it runs out.
    struct Held: Hashable, Sendable {
        var mapping: Mapping
        var grantedAt: Instant
        var renewAt: Instant
        var expiresAt: Instant
    }

    /// The server's epoch as last seen, and when (RFC 6887 §8.5).
    struct EpochMark: Hashable, Sendable {
        var serverEpoch: UInt32
        var seenAt: Instant

        /// Whether `epoch`, seen at `now`, says the server lost its state since this mark.
        func isReset(_ epoch: UInt32, now: Instant) -> Bool {
            if UInt64(epoch) + 1 < UInt64(serverEpoch) { return true }
            let clientDelta = Int64(max(0, (now - seenAt).components.seconds))
            let serverDelta = Int64(epoch) - Int64(serverEpoch)
            return clientDelta + 2 < serverDelta - serverDelta / 16 || serverDelta + 2 < clientDelta - clientDelta / 16
        }
    }

    enum State: Hashable, Sendable {
        case idle
        /// A request in flight; `held` is the mapping being renewed, if any.
        case working(Exchange, held: Held?)
        case holding(Held)
        case deleting(Exchange, held: Held)
        case unavailable
        case closed
    }

    /// What the client was created with.
    public let configuration: Configuration
    private(set) var state: State = .idle
    private let nonce: PCP.Nonce
    private var epoch: EpochMark?
    private var report = Report()

    /// A client for `configuration`; `random` draws the PCP nonce.
    public init<G: RandomNumberGenerator>(configuration: Configuration, random: inout G) {
        self.configuration = configuration
        self.nonce = PCP.Nonce.random(using: &random)
    }

    /// The gateway's PCP / NAT-PMP endpoint.
    public var server: Endpoint { Endpoint(address: configuration.gateway, port: portMappingServerPort) }

    /// The mapping held now, if any (also while it is being renewed).
    public var mapping: Mapping? {
        switch state {
        case .holding(let held), .working(_, held: let held?), .deleting(_, held: let held): held.mapping
        default: nil
        }
    }

    /// When ``handleTimeout(now:)`` is next needed.
    public var nextDeadline: Instant? {
        switch state {
        case .working(let exchange, _), .deleting(let exchange, _): exchange.nextSend
        case .holding(let held): held.renewAt
        case .idle, .unavailable, .closed: nil
        }
    }

    /// Sends the first request.
    public mutating func start(now: Instant) -> [Output] {
        guard case .idle = state else { return [] }
        return begin(now: now)
    }

    /// Deletes the mapping (lifetime 0) if one is held or may have been granted; ends with
    /// ``Output/closed(deleted:)``.
    public mutating func close(now: Instant) -> [Output] {
        switch state {
        case .holding(let held), .working(_, held: let held?):
            return send(Exchange(step: deletionStep(for: held.mapping), purpose: .delete, sent: 0, nextSend: now),
                        held: held, now: now)
        case .working(let exchange, held: nil) where exchange.step != .natpmpAddress:
            // A grant may be on its way: delete what it would have made.
            let guess = Mapping(via: exchange.step.via, internalPort: configuration.internalPort,
                                external: Endpoint(address: IPv4Address(bits: 0), port: configuration.internalPort), lifetimeSeconds: 0)
            let held = Held(mapping: guess, grantedAt: now, renewAt: now, expiresAt: now)
            return send(Exchange(step: exchange.step, purpose: .delete, sent: 0, nextSend: now), held: held, now: now)
        case .deleting:
            return []
        case .closed:
            return []
        default:
            state = .closed
            return [.closed(deleted: false)]
        }
    }

    /// Retransmits, gives up, renews: whatever is due at `now`.
    public mutating func handleTimeout(now: Instant) -> [Output] {
        switch state {
        case .working(let exchange, let held) where now >= exchange.nextSend:
            if exchange.sent < configuration.retransmits.count { return send(exchange, held: held, now: now) }
            return silence(exchange, held: held, now: now)
        case .deleting(let exchange, let held) where now >= exchange.nextSend:
            if exchange.sent < min(2, configuration.retransmits.count) { return send(exchange, held: held, now: now) }
            state = .closed
            return [.closed(deleted: false)]
        case .holding(let held) where now >= held.renewAt:
            if now >= held.expiresAt {
                return [.lost(held.mapping)] + begin(now: now)
            }
            let step: Step = held.mapping.via == .pcp ? .pcpMap : .natpmpAddress
            return send(Exchange(step: step, purpose: .renew, sent: 0, nextSend: now), held: held, now: now)
        default:
            return []
        }
    }

    /// A datagram from `source`; anything not from the gateway's port 5351, not an answer
    /// to the request in flight, or malformed is ignored.
    public mutating func handleReceive(_ bytes: [UInt8], from source: Endpoint, now: Instant) -> [Output] {
        guard source == server else { return [] }
        let exchange: Exchange
        let held: Held?
        switch state {
        case .working(let current, let currentHeld):
            exchange = current
            held = currentHeld
        case .deleting(let current, let currentHeld):
            exchange = current
            held = currentHeld
        default:
            return []
        }
        switch exchange.step {
        case .pcpMap:
            return receivePCP(bytes, exchange: exchange, held: held, now: now)
        case .natpmpAddress, .natpmpMap:
            return receiveNATPMP(bytes, exchange: exchange, held: held, now: now)
        }
    }

    // MARK: - PCP

    private mutating func receivePCP(_ bytes: [UInt8], exchange: Exchange, held: Held?, now: Instant) -> [Output] {
        let response: PCP.Response
        do {
            response = try PCP.decodeResponse(bytes)
        } catch .unexpectedVersion(NATPMP.version) {
            // A NAT-PMP server's answer to a version-2 request: "unsupported version".
            guard let answer = try? NATPMP.decodeResponse(bytes), answer.result == NATPMP.resultUnsupportedVersion else { return [] }
            return failed(.pcp, .unsupportedVersion, exchange: exchange, held: held, now: now)
        } catch {
            return []
        }
        switch response {
        case .header(let header):
            // Error answers without the opcode data cannot be matched by nonce: take them
            // only as errors (a success must carry the mapping).
            guard header.result != .success, header.opcode == PCP.opcodeMap || header.result == .unsupportedVersion else { return [] }
            noteEpoch(header.epoch, now: now)
            let attempt: Attempt = header.result == .unsupportedVersion ? .unsupportedVersion : .refused("\(header.result)")
            return failed(.pcp, attempt, exchange: exchange, held: held, now: now)
        case .map(let map):
            guard map.nonce == nonce, map.internalPort == configuration.internalPort, map.protocolNumber == PCP.protocolUDP else { return [] }
            let reset = noteEpoch(map.header.epoch, now: now)
            if exchange.purpose == .delete {
                state = .closed
                return [.closed(deleted: map.header.result == .success)]
            }
            guard map.header.result == .success, map.header.lifetime > 0 else {
                return failed(.pcp, .refused("\(map.header.result)"), exchange: exchange, held: held, now: now)
            }
            let mapping = Mapping(via: .pcp, internalPort: configuration.internalPort,
                                  external: Endpoint(address: map.assignedExternalAddress, port: map.assignedExternalPort),
                                  lifetimeSeconds: map.header.lifetime)
            return granted(mapping, previous: held, gatewayReset: reset, now: now)
        }
    }

    // MARK: - NAT-PMP

    private mutating func receiveNATPMP(_ bytes: [UInt8], exchange: Exchange, held: Held?, now: Instant) -> [Output] {
        guard let response = try? NATPMP.decodeResponse(bytes) else { return [] }
        switch (exchange.step, response) {
        case (.natpmpAddress, .externalAddress(_, let serverEpoch, let address)):
            let reset = noteEpoch(serverEpoch, now: now)
            // A restart seen here is carried to the map answer, which re-creates the mapping.
            return send(Exchange(step: .natpmpMap(external: address), purpose: exchange.purpose, sent: 0, nextSend: now,
                                 gatewayRestarted: reset), held: held, now: now)
        case (.natpmpAddress, .other(let opcode, let result)) where opcode == 128:
            return failed(.natpmp, result == NATPMP.resultUnsupportedVersion ? .unsupportedVersion : .refused("result \(result)"),
                          exchange: exchange, held: held, now: now)
        case (.natpmpMap(let external), .mapUDP(_, let serverEpoch, let internalPort, let externalPort, let lifetime)):
            guard internalPort == configuration.internalPort else { return [] }
            let reset = noteEpoch(serverEpoch, now: now)
            if exchange.purpose == .delete {
                state = .closed
                return [.closed(deleted: true)]
            }
            guard lifetime > 0 else { return failed(.natpmp, .refused("lifetime 0"), exchange: exchange, held: held, now: now) }
            let mapping = Mapping(via: .natpmp, internalPort: internalPort, external: Endpoint(address: external, port: externalPort),
                                  lifetimeSeconds: lifetime)
            return granted(mapping, previous: held, gatewayReset: reset || exchange.gatewayRestarted, now: now)
        case (.natpmpMap, .other(let opcode, let result)) where opcode == 129:
            if exchange.purpose == .delete {
                state = .closed
                return [.closed(deleted: false)]
            }
            return failed(.natpmp, .refused("result \(result)"), exchange: exchange, held: held, now: now)
        default:
            return []
        }
    }

    // MARK: - Steps

    private func firstStep(after via: MappingProtocol?) -> Step? {
        let order: [MappingProtocol] = [.pcp, .natpmp]
        let start = via.flatMap { order.firstIndex(of: $0).map { $0 + 1 } } ?? 0
        for candidate in order[start...] where configuration.protocols.contains(candidate) {
            return candidate == .pcp ? .pcpMap : .natpmpAddress
        }
        return nil
    }

    private func deletionStep(for mapping: Mapping) -> Step {
        mapping.via == .pcp ? .pcpMap : .natpmpMap(external: mapping.external.address)
    }

    /// Starts over from the first protocol.
    private mutating func begin(now: Instant) -> [Output] {
        report = Report()
        epoch = nil
        guard let step = firstStep(after: nil) else {
            state = .unavailable
            return [.unavailable(report)]
        }
        return send(Exchange(step: step, purpose: .create, sent: 0, nextSend: now), held: nil, now: now)
    }

    /// Sends (or resends) `exchange`'s request and waits for the answer.
    private mutating func send(_ exchange: Exchange, held: Held?, now: Instant) -> [Output] {
        var next = exchange
        let waits = configuration.retransmits
        next.nextSend = now + (waits.isEmpty ? .seconds(1) : waits[min(exchange.sent, waits.count - 1)])
        next.sent += 1
        state = exchange.purpose == .delete ? held.map { .deleting(next, held: $0) } ?? .closed : .working(next, held: held)
        return [.send(request(for: exchange.step, purpose: exchange.purpose, held: held), to: server)]
    }

    private func request(for step: Step, purpose: Purpose, held: Held?) -> [UInt8] {
        let lifetime = purpose == .delete ? 0 : configuration.lifetime
        // A renewal suggests what it holds (RFC 6887 §11.2.1); a first request suggests the
        // internal port, which keeps the external port equal to ours where the gateway can.
        let suggestedPort = held.map { $0.mapping.external.port } ?? configuration.internalPort
        switch step {
        case .pcpMap:
            let suggestedAddress = held?.mapping.external.address ?? IPv4Address(bits: 0)
            return PCP.MapRequest(nonce: nonce, lifetime: lifetime, clientAddress: configuration.clientAddress,
                                  internalPort: configuration.internalPort, suggestedExternalPort: suggestedPort,
                                  suggestedExternalAddress: suggestedAddress).encode()
        case .natpmpAddress:
            return NATPMP.externalAddressRequest()
        case .natpmpMap:
            return NATPMP.mapRequest(internalPort: configuration.internalPort,
                                     suggestedExternalPort: purpose == .delete ? 0 : suggestedPort, lifetime: lifetime)
        }
    }

    /// The request went unanswered through every retransmission.
    private mutating func silence(_ exchange: Exchange, held: Held?, now: Instant) -> [Output] {
        failed(exchange.step.via, .noAnswer, exchange: exchange, held: held, now: now)
    }

    /// `via` did not grant: the next protocol, a later renewal, or giving up.
    private mutating func failed(_ via: MappingProtocol, _ attempt: Attempt, exchange: Exchange, held: Held?,
                                 now: Instant) -> [Output] {
        if exchange.purpose == .delete {
            state = .closed
            return [.closed(deleted: false)]
        }
        if let held {
            // A renewal: try again halfway to the expiry while there is time; then hold the
            // mapping until it expires (``handleTimeout(now:)`` says it is lost and starts over).
            let left = held.expiresAt - now
            if attempt == .noAnswer, left > .zero {
                var again = held
                again.renewAt = left > .seconds(4) ? now + left / 2 : held.expiresAt
                state = .holding(again)
                return []
            }
            return [.lost(held.mapping)] + begin(now: now)
        }
        report.record(via, attempt)
        epoch = nil
        guard let step = firstStep(after: via) else {
            state = .unavailable
            return [.unavailable(report)]
        }
        return send(Exchange(step: step, purpose: .create, sent: 0, nextSend: now), held: nil, now: now)
    }

    private mutating func granted(_ mapping: Mapping, previous: Held?, gatewayReset: Bool, now: Instant) -> [Output] {
        let lifetime = Duration.seconds(Int64(mapping.lifetimeSeconds))
        let renewIn = min(lifetime / 2, configuration.maxRenewInterval)
        state = .holding(Held(mapping: mapping, grantedAt: now, renewAt: now + renewIn, expiresAt: now + lifetime))
        report.record(mapping.via, .granted)
        if let previous, previous.mapping.external == mapping.external, !gatewayReset { return [.renewed(mapping)] }
        return [.mapped(mapping)]
    }

    /// Records the server's epoch; `true` when it says the server lost its state (RFC 6887 §8.5).
    @discardableResult
    private mutating func noteEpoch(_ serverEpoch: UInt32, now: Instant) -> Bool {
        defer { epoch = EpochMark(serverEpoch: serverEpoch, seenAt: now) }
        return epoch?.isReset(serverEpoch, now: now) ?? false
    }
}
