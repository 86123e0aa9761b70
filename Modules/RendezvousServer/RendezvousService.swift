import Addressing
import Admission
import Logging
import MonotonicTime
import NIOCore
import Registry
import STUN
import Store
import Transport
import Wire

/// The rendezvous server's driver: tells STUN, extended and classic datagrams apart,
/// answers STUN Binding requests, hands the rest to the ``Registry``, sends what the
/// registry asks for and prints the seed's event lines.
///
/// It is a ``DatagramDriver``: all of its methods run on one event loop and take the time
/// as an argument, so tests drive it without sockets or clocks.
public final class RendezvousService: DatagramDriver {
    /// Server settings.
    public struct Configuration: Sendable {
        /// The registry's settings, its sweep interval among them.
        public var registry: Registry.Configuration
        /// Anti-amplification and per-address registration limits.
        public var sources: SourceGuard.Configuration

        public init(registry: Registry.Configuration = .init(), sources: SourceGuard.Configuration = .init()) {
            self.registry = registry
            self.sources = sources
        }
    }

    /// What the server counted since it started.
    ///
    /// Plain integers, incremented on the event loop (the hot paths add to them and do nothing
    /// else): the admin listener reads a copy through `DatagramHost.performAndWait` when it is
    /// scraped, and turns them into metrics there (``ServerMetrics``), so counting costs the
    /// datagram paths an add, never a lock, an atomic or an allocation.
    public struct Counters: Sendable, Hashable {
        /// Datagrams that decoded to no message.
        public var malformed = 0
        /// Messages that changed nothing (unknown ID, wrong endpoint, not for the server).
        public var ignored = 0
        public var stunRequests = 0
        /// Keep-alives acknowledged on the in-place path (the rest count as registrations' traffic).
        public var keepAlives = 0
        public var relayedDatagrams = 0
        public var relayRefused = 0
        /// Punch rounds the server started (each sends both peers a punch instruction).
        public var punchRounds = 0
        /// Datagrams withheld by the anti-amplification limit.
        public var amplificationWithheld = 0
        /// Registrations dropped by the per-address rate limit.
        public var registrationsRateLimited = 0
        /// Registrations refused, all reasons (``refusals`` splits them).
        public var refused = 0
        /// Registrations accepted, both dialects (``registrationsExtended`` of them natchat/2).
        public var registrations = 0
        public var registrationsExtended = 0
        public var evictions = 0
        /// Roster datagrams sent to natchat/2 subscribers (retransmissions included).
        public var rosterDeltas = 0
        /// Messages queued in the mailbox, and delivered (acknowledged by their recipient).
        public var mailQueued = 0
        public var mailDelivered = 0
        /// Datagrams and bytes received, by what they were (counted once each, when read).
        public var received = TrafficByKind()
        /// Datagrams and bytes the service handed the transport, by what they were (the
        /// transport's own drops, `TransportStatistics.droppedUnwritable`, are not subtracted).
        public var sent = TrafficByKind()
        /// Refused registrations by reason.
        public var refusals = RefusalCounts()
        /// Punch outcomes as clients report them (the path a pair ended up on): direct between
        /// public endpoints, between private endpoints (same NAT), or through the server's relay.
        /// The message that carries the report increments these.
        public var pathReportsDirect = 0
        public var pathReportsPrivate = 0
        public var pathReportsRelayed = 0
        /// Direct paths found by port probing, and through a port mapping, as clients reported them.
        public var pathReportsProbed = 0
        public var pathReportsPortMapped = 0

        public init() {}
    }

    /// What a datagram is, for counting traffic: a handful of kinds, so that a metric
    /// labelled with it stays a handful of series.
    public enum TrafficKind: String, CaseIterable, Sendable {
        /// STUN Binding requests and answers (RFC 5389 and the legacy form).
        case stun
        /// natchat/2 keep-alives and their acknowledgements (and `unknownSession` answers).
        case keepAlive = "keep_alive"
        /// Relay requests, relayed datagrams, and relays between servers of a cluster.
        case relay
        /// natchat/2 registration: register, challenge, registered, refused, exit, claim release, key rotation.
        case registration
        /// The classic (seed) dialect: every datagram that is neither STUN nor natchat/2,
        /// the undecodable ones included (the dialect has no marker to tell garbage apart).
        case classic
        /// The rest: natchat/2 control (roster, lookups, punches, mail), server-to-server, and
        /// natchat/2 datagrams that do not decode.
        case other
    }

