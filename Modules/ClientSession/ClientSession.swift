import Addressing
import AddressDiscovery
import Identity
import KeepAlive
import MonotonicTime
import Wire

/// The client's side of its relationship with the rendezvous server, as a sans-I/O state
/// machine: registration and dialect negotiation, the natchat/2 challenge, retries, keep-alives,
/// noticing that the server stopped answering or lost the session, registering again, and
/// the session's counter and tags.
///
/// Every input takes the time and returns the ``Output``s to perform, in order; the driver
/// sends ``Output/send(_:to:)`` datagrams as they are and reacts to the rest.
///
/// A registration offers natchat/2 inside the seed's `REGISTER` line. A natchat server
/// answers with a challenge (``ExtendedMessage/challenge(cookie:)``); the client signs a
/// registration with that cookie, and the server's `registered` (echoing the cookie) gives
/// the key of the session. The seed's server answers with its classic list instead: the
/// driver's classic peer table sees that and says so with ``handleClassicRegistration(now:)``.
///
/// Failover: the configuration may name several servers sharing one database (the ID's
/// claim lives there, so any of them takes our registration). The session talks to one at a
/// time (``server``); when it stops answering, the session registers with the next one
/// (round-robin) under the same ID and identity and says so with
/// ``Output/serverChanged(from:to:)``. With several servers:
/// - a session is *silent* when nothing was heard from its server for one keep-alive
///   interval and ``failoverSilence`` (the keep-alive and its retries every 2 s went
///   unanswered): with the default 10 s interval, at most 24 s after the server's last word,
///   so a dead server is left within 24 s of its death and registration at the next one
///   starts at once (one round trip of offer and challenge, one of registration: well within
///   the server's 30 s keep-alive timeout);
/// - a registration that hears nothing from its server for ``registrationFailover`` moves
///   on to the next server (a client started while its first server is down still gets in);
/// - a refusal stays final, and `unknownSession` (the server restarted) registers again with
///   the same server.
///
/// With one server nothing changes: silence is three keep-alive intervals and a second, and
/// registration is retried with that server for ever.
public struct ClientSession: Sendable, SansIOCore {
    /// Client settings.
    public struct Configuration: Sendable {
        public var id: ClientID
        /// The first server to register with.
        public var server: Endpoint
        /// The servers to move to, in this order (round-robin, back to ``server`` after the
        /// last), when the current one stops answering; empty: one server, as ever.
        public var fallbackServers: [Endpoint]
        /// The private endpoint reported at registration (the classic dialect carries only its address).
        public var privateEndpoint: Endpoint
        /// The long-term key pair the ID is bound to in natchat/2.
        public var identity: IdentityKey
        /// Time between keep-alives (the server may ask for a shorter one).
        public var keepAliveInterval: Duration
        /// First wait before an unanswered registration is sent again (it doubles up to
        /// ``ClientSession/maxRegistrationRetry``, or the keep-alive interval when that is shorter).
        public var registrationRetry: Duration
        /// Propose natchat/2; `false` speaks the seed's protocol only.
        public var offerNatchat2: Bool

        public init(id: ClientID, server: Endpoint, fallbackServers: [Endpoint] = [], privateEndpoint: Endpoint,
                    identity: IdentityKey, keepAliveInterval: Duration = .seconds(10), registrationRetry: Duration = .seconds(1),
                    offerNatchat2: Bool = true) {
            self.id = id
            self.server = server
            self.fallbackServers = fallbackServers
            self.privateEndpoint = privateEndpoint
            self.identity = identity
            self.keepAliveInterval = keepAliveInterval
            self.registrationRetry = registrationRetry
            self.offerNatchat2 = offerNatchat2
        }

        /// Every server, in order: ``server``, then ``fallbackServers`` (a repeat of one
        /// already listed is left out).
        public var servers: [Endpoint] {
            var list = [server]
            for fallback in fallbackServers where !list.contains(fallback) { list.append(fallback) }
            return list
        }
    }

