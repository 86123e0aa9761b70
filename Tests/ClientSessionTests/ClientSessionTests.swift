import Addressing
import Crypto
import Identity
import MonotonicTime
import TestSupport
import Testing
import Wire
@testable import ClientSession

// The client's session with the rendezvous server, driven without sockets and with a fake
// clock: every transition of `ClientSession.State` and the outputs it returns. A test plays
// the server: it derives the session key the way the server does and checks the client's
// signatures and tags with `SessionCrypto`.

private func id(_ text: String) -> ClientID { try! ClientID(text) }
private func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }
private func at(_ seconds: Int64) -> Instant { Instant.zero + .seconds(seconds) }
private func at(ms: Int64) -> Instant { Instant.zero + .milliseconds(ms) }
private let nanosecond = Duration.nanoseconds(1)

private let S = ep("198.51.100.1:10080")
private let A = ep("203.0.113.7:40001"), B = ep("203.0.113.7:41234")
private let alice = id("alice")
private let privateEndpoint = ep("10.0.0.5:10081")

/// A key pair drawn from a seeded generator: the same on every run.
private func identity(seed: UInt64) -> IdentityKey {
    var random = SplitMix64(seed: seed)
    func bytes() -> [UInt8] { (0..<4).flatMap { _ in withUnsafeBytes(of: random.next()) { Array($0) } } }
    return IdentityKey(signing: try! Curve25519.Signing.PrivateKey(rawRepresentation: bytes()),
                       agreement: try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: bytes()))
}

private let clientKey = identity(seed: 0xA11CE)
/// The server's X25519 key (its agreement half).
private let serverKey = identity(seed: 0x5E4E4)

/// Cookies, nonces and stray tags from a seeded generator.
private let tokens: [Token128] = {
    var random = SplitMix64(seed: 14)
    return (0..<6).map { _ in Token128.random(using: &random) }
}()
private let cookie1 = tokens[0], cookie2 = tokens[1], cookie3 = tokens[2]
private let nonce1 = tokens[3], nonce2 = tokens[4]
private let strayTag = tokens[5]

private func makeSession(keepAlive: Duration = .seconds(10), retry: Duration = .seconds(1),
                         offer: Bool = true, fallbacks: [Endpoint] = []) -> ClientSession {
    ClientSession(configuration: .init(id: alice, server: S, fallbackServers: fallbacks, privateEndpoint: privateEndpoint,
                                       identity: clientKey, keepAliveInterval: keepAlive, registrationRetry: retry,
                                       offerNatchat2: offer))
}

/// The classic registration carrying the natchat/2 offer, as sent.
private let offerBytes = ClassicMessage.register(alice, privateAddress: IPv4Address(10, 0, 0, 5), offers: ["natchat/2"]).encode()
private let offer = ClientSession.Output.send(offerBytes, to: S)
private let classicKeepAlive = ClientSession.Output.send(ClassicMessage.keepAlive(alice).encode(), to: S)
private let classicUnregister = ClientSession.Output.send(ClassicMessage.unregister(alice).encode(), to: S)

/// The server's answer to the registration that echoed `cookie`.
private func registered(cookie: Token128, nonce: Token128, endpoint: Endpoint = A, keepAliveMillis: UInt32 = 10_000,
                        alternatePort: UInt16 = 3479, serverPublicKey: [UInt8] = serverKey.publicKeys.agreement) -> ExtendedMessage {
    .registered(serverKey: serverPublicKey, publicEndpoint: endpoint, keepAliveMillis: keepAliveMillis,
                alternatePort: alternatePort, nonce: nonce, cookie: cookie)
}

/// The session key as the server derives it (its private key, the client's public one).
private func serverSessionKey(cookie: Token128, nonce: Token128) -> KeyBytes {
    SessionCrypto.sessionKey(privateKey: serverKey.agreement, peerPublicKey: clientKey.publicKeys.agreement,
                             cookie: cookie, nonce: nonce, id: alice)!
}

private let key1 = serverSessionKey(cookie: cookie1, nonce: nonce1)
private let key2 = serverSessionKey(cookie: cookie2, nonce: nonce2)

/// Offer at `now`, challenge, signed registration, `registered`: a session at `now`.
private func registeredSession(at now: Instant = at(0), keepAlive: Duration = .seconds(10),
                               keepAliveMillis: UInt32 = 10_000) -> ClientSession {
    var session = makeSession(keepAlive: keepAlive)
    #expect(session.start(now: now) == [offer])
    #expect(session.handleServerMessage(.challenge(cookie: cookie1), now: now).count == 1)
    #expect(session.handleServerMessage(registered(cookie: cookie1, nonce: nonce1, keepAliveMillis: keepAliveMillis), now: now)
        == [.registered(publicEndpoint: A, alternatePort: 3479)])
    return session
}

/// A client→server session datagram as the server reads it.
private struct Sealed {
    var message: ExtendedMessage
    var counter: UInt64
    var tag: Token128
    var bytes: [UInt8]
}

/// The one datagram in `outputs`, sent to the server, read as a sealed session message
/// whose tag verifies under `key` (and only under it).
private func sealed(_ outputs: [ClientSession.Output], key: KeyBytes,
                    sourceLocation: SourceLocation = #_sourceLocation) throws -> Sealed {
    guard outputs.count == 1, case .send(let bytes, let destination) = outputs[0] else {
        Issue.record("expected one datagram, got \(outputs)", sourceLocation: sourceLocation)
        throw Failure()
    }
    #expect(destination == S, sourceLocation: sourceLocation)
    let datagram = try ExtendedDatagram.decode(bytes)
    guard case .session(let counter, let tag) = datagram.trailer else {
        Issue.record("not sealed under the session: \(datagram.trailer)", sourceLocation: sourceLocation)
        throw Failure()
    }
    #expect(SessionCrypto.verifyAuthenticated(bytes, key: key), "tag does not verify", sourceLocation: sourceLocation)
    #expect(SessionCrypto.verify(tag, over: bytes.dropLast(16), key: key), sourceLocation: sourceLocation)
    let other = key == key1 ? key2 : key1
    #expect(!SessionCrypto.verifyAuthenticated(bytes, key: other), "verifies under another key", sourceLocation: sourceLocation)
    return Sealed(message: datagram.message, counter: counter, tag: tag, bytes: bytes)
}

private struct Failure: Error {}

/// The state's session, if it has one.
private func currentSession(_ session: ClientSession) -> ClientSession.Session? {
    switch session.state {
    case .registered(let current), .lost(let current, _): current
    case .idle, .registering, .classic, .refused, .left: nil
    }
}

// MARK: - Registering

@Suite("ClientSession registering")
struct ClientSessionRegisteringTests {
    @Test func beforeStart() {
        var session = makeSession()
        #expect(session.state == .idle)
        #expect(session.nextDeadline == nil)
        #expect(session.handleTimeout(now: at(100)).isEmpty)
        #expect(session.dialect == .negotiating)
        #expect(!session.isRegistering)
        #expect(!session.isRegistered)
        #expect(!session.hasLeft)
        #expect(session.publicEndpoint == nil)
        #expect(session.natKind == .unknown)
    }

    @Test func startOffersNatchat2InsideTheClassicRegistration() throws {
        var session = makeSession()
        let outputs = session.start(now: at(0))
        guard outputs.count == 1, case .send(let bytes, let destination) = outputs[0] else {
            Issue.record("expected one datagram: \(outputs)"); return
        }
        #expect(destination == S)
        #expect(try ClassicMessage.decode(bytes) == .register(alice, privateAddress: IPv4Address(10, 0, 0, 5), offers: ["natchat/2"]))
        #expect(String(decoding: bytes, as: UTF8.self) == "alice 10.0.0.5 natchat/2")
        #expect(session.state == .registering(.init(nextAttempt: at(1), backoff: .seconds(2), cookie: nil)))
        #expect(session.nextDeadline == at(1))
        #expect(session.dialect == .negotiating)
    }