    /// A count of datagrams and of their bytes (UDP payload).
    public struct Traffic: Sendable, Hashable {
        public var datagrams = 0
        public var bytes = 0

        public init(datagrams: Int = 0, bytes: Int = 0) {
            self.datagrams = datagrams
            self.bytes = bytes
        }

        mutating func add(_ length: Int) {
            datagrams += 1
            bytes += length
        }
    }

    /// ``Traffic`` for each ``TrafficKind``, as stored fields (no array, no dictionary: the
    /// hot paths add to a field at a fixed offset).
    public struct TrafficByKind: Sendable, Hashable {
        public var stun = Traffic()
        public var keepAlive = Traffic()
        public var relay = Traffic()
        public var registration = Traffic()
        public var classic = Traffic()
        public var other = Traffic()

        public init() {}

        /// The traffic of `kind`.
        public subscript(kind: TrafficKind) -> Traffic {
            get {
                switch kind {
                case .stun: stun
                case .keepAlive: keepAlive
                case .relay: relay
                case .registration: registration
                case .classic: classic
                case .other: other
                }
            }
            set {
                switch kind {
                case .stun: stun = newValue
                case .keepAlive: keepAlive = newValue
                case .relay: relay = newValue
                case .registration: registration = newValue
                case .classic: classic = newValue
                case .other: other = newValue
                }
            }
        }

        /// All kinds together.
        public var total: Traffic {
            TrafficKind.allCases.reduce(into: Traffic()) { sum, kind in
                sum.datagrams += self[kind].datagrams
                sum.bytes += self[kind].bytes
            }
        }
    }

    /// Why a registration was refused: the registry's reasons and the server's own (an ID
    /// that is not valid at all).
    public enum RefusalReason: String, CaseIterable, Sendable {
        case idInUse = "id_in_use"
        case claimed
        case reservedID = "reserved_id"
        case full
        case classicDisabled = "classic_disabled"
        case claimUnavailable = "claim_unavailable"
        case invalidID = "invalid_id"

        init(_ refusal: Registry.Refusal) {
            switch refusal {
            case .idInUse: self = .idInUse
            case .claimed: self = .claimed
            case .reservedID: self = .reservedID
            case .full: self = .full
            case .classicDisabled: self = .classicDisabled
            case .claimUnavailable: self = .claimUnavailable
            }
        }
    }

    /// Refused registrations, one stored field per ``RefusalReason``.
    public struct RefusalCounts: Sendable, Hashable {
        public var idInUse = 0
        public var claimed = 0
        public var reservedID = 0
        public var full = 0
        public var classicDisabled = 0
        public var claimUnavailable = 0
        public var invalidID = 0

        public init() {}

        /// The count for `reason`.
        public subscript(reason: RefusalReason) -> Int {
            get {
                switch reason {
                case .idInUse: idInUse
                case .claimed: claimed
                case .reservedID: reservedID
                case .full: full
                case .classicDisabled: classicDisabled
                case .claimUnavailable: claimUnavailable
                case .invalidID: invalidID
                }
            }
            set {
                switch reason {
                case .idInUse: idInUse = newValue
                case .claimed: claimed = newValue
                case .reservedID: reservedID = newValue
                case .full: full = newValue
                case .classicDisabled: classicDisabled = newValue
                case .claimUnavailable: claimUnavailable = newValue
                case .invalidID: invalidID = newValue
                }
            }
        }
    }