    /// The longest wait between two attempts to register.
    ///
    /// At most 2 s apart: a natchat/2 registration needs four datagrams to get through
    /// (offer, challenge, register, registered), so under 20 % loss on each of the client's
    /// two edges one attempt in 0.8⁴ ≈ 41 % succeeds; every 2 s makes 20 attempts in 40 s.
    public static let maxRegistrationRetry = Duration.seconds(2)
    /// How many of the last session messages' tags are remembered: an `unknownSession` must
    /// echo one of them to be believed.
    public static let recentTagLimit = 32
    /// With several servers, a session is given up (``Loss/serverSilent``) and the next
    /// server tried when nothing was heard from the current one for a keep-alive interval and
    /// this long: the keep-alive and its retries every 2 s, seven in all, went unanswered.
    ///
    /// Under 20 % loss each way a keep-alive round trip fails with probability 0.36, seven
    /// in a row 0.36⁷ ≈ 0.08 %: a needless move about once in 3½ hours of keep-alives (it
    /// costs a registration elsewhere, not the ID: peers see the client move). One server
    /// keeps three intervals and a second (eleven tries: 0.36¹¹ ≈ 0.001 %), since there is
    /// nowhere else to go.
    public static let failoverSilence = Duration.seconds(14)
    /// With several servers, a registration (offers, or a challenge answered) that hears
    /// nothing from its server for this long moves on to the next server: four offers (at 0,
    /// 1, 3 and 5 s) went unanswered.
    public static let registrationFailover = Duration.seconds(6)

    /// Which dialect the session speaks.
    public enum Dialect: Hashable, Sendable {
        /// No answer yet.
        case negotiating
        /// The seed's protocol: the server answered with its classic list.
        case classic
        /// natchat/2: the server answered the offer.
        case natchat2
    }

    /// Why a natchat/2 session was given up and registration started again.
    public enum Loss: Hashable, Sendable {
        /// The server answered one of our messages with `unknownSession` (it restarted).
        case unknownSession
        /// The server said nothing for three keep-alive intervals and a second (one server),
        /// or for an interval and ``ClientSession/failoverSilence`` (several: the session
        /// moves to the next one, ``Output/serverChanged(from:to:)``).
        case serverSilent
    }

    /// What the driver should do.
    public enum Output: Hashable, Sendable {
        /// Send this datagram (to the server).
        case send([UInt8], to: Endpoint)
        /// The session left `from` (it stopped answering) and registers with `to` from now
        /// on: everything meant for the server goes to `to`, and only `to`'s datagrams are the
        /// server's. Comes before the first datagram to `to`; the registration there ends
        /// with ``registeredAgain(publicEndpoint:)`` (or ``registered(publicEndpoint:alternatePort:)``
        /// when none had succeeded yet).
        case serverChanged(from: Endpoint, to: Endpoint)
        /// The first natchat/2 session started: the server sees us at `publicEndpoint` and
        /// answers mapping probes on `alternatePort` (0: none).
        case registered(publicEndpoint: Endpoint, alternatePort: UInt16)
        /// A new natchat/2 session replaced one that was lost (peers' state starts over).
        case registeredAgain(publicEndpoint: Endpoint)
        /// The server now sees us at another endpoint (our NAT's mapping changed).
        case publicEndpointMoved(Endpoint)
        /// The session was lost; a registration is on its way.
        case sessionLost(Loss)
        /// The server sent a natchat/2 notice (a refusal after registration is only shown).
        case serverNotice(String)
        /// The server refused the registration: the client cannot go on.
        case refused(String)
    }

    /// A registration in progress.
    struct Attempt: Hashable, Sendable {
        /// When the offer goes out again.
        var nextAttempt: Instant
        /// The wait after the next attempt.
        var backoff: Duration
        /// The server's cookie once it challenged us (it salts the session key).
        var cookie: Token128?
        /// With several servers: when to move on to the next one if this one stays silent
        /// (``ClientSession/registrationFailover`` after the attempt began or the server's last
        /// challenge); `nil` with one server.
        var moveAt: Instant? = nil
    }

    /// A natchat/2 session with the server.
    struct Session: Hashable, Sendable {
        var key: KeyBytes
        /// The cookie it was registered with (a repeated `registered` echoes it again).
        var cookie: Token128
        var counter: UInt64 = 0
        var recentTags: [Token128] = []
        /// When the server last said anything.
        var lastAnswer: Instant
        /// When to send the keep-alive again: set when one goes out, cleared by the server's
        /// `keepAliveAck`. One lost keep-alive must not cost the registration (two in a row
        /// lost under 20 % loss each way happen within minutes; the server evicts after 30 s).
        var keepAliveRetryAt: Instant?
    }

