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
public struct ClientSession: Sendable, SansIOCore {
    /// Client settings.
    public struct Configuration: Sendable {
        public var id: ClientID
        public var server: Endpoint
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

        public init(id: ClientID, server: Endpoint, privateEndpoint: Endpoint, identity: IdentityKey,
                    keepAliveInterval: Duration = .seconds(10), registrationRetry: Duration = .seconds(1),
                    offerNatchat2: Bool = true) {
            self.id = id
            self.server = server
            self.privateEndpoint = privateEndpoint
            self.identity = identity
            self.keepAliveInterval = keepAliveInterval
            self.registrationRetry = registrationRetry
            self.offerNatchat2 = offerNatchat2
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
        /// Three keep-alive intervals passed without a word from the server.
        case serverSilent
    }

    /// What the driver should do.
    public enum Output: Hashable, Sendable {
        /// Send this datagram (to the server).
        case send([UInt8], to: Endpoint)
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

    public init(configuration: Configuration) {
        self.configuration = configuration
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
        var attempt = Attempt(nextAttempt: now, backoff: configuration.registrationRetry)
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
            return challenged(cookie)
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
             .releaseClaim, .rotateKey, .ping, .pong, .chat, .chatAck, .serverPunch, .serverRelay:
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
            return [.send(bytes, to: configuration.server)]
        case .lost(var session, let attempt):
            let bytes = seal(message, in: &session)
            state = .lost(session, attempt)
            return [.send(bytes, to: configuration.server)]
        case .idle, .registering, .classic, .refused, .left:
            return []
        }
    }

    /// Our NAT was classified: remember it and tell the server at once (peers that punch
    /// towards us plan with it).
    public mutating func learnNATKind(_ kind: NATKind, now: Instant) -> [Output] {
        natKind = kind
        return sendKeepAlive()
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
            outputs = [.send(ClassicMessage.unregister(configuration.id).encode(), to: configuration.server)]
        }
        state = .left
        return outputs
    }

    public mutating func handleTimeout(now: Instant) -> [Output] {
        var outputs: [Output] = []
        switch state {
        case .registering(var attempt) where now >= attempt.nextAttempt:
            outputs += offer(&attempt, now: now)
            state = .registering(attempt)
        case .lost(let session, var attempt) where now >= attempt.nextAttempt:
            outputs += offer(&attempt, now: now)
            state = .lost(session, attempt)
        case .idle, .refused, .left:
            return []
        default:
            break
        }
        if !keepAlive.handleTimeout(now: now).isEmpty {
            outputs += sendKeepAlive()
            armKeepAliveRetry(now: now)
        } else if case .registered(let session) = state, let retry = session.keepAliveRetryAt, now >= retry {
            outputs += sendKeepAlive()
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
            return [attempt.nextAttempt, keepAlive.nextDeadline].compactMap { $0 }.min()
        case .registered(let session):
            return [silenceDeadline(session), keepAlive.nextDeadline, session.keepAliveRetryAt].compactMap { $0 }.min()
        case .classic:
            return keepAlive.nextDeadline
        }
    }

    // MARK: - Transitions

    /// Sends the (classic) registration, with the natchat/2 offer unless the server turned
    /// out to be classic, and schedules the next attempt.
    private mutating func offer(_ attempt: inout Attempt, now: Instant) -> [Output] {
        let offers = configuration.offerNatchat2 ? [ExtendedMessage.offer] : []
        let bytes = ClassicMessage.register(configuration.id, privateAddress: configuration.privateEndpoint.address,
                                           offers: offers).encode()
        attempt.nextAttempt = now + attempt.backoff
        attempt.backoff = min(attempt.backoff * 2, min(configuration.keepAliveInterval, Self.maxRegistrationRetry))
        return [.send(bytes, to: configuration.server)]
    }

    /// Only while registering: a challenge we did not ask for (someone sent an offer in our
    /// name) must not make us register again.
    private mutating func challenged(_ cookie: Token128) -> [Output] {
        let bytes = SessionCrypto.signedRegistration(id: configuration.id, cookie: cookie,
                                                     privateEndpoints: [configuration.privateEndpoint],
                                                     natKind: natKind, identity: configuration.identity)
        switch state {
        case .registering(var attempt):
            attempt.cookie = cookie
            state = .registering(attempt)
        case .lost(let session, var attempt):
            attempt.cookie = cookie
            state = .lost(session, attempt)
        case .idle, .classic, .registered, .refused, .left:
            return []
        }
        return [.send(bytes, to: configuration.server)]
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
        switch state {
        case .registering:
            state = .registered(session)
            guard case .registered(_, _, _, let alternatePort, _, _) = message else { return [] }
            return [.registered(publicEndpoint: endpoint, alternatePort: alternatePort)]
        case .lost:
            state = .registered(session)
            return [.registeredAgain(publicEndpoint: endpoint)]
        case .registered(var current):
            current.lastAnswer = now
            state = .registered(current)
            return []
        case .idle, .classic, .refused, .left:
            return []
        }
    }

    private mutating func refuse(_ text: String) -> [Output] {
        keepAlive.stop()
        state = .refused
        return [.refused(text)]
    }

    private mutating func lose(_ session: Session, _ loss: Loss, now: Instant) -> [Output] {
        var attempt = Attempt(nextAttempt: now, backoff: configuration.registrationRetry)
        let outputs = offer(&attempt, now: now)
        var session = session
        session.keepAliveRetryAt = nil
        state = .lost(session, attempt)
        return [.sessionLost(loss)] + outputs
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

    private func silenceDeadline(_ session: Session) -> Instant {
        session.lastAnswer + keepAlive.interval * 3 + .seconds(1)
    }

    private mutating func sendKeepAlive() -> [Output] {
        switch state {
        case .registered, .lost:
            return send(.keepAlive(id: configuration.id, natKind: natKind))
        case .idle, .registering, .classic:
            return [.send(ClassicMessage.keepAlive(configuration.id).encode(), to: configuration.server)]
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