    @Test func withoutTheOfferItIsTheSeedsRegistration() throws {
        var session = makeSession(offer: false)
        let outputs = session.start(now: at(0))
        #expect(outputs == [.send(Array("alice 10.0.0.5".utf8), to: S)])
        #expect(session.handleTimeout(now: at(1)) == [.send(Array("alice 10.0.0.5".utf8), to: S)])
    }

    /// Retries after 1 s, then every 2 s (the cap); classic keep-alives run on their own 10 s
    /// schedule from the start. Waking early sends nothing.
    @Test func retriesDoubleUpToTwoSeconds() {
        var session = makeSession()
        _ = session.start(now: at(0))
        var log: [(Instant, [ClientSession.Output])] = []
        while let deadline = session.nextDeadline, deadline <= at(40) {
            #expect(session.handleTimeout(now: deadline - nanosecond).isEmpty, "early wake before \(deadline)")
            log.append((deadline, session.handleTimeout(now: deadline)))
        }
        let retries = [1] + Array(stride(from: 3, through: 39, by: 2)) as [Int64]
        let keepAlives: [Int64] = [10, 20, 30, 40]
        #expect(log.map(\.0) == (retries + keepAlives).sorted().map { at($0) })
        for (when, outputs) in log {
            let second = when.nanoseconds / 1_000_000_000
            #expect(outputs == (keepAlives.contains(second) ? [classicKeepAlive] : [offer]), "at t=\(second)")
        }
        #expect(session.state == .registering(.init(nextAttempt: at(41), backoff: .seconds(2), cookie: nil)))
    }

    @Test func backoffStartsFromTheConfiguredRetry() {
        var session = makeSession(retry: .milliseconds(300))
        _ = session.start(now: at(0))
        var offers: [Instant] = []
        while let deadline = session.nextDeadline, deadline <= at(9) {
            if session.handleTimeout(now: deadline).contains(offer) { offers.append(deadline) }
        }
        // 300 ms, 600, 1200, then 2 s apart.
        #expect(offers == [300, 900, 2100, 4100, 6100, 8100].map { at(ms: $0) })
    }

    /// A keep-alive interval under 2 s caps the backoff instead.
    @Test func backoffIsCappedByAShorterKeepAliveInterval() {
        var session = makeSession(keepAlive: .milliseconds(1500))
        _ = session.start(now: at(0))
        var offers: [Instant] = []
        var keepAlives: [Instant] = []
        while let deadline = session.nextDeadline, deadline <= at(10) {
            let outputs = session.handleTimeout(now: deadline)
            if outputs.contains(offer) { offers.append(deadline) }
            if outputs.contains(classicKeepAlive) { keepAlives.append(deadline) }
        }
        #expect(offers == [1000, 2500, 4000, 5500, 7000, 8500, 10_000].map { at(ms: $0) })
        #expect(keepAlives == [1500, 3000, 4500, 6000, 7500, 9000].map { at(ms: $0) })
    }