    enum State: Hashable, Sendable {
        /// Not started.
        case idle
        /// Offering registration (and natchat/2, if configured); challenged once the cookie came.
        case registering(Attempt)
        /// Registered with a server that speaks the seed's protocol.
        case classic
        case registered(Session)
        /// The session was lost: registering again. The old session still authenticates what
        /// is sent meanwhile (the server will not know it, and says so).
        case lost(Session, Attempt)
        case refused
        case left
    }

    public private(set) var configuration: Configuration
    var state: State
    var keepAlive: KeepAliveSchedule
    var publicEndpointObserver = PublicEndpointObserver()
    /// Our NAT's mapping behaviour, reported in registrations and keep-alives.
    public private(set) var natKind: NATKind = .unknown
    /// The external endpoint of the port mapping our gateway granted, reported in keep-alives.
    public private(set) var mappedEndpoint: Endpoint?
    /// Every server, in order (``Configuration/servers``).
    public let servers: [Endpoint]
    /// The position of the current server in ``servers``.
    public private(set) var serverIndex = 0
    /// The mapping probes' second port on the server that last registered us (0: none).
    public private(set) var alternatePort: UInt16 = 0
    /// The smoothed round trip to the server, from keep-alives and their acknowledgements
    /// (`nil` until one was answered; a new server starts a new estimate). `@status` shows it.
    public private(set) var serverRoundTrip: RoundTripEstimate?
    /// When the keep-alive now waiting for its `keepAliveAck` went out, and whether it was
    /// sent again since (Karn's rule: an answer after a resend could answer either, so it is
    /// no sample of the round trip).
    var keepAliveSentAt: Instant?
    var keepAliveResent = false

    public init(configuration: Configuration) {
        self.configuration = configuration
        servers = configuration.servers
        keepAlive = KeepAliveSchedule(interval: configuration.keepAliveInterval)
        state = .idle
    }

    // MARK: - What it knows

    public var dialect: Dialect {
        switch state {
        case .idle, .registering, .refused, .left: .negotiating
        case .classic: .classic
        case .registered, .lost: .natchat2
        }
    }

    /// Whether the server confirmed a registration (in either dialect; a lost natchat/2
    /// session counts until it is replaced).
    public var isRegistered: Bool {
        switch state {
        case .classic, .registered, .lost: true
        case .idle, .registering, .refused, .left: false
        }
    }

    /// Whether a registration is waiting for its answer.
    public var isRegistering: Bool {
        switch state {
        case .registering, .lost: true
        case .idle, .classic, .registered, .refused, .left: false
        }
    }

    /// Whether the client unregistered (nothing more is sent or scheduled).
    public var hasLeft: Bool {
        if case .left = state { return true }
        return false
    }

    /// The server the session talks to now: everything for the server goes there, and only
    /// its datagrams are the server's.
    public var server: Endpoint { servers.indices.contains(serverIndex) ? servers[serverIndex] : configuration.server }

    /// Whether there is another server to move to.
    public var hasFallbacks: Bool { servers.count > 1 }

    /// The public endpoint the server last reported (natchat/2).
    public var publicEndpoint: Endpoint? { publicEndpointObserver.current }

    /// Records the port the socket was bound to (before ``start(now:)``).
    public mutating func localPortChosen(_ port: UInt16) {
        if port != 0 { configuration.privateEndpoint.port = port }
    }

    // MARK: - Inputs

    /// Sends the first registration and starts the keep-alive schedule.
    public mutating func start(now: Instant) -> [Output] {
        guard case .idle = state else { return [] }
        keepAlive.start(now: now)
        var attempt = newAttempt(now: now)
        let outputs = offer(&attempt, now: now)
        state = .registering(attempt)
        return outputs
    }