    // The service runs on one event loop and never calls out while it mutates these (its
    // callbacks are ``printLine`` and the logger, given values), so the runtime's dynamic
    // exclusivity check on every datagram's access is dropped for the two the hot paths touch.
    @exclusivity(unchecked) public private(set) var registry: Registry
    @exclusivity(unchecked) public private(set) var counters = Counters()
    private let configuration: Configuration
    private let printLine: @Sendable (String) -> Void
    private let logger: Logger
    private var random = SystemRandomNumberGenerator()
    private var sources: SourceGuard
    private let persist: (@Sendable (StoreChange) -> Void)?
    private let cluster: ClusterHooks?

    /// What a server in a cluster hands its database link (``ClusterLink``); both closures
    /// are called on the event loop and must not block.
    public struct ClusterHooks: Sendable {
        /// This server's name and the cluster's shared secret.
        public var name: String
        public var secret: [UInt8]
        /// A presence record to publish (batched by the link).
        public var publish: @Sendable (PresenceRecord) -> Void
        /// A claim for the database to decide; the answer comes back through
        /// ``claimDecided(_:outcome:mail:now:output:)``.
        public var confirmClaim: @Sendable (ClaimRecord) -> Void

        public init(name: String, secret: [UInt8], publish: @escaping @Sendable (PresenceRecord) -> Void,
                    confirmClaim: @escaping @Sendable (ClaimRecord) -> Void) {
            self.name = name
            self.secret = secret
            self.publish = publish
            self.confirmClaim = confirmClaim
        }
    }

    /// - Parameters:
    ///   - validator: makes and checks the cookies of extended registrations.
    ///   - stored: what the store held at start (claims), taken in before any datagram.
    ///   - unixTime: the wall-clock time at `now` (Unix seconds), for dating claims.
    ///   - persist: takes each durable change (the store's writer, which batches them off the
    ///     event loop; it must not block). `nil`: nothing is kept.
    ///   - cluster: several servers share the store: this one's name, the shared secret and
    ///     the link's inputs. `nil`: it serves alone.
    ///   - printLine: receives the operator's event lines (stdout in the app).
    public init(configuration: Configuration, validator: any AddressValidator = HMACAddressValidator(), logger: Logger,
                now: Instant = SystemClock().now(), stored: StoreSnapshot = StoreSnapshot(), unixTime: Int64 = 0,
                persist: (@Sendable (StoreChange) -> Void)? = nil, cluster: ClusterHooks? = nil,
                printLine: @escaping @Sendable (String) -> Void) {
        self.configuration = configuration
        var registry = Registry(configuration: configuration.registry, validator: validator, now: now,
                                rosterEpoch: UInt32.random(in: 1...UInt32.max), unixTime: unixTime)
        registry.restore(stored)
        if let cluster { registry.joinCluster(name: cluster.name, secret: cluster.secret, now: now) }
        self.registry = registry
        self.persist = persist
        self.cluster = cluster
        self.sources = SourceGuard(configuration: configuration.sources)
        self.logger = logger
        self.printLine = printLine
    }