    @Test func challengeIsAnsweredWithASignedRegistration() throws {
        var session = makeSession()
        _ = session.start(now: at(0))
        let outputs = session.handleServerMessage(.challenge(cookie: cookie1), now: at(ms: 200))
        guard outputs.count == 1, case .send(let bytes, let destination) = outputs[0] else {
            Issue.record("expected one datagram: \(outputs)"); return
        }
        #expect(destination == S)
        let datagram = try ExtendedDatagram.decode(bytes)
        #expect(datagram.message == .register(id: alice, cookie: cookie1, privateEndpoints: [privateEndpoint], natKind: .unknown,
                                              keys: clientKey.publicKeys, subscribe: true))
        guard case .signature(let signature) = datagram.trailer else {
            Issue.record("not signed: \(datagram.trailer)"); return
        }
        #expect(signature.count == 64)
        #expect(SessionCrypto.verifyRegistration(bytes, keys: clientKey.publicKeys, signature: signature))
        #expect(!SessionCrypto.verifyRegistration(bytes, keys: serverKey.publicKeys, signature: signature))
        #expect(session.state == .registering(.init(nextAttempt: at(1), backoff: .seconds(2), cookie: cookie1)))
        #expect(session.dialect == .negotiating)
        // Challenged is not registered: the offer goes again if no answer comes.
        #expect(session.nextDeadline == at(1))
        #expect(session.handleTimeout(now: at(1)) == [offer])
        #expect(session.state == .registering(.init(nextAttempt: at(3), backoff: .seconds(2), cookie: cookie1)))
    }

    @Test func theRegistrationReportsTheBoundPort() throws {
        var session = makeSession()
        session.localPortChosen(0) // "any port" was not a choice yet: ignored
        session.localPortChosen(40_000)
        #expect(session.configuration.privateEndpoint == ep("10.0.0.5:40000"))
        #expect(session.start(now: at(0)) == [offer], "the classic line carries the address only")
        let outputs = session.handleServerMessage(.challenge(cookie: cookie1), now: at(0))
        guard case .send(let bytes, _)? = outputs.first,
              case .register(_, _, let endpoints, _, _, _) = try ExtendedDatagram.decode(bytes).message else {
            Issue.record("no registration: \(outputs)"); return
        }
        #expect(endpoints == [ep("10.0.0.5:40000")])
    }

    /// A newer challenge (answering a later offer) replaces the cookie: only the answer
    /// echoing the latest one starts the session.
    @Test func onlyTheLatestCookieCounts() throws {
        var session = makeSession()
        _ = session.start(now: at(0))
        _ = session.handleServerMessage(.challenge(cookie: cookie1), now: at(0))
        _ = session.handleTimeout(now: at(1))
        let second = session.handleServerMessage(.challenge(cookie: cookie2), now: at(1))
        guard case .send(let bytes, _)? = second.first,
              case .register(_, let echoed, _, _, _, _) = try ExtendedDatagram.decode(bytes).message else {
            Issue.record("no registration: \(second)"); return
        }
        #expect(echoed == cookie2)
        let challenged = session.state
        #expect(challenged == .registering(.init(nextAttempt: at(3), backoff: .seconds(2), cookie: cookie2)))
        // The late answer to the first registration names a session the server replaced.
        #expect(session.handleServerMessage(registered(cookie: cookie1, nonce: nonce1), now: at(2)).isEmpty)
        #expect(session.state == challenged)
        #expect(session.handleServerMessage(registered(cookie: cookie2, nonce: nonce2), now: at(2))
            == [.registered(publicEndpoint: A, alternatePort: 3479)])
        #expect(session.state == .registered(.init(key: key2, cookie: cookie2, lastAnswer: at(2))))
    }

    @Test func registeredWithoutTheRightCookieIsIgnored() {
        var session = makeSession()
        _ = session.start(now: at(0))
        let offered = session.state
        // Not challenged yet: no answer can be ours.
        #expect(session.handleServerMessage(registered(cookie: cookie1, nonce: nonce1), now: at(0)).isEmpty)
        #expect(session.handleServerMessage(registered(cookie: .zero, nonce: nonce1), now: at(0)).isEmpty)
        #expect(session.state == offered)
        _ = session.handleServerMessage(.challenge(cookie: cookie1), now: at(0))
        let challenged = session.state
        for answer in [registered(cookie: cookie2, nonce: nonce1), registered(cookie: .zero, nonce: nonce1),
                       registered(cookie: cookie1, nonce: nonce1, serverPublicKey: [1, 2, 3])] {
            #expect(session.handleServerMessage(answer, now: at(0)).isEmpty, "\(answer)")
            #expect(session.state == challenged)
        }
        #expect(!session.isRegistered)
        #expect(session.publicEndpoint == nil)
    }

    @Test func registeredEchoingTheCookieStartsTheSession() {
        var session = makeSession()
        _ = session.start(now: at(0))
        _ = session.handleServerMessage(.challenge(cookie: cookie1), now: at(1))
        #expect(session.handleServerMessage(registered(cookie: cookie1, nonce: nonce1), now: at(2))
            == [.registered(publicEndpoint: A, alternatePort: 3479)])
        #expect(session.state == .registered(.init(key: key1, cookie: cookie1, counter: 0, recentTags: [], lastAnswer: at(2))))
        #expect(session.dialect == .natchat2)
        #expect(session.isRegistered)
        #expect(!session.isRegistering)
        #expect(session.publicEndpoint == A)
        // No more offers: the keep-alive is next, one interval after the answer.
        #expect(session.nextDeadline == at(12))
        #expect(session.handleTimeout(now: at(3)).isEmpty)
        #expect(session.handleTimeout(now: at(11)).isEmpty)
    }

    @Test func alternatePortZeroMeansNone() {
        var session = makeSession()
        _ = session.start(now: at(0))
        _ = session.handleServerMessage(.challenge(cookie: cookie1), now: at(0))
        #expect(session.handleServerMessage(registered(cookie: cookie1, nonce: nonce1, endpoint: B, alternatePort: 0), now: at(0))
            == [.registered(publicEndpoint: B, alternatePort: 0)])
        #expect(session.publicEndpoint == B)
    }

    @Test func aShorterKeepAliveIntervalOfTheServerIsAdopted() throws {
        var session = registeredSession(keepAliveMillis: 4_000)
        #expect(session.nextDeadline == at(4))
        var counters: [UInt64] = []
        // Every 4 s, and (unacknowledged) again after half an interval, 2 s.
        for second in [4, 6, 8, 10, 12] as [Int64] {
            #expect(session.nextDeadline == at(second))
            #expect(session.handleTimeout(now: at(second) - nanosecond).isEmpty)
            counters.append(try sealed(session.handleTimeout(now: at(second)), key: key1).counter)
        }
        #expect(counters == [1, 2, 3, 4, 5])
        // Silence is measured in the adopted interval too: 3 × 4 s + 1 s.
        #expect(session.nextDeadline == at(13))
        #expect(session.handleTimeout(now: at(13)) == [.sessionLost(.serverSilent), offer])
    }

    /// A keep-alive the server does not acknowledge goes again 2 s later, with a fresh
    /// counter, until one is acknowledged: two lost in a row must not cost the registration.
    @Test func anUnacknowledgedKeepAliveIsSentAgainUntilAcknowledged() throws {
        var session = registeredSession()
        let first = try sealed(session.handleTimeout(now: at(10)), key: key1)
        #expect(session.nextDeadline == at(12))
        #expect(session.handleTimeout(now: at(12) - nanosecond).isEmpty)
        let again = try sealed(session.handleTimeout(now: at(12)), key: key1)
        #expect(again.message == first.message && again.counter == first.counter + 1)
        _ = session.handleServerMessage(.keepAliveAck(publicEndpoint: A), now: at(13))
        #expect(session.nextDeadline == at(20), "acknowledged: nothing until the next keep-alive")
        #expect(session.handleTimeout(now: at(19)).isEmpty)
    }

    /// The server's round trip: keep-alive to acknowledgement, smoothed (RFC 6298); an
    /// acknowledgement after a resend is no sample (Karn: it may answer either).
    @Test func serverRoundTripComesFromKeepAlives() throws {
        var session = registeredSession()
        #expect(session.serverRoundTrip == nil)
        _ = try sealed(session.handleTimeout(now: at(10)), key: key1)
        _ = session.handleServerMessage(.keepAliveAck(publicEndpoint: A), now: at(ms: 10_040))
        #expect(session.serverRoundTrip?.smoothed == .milliseconds(40))
        // A second acknowledgement with nothing outstanding is no sample.
        _ = session.handleServerMessage(.keepAliveAck(publicEndpoint: A), now: at(ms: 10_500))
        #expect(session.serverRoundTrip?.samples == 1)
        _ = try sealed(session.handleTimeout(now: at(20)), key: key1)
        _ = session.handleServerMessage(.keepAliveAck(publicEndpoint: A), now: at(ms: 20_120))
        #expect(session.serverRoundTrip?.smoothed == .milliseconds(50))
        #expect(session.serverRoundTrip?.latest == .milliseconds(120))
        // Lost once, sent again at 32 s, answered at 32.01 s: not a sample.
        _ = try sealed(session.handleTimeout(now: at(30)), key: key1)
        _ = try sealed(session.handleTimeout(now: at(32)), key: key1)
        _ = session.handleServerMessage(.keepAliveAck(publicEndpoint: A), now: at(ms: 32_010))
        #expect(session.serverRoundTrip?.samples == 2)
        // The next clean one counts again.
        _ = try sealed(session.handleTimeout(now: at(40)), key: key1)
        _ = session.handleServerMessage(.keepAliveAck(publicEndpoint: A), now: at(ms: 40_050))
        #expect(session.serverRoundTrip?.samples == 3)
    }

    @Test func aLongerOrNoKeepAliveIntervalOfTheServerIsNot() {
        let longer = registeredSession(keepAliveMillis: 20_000)
        #expect(longer.nextDeadline == at(10))
        let none = registeredSession(keepAliveMillis: 0)
        #expect(none.nextDeadline == at(10))
    }
}

// MARK: - Registered

@Suite("ClientSession registered")
struct ClientSessionRegisteredTests {
    @Test func keepAlivesAreSealedWithIncreasingCounters() throws {
        var session = registeredSession()
        var tags: [Token128] = []
        for (second, counter) in [(10, 1), (20, 2), (30, 3)] as [(Int64, UInt64)] {
            #expect(session.handleTimeout(now: at(second) - nanosecond).isEmpty)
            let keepAlive = try sealed(session.handleTimeout(now: at(second)), key: key1)
            #expect(keepAlive.message == .keepAlive(id: alice, natKind: .unknown))
            #expect(keepAlive.counter == counter)
            tags.append(keepAlive.tag)
            _ = session.handleServerMessage(.keepAliveAck(publicEndpoint: A), now: at(second))
        }
        // Any session message takes the next counter.
        let ack = try sealed(session.send(.rosterAck(id: alice, largest: 3, received: 0b11)), key: key1)
        #expect(ack.message == .rosterAck(id: alice, largest: 3, received: 0b11))
        #expect(ack.counter == 4)
        tags.append(ack.tag)
        #expect(session.state == .registered(.init(key: key1, cookie: cookie1, counter: 4, recentTags: tags, lastAnswer: at(30))))
    }

    @Test func sendSealsOnlyInANatchat2Session() throws {
        let message = ExtendedMessage.lookup(id: alice, query: 1, peer: id("bob"))
        var registering = makeSession()
        _ = registering.start(now: at(0))
        #expect(registering.send(message).isEmpty)
        var classic = makeSession()
        _ = classic.start(now: at(0))
        _ = classic.handleClassicRegistration(now: at(0))
        #expect(classic.send(message).isEmpty)
        var session = registeredSession()
        #expect(try sealed(session.send(message), key: key1).message == message)
        _ = session.leave(now: at(1))
        #expect(session.send(message).isEmpty)
    }