    /// A natchat/2 message from the server (the caller checked its source). Messages for the
    /// peer tables (roster, look-ups, punches, relayed datagrams) only show that the server
    /// is alive here.
    public mutating func handleServerMessage(_ message: ExtendedMessage, now: Instant) -> [Output] {
        // After `leave` the session is over: nothing the server says reaches the user.
        if case .left = state { return [] }
        switch message {
        case .challenge(let cookie):
            return challenged(cookie, now: now)
        case .registered(let serverKey, let endpoint, let keepAliveMillis, _, let nonce, let echoed):
            return registered(serverKey: serverKey, endpoint: endpoint, keepAliveMillis: keepAliveMillis, message: message,
                              nonce: nonce, echoed: echoed, now: now)
        case .refused(let text):
            guard case .registering = state else { return [.serverNotice(text)] }
            return [.serverNotice(text)] + refuse(text)
        case .keepAliveAck(let endpoint):
            heard(now: now)
            if case .registered(var session) = state {
                session.keepAliveRetryAt = nil
                if let sentAt = keepAliveSentAt, !keepAliveResent {
                    serverRoundTrip = .adding(now - sentAt, to: serverRoundTrip)
                }
                keepAliveSentAt = nil
                keepAliveResent = false
                state = .registered(session)
            }
            if case .moved(_, let to) = publicEndpointObserver.observe(endpoint) { return [.publicEndpointMoved(to)] }
            return []
        case .unknownSession(let id, let echo):
            guard id == configuration.id, case .registered(let session) = state,
                  session.recentTags.contains(where: { $0.constantTimeEquals(echo) })
            else { return [] }
            return lose(session, .unknownSession, now: now)
        case .roster, .lookupResult, .listPage, .punch, .relayed, .claimResult, .depositResult, .mail, .mailDelivered,
             .claimChanged:
            heard(now: now)
            return []
        case .register, .keepAlive, .exit, .connect, .relay, .rosterAck, .lookup, .listQuery, .claimLookup, .deposit, .mailAck,
             .releaseClaim, .rotateKey, .pathReport, .ping, .pong, .chat, .chatAck, .serverPunch, .serverRelay:
            return []
        }
    }

    /// The driver's classic peer table took the seed server's list: the session is classic.
    public mutating func handleClassicRegistration(now: Instant) -> [Output] {
        if case .registering = state { state = .classic }
        return []
    }

    /// A classic server notice. Before registration it is the server's refusal.
    public mutating func handleClassicNotice(_ text: String, now: Instant) -> [Output] {
        guard case .registering = state else { return [] }
        return refuse(text)
    }

    /// Seals a client→server message of the session (the next counter, its tag under the
    /// session key). Nothing without a natchat/2 session.
    public mutating func send(_ message: ExtendedMessage) -> [Output] {
        switch state {
        case .registered(var session):
            let bytes = seal(message, in: &session)
            state = .registered(session)
            return [.send(bytes, to: server)]
        case .lost(var session, let attempt):
            let bytes = seal(message, in: &session)
            state = .lost(session, attempt)
            return [.send(bytes, to: server)]
        case .idle, .registering, .classic, .refused, .left:
            return []
        }
    }

    /// Our NAT was classified: remember it and tell the server at once (peers that punch
    /// towards us plan with it).
    public mutating func learnNATKind(_ kind: NATKind, now: Instant) -> [Output] {
        natKind = kind
        return sendKeepAlive(now: now)
    }

    /// Our gateway granted a port mapping (or it ended: `nil`): tell the server at once, so
    /// peers can try the mapped endpoint. A registration carries no mapping, so the first
    /// keep-alive after one carries it again (sent at once, see ``registered``).
    public mutating func learnMappedEndpoint(_ endpoint: Endpoint?, now: Instant) -> [Output] {
        guard endpoint != mappedEndpoint else { return [] }
        mappedEndpoint = endpoint
        guard case .registered = state else { return [] }
        return sendKeepAlive(now: now)
    }

    /// Unregisters (once) and stops everything.
    public mutating func leave(now: Instant) -> [Output] {
        if case .left = state { return [] }
        keepAlive.stop()
        var outputs: [Output]
        switch state {
        case .registered, .lost:
            outputs = send(.exit(id: configuration.id))
        case .idle, .registering, .classic, .refused, .left:
            outputs = [.send(ClassicMessage.unregister(configuration.id).encode(), to: server)]
        }
        state = .left
        return outputs
    }

    public mutating func handleTimeout(now: Instant) -> [Output] {
        var outputs: [Output] = []
        switch state {
        case .registering(var attempt):
            outputs += retryRegistration(&attempt, now: now)
            state = .registering(attempt)
        case .lost(let session, var attempt):
            outputs += retryRegistration(&attempt, now: now)
            state = .lost(session, attempt)
        case .idle, .refused, .left:
            return []
        default:
            break
        }
        if !keepAlive.handleTimeout(now: now).isEmpty {
            outputs += sendKeepAlive(now: now)
            armKeepAliveRetry(now: now)
        } else if case .registered(let session) = state, let retry = session.keepAliveRetryAt, now >= retry {
            outputs += sendKeepAlive(now: now)
            armKeepAliveRetry(now: now)
        }
        if case .registered(let session) = state, now >= silenceDeadline(session) {
            outputs += lose(session, .serverSilent, now: now)
        }
        return outputs
    }