    public func receive(_ payload: ByteBuffer, from source: Endpoint, now: Instant, output: inout DatagramOutput) {
        if let transaction = Self.stunBindingRequest(payload) {
            // The hot path: read in place, one buffer for the answer. A response is 32 bytes
            // for a request of at least 20, within the amplification limit by construction.
            counters.received.stun.add(payload.readableBytes)
            answerSTUN(transaction, from: source, output: &output)
            return
        }
        if acknowledgeKeepAlive(payload, from: source, now: now, output: &output) { return }
        if forwardRelay(payload, from: source, now: now, output: &output) { return }
        let bytes = payload.readableBytesView
        if STUN.looksLikeSTUN(bytes) {
            counters.received.stun.add(bytes.count)
            counters.malformed += 1
            return
        }
        if let legacyID = STUN.legacyBindingRequestID(bytes) {
            counters.received.stun.add(bytes.count)
            counters.stunRequests += 1
            let answer = STUN.legacyBindingSuccess(id: legacyID, mapped: source)
            counters.sent.stun.add(answer.count)
            output.send(answer, to: source)
            return
        }
        if !registry.hasExtendedClient(at: source) { sources.received(bytes.count, from: source, now: now) }
        do {
            if ExtendedMessage.looksExtended(bytes) {
                let raw = Array(bytes)
                let datagram: ExtendedDatagram
                do {
                    datagram = try ExtendedDatagram.decode(raw)
                } catch {
                    counters.received.other.add(raw.count)
                    throw error
                }
                counters.received[Self.trafficKind(of: datagram.message)].add(raw.count)
                if case .register = datagram.message, !admitRegistration(from: source, countsTowardsTotal: false, now: now) { return }
                perform(registry.receive(datagram, bytes: raw, from: source, now: now, random: &random), now: now, output: &output)
            } else {
                counters.received.classic.add(bytes.count)
                let message = try ClassicMessage.decode(bytes)
                if case .register(_, _, let offers) = message {
                    // An offer only earns a small challenge; a classic registration is pushed to everyone.
                    let isOffer = offers.contains(ExtendedMessage.offer)
                    guard admitRegistration(from: source, countsTowardsTotal: !isOffer, now: now) else { return }
                }
                perform(registry.receive(message, from: source, now: now), now: now, output: &output)
            }
        } catch {
            counters.malformed += 1
            logger.debug("dropped malformed datagram", metadata: ["from": "\(source)", "error": "\(error)"])
            if let violation = ClassicMessage.invalidRegistrationID(bytes), admitRegistration(from: source, now: now) {
                counters.refused += 1
                counters.refusals.invalidID += 1
                // The ID is not echoed: it may hold characters that would drive a terminal.
                send(ClassicMessage.serverNotice("registration refused: invalid ID (\(violation))").encode(), to: source,
                     classic: configuration.registry.acceptClassic, kind: .classic, now: now, output: &output)
            }
            return
        }
        // A registration's roster change is due at once: send it in the same turn (the sweep
        // waits for its timer).
        if let due = registry.rosterDeadline, now >= due { perform(registry.flushRoster(now: now), now: now, output: &output) }
    }

    public func timeout(now: Instant, output: inout DatagramOutput) {
        perform(registry.handleTimeout(now: now), now: now, output: &output)
    }

    public func nextDeadline() -> Instant? { registry.nextDeadline }

    /// Several servers: the other servers' presence records, as the link read them.
    public func applyPresence(_ records: [PresenceRecord], now: Instant, output: inout DatagramOutput) {
        perform(registry.applyPresence(records, now: now), now: now, output: &output)
        flushRosterIfDue(now: now, output: &output)
    }

    /// Several servers: the servers as the database lists them (each heartbeat).
    public func updateServers(_ servers: [ServerRecord], unixTime: Int64, now: Instant, output: inout DatagramOutput) {
        perform(registry.updateServers(servers, unixTime: unixTime, now: now), now: now, output: &output)
        flushRosterIfDue(now: now, output: &output)
    }

    /// Several servers: the database's decision on a claim a registration waits for (`nil`:
    /// the database could not be asked), with the mail waiting for a granted ID.
    public func claimDecided(_ id: ClientID, outcome: ClaimOutcome?, mail: [MailRecord], now: Instant, output: inout DatagramOutput) {
        perform(registry.claimDecided(id, outcome: outcome, mail: mail, now: now, random: &random), now: now, output: &output)
        flushRosterIfDue(now: now, output: &output)
    }

    /// Several servers: whether the shared database answers, as the link last saw it. While
    /// it does not, registrations of IDs the registry knows the registrant owns go on without
    /// asking it.
    public func databaseReachable(_ reachable: Bool) {
        registry.setDatabaseReachable(reachable)
    }

    private func flushRosterIfDue(now: Instant, output: inout DatagramOutput) {
        if let due = registry.rosterDeadline, now >= due { perform(registry.flushRoster(now: now), now: now, output: &output) }
    }

    private func admitRegistration(from source: Endpoint, countsTowardsTotal: Bool = true, now: Instant) -> Bool {
        guard sources.allowRegistration(from: source, countsTowardsTotal: countsTowardsTotal, now: now) else {
            counters.registrationsRateLimited += 1
            return false
        }
        return true
    }