    /// The server repeats its answer (a duplicated datagram): same key, same counter, no event.
    @Test func aRepeatedRegisteredChangesNothing() throws {
        var session = registeredSession()
        let first = try sealed(session.handleTimeout(now: at(10)), key: key1)
        #expect(session.handleServerMessage(registered(cookie: cookie1, nonce: nonce1), now: at(12)).isEmpty)
        #expect(session.state == .registered(.init(key: key1, cookie: cookie1, counter: 1, recentTags: [first.tag],
                                                   lastAnswer: at(12), keepAliveRetryAt: at(12))))
        #expect(session.dialect == .natchat2)
        let deadline = try #require(session.nextDeadline)
        let next = try sealed(session.handleTimeout(now: deadline), key: key1)
        #expect(next.counter == 2)
    }

    /// Someone sent an offer in alice's name: the server challenges her. Registered, she must
    /// not answer it, nor take its cookie.
    @Test func anUnsolicitedChallengeIsIgnored() {
        var session = registeredSession()
        _ = session.handleTimeout(now: at(10))
        let before = session.state
        let deadline = session.nextDeadline
        #expect(session.handleServerMessage(.challenge(cookie: cookie2), now: at(11)).isEmpty)
        #expect(session.state == before)
        #expect(session.nextDeadline == deadline)
        // ...and an answer echoing its cookie is not ours either.
        #expect(session.handleServerMessage(registered(cookie: cookie2, nonce: nonce2), now: at(11)).isEmpty)
        #expect(session.state == before)
    }

    @Test func keepAliveAckFromAnotherEndpointIsReported() {
        var session = registeredSession()
        #expect(session.handleServerMessage(.keepAliveAck(publicEndpoint: A), now: at(10)).isEmpty)
        #expect(session.handleServerMessage(.keepAliveAck(publicEndpoint: B), now: at(20)) == [.publicEndpointMoved(B)])
        #expect(session.publicEndpoint == B)
        #expect(session.handleServerMessage(.keepAliveAck(publicEndpoint: B), now: at(30)).isEmpty)
        #expect(session.handleServerMessage(.keepAliveAck(publicEndpoint: A), now: at(40)) == [.publicEndpointMoved(A)])
        #expect(currentSession(session)?.lastAnswer == at(40))
    }

    /// Whatever the server sends shows it is alive; peers' messages do not.
    @Test func everyServerMessageCountsAsAnAnswer() {
        let bob = id("bob")
        let serverMessages: [ExtendedMessage] = [
            .roster(RosterDelta(epoch: 1, sequence: 1, version: 1, registered: 1, scope: .complete, synced: true, records: [])),
            .lookupResult(query: 1, epoch: 1, version: 1, peer: bob, found: nil),
            .listPage(query: 1, total: 0, offset: 0, entries: []),
            .punch(peer: PeerInfo(id: bob, publicEndpoint: B), round: 1, delayMillis: 0),
            .relayed(from: bob, payload: [1, 2, 3]),
            .keepAliveAck(publicEndpoint: A),
        ]
        for message in serverMessages {
            var session = registeredSession()
            while let deadline = session.nextDeadline, deadline <= at(25) { _ = session.handleTimeout(now: deadline) }
            #expect(session.handleServerMessage(message, now: at(25)).isEmpty, "\(message)")
            #expect(currentSession(session)?.lastAnswer == at(25), "\(message)")
            // Silence is now counted from t=25: 3 × 10 s + 1 s later.
            var lost: Instant?
            while lost == nil, let deadline = session.nextDeadline, deadline <= at(60) {
                if session.handleTimeout(now: deadline).contains(.sessionLost(.serverSilent)) { lost = deadline }
            }
            #expect(lost == at(56), "\(message)")
        }
        for message in [ExtendedMessage.ping(from: bob, to: alice, transaction: 1),
                        .chatAck(from: bob, to: alice, messageID: 1),
                        .keepAlive(id: alice, natKind: .none)] {
            var session = registeredSession()
            #expect(session.handleServerMessage(message, now: at(25)).isEmpty)
            #expect(currentSession(session)?.lastAnswer == at(0), "\(message)")
        }
    }

    @Test func learningTheNATKindTellsTheServerAtOnce() throws {
        var session = registeredSession()
        let told = try sealed(session.learnNATKind(.endpointIndependent, now: at(3)), key: key1)
        #expect(told.message == .keepAlive(id: alice, natKind: .endpointIndependent))
        #expect(told.counter == 1)
        #expect(session.natKind == .endpointIndependent)
        // Later keep-alives carry it too...
        let next = try sealed(session.handleTimeout(now: at(10)), key: key1)
        #expect(next.message == .keepAlive(id: alice, natKind: .endpointIndependent))
        #expect(next.counter == 2)
        // ...and so does the next registration.
        _ = session.handleServerMessage(.unknownSession(alice, echo: next.tag), now: at(11))
        let outputs = session.handleServerMessage(.challenge(cookie: cookie2), now: at(11))
        guard case .send(let bytes, _)? = outputs.first,
              case .register(_, _, _, let kind, _, _) = try ExtendedDatagram.decode(bytes).message else {
            Issue.record("no registration: \(outputs)"); return
        }
        #expect(kind == .endpointIndependent)
    }

    @Test func learningTheNATKindBeforeASessionSendsAClassicKeepAlive() throws {
        var session = makeSession()
        _ = session.start(now: at(0))
        #expect(session.learnNATKind(.endpointDependent, now: at(0)) == [classicKeepAlive])
        #expect(session.natKind == .endpointDependent)
        let outputs = session.handleServerMessage(.challenge(cookie: cookie1), now: at(0))
        guard case .send(let bytes, _)? = outputs.first,
              case .register(_, _, _, let kind, _, _) = try ExtendedDatagram.decode(bytes).message else {
            Issue.record("no registration: \(outputs)"); return
        }
        #expect(kind == .endpointDependent)
    }
}

// MARK: - Losing the session