    public var nextDeadline: Instant? {
        switch state {
        case .idle, .refused, .left:
            return nil
        case .registering(let attempt), .lost(_, let attempt):
            return [attempt.nextAttempt, attempt.moveAt, keepAlive.nextDeadline].compactMap { $0 }.min()
        case .registered(let session):
            return [silenceDeadline(session), keepAlive.nextDeadline, session.keepAliveRetryAt].compactMap { $0 }.min()
        case .classic:
            return keepAlive.nextDeadline
        }
    }

    // MARK: - Transitions

    /// A registration starting now with the current server.
    private func newAttempt(now: Instant) -> Attempt {
        Attempt(nextAttempt: now, backoff: configuration.registrationRetry,
                moveAt: hasFallbacks ? now + Self.registrationFailover : nil)
    }

    /// Registering: the next offer when it is due, or, when the server stayed silent too
    /// long and there is another, the move to it.
    private mutating func retryRegistration(_ attempt: inout Attempt, now: Instant) -> [Output] {
        if let moveAt = attempt.moveAt, now >= moveAt {
            let move = moveToNextServer()
            attempt = newAttempt(now: now)
            return move + offer(&attempt, now: now)
        }
        guard now >= attempt.nextAttempt else { return [] }
        return offer(&attempt, now: now)
    }

    /// Makes the next server (round-robin) the current one.
    private mutating func moveToNextServer() -> [Output] {
        guard hasFallbacks else { return [] }
        let from = server
        serverRoundTrip = nil
        serverIndex = (serverIndex + 1) % servers.count
        return [.serverChanged(from: from, to: server)]
    }

    /// Sends the (classic) registration, with the natchat/2 offer unless the server turned
    /// out to be classic, and schedules the next attempt.
    private mutating func offer(_ attempt: inout Attempt, now: Instant) -> [Output] {
        let offers = configuration.offerNatchat2 ? [ExtendedMessage.offer] : []
        let bytes = ClassicMessage.register(configuration.id, privateAddress: configuration.privateEndpoint.address,
                                           offers: offers).encode()
        attempt.nextAttempt = now + attempt.backoff
        attempt.backoff = min(attempt.backoff * 2, min(configuration.keepAliveInterval, Self.maxRegistrationRetry))
        return [.send(bytes, to: server)]
    }

    /// Only while registering: a challenge we did not ask for (someone sent an offer in our
    /// name) must not make us register again.
    private mutating func challenged(_ cookie: Token128, now: Instant) -> [Output] {
        let bytes = SessionCrypto.signedRegistration(id: configuration.id, cookie: cookie,
                                                     privateEndpoints: [configuration.privateEndpoint],
                                                     natKind: natKind, identity: configuration.identity)
        switch state {
        case .registering(var attempt):
            attempt.cookie = cookie
            if attempt.moveAt != nil { attempt.moveAt = now + Self.registrationFailover }
            state = .registering(attempt)
        case .lost(let session, var attempt):
            attempt.cookie = cookie
            if attempt.moveAt != nil { attempt.moveAt = now + Self.registrationFailover }
            state = .lost(session, attempt)
        case .idle, .classic, .registered, .refused, .left:
            return []
        }
        return [.send(bytes, to: server)]
    }