    /// Sends `bytes` unless the destination is unvalidated and over its amplification budget.
    private func send(_ bytes: [UInt8], to destination: Endpoint, classic: Bool, kind: TrafficKind, now: Instant,
                      output: inout DatagramOutput) {
        let validated = registry.hasExtendedClient(at: destination)
        guard sources.allowSend(bytes.count, to: destination, validated: validated, classic: classic, now: now) else {
            counters.amplificationWithheld += 1
            return
        }
        counters.sent[kind].add(bytes.count)
        output.send(bytes, to: destination)
    }

    /// What an extended message is, for the traffic counters.
    static func trafficKind(of message: ExtendedMessage) -> TrafficKind {
        switch message {
        case .register, .challenge, .registered, .refused, .exit, .releaseClaim, .rotateKey: .registration
        case .keepAlive, .keepAliveAck, .unknownSession: .keepAlive
        case .relay, .relayed, .serverRelay: .relay
        default: .other
        }
    }

    /// A STUN Binding request's transaction ID, read in place from the buffer with STUN's
    /// one header reader.
    static func stunBindingRequest(_ payload: ByteBuffer) -> STUN.TransactionID? {
        payload.withUnsafeReadableBytes { STUN.bindingRequestTransaction($0) }
    }

    private func answerSTUN(_ transaction: STUN.TransactionID, from source: Endpoint, output: inout DatagramOutput) {
        counters.stunRequests += 1
        counters.sent.stun.add(STUN.bindingSuccessLength)
        output.send(to: source, maxLength: STUN.bindingSuccessLength) { response in
            STUN.writeBindingSuccess(transaction, mapped: source, into: response)
        }
    }

    /// The registry's in-place path for an authenticated keep-alive that changes nothing but
    /// liveness; `false` when the datagram needs the general path.
    private func acknowledgeKeepAlive(_ payload: ByteBuffer, from source: Endpoint, now: Instant,
                                      output: inout DatagramOutput) -> Bool {
        guard payload.getInteger(at: payload.readerIndex, as: UInt8.self) == ExtendedMessage.magic,
              payload.withUnsafeReadableBytes({ registry.acknowledgeKeepAlive($0, from: source, now: now) })
        else { return false }
        counters.keepAlives += 1
        counters.received.keepAlive.add(payload.readableBytes)
        counters.sent.keepAlive.add(ExtendedMessage.keepAliveAckLength)
        output.send(to: source, maxLength: ExtendedMessage.keepAliveAckLength) { ack in
            ExtendedMessage.writeKeepAliveAck(publicEndpoint: source, into: ack)
        }
        return true
    }

    /// The registry's in-place path for a relay request between registered clients: the
    /// relayed datagram is written straight from the receive buffer; `false` when the
    /// datagram needs the general path.
    private func forwardRelay(_ payload: ByteBuffer, from source: Endpoint, now: Instant, output: inout DatagramOutput) -> Bool {
        guard payload.getInteger(at: payload.readerIndex, as: UInt8.self) == ExtendedMessage.magic else { return false }
        return payload.withUnsafeReadableBytes { datagram in
            guard let frame = ExtendedMessage.RelayFrame(datagram) else { return false }
            switch registry.forwardRelay(frame, from: source, now: now) {
            case .forward(let destination):
                counters.relayedDatagrams += 1
                counters.received.relay.add(datagram.count)
                counters.sent.relay.add(frame.relayedLength)
                output.send(to: destination, maxLength: frame.relayedLength) { frame.writeRelayed(into: $0) }
                return true
            case .rateLimited:
                counters.received.relay.add(datagram.count)
                counters.ignored += 1
                counters.relayRefused += 1
                return true
            case .useGeneralPath:
                return false
            }
        }
    }