@Suite("ClientSession losing the session")
struct ClientSessionLossTests {
    /// Three keep-alive intervals and a second without a word from the server: the session
    /// is given up and registration starts again (the old session still seals meanwhile);
    /// the new session has its own key and counts from 1.
    @Test func silenceStartsARegistrationAndANewSessionReplacesTheOld() throws {
        var session = registeredSession()
        var tags: [Token128] = []
        // A keep-alive at 10 s, then (never acknowledged) again every 2 s.
        for second in stride(from: 10, through: 30, by: 2) as StrideThrough<Int64> {
            #expect(session.nextDeadline == at(second))
            tags.append(try sealed(session.handleTimeout(now: at(second)), key: key1).tag)
        }
        #expect(session.nextDeadline == at(31), "silence is due before the next keep-alive")
        #expect(session.handleTimeout(now: at(31) - nanosecond).isEmpty)
        #expect(session.handleTimeout(now: at(31)) == [.sessionLost(.serverSilent), offer])
        let old = ClientSession.Session(key: key1, cookie: cookie1, counter: 11, recentTags: tags, lastAnswer: at(0))
        #expect(session.state == .lost(old, .init(nextAttempt: at(32), backoff: .seconds(2), cookie: nil)))
        #expect(session.dialect == .natchat2)
        #expect(session.isRegistered, "a lost session counts until it is replaced")
        #expect(session.isRegistering)
        // Offers again with the backoff from its start; the keep-alive due at 40 is sealed
        // under the old session (the server will say it does not know it).
        #expect(session.nextDeadline == at(32))
        #expect(session.handleTimeout(now: at(32)) == [offer])
        #expect(session.handleTimeout(now: at(34)) == [offer])
        #expect(session.handleTimeout(now: at(36)) == [offer])
        #expect(session.handleTimeout(now: at(38)) == [offer])
        let atForty = session.handleTimeout(now: at(40))
        #expect(atForty.first == offer)
        let oldKeepAlive = try sealed(Array(atForty.dropFirst()), key: key1)
        #expect(oldKeepAlive.counter == 12)
        // Challenged, then registered again.
        let registration = session.handleServerMessage(.challenge(cookie: cookie2), now: at(41))
        guard case .send(let bytes, _)? = registration.first,
              case .register(_, let echoed, _, _, _, _) = try ExtendedDatagram.decode(bytes).message else {
            Issue.record("no registration: \(registration)"); return
        }
        #expect(echoed == cookie2)
        #expect(session.handleServerMessage(registered(cookie: cookie2, nonce: nonce2), now: at(41))
            == [.registeredAgain(publicEndpoint: A)])
        #expect(session.state == .registered(.init(key: key2, cookie: cookie2, lastAnswer: at(41))))
        #expect(!session.isRegistering)
        #expect(session.nextDeadline == at(51))
        let fresh = try sealed(session.handleTimeout(now: at(51)), key: key2)
        #expect(fresh.counter == 1)
    }

    @Test func noSecondLossWhileRegisteringAgain() {
        var session = registeredSession()
        var lost = 0
        var offers = 0
        while let deadline = session.nextDeadline, deadline <= at(200) {
            let outputs = session.handleTimeout(now: deadline)
            lost += outputs.filter { if case .sessionLost = $0 { true } else { false } }.count
            offers += outputs.filter { $0 == offer }.count
        }
        #expect(lost == 1)
        // From t=31: offers at 31, 32, then every 2 s up to 200.
        #expect(offers == 2 + (200 - 32) / 2)
    }

    @Test func aLateAnswerForTheLostSessionIsIgnored() {
        var session = registeredSession()
        while let deadline = session.nextDeadline, deadline <= at(31) { _ = session.handleTimeout(now: deadline) }
        let lost = session.state
        guard case .lost = lost else { Issue.record("not lost: \(lost)"); return }
        // Not challenged again yet: the old session's answer, repeated, is not a new session.
        #expect(session.handleServerMessage(registered(cookie: cookie1, nonce: nonce1), now: at(32)).isEmpty)
        #expect(session.state == lost)
    }

    /// The server lost the session (it restarted) and says so, echoing the tag of the message
    /// it refused: only an echo of one of ours counts.
    @Test func unknownSessionEchoingARecentTag() throws {
        var session = registeredSession()
        let keepAlive = try sealed(session.handleTimeout(now: at(10)), key: key1)
        let registered = session.state
        for forged in [ExtendedMessage.unknownSession(alice, echo: Token128(high: keepAlive.tag.high, low: keepAlive.tag.low ^ 1)),
                       .unknownSession(alice, echo: strayTag),
                       .unknownSession(alice),
                       .unknownSession(id("bob"), echo: keepAlive.tag)] {
            #expect(session.handleServerMessage(forged, now: at(11)).isEmpty, "\(forged)")
            #expect(session.state == registered)
        }
        #expect(session.handleServerMessage(.unknownSession(alice, echo: keepAlive.tag), now: at(11))
            == [.sessionLost(.unknownSession), offer])
        let old = ClientSession.Session(key: key1, cookie: cookie1, counter: 1, recentTags: [keepAlive.tag], lastAnswer: at(0))
        #expect(session.state == .lost(old, .init(nextAttempt: at(12), backoff: .seconds(2), cookie: nil)))
        // A second copy while registering again does nothing more.
        #expect(session.handleServerMessage(.unknownSession(alice, echo: keepAlive.tag), now: at(11)).isEmpty)
        #expect(session.nextDeadline == at(12))
        #expect(session.handleTimeout(now: at(12) - nanosecond).isEmpty)
        #expect(session.handleTimeout(now: at(12)) == [offer])
    }

    @Test func unknownSessionBeforeAnySessionMessageIsIgnored() {
        var session = registeredSession()
        let registered = session.state
        #expect(session.handleServerMessage(.unknownSession(alice), now: at(1)).isEmpty)
        #expect(session.handleServerMessage(.unknownSession(alice, echo: strayTag), now: at(1)).isEmpty)
        #expect(session.state == registered)
    }

    @Test func unknownSessionOutsideASessionIsIgnored() throws {
        var registering = makeSession()
        _ = registering.start(now: at(0))
        #expect(registering.handleServerMessage(.unknownSession(alice, echo: strayTag), now: at(0)).isEmpty)
        var classic = makeSession()
        _ = classic.start(now: at(0))
        _ = classic.handleClassicRegistration(now: at(0))
        #expect(classic.handleServerMessage(.unknownSession(alice, echo: strayTag), now: at(0)).isEmpty)
        #expect(classic.state == .classic)
    }

    @Test func onlyTheLast32TagsAreRemembered() throws {
        var session = registeredSession()
        var tags: [Token128] = []
        for n in 1...(ClientSession.recentTagLimit + 1) {
            tags.append(try sealed(session.send(.rosterAck(id: alice, largest: UInt32(n), received: 0)), key: key1).tag)
        }
        #expect(currentSession(session)?.recentTags == Array(tags.dropFirst()))
        #expect(session.handleServerMessage(.unknownSession(alice, echo: tags[0]), now: at(1)).isEmpty, "forgotten")
        #expect(session.handleServerMessage(.unknownSession(alice, echo: tags[1]), now: at(1)) == [.sessionLost(.unknownSession), offer])
    }

    /// After registering again, an echo of a tag of the previous session (a late copy, or a
    /// replay) concerns a session that is gone: it must not end the new one.
    @Test func anEchoOfThePreviousSessionIsIgnoredAfterRegisteringAgain() throws {
        var session = registeredSession()
        let oldTag = try sealed(session.handleTimeout(now: at(10)), key: key1).tag
        #expect(session.handleServerMessage(.unknownSession(alice, echo: oldTag), now: at(11)) == [.sessionLost(.unknownSession), offer])
        // While registering again the old session still seals (and its tags are its own).
        let meanwhile = try sealed(session.send(.lookup(id: alice, query: 1, peer: id("bob"))), key: key1)
        #expect(meanwhile.counter == 2)
        _ = session.handleServerMessage(.challenge(cookie: cookie2), now: at(11))
        #expect(session.handleServerMessage(registered(cookie: cookie2, nonce: nonce2), now: at(11)) == [.registeredAgain(publicEndpoint: A)])
        let renewed = session.state
        #expect(session.handleServerMessage(.unknownSession(alice, echo: oldTag), now: at(12)).isEmpty)
        #expect(session.handleServerMessage(.unknownSession(alice, echo: meanwhile.tag), now: at(12)).isEmpty)
        #expect(session.state == renewed)
        // An echo of the new session's own tag still counts.
        let newTag = try sealed(session.send(.lookup(id: alice, query: 2, peer: id("bob"))), key: key2).tag
        #expect(session.handleServerMessage(.unknownSession(alice, echo: newTag), now: at(13)) == [.sessionLost(.unknownSession), offer])
    }

    @Test func registeredAgainReportsTheNewEndpoint() throws {
        var session = registeredSession()
        let tag = try sealed(session.handleTimeout(now: at(10)), key: key1).tag
        _ = session.handleServerMessage(.unknownSession(alice, echo: tag), now: at(10))
        _ = session.handleServerMessage(.challenge(cookie: cookie2), now: at(10))
        #expect(session.handleServerMessage(registered(cookie: cookie2, nonce: nonce2, endpoint: B), now: at(10))
            == [.registeredAgain(publicEndpoint: B)])
        #expect(session.publicEndpoint == B)
        // The new session's answers are repeated: nothing more.
        #expect(session.handleServerMessage(registered(cookie: cookie2, nonce: nonce2, endpoint: B), now: at(10)).isEmpty)
    }
}

// MARK: - Classic and refusal

@Suite("ClientSession classic fallback and refusal")
struct ClientSessionClassicAndRefusalTests {
    @Test func aClassicServerMakesAClassicSession() {
        var session = makeSession()
        _ = session.start(now: at(0))
        _ = session.handleTimeout(now: at(1))
        #expect(session.handleClassicRegistration(now: at(2)).isEmpty)
        #expect(session.state == .classic)
        #expect(session.dialect == .classic)
        #expect(session.isRegistered)
        #expect(!session.isRegistering)
        // No more offers: only the keep-alives, from the start.
        #expect(session.nextDeadline == at(10))
        #expect(session.handleTimeout(now: at(3)).isEmpty)
        #expect(session.handleTimeout(now: at(10)) == [classicKeepAlive])
        #expect(session.handleTimeout(now: at(20)) == [classicKeepAlive])
        #expect(session.nextDeadline == at(30))
        // natchat/2 has nothing to say to a classic session; a notice is only a notice.
        #expect(session.handleServerMessage(.challenge(cookie: cookie1), now: at(21)).isEmpty)
        #expect(session.handleServerMessage(registered(cookie: cookie1, nonce: nonce1), now: at(21)).isEmpty)
        #expect(session.handleClassicNotice("maintenance at noon", now: at(21)).isEmpty)
        #expect(session.handleClassicRegistration(now: at(22)).isEmpty)
        #expect(session.state == .classic)
    }