    /// Only the answer to our latest registration counts: an earlier one's answer, arriving
    /// late, names a session the server has already replaced. A repeated answer for the
    /// session we have changes nothing but liveness.
    private mutating func registered(serverKey: [UInt8], endpoint: Endpoint, keepAliveMillis: UInt32, message: ExtendedMessage,
                                     nonce: Token128, echoed: Token128, now: Instant) -> [Output] {
        let expected: Token128? = switch state {
        case .registering(let attempt), .lost(_, let attempt): attempt.cookie
        case .registered(let session): session.cookie
        case .idle, .classic, .refused, .left: nil
        }
        guard let cookie = expected, echoed == cookie,
              let key = SessionCrypto.sessionKey(privateKey: configuration.identity.agreement, peerPublicKey: serverKey,
                                                 cookie: cookie, nonce: nonce, id: configuration.id)
        else { return [] }
        if keepAliveMillis > 0 {
            keepAlive.interval = min(configuration.keepAliveInterval, .milliseconds(Int64(keepAliveMillis)))
        }
        keepAlive.start(now: now)
        _ = publicEndpointObserver.observe(endpoint)
        let session = Session(key: key, cookie: cookie, lastAnswer: now)
        if case .registered(_, _, _, let port, _, _) = message { alternatePort = port }
        switch state {
        case .registering:
            state = .registered(session)
            return [.registered(publicEndpoint: endpoint, alternatePort: alternatePort)] + mappingAfterRegistration(now: now)
        case .lost:
            state = .registered(session)
            return [.registeredAgain(publicEndpoint: endpoint)] + mappingAfterRegistration(now: now)
        case .registered(var current):
            current.lastAnswer = now
            state = .registered(current)
            return []
        case .idle, .classic, .refused, .left:
            return []
        }
    }

    /// A registration carries no port mapping: a keep-alive with it follows at once.
    private mutating func mappingAfterRegistration(now: Instant) -> [Output] {
        mappedEndpoint == nil ? [] : sendKeepAlive(now: now)
    }

    private mutating func refuse(_ text: String) -> [Output] {
        keepAlive.stop()
        state = .refused
        return [.refused(text)]
    }

    /// Gives the session up and registers again: with the next server when this one went
    /// silent and there is another, else with the same one (it restarted, or it is the only one).
    private mutating func lose(_ session: Session, _ loss: Loss, now: Instant) -> [Output] {
        var outputs: [Output] = [.sessionLost(loss)]
        keepAliveSentAt = nil
        keepAliveResent = false
        if loss == .serverSilent { outputs += moveToNextServer() }
        var attempt = newAttempt(now: now)
        outputs += offer(&attempt, now: now)
        var session = session
        session.keepAliveRetryAt = nil
        state = .lost(session, attempt)
        return outputs
    }

    private mutating func heard(now: Instant) {
        switch state {
        case .registered(var session):
            session.lastAnswer = now
            state = .registered(session)
        case .lost(var session, let attempt):
            session.lastAnswer = now
            state = .lost(session, attempt)
        case .idle, .registering, .classic, .refused, .left:
            break
        }
    }

    /// A natchat/2 keep-alive not acknowledged within this long is sent again (a fresh
    /// counter: fresh proof), until one is acknowledged or the session is lost.
    var keepAliveRetry: Duration { min(Self.maxKeepAliveRetry, keepAlive.interval / 2) }
    static let maxKeepAliveRetry: Duration = .seconds(2)

    private mutating func armKeepAliveRetry(now: Instant) {
        guard case .registered(var session) = state else { return }
        session.keepAliveRetryAt = now + keepAliveRetry
        state = .registered(session)
    }

    /// One server: three keep-alive intervals and a second after its last word. Several: an
    /// interval and ``failoverSilence`` (see there for the numbers).
    private func silenceDeadline(_ session: Session) -> Instant {
        hasFallbacks ? session.lastAnswer + keepAlive.interval + Self.failoverSilence
            : session.lastAnswer + keepAlive.interval * 3 + .seconds(1)
    }

    private mutating func sendKeepAlive(now: Instant) -> [Output] {
        if case .registered = state {
            keepAliveResent = keepAliveSentAt != nil
            keepAliveSentAt = now
        }
        switch state {
        case .registered, .lost:
            return send(.keepAlive(id: configuration.id, natKind: natKind, mappedEndpoint: mappedEndpoint))
        case .idle, .registering, .classic:
            return [.send(ClassicMessage.keepAlive(configuration.id).encode(), to: server)]
        case .refused, .left:
            return []
        }
    }

    private func seal(_ message: ExtendedMessage, in session: inout Session) -> [UInt8] {
        session.counter += 1
        let bytes = SessionCrypto.sealed(message, counter: session.counter, key: session.key)
        session.recentTags.append(Token128(bytes: bytes.suffix(16)))
        if session.recentTags.count > Self.recentTagLimit {
            session.recentTags.removeFirst(session.recentTags.count - Self.recentTagLimit)
        }
        return bytes
    }
}