    private func perform(_ actions: [Registry.Output], now: Instant, output: inout DatagramOutput) {
        for action in actions {
            switch action {
            case .send(let message, let destination):
                send(message.encode(), to: destination, classic: configuration.registry.acceptClassic, kind: .classic, now: now,
                     output: &output)
            case .sendExtended(let message, let destination):
                if case .roster = message { counters.rosterDeltas += 1 }
                send(message.encode(), to: destination, classic: false, kind: Self.trafficKind(of: message), now: now, output: &output)
            case .report(let event):
                report(event)
            case .persist(let change):
                persist?(change)
            case .publish(let record):
                cluster?.publish(record)
            case .confirmClaim(let record):
                cluster?.confirmClaim(record)
            case .sendToServer(let bytes, let destination):
                // To a server the database lists: no amplification budget applies.
                counters.sent.other.add(bytes.count)
                output.send(bytes, to: destination)
            }
        }
    }

    private func report(_ event: Registry.Event) {
        switch event {
        case .registered(let entry):
            counters.registrations += 1
            if entry.dialect == .extended { counters.registrationsExtended += 1 }
            printLine(ClassicMessage.peer(entry.id, entry.publicEndpoint).text)
        case .moved(let entry, let previous):
            logger.info("client moved", metadata: ["id": "\(entry.id)", "from": "\(previous)", "to": "\(entry.publicEndpoint)"])
        case .relayed:
            counters.relayedDatagrams += 1
        case .punchRound(let a, let b, let round):
            counters.punchRounds += 1
            logger.debug("punch round", metadata: ["pair": "\(a)-\(b)", "round": "\(round)"])
        case .pathReport(_, _, let outcome):
            switch outcome {
            case .direct: counters.pathReportsDirect += 1
            case .private: counters.pathReportsPrivate += 1
            case .relayed: counters.pathReportsRelayed += 1
            case .probed: counters.pathReportsProbed += 1
            case .portMapped: counters.pathReportsPortMapped += 1
            }
        case .ignoredExtended(let source, let reason):
            counters.ignored += 1
            if reason == .relayRateLimited { counters.relayRefused += 1 }
            logger.debug("ignored extended message", metadata: ["from": "\(source)", "reason": "\(reason)"])
        case .refreshed(let entry):
            logger.debug("registration refreshed", metadata: ["id": "\(entry.id)", "from": "\(entry.publicEndpoint)"])
        case .unregistered(let entry):
            printLine(ClassicMessage.unregistered(entry.id, entry.publicEndpoint).text)
        case .evicted(let entry):
            counters.evictions += 1
            printLine(ClassicMessage.offline(entry.id, entry.publicEndpoint).text)
        case .refused(let id, let source, let refusal):
            counters.refused += 1
            counters.refusals[RefusalReason(refusal)] += 1
            logger.info("registration refused", metadata: ["id": "\(id)", "from": "\(source)", "reason": "\(refusal)"])
        case .ignored(let message, let source, let reason):
            counters.ignored += 1
            logger.debug("ignored message", metadata: ["message": "\(message.text.prefix(80))", "from": "\(source)", "reason": "\(reason)"])
        case .mailQueued(let from, let to, let bytes):
            counters.mailQueued += 1
            logger.info("mail queued", metadata: ["from": "\(from)", "to": "\(to)", "bytes": "\(bytes)"])
        case .mailDelivered(let from, let to):
            counters.mailDelivered += 1
            logger.info("mail delivered", metadata: ["from": "\(from)", "to": "\(to)"])
        case .remoteChanged(let entry, let home):
            logger.debug("remote client", metadata: ["id": "\(entry.id)", "home": "\(home)", "at": "\(entry.publicEndpoint)"])
        case .remoteLeft(let entry, let home):
            logger.debug("remote client left", metadata: ["id": "\(entry.id)", "home": "\(home)"])
        case .movedAway(let entry, let home):
            logger.info("client moved to another server", metadata: ["id": "\(entry.id)", "server": "\(home)"])
        case .serverStatus(let name, let alive):
            if alive {
                logger.notice("server is back", metadata: ["server": "\(name)"])
            } else {
                logger.warning("server stopped its heartbeat; its clients are taken for gone unless they moved",
                               metadata: ["server": "\(name)"])
            }
        case .ignoredServerDatagram(let source):
            counters.ignored += 1
            logger.debug("ignored server datagram", metadata: ["from": "\(source)"])
        }
    }
}