    @Test func aClassicListDoesNotEndANatchat2Session() {
        var session = registeredSession()
        let registered = session.state
        #expect(session.handleClassicRegistration(now: at(1)).isEmpty)
        #expect(session.handleClassicNotice("registration refused: later", now: at(1)).isEmpty)
        #expect(session.state == registered)
    }

    @Test func aClassicNoticeWhileRegisteringIsTheRefusal() {
        var session = makeSession()
        _ = session.start(now: at(0))
        let notice = "registration refused: ID alice - the ID is in use from another address"
        #expect(session.handleClassicNotice(notice, now: at(1)) == [.refused(notice)])
        #expect(session.state == .refused)
        #expect(!session.isRegistered)
        #expect(!session.isRegistering)
        #expect(session.nextDeadline == nil)
        for second in [1, 2, 10, 20, 100] as [Int64] {
            #expect(session.handleTimeout(now: at(second)).isEmpty, "sent something at t=\(second) after the refusal")
        }
        // Refused is final.
        #expect(session.handleClassicRegistration(now: at(101)).isEmpty)
        #expect(session.handleClassicNotice(notice, now: at(101)).isEmpty)
        #expect(session.handleServerMessage(.challenge(cookie: cookie1), now: at(101)).isEmpty)
        #expect(session.state == .refused)
    }

    @Test func natchat2RefusedWhileRegisteringIsNoticeAndRefusal() {
        var session = makeSession()
        _ = session.start(now: at(0))
        _ = session.handleServerMessage(.challenge(cookie: cookie1), now: at(0))
        let text = "registration refused: ID alice is bound to another key"
        #expect(session.handleServerMessage(.refused(text: text), now: at(0)) == [.serverNotice(text), .refused(text)])
        #expect(session.state == .refused)
        #expect(session.nextDeadline == nil)
        #expect(session.handleTimeout(now: at(1)).isEmpty)
        #expect(session.handleServerMessage(registered(cookie: cookie1, nonce: nonce1), now: at(1)).isEmpty)
        #expect(session.state == .refused)
    }

    @Test func natchat2RefusedAfterRegistrationIsOnlyANotice() throws {
        var session = registeredSession()
        let registered = session.state
        #expect(session.handleServerMessage(.refused(text: "slow down"), now: at(1)) == [.serverNotice("slow down")])
        #expect(session.state == registered)
        // Nor while a lost session is replaced (it counts as registered).
        let tag = try sealed(session.handleTimeout(now: at(10)), key: key1).tag
        _ = session.handleServerMessage(.unknownSession(alice, echo: tag), now: at(10))
        let lost = session.state
        #expect(session.handleServerMessage(.refused(text: "slow down"), now: at(10)) == [.serverNotice("slow down")])
        #expect(session.state == lost)
        // Nor in a classic session.
        var classic = makeSession()
        _ = classic.start(now: at(0))
        _ = classic.handleClassicRegistration(now: at(0))
        #expect(classic.handleServerMessage(.refused(text: "hm"), now: at(0)) == [.serverNotice("hm")])
        #expect(classic.state == .classic)
    }
}

// MARK: - Leaving

@Suite("ClientSession leaving")
struct ClientSessionLeaveTests {
    /// After leaving nothing is sent, scheduled or reported.
    private func expectInert(_ session: inout ClientSession, from second: Int64) {
        #expect(session.state == .left)
        #expect(session.hasLeft)
        #expect(session.nextDeadline == nil)
        #expect(session.leave(now: at(second)).isEmpty, "leaves once")
        for later in [second, second + 1, second + 10, second + 100] {
            #expect(session.handleTimeout(now: at(later)).isEmpty, "t=\(later)")
        }
        let messages: [ExtendedMessage] = [.challenge(cookie: cookie3), registered(cookie: cookie1, nonce: nonce1),
                                           registered(cookie: cookie3, nonce: nonce2), .keepAliveAck(publicEndpoint: B),
                                           .unknownSession(alice, echo: strayTag), .refused(text: "bye")]
        for message in messages {
            #expect(session.handleServerMessage(message, now: at(second + 1)).isEmpty, "\(message)")
        }
        #expect(session.handleClassicNotice("bye", now: at(second + 1)).isEmpty)
        #expect(session.handleClassicRegistration(now: at(second + 1)).isEmpty)
        #expect(session.send(.lookup(id: alice, query: 9, peer: id("bob"))).isEmpty)
        #expect(session.learnNATKind(.none, now: at(second + 1)).isEmpty)
        #expect(session.state == .left)
        #expect(session.nextDeadline == nil)
    }

    @Test func leavingASessionSendsASealedExit() throws {
        var session = registeredSession()
        _ = try sealed(session.handleTimeout(now: at(10)), key: key1)
        let exit = try sealed(session.leave(now: at(12)), key: key1)
        #expect(exit.message == .exit(id: alice))
        #expect(exit.counter == 2)
        expectInert(&session, from: 12)
    }

    @Test func leavingWhileRegisteringSendsTheClassicUnregister() throws {
        var session = makeSession()
        _ = session.start(now: at(0))
        let outputs = session.leave(now: at(0))
        #expect(outputs == [classicUnregister])
        if case .send(let bytes, _)? = outputs.first {
            #expect(try ClassicMessage.decode(bytes) == .unregister(alice))
        }
        expectInert(&session, from: 0)
    }

    @Test func leavingAClassicSessionSendsTheClassicUnregister() {
        var session = makeSession()
        _ = session.start(now: at(0))
        _ = session.handleClassicRegistration(now: at(0))
        #expect(session.leave(now: at(5)) == [classicUnregister])
        expectInert(&session, from: 5)
    }

    @Test func leavingAfterARefusalStillUnregisters() {
        var session = makeSession()
        _ = session.start(now: at(0))
        _ = session.handleClassicNotice("no", now: at(0))
        #expect(session.leave(now: at(1)) == [classicUnregister])
        expectInert(&session, from: 1)
    }

    @Test func leavingWhileRegisteringAgainSealsUnderTheOldSession() throws {
        var session = registeredSession()
        let tag = try sealed(session.handleTimeout(now: at(10)), key: key1).tag
        _ = session.handleServerMessage(.unknownSession(alice, echo: tag), now: at(10))
        _ = session.handleServerMessage(.challenge(cookie: cookie2), now: at(10))
        let exit = try sealed(session.leave(now: at(11)), key: key1)
        #expect(exit.message == .exit(id: alice))
        #expect(exit.counter == 2)
        expectInert(&session, from: 11)
    }
}

// MARK: - Deadlines

@Suite("ClientSession deadlines")
struct ClientSessionDeadlineTests {
    @Test func theEarliestOfWhatIsDue() throws {
        // Registering: the next offer, or the keep-alive when it comes first.
        var session = makeSession()
        _ = session.start(now: at(0))
        #expect(session.nextDeadline == at(1))
        for second in [1, 3, 5, 7, 9] as [Int64] { _ = session.handleTimeout(now: at(second)) }
        #expect(session.nextDeadline == at(10), "keep-alive at 10 before the offer at 11")
        _ = session.handleTimeout(now: at(10))
        #expect(session.nextDeadline == at(11))
        // Registered: the keep-alive, or silence when it comes first.
        _ = session.handleServerMessage(.challenge(cookie: cookie1), now: at(10))
        _ = session.handleServerMessage(registered(cookie: cookie1, nonce: nonce1), now: at(10))
        // Keep-alives at 20, 30 and 40 s, each (never acknowledged) again every 2 s.
        for second in stride(from: 20, through: 40, by: 2) as StrideThrough<Int64> {
            #expect(session.nextDeadline == at(second))
            _ = session.handleTimeout(now: at(second))
        }
        #expect(session.nextDeadline == at(41), "silence at 41 before the keep-alive again at 42")
        // Lost: the next offer, or the keep-alive when it comes first.
        #expect(session.handleTimeout(now: at(41)).first == .sessionLost(.serverSilent))
        #expect(session.nextDeadline == at(42))
        for second in [42, 44, 46, 48] as [Int64] { _ = session.handleTimeout(now: at(second)) }
        #expect(session.nextDeadline == at(50))
        _ = session.handleTimeout(now: at(50))
        #expect(session.nextDeadline == at(52))
        // Classic: the keep-alive alone.
        var classic = makeSession()
        _ = classic.start(now: at(0))
        _ = classic.handleClassicRegistration(now: at(0))
        #expect(classic.nextDeadline == at(10))
        // Refused, left: nothing.
        var refused = makeSession()
        _ = refused.start(now: at(0))
        _ = refused.handleClassicNotice("no", now: at(0))
        #expect(refused.nextDeadline == nil)
        _ = classic.leave(now: at(1))
        #expect(classic.nextDeadline == nil)
    }

    /// A seeded random life of a session: at every step, waking just before `nextDeadline`
    /// does nothing and changes nothing, and at `nextDeadline` something is due.
    @Test func nothingIsDueBeforeTheDeadlineAndSomethingIsAtIt() throws {
        for seed in 1...20 as ClosedRange<UInt64> {
            var random = SplitMix64(seed: seed)
            var session = makeSession(keepAlive: .seconds(Int64(random.next() % 10 + 1)))
            var now = at(0)
            _ = session.start(now: now)
            var tags: [Token128] = []
            var lastCookie: Token128?
            var classic = false
            for step in 0..<200 {
                let deadline = try #require(session.nextDeadline, "seed \(seed) step \(step)")
                #expect(deadline >= now)
                let before = session.state
                #expect(session.handleTimeout(now: deadline - nanosecond).isEmpty, "seed \(seed) step \(step)")
                #expect(session.state == before)
                #expect(session.nextDeadline == deadline)
                // Either the deadline comes, or the server says something first.
                let pause = Duration.milliseconds(Int64(random.next() % UInt64((deadline - now).nanosecondsClamped / 1_000_000 + 1)))
                let choice = random.next() % 8
                var outputs: [ClientSession.Output]
                if choice < 4 || classic {
                    now = deadline
                    outputs = session.handleTimeout(now: now)
                    #expect(!outputs.isEmpty, "nothing due at the deadline: seed \(seed) step \(step)")
                } else {
                    now = now + pause
                    switch choice {
                    case 4:
                        let cookie = Token128.random(using: &random)
                        outputs = session.handleServerMessage(.challenge(cookie: cookie), now: now)
                        if !outputs.isEmpty { lastCookie = cookie }
                    case 5:
                        outputs = session.handleServerMessage(registered(cookie: lastCookie ?? strayTag, nonce: nonce1), now: now)
                    case 6:
                        outputs = session.handleServerMessage(.keepAliveAck(publicEndpoint: random.next() % 2 == 0 ? A : B), now: now)
                    default:
                        outputs = session.handleServerMessage(.unknownSession(alice, echo: tags.randomElement(using: &random) ?? strayTag),
                                                              now: now)
                    }
                }
                for case .send(let bytes, _) in outputs where bytes.count >= 16 {
                    tags.append(Token128(bytes: bytes.suffix(16)))
                }
                if random.next() % 50 == 0, session.state != .classic, !session.isRegistered {
                    _ = session.handleClassicRegistration(now: now)
                    classic = session.state == .classic
                }
            }
        }
    }
}

// MARK: - Failover

private let S2 = ep("198.51.100.2:10080"), S3 = ep("198.51.100.3:10090")

/// The offer as sent to `server`.
private func offer(to server: Endpoint) -> ClientSession.Output { .send(offerBytes, to: server) }

/// Where each datagram in `outputs` goes.
private func destinations(_ outputs: [ClientSession.Output]) -> [Endpoint] {
    outputs.compactMap { if case .send(_, let destination) = $0 { destination } else { nil } }
}

/// A session of several servers registered with the first (`S`) at `now`.
private func registeredWithFallbacks(_ fallbacks: [Endpoint] = [S2, S3], at now: Instant = at(0)) -> ClientSession {
    var session = makeSession(fallbacks: fallbacks)
    #expect(session.start(now: now) == [offer])
    #expect(session.handleServerMessage(.challenge(cookie: cookie1), now: now).count == 1)
    #expect(session.handleServerMessage(registered(cookie: cookie1, nonce: nonce1), now: now)
        == [.registered(publicEndpoint: A, alternatePort: 3479)])
    return session
}

@Suite("ClientSession failover")
struct ClientSessionFailoverTests {
    @Test func theServersAreTheFirstThenTheFallbacksEachOnce() {
        let session = makeSession(fallbacks: [S2, S, S3, S2])
        #expect(session.servers == [S, S2, S3])
        #expect(session.server == S && session.serverIndex == 0)
        #expect(session.hasFallbacks)
        #expect(!makeSession().hasFallbacks)
        #expect(!makeSession(fallbacks: [S]).hasFallbacks, "a repeat of the first is one server")
    }

    /// The server answers a keep-alive at 10.1 s and dies. The keep-alive at 20 and its
    /// retries every 2 s go unanswered; 24 s after its last word (an interval and 14 s) the
    /// session moves to the next server and offers there at once: registered 24 s after the
    /// death, within the server's 30 s keep-alive timeout.
    @Test func silenceMovesToTheNextServerWithinTheKeepAliveTimeout() throws {
        var session = registeredWithFallbacks()
        _ = session.handleTimeout(now: at(10))
        #expect(session.handleServerMessage(.keepAliveAck(publicEndpoint: A), now: at(ms: 10_100)).isEmpty)
        let death = at(ms: 10_100)
        var keepAlives: [Instant] = []
        while let deadline = session.nextDeadline, deadline < at(ms: 34_100) {
            let outputs = session.handleTimeout(now: deadline)
            #expect(destinations(outputs) == [S])
            keepAlives.append(deadline)
        }
        #expect(keepAlives == [20, 22, 24, 26, 28, 30, 32, 34].map { at($0) }, "the keep-alives at 20 and 30 and their retries")
        #expect(session.nextDeadline == at(ms: 34_100))
        #expect(session.handleTimeout(now: at(ms: 34_100))
            == [.sessionLost(.serverSilent), .serverChanged(from: S, to: S2), offer(to: S2)])
        #expect(session.server == S2 && session.serverIndex == 1)
        #expect(session.isRegistering && session.isRegistered)
        // The next server challenges and registers us; the same ID and identity.
        let registration = session.handleServerMessage(.challenge(cookie: cookie2), now: at(ms: 34_150))
        guard case .send(let bytes, let destination)? = registration.first,
              case .register(let who, let echoed, _, _, let keys, _) = try ExtendedDatagram.decode(bytes).message else {
            Issue.record("no registration: \(registration)"); return
        }
        #expect(destination == S2 && who == alice && echoed == cookie2 && keys == clientKey.publicKeys)
        #expect(session.handleServerMessage(registered(cookie: cookie2, nonce: nonce2, alternatePort: 4000), now: at(ms: 34_200))
            == [.registeredAgain(publicEndpoint: A)])
        #expect(at(ms: 34_200) - death < .seconds(30))
        #expect(session.alternatePort == 4000)
        // The new session goes to the new server.
        let keepAlive = session.handleTimeout(now: at(ms: 44_200))
        #expect(destinations(keepAlive) == [S2])
        guard case .send(let sealedBytes, _)? = keepAlive.first else { Issue.record("no keep-alive"); return }
        #expect(SessionCrypto.verifyAuthenticated(sealedBytes, key: key2))
        #expect(session.send(.exit(id: alice)).allSatisfy { destinations([$0]) == [S2] })
    }

    /// Any word from the server keeps the session (as with one server): silence counts from it.
    @Test func anAnswerPutsTheMoveOff() {
        var session = registeredWithFallbacks()
        while let deadline = session.nextDeadline, deadline <= at(19) { _ = session.handleTimeout(now: deadline) }
        _ = session.handleServerMessage(.keepAliveAck(publicEndpoint: A), now: at(19))
        while let deadline = session.nextDeadline, deadline < at(43) {
            #expect(!session.handleTimeout(now: deadline).contains(.sessionLost(.serverSilent)))
        }
        #expect(session.nextDeadline == at(43))
        #expect(session.handleTimeout(now: at(43)).contains(.serverChanged(from: S, to: S2)))
    }

    /// Registration hears nothing for 6 s (offers at 0, 1, 3, 5): the next server; after the
    /// last, the first again.
    @Test func anUnansweredRegistrationMovesOnRoundRobin() {
        var session = makeSession(fallbacks: [S2, S3])
        #expect(session.start(now: at(0)) == [offer])
        #expect(session.nextDeadline == at(1))
        var moves: [(Instant, Endpoint, Endpoint)] = []
        var offersTo: [Endpoint: Int] = [:]
        while let deadline = session.nextDeadline, deadline <= at(24) {
            for output in session.handleTimeout(now: deadline) {
                if case .serverChanged(let from, let to) = output { moves.append((deadline, from, to)) }
                if case .send(offerBytes, let destination) = output { offersTo[destination, default: 0] += 1 }
            }
        }
        #expect(moves.map { $0.0 } == [at(6), at(12), at(18), at(24)])
        #expect(moves.map { $0.1 } == [S, S2, S3, S])
        #expect(moves.map { $0.2 } == [S2, S3, S, S2])
        // Offers at 0, 1, 3, 5 to S; 6, 7, 9, 11 to S2; 12, 13, 15, 17 to S3; 18, ... to S.
        #expect(offersTo[S2] == 5 && offersTo[S3] == 4, "\(offersTo)")
        #expect(session.server == S2)
    }

    /// The first server is down when the client starts: the second registers it (the first
    /// registration: no session was lost).
    @Test func startingWhileTheFirstServerIsDown() {
        var session = makeSession(fallbacks: [S2])
        _ = session.start(now: at(0))
        for second in [1, 3, 5] as [Int64] { #expect(session.handleTimeout(now: at(second)) == [offer]) }
        #expect(session.nextDeadline == at(6))
        #expect(session.handleTimeout(now: at(6)) == [.serverChanged(from: S, to: S2), offer(to: S2)])
        #expect(destinations(session.handleServerMessage(.challenge(cookie: cookie1), now: at(ms: 6_050))) == [S2])
        #expect(session.handleServerMessage(registered(cookie: cookie1, nonce: nonce1), now: at(ms: 6_100))
            == [.registered(publicEndpoint: A, alternatePort: 3479)])
        #expect(session.server == S2)
        #expect(session.state == .registered(.init(key: key1, cookie: cookie1, lastAnswer: at(ms: 6_100))))
    }

    /// A challenge is an answer: the server gets another 6 s to finish the registration.
    @Test func aChallengePutsTheMoveOff() {
        var session = makeSession(fallbacks: [S2])
        _ = session.start(now: at(0))
        while let deadline = session.nextDeadline, deadline <= at(4) { _ = session.handleTimeout(now: deadline) }
        _ = session.handleServerMessage(.challenge(cookie: cookie1), now: at(4))
        var moved: Instant?
        while moved == nil, let deadline = session.nextDeadline, deadline <= at(20) {
            if session.handleTimeout(now: deadline).contains(.serverChanged(from: S, to: S2)) { moved = deadline }
        }
        #expect(moved == at(10))
    }

    /// One server: silence is three intervals and a second, registration goes on with it for ever.
    @Test func oneServerNeverMoves() {
        for fallbacks in [[], [S]] as [[Endpoint]] {
            var session = makeSession(fallbacks: fallbacks)
            _ = session.start(now: at(0))
            _ = session.handleServerMessage(.challenge(cookie: cookie1), now: at(0))
            _ = session.handleServerMessage(registered(cookie: cookie1, nonce: nonce1), now: at(0))
            var outputs: [ClientSession.Output] = []
            while let deadline = session.nextDeadline, deadline <= at(300) {
                let due = session.handleTimeout(now: deadline)
                if due.contains(.sessionLost(.serverSilent)) { #expect(deadline == at(31)) }
                outputs += due
            }
            #expect(!outputs.contains { if case .serverChanged = $0 { true } else { false } })
            #expect(Set(destinations(outputs)) == [S])
            #expect(outputs.filter { $0 == .sessionLost(.serverSilent) }.count == 1)
        }
    }

    /// A refusal is final with any number of servers: no move, nothing more.
    @Test func aRefusalDoesNotMoveOn() {
        var session = makeSession(fallbacks: [S2])
        _ = session.start(now: at(0))
        #expect(session.handleServerMessage(.refused(text: "ID alice is claimed by another key"), now: at(1))
            == [.serverNotice("ID alice is claimed by another key"), .refused("ID alice is claimed by another key")])
        #expect(session.nextDeadline == nil)
        #expect(session.handleTimeout(now: at(100)).isEmpty)
        #expect(session.server == S)
    }

    /// The server restarted (it says it does not know the session): register again with it.
    @Test func unknownSessionRegistersAgainWithTheSameServer() throws {
        var session = registeredWithFallbacks()
        let keepAlive = try sealed(session.handleTimeout(now: at(10)), key: key1)
        #expect(session.handleServerMessage(.unknownSession(alice, echo: keepAlive.tag), now: at(11))
            == [.sessionLost(.unknownSession), offer])
        #expect(session.server == S)
        // ... unless the restarted server then stays silent: the registration moves on.
        for second in [12, 14, 16] as [Int64] { _ = session.handleTimeout(now: at(second)) }
        #expect(session.handleTimeout(now: at(17)) == [.serverChanged(from: S, to: S2), offer(to: S2)])
    }

    /// After a move, the old server's late answers name a cookie the session no longer waits
    /// for: nothing changes.
    @Test func aLateRegistrationAnswerOfTheOldServerIsIgnored() {
        var session = registeredWithFallbacks([S2])
        while let deadline = session.nextDeadline, deadline <= at(25) { _ = session.handleTimeout(now: deadline) }
        #expect(session.server == S2)
        let state = session.state
        #expect(session.handleServerMessage(registered(cookie: cookie1, nonce: nonce1), now: at(26)).isEmpty)
        #expect(session.state == state)
    }

    /// The deadline property of the one-server test, with three servers.
    @Test func nothingIsDueBeforeTheDeadlineWithSeveralServers() throws {
        for seed in 1...20 as ClosedRange<UInt64> {
            var random = SplitMix64(seed: seed)
            var session = makeSession(keepAlive: .seconds(Int64(random.next() % 10 + 1)), fallbacks: [S2, S3])
            var now = at(0)
            _ = session.start(now: now)
            var lastCookie: Token128?
            for step in 0..<200 {
                let deadline = try #require(session.nextDeadline, "seed \(seed) step \(step)")
                #expect(deadline >= now)
                let before = session.state
                #expect(session.handleTimeout(now: deadline - nanosecond).isEmpty, "seed \(seed) step \(step)")
                #expect(session.state == before)
                let choice = random.next() % 6
                if choice < 4 {
                    now = deadline
                    #expect(!session.handleTimeout(now: now).isEmpty, "nothing due at the deadline: seed \(seed) step \(step)")
                } else if choice == 4 {
                    let cookie = Token128.random(using: &random)
                    if !session.handleServerMessage(.challenge(cookie: cookie), now: now).isEmpty { lastCookie = cookie }
                } else {
                    _ = session.handleServerMessage(registered(cookie: lastCookie ?? strayTag, nonce: nonce1), now: now)
                }
                #expect(session.servers.indices.contains(session.serverIndex))
            }
        }
    }
}
