import Crypto
import Testing
import Identity
import MonotonicTime
@testable import Registry
import Relay
import Wire

// Extended-dialect (natchat/2) behaviour of the Registry, next to classic clients.
//
// Fixtures: alice (extended) and bob (classic) share a NAT (203.0.113.7, 10.0.0.0/24);
// carol (extended) is elsewhere (198.51.100.9); dave (extended) shares the public address
// but not the /24; X is a new source address (NAT rebinding, or an attacker).

private func id(_ text: String) -> ClientID { try! ClientID(text) }
private func ip(_ text: String) -> IPv4Address { try! IPv4Address(parsing: text) }
private func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }
private func at(_ seconds: Int64) -> Instant { Instant.zero + .seconds(seconds) }

private let alice = id("alice"), bob = id("bob"), carol = id("carol"), dave = id("dave"), erin = id("erin")
private let A = ep("203.0.113.7:40001"), B = ep("203.0.113.7:40002"), C = ep("198.51.100.9:50000")
private let D = ep("203.0.113.7:40003"), E = ep("198.51.100.9:50001"), X = ep("192.0.2.99:33333")
private let alicePrivate = [ep("10.0.0.5:10081")], bobPrivate = ip("10.0.0.6")
private let carolPrivate = [ep("10.0.0.7:10081")], davePrivate = [ep("10.0.1.5:10081")]

private struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Accepts exactly the cookie it made for a source (a known value derived from it).
private struct FakeValidator: AddressValidator {
    func cookie(for source: Endpoint, now: Instant) -> Token128 {
        Token128(high: 0xC00C_1E00_0000_0000 | UInt64(source.port), low: UInt64(source.address.bits))
    }

    func isValid(_ cookie: Token128, for source: Endpoint, now: Instant) -> Bool {
        cookie == self.cookie(for: source, now: now)
    }
}

private func identity(_ seed: UInt8) -> IdentityKey {
    IdentityKey(signing: try! Curve25519.Signing.PrivateKey(rawRepresentation: Array(repeating: seed, count: 32)),
                agreement: try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: Array(repeating: seed &+ 0x40, count: 32)))
}

private let aliceKey = identity(1), carolKey = identity(3), daveKey = identity(4), malloryKey = identity(9)
private let serverPrivateKey = try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: Array(repeating: 0x77, count: 32))
private let serverPublicKey = Array(serverPrivateKey.publicKey.rawRepresentation)

private func registeredMessage(_ endpoint: Endpoint, alternatePort: UInt16 = 0) -> Registry.Action {
    .sendExtended(.registered(serverKey: serverPublicKey, publicEndpoint: endpoint, keepAliveMillis: 10_000,
                              alternatePort: alternatePort), to: endpoint)
}

/// A registry, a generator, and the session keys the extended clients derived.
private struct Server {
    var registry: Registry
    var random = SplitMix64(state: 1)
    var sessionKeys: [ClientID: KeyBytes] = [:]
    var counters: [ClientID: UInt64] = [:]
    let validator = FakeValidator()

    init(configuration: Registry.Configuration = .init()) {
        registry = Registry(configuration: configuration, validator: FakeValidator(), serverKey: serverPrivateKey, now: at(0))
    }

    /// The whole extended registration: classic offer, challenge, signed registration.
    mutating func register(_ clientID: ClientID, _ key: IdentityKey, from source: Endpoint, privateEndpoints: [Endpoint],
                           natKind: NATKind, at now: Instant) -> [Registry.Action] {
        let offer = ClassicMessage.register(clientID, privateAddress: privateEndpoints.first?.address ?? source.address,
                                            offers: [ExtendedMessage.offer])
        let challenge = registry.receive(offer, from: source, now: now)
        let cookie = validator.cookie(for: source, now: now)
        #expect(challenge == [.sendExtended(.challenge(cookie: cookie), to: source)])
        let bytes = SessionCrypto.signedRegistration(id: clientID, cookie: cookie, privateEndpoints: privateEndpoints,
                                                     natKind: natKind, identity: key)
        let actions = receiveBytes(bytes, from: source, at: now)
        for case .sendExtended(.registered(let serverKey, _, _, _), let destination) in actions where destination == source {
            sessionKeys[clientID] = SessionCrypto.sessionKey(privateKey: key.agreement, peerPublicKey: serverKey,
                                                             cookie: cookie, id: clientID)
            counters[clientID] = 0
        }
        return actions
    }

    mutating func registerClassic(_ clientID: ClientID, _ privateAddress: IPv4Address, from source: Endpoint,
                                  at now: Instant) -> [Registry.Action] {
        registry.receive(.register(clientID, privateAddress: privateAddress), from: source, now: now)
    }

    mutating func receiveBytes(_ bytes: [UInt8], from source: Endpoint, at now: Instant) -> [Registry.Action] {
        guard let message = try? ExtendedMessage.decode(bytes) else {
            Issue.record("undecodable datagram")
            return []
        }
        return registry.receive(message, bytes: bytes, from: source, now: now, random: &random)
    }

    /// Encodes a session message of `clientID` with its next counter (or `counter`) and a tag
    /// under its session key (or `key`).
    mutating func sessionBytes(_ clientID: ClientID, counter: UInt64? = nil, key: KeyBytes? = nil,
                               _ make: (UInt64) -> ExtendedMessage) -> [UInt8] {
        let value = counter ?? (counters[clientID, default: 0] + 1)
        counters[clientID] = max(counters[clientID, default: 0], value)
        return SessionCrypto.authenticated(make(value), key: key ?? sessionKeys[clientID]!)
    }

    mutating func keepAlive(_ clientID: ClientID, natKind: NATKind = .endpointIndependent, counter: UInt64? = nil,
                            from source: Endpoint, at now: Instant) -> [Registry.Action] {
        receiveBytes(sessionBytes(clientID, counter: counter) { .keepAlive(id: clientID, natKind: natKind, counter: $0, tag: .zero) },
                     from: source, at: now)
    }

    mutating func connect(_ clientID: ClientID, to peer: ClientID, from source: Endpoint, at now: Instant) -> [Registry.Action] {
        receiveBytes(sessionBytes(clientID) { .connect(id: clientID, peer: peer, counter: $0, tag: .zero) }, from: source, at: now)
    }

    mutating func relay(_ clientID: ClientID, to peer: ClientID, _ payload: [UInt8], from source: Endpoint,
                        at now: Instant) -> [Registry.Action] {
        receiveBytes(sessionBytes(clientID) { .relay(id: clientID, to: peer, payload: payload, counter: $0, tag: .zero) },
                     from: source, at: now)
    }

    /// alice (extended, A), bob (classic, B), carol (extended, C), in that order.
    static func withThree() -> Server {
        var server = Server()
        _ = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(0))
        _ = server.registerClassic(bob, bobPrivate, from: B, at: at(0))
        _ = server.register(carol, carolKey, from: C, privateEndpoints: carolPrivate, natKind: .endpointDependent, at: at(0))
        return server
    }
}

private func info(_ clientID: ClientID, _ endpoint: Endpoint, _ privates: [Endpoint], _ kind: NATKind, _ keys: IdentityKey?) -> PeerInfo {
    PeerInfo(id: clientID, publicEndpoint: endpoint, privateEndpoints: privates, natKind: kind,
             dialect: keys == nil ? .classic : .extended, keys: keys?.publicKeys)
}

private func extendedEntry(_ clientID: ClientID, _ endpoint: Endpoint, _ privates: [Endpoint], _ kind: NATKind, _ key: IdentityKey,
                           sequence: UInt64, sessionKey: KeyBytes?, lastCounter: UInt64 = 0) -> Registry.Entry {
    Registry.Entry(id: clientID, publicEndpoint: endpoint, privateAddress: privates.first?.address ?? endpoint.address,
                   sequence: sequence, dialect: .extended, sessionKey: sessionKey, keys: key.publicKeys, lastCounter: lastCounter,
                   privateEndpoints: privates, natKind: kind)
}

@Suite("Registry extended registration")
struct ExtendedRegistrationTests {
    @Test func offerGetsAChallengeAndNothingElse() {
        var server = Server()
        for offers in [[ExtendedMessage.offer], ["x-1", ExtendedMessage.offer]] {
            let actions = server.registry.receive(.register(alice, privateAddress: ip("10.0.0.5"), offers: offers), from: A, now: at(0))
            #expect(actions == [.sendExtended(.challenge(cookie: server.validator.cookie(for: A, now: at(0))), to: A)])
        }
        #expect(server.registry.count == 0)
        // Another offer token is just a classic registration.
        let classic = server.registry.receive(.register(alice, privateAddress: ip("10.0.0.5"), offers: ["natchat/3"]), from: A, now: at(0))
        #expect(classic.contains(.send(.peer(alice, A), to: A)))
        #expect(server.registry.entry(for: alice)?.dialect == .classic)
    }

    @Test func firstRegistration() throws {
        var server = Server()
        let actions = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(0))
        let sessionKey = try #require(server.sessionKeys[alice])
        let entry = extendedEntry(alice, A, alicePrivate, .endpointIndependent, aliceKey, sequence: 0, sessionKey: sessionKey)
        // An extended client gets no line about itself: the registered message says it all.
        #expect(actions == [registeredMessage(A), .report(.registered(entry))])
        // The session key the server holds is the one the client derived.
        #expect(server.registry.entry(for: alice) == entry)
        #expect(server.registry.hasExtendedClient(at: A))
        #expect(!server.registry.hasExtendedClient(at: X))
    }

    @Test func alternatePortIsAnnounced() {
        var server = Server(configuration: .init(keepAliveInterval: .seconds(15), alternatePort: 10_082))
        let actions = server.register(alice, aliceKey, from: A, privateEndpoints: [], natKind: .unknown, at: at(0))
        #expect(actions.first == .sendExtended(.registered(serverKey: serverPublicKey, publicEndpoint: A, keepAliveMillis: 15_000,
                                                           alternatePort: 10_082), to: A))
        // Without private endpoints the source address stands in for the private address.
        #expect(server.registry.entry(for: alice)?.privateAddress == A.address)
    }

    @Test func cookieMustMatchTheSource() {
        var server = Server()
        let cookieForA = server.validator.cookie(for: A, now: at(0))
        for (cookie, source) in [(cookieForA, X), (Token128.zero, A), (Token128(high: cookieForA.high, low: cookieForA.low ^ 1), A)] {
            let bytes = SessionCrypto.signedRegistration(id: alice, cookie: cookie, privateEndpoints: alicePrivate,
                                                         natKind: .unknown, identity: aliceKey)
            #expect(server.receiveBytes(bytes, from: source, at: at(0)) == [.report(.ignoredExtended(from: source, .badCookie))])
        }
        #expect(server.registry.count == 0)
    }

    @Test func signatureMustVerify() throws {
        var server = Server()
        let cookie = server.validator.cookie(for: A, now: at(0))
        let good = SessionCrypto.signedRegistration(id: alice, cookie: cookie, privateEndpoints: alicePrivate,
                                                    natKind: .unknown, identity: aliceKey)
        // A flipped bit in the signature.
        var badSignature = good
        badSignature[badSignature.count - 1] ^= 0x01
        #expect(server.receiveBytes(badSignature, from: A, at: at(0)) == [.report(.ignoredExtended(from: A, .badSignature))])
        // Someone else's keys with alice's signature.
        guard case .register(_, _, let endpoints, let kind, _, let signature, _) = try ExtendedMessage.decode(good) else {
            Issue.record("not a registration"); return
        }
        let swapped = ExtendedMessage.register(id: alice, cookie: cookie, privateEndpoints: endpoints, natKind: kind,
                                               keys: malloryKey.publicKeys, signature: signature).encode()
        #expect(server.receiveBytes(swapped, from: A, at: at(0)) == [.report(.ignoredExtended(from: A, .badSignature))])
        // A signed field altered after signing (the private endpoint).
        var altered = good
        let index = try #require(altered.firstIndex(of: 10)) // first octet of 10.0.0.5
        altered[index] = 192
        #expect(server.receiveBytes(altered, from: A, at: at(0)) == [.report(.ignoredExtended(from: A, .badSignature))])
        #expect(server.registry.count == 0)
        #expect(server.receiveBytes(good, from: A, at: at(0)).contains(.sendExtended(
            .registered(serverKey: serverPublicKey, publicEndpoint: A, keepAliveMillis: 10_000, alternatePort: 0), to: A)))
    }

    @Test func refreshFromTheSameAddressWithTheSameKey() throws {
        var server = Server.withThree()
        let actions = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(5))
        let entry = extendedEntry(alice, A, alicePrivate, .endpointIndependent, aliceKey, sequence: 0,
                                  sessionKey: server.sessionKeys[alice])
        #expect(actions == [
            .report(.refreshed(entry)),
            registeredMessage(A),
            .sendExtended(.peer(info(bob, B, [ep("10.0.0.6:10081")], .unknown, nil)), to: A),
            .sendExtended(.peer(info(carol, C, [], .endpointDependent, carolKey)), to: A),
        ])
        // A changed NAT kind is announced to the extended peers only.
        let changed = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointDependent, at: at(6))
        #expect(changed.last == .sendExtended(.peer(info(alice, A, [], .endpointDependent, aliceKey)), to: C))
        #expect(!changed.contains { if case .send(_, B) = $0 { true } else { false } })
    }
}

@Suite("Registry extended listing in both dialects")
struct ExtendedListingTests {
    @Test func everyoneHearsOfEveryoneInTheirOwnDialect() throws {
        var server = Server()
        _ = server.registerClassic(bob, bobPrivate, from: B, at: at(0))

        // alice (extended) joins: bob is listed as a classic PeerInfo with his private
        // address as a hint (same public address); bob hears of alice as classic lines.
        let aliceJoins = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(1))
        let aliceEntry = try #require(server.registry.entry(for: alice))
        #expect(aliceJoins == [
            registeredMessage(A),
            .sendExtended(.peer(info(bob, B, [ep("10.0.0.6:10081")], .unknown, nil)), to: A),
            .report(.registered(aliceEntry)),
            .send(.peer(alice, A), to: B),
            .send(.peerPrivate(alice, ip("10.0.0.5")), to: B),
        ])

        // carol (extended, another public address): no private hints either way.
        let carolJoins = server.register(carol, carolKey, from: C, privateEndpoints: carolPrivate, natKind: .endpointDependent, at: at(2))
        let carolEntry = try #require(server.registry.entry(for: carol))
        #expect(carolJoins == [
            registeredMessage(C),
            .sendExtended(.peer(info(bob, B, [], .unknown, nil)), to: C),
            .sendExtended(.peer(info(alice, A, [], .endpointIndependent, aliceKey)), to: C),
            .report(.registered(carolEntry)),
            .send(.peer(carol, C), to: B),
            .sendExtended(.peer(info(carol, C, [], .endpointDependent, carolKey)), to: A),
        ])

        // dave (extended, alice's public address, another /24): extended peers on that
        // address get his private endpoints (same public address is the only hint rule),
        // the classic bob does not get a private line (other /24).
        let daveJoins = server.register(dave, daveKey, from: D, privateEndpoints: davePrivate, natKind: .unknown, at: at(3))
        let daveEntry = try #require(server.registry.entry(for: dave))
        #expect(daveJoins == [
            registeredMessage(D),
            .sendExtended(.peer(info(bob, B, [ep("10.0.0.6:10081")], .unknown, nil)), to: D),
            .sendExtended(.peer(info(alice, A, alicePrivate, .endpointIndependent, aliceKey)), to: D),
            .sendExtended(.peer(info(carol, C, [], .endpointDependent, carolKey)), to: D),
            .report(.registered(daveEntry)),
            .send(.peer(dave, D), to: B),
            .sendExtended(.peer(info(dave, D, davePrivate, .unknown, daveKey)), to: A),
            .sendExtended(.peer(info(dave, D, [], .unknown, daveKey)), to: C),
        ])

        // erin (classic, carol's public address and /24): gets everyone as `ID IP:PORT`
        // lines, with carol's private address; carol gets erin as a classic PeerInfo.
        let erinJoins = server.registerClassic(erin, ip("10.0.0.8"), from: E, at: at(4))
        let erinEntry = try #require(server.registry.entry(for: erin))
        #expect(erinJoins == [
            .send(.peer(bob, B), to: E),
            .send(.peer(alice, A), to: E),
            .send(.peer(carol, C), to: E),
            .send(.peerPrivate(carol, ip("10.0.0.7")), to: E),
            .send(.peer(dave, D), to: E),
            .report(.registered(erinEntry)),
            .send(.peer(erin, E), to: B),
            .sendExtended(.peer(info(erin, E, [], .unknown, nil)), to: A),
            .sendExtended(.peer(info(erin, E, [ep("10.0.0.8:10081")], .unknown, nil)), to: C),
            .sendExtended(.peer(info(erin, E, [], .unknown, nil)), to: D),
            .send(.peer(erin, E), to: E),
            .send(.peerPrivate(erin, ip("10.0.0.8")), to: E),
        ])
    }
}

@Suite("Registry extended sessions")
struct ExtendedSessionTests {
    @Test func keepAliveWithAValidTagIsAcknowledged() {
        var server = Server.withThree()
        #expect(server.keepAlive(alice, from: A, at: at(1)) == [.sendExtended(.keepAliveAck(publicEndpoint: A), to: A)])
        #expect(server.registry.entry(for: alice)?.lastCounter == 1)
        #expect(server.keepAlive(alice, counter: 7, from: A, at: at(2)) == [.sendExtended(.keepAliveAck(publicEndpoint: A), to: A)])
        #expect(server.registry.entry(for: alice)?.lastCounter == 7)
    }

    @Test func replayedOrOldCountersAreRefused() {
        var server = Server.withThree()
        let bytes = server.sessionBytes(alice, counter: 5) { .keepAlive(id: alice, natKind: .endpointIndependent, counter: $0, tag: .zero) }
        #expect(server.receiveBytes(bytes, from: A, at: at(1)) == [.sendExtended(.keepAliveAck(publicEndpoint: A), to: A)])
        #expect(server.receiveBytes(bytes, from: A, at: at(2)) == [.sendExtended(.unknownSession(alice), to: A)])
        for counter: UInt64 in [0, 3, 5] {
            #expect(server.keepAlive(alice, counter: counter, from: A, at: at(3)) == [.sendExtended(.unknownSession(alice), to: A)])
        }
        #expect(server.registry.entry(for: alice)?.lastCounter == 5)
        #expect(server.keepAlive(alice, counter: 6, from: A, at: at(4)) == [.sendExtended(.keepAliveAck(publicEndpoint: A), to: A)])
        // A replay from another address does not move the registration either.
        #expect(server.receiveBytes(bytes, from: X, at: at(5)) == [.sendExtended(.unknownSession(alice), to: X)])
        #expect(server.registry.entry(for: alice)?.publicEndpoint == A)
    }

    @Test func badTagIsRefused() {
        var server = Server.withThree()
        var bytes = server.sessionBytes(alice) { .keepAlive(id: alice, natKind: .endpointIndependent, counter: $0, tag: .zero) }
        bytes[bytes.count - 1] ^= 0x01
        #expect(server.receiveBytes(bytes, from: A, at: at(1)) == [.sendExtended(.unknownSession(alice), to: A)])
        // Tagged under another client's session key.
        let wrongKey = server.sessionBytes(alice, counter: 2, key: server.sessionKeys[carol]) {
            .keepAlive(id: alice, natKind: .endpointIndependent, counter: $0, tag: .zero)
        }
        #expect(server.receiveBytes(wrongKey, from: A, at: at(1)) == [.sendExtended(.unknownSession(alice), to: A)])
        // A classic client has no session.
        let classic = server.sessionBytes(bob, counter: 1, key: server.sessionKeys[alice]) {
            .keepAlive(id: bob, natKind: .unknown, counter: $0, tag: .zero)
        }
        #expect(server.receiveBytes(classic, from: B, at: at(1)) == [.sendExtended(.unknownSession(bob), to: B)])
        // Unknown ID.
        let unknown = server.sessionBytes(id("zed"), counter: 1, key: server.sessionKeys[alice]) {
            .keepAlive(id: id("zed"), natKind: .unknown, counter: $0, tag: .zero)
        }
        #expect(server.receiveBytes(unknown, from: X, at: at(1)) == [.sendExtended(.unknownSession(id("zed")), to: X)])
        #expect(server.registry.entry(for: alice)?.lastCounter == 0)
    }

    @Test func onlyValidKeepAlivesKeepTheClientAlive() {
        var server = Server.withThree()
        _ = server.keepAlive(alice, from: A, at: at(20))
        var bad = server.sessionBytes(carol) { .keepAlive(id: carol, natKind: .endpointDependent, counter: $0, tag: .zero) }
        bad[bad.count - 1] ^= 0x01
        _ = server.receiveBytes(bad, from: C, at: at(20))
        // bob (classic) and carol (bad tag only) were last heard at 0, alice at 20.
        let swept = server.registry.sweep(now: at(31))
        #expect(swept.compactMap { if case .report(.evicted(let entry)) = $0 { entry.id } else { nil } } == [bob, carol])
        #expect(server.registry.clients.map(\.id) == [alice])
        #expect(swept.contains(.sendExtended(.peerLeft(carol, reason: .offline, publicEndpoint: C), to: A)))
        #expect(swept.contains(.sendExtended(.peerLeft(bob, reason: .offline, publicEndpoint: B), to: A)))
    }

    @Test func keepAliveFromANewSourceMovesTheEntryAndTellsPeers() {
        var server = Server.withThree()
        let actions = server.keepAlive(alice, from: X, at: at(1))
        let moved = extendedEntry(alice, X, alicePrivate, .endpointIndependent, aliceKey, sequence: 0,
                                  sessionKey: server.sessionKeys[alice], lastCounter: 1)
        #expect(actions == [
            .report(.moved(moved, from: A)),
            .sendExtended(.keepAliveAck(publicEndpoint: X), to: X),
            .send(.peer(alice, X), to: B),
            .sendExtended(.peer(info(alice, X, [], .endpointIndependent, aliceKey)), to: C),
        ])
        #expect(server.registry.entry(for: alice) == moved)
        #expect(server.registry.hasExtendedClient(at: X))
        #expect(!server.registry.hasExtendedClient(at: A))
        // From there on, the old address is not alice's any more.
        #expect(server.registry.receive(.keepAlive(alice), from: A, now: at(2))
                == [.report(.ignored(.keepAlive(alice), from: A, .heldByExtendedClient))])
    }

    @Test func natKindChangeIsAnnouncedWithoutAMove() {
        var server = Server.withThree()
        let actions = server.keepAlive(alice, natKind: .endpointDependent, from: A, at: at(1))
        // Classic clients see only the public endpoint, which did not change: not told.
        #expect(actions == [
            .sendExtended(.keepAliveAck(publicEndpoint: A), to: A),
            .sendExtended(.peer(info(alice, A, [], .endpointDependent, aliceKey)), to: C),
        ])
        #expect(server.registry.entry(for: alice)?.natKind == .endpointDependent)
        // The same kind again: nobody is told.
        #expect(server.keepAlive(alice, natKind: .endpointDependent, from: A, at: at(2))
                == [.sendExtended(.keepAliveAck(publicEndpoint: A), to: A)])
    }

    /// A registration datagram can be repeated (a retransmission, or a copy an observer
    /// replays with alice's source address within the cookie's lifetime). With the same
    /// cookie the session key comes out the same, so the counter must not start over:
    /// otherwise every earlier keep-alive, connect and relay of the session is accepted
    /// again, and a replayed keep-alive from another address moves alice there.
    @Test func repeatedRegistrationDoesNotReopenOldCounters() {
        var server = Server()
        let cookie = server.validator.cookie(for: A, now: at(0))
        let registration = SessionCrypto.signedRegistration(id: alice, cookie: cookie, privateEndpoints: alicePrivate,
                                                            natKind: .endpointIndependent, identity: aliceKey)
        _ = server.registry.receive(.register(alice, privateAddress: ip("10.0.0.5"), offers: [ExtendedMessage.offer]), from: A, now: at(0))
        _ = server.receiveBytes(registration, from: A, at: at(0))
        let key = SessionCrypto.sessionKey(privateKey: aliceKey.agreement, peerPublicKey: serverPublicKey, cookie: cookie, id: alice)!
        server.sessionKeys[alice] = key
        let oldKeepAlive = server.sessionBytes(alice, counter: 1) { .keepAlive(id: alice, natKind: .endpointIndependent, counter: $0, tag: .zero) }
        #expect(server.receiveBytes(oldKeepAlive, from: A, at: at(1)) == [.sendExtended(.keepAliveAck(publicEndpoint: A), to: A)])
        _ = server.keepAlive(alice, counter: 2, from: A, at: at(2))
        // The same registration datagram again, 10 s later.
        let again = server.receiveBytes(registration, from: A, at: at(10))
        #expect(again.first.map { if case .report(.refreshed) = $0 { true } else { false } } == true)
        #expect(server.registry.entry(for: alice)?.sessionKey == key)
        // The first keep-alive, replayed from elsewhere.
        let replay = server.receiveBytes(oldKeepAlive, from: X, at: at(11))
        #expect(replay == [.sendExtended(.unknownSession(alice), to: X)])
        #expect(server.registry.entry(for: alice)?.publicEndpoint == A)
    }

    @Test func sameKeyFromAnotherAddressMovesTheRegistration() throws {
        var server = Server.withThree()
        let oldKey = try #require(server.sessionKeys[alice])
        let actions = server.register(alice, aliceKey, from: X, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(5))
        let newKey = try #require(server.sessionKeys[alice])
        #expect(newKey != oldKey) // the cookie differs per address
        let moved = extendedEntry(alice, X, alicePrivate, .endpointIndependent, aliceKey, sequence: 0, sessionKey: newKey)
        #expect(actions == [
            .report(.moved(moved, from: A)),
            registeredMessage(X),
            .sendExtended(.peer(info(bob, B, [], .unknown, nil)), to: X),
            .sendExtended(.peer(info(carol, C, [], .endpointDependent, carolKey)), to: X),
            .send(.peer(alice, X), to: B),
            .sendExtended(.peer(info(alice, X, [], .endpointIndependent, aliceKey)), to: C),
        ])
        #expect(server.registry.entry(for: alice) == moved)
        #expect(server.registry.count == 3)
        // The old session is gone.
        let stale = server.sessionBytes(alice, counter: 99, key: oldKey) { .keepAlive(id: alice, natKind: .unknown, counter: $0, tag: .zero) }
        #expect(server.receiveBytes(stale, from: A, at: at(6)) == [.sendExtended(.unknownSession(alice), to: A)])
        #expect(server.keepAlive(alice, counter: 1, from: X, at: at(6)) == [.sendExtended(.keepAliveAck(publicEndpoint: X), to: X)])
    }

    @Test func anotherKeyForAHeldIDIsRefused() {
        var server = Server.withThree()
        let refusal = "registration refused: ID alice - the ID is in use from another address"
        for source in [X, A] {
            let actions = server.register(alice, malloryKey, from: source, privateEndpoints: [], natKind: .unknown, at: at(5))
            #expect(actions == [.report(.refused(alice, from: source, .idInUse)), .sendExtended(.refused(text: refusal), to: source)])
        }
        #expect(server.registry.entry(for: alice)?.keys == aliceKey.publicKeys)
        #expect(server.registry.entry(for: alice)?.publicEndpoint == A)
        // Once alice has been silent past the timeout, the ID is free for another key.
        let takeover = server.register(alice, malloryKey, from: X, privateEndpoints: [], natKind: .unknown, at: at(31))
        #expect(takeover.first.map { if case .report(.evicted(let entry)) = $0 { entry.id == alice } else { false } } == true)
        #expect(server.registry.entry(for: alice)?.keys == malloryKey.publicKeys)
    }

    @Test func classicMessagesForAnExtendedIDAreIgnored() {
        var server = Server.withThree()
        #expect(server.registry.receive(.unregister(alice), from: A, now: at(1))
                == [.report(.ignored(.unregister(alice), from: A, .heldByExtendedClient))])
        #expect(server.registry.receive(.keepAlive(alice), from: A, now: at(20))
                == [.report(.ignored(.keepAlive(alice), from: A, .heldByExtendedClient))])
        #expect(server.registry.entry(for: alice) != nil)
        // A classic registration of the ID is refused, in the classic dialect.
        #expect(server.registry.receive(.register(alice, privateAddress: ip("10.0.0.5")), from: A, now: at(2)) == [
            .report(.refused(alice, from: A, .idInUse)),
            .send(.serverNotice("registration refused: ID alice - the ID is in use from another address"), to: A),
        ])
        // The classic keep-alive did not keep alice alive.
        let swept = server.registry.sweep(now: at(31))
        #expect(swept.contains { if case .report(.evicted(let entry)) = $0 { entry.id == alice } else { false } })
    }

    @Test func extendedExitAndEviction() throws {
        var server = Server.withThree()
        var badExit = server.sessionBytes(alice) { .exit(id: alice, counter: $0, tag: .zero) }
        badExit[badExit.count - 2] ^= 0x10
        #expect(server.receiveBytes(badExit, from: A, at: at(1)) == [.report(.ignoredExtended(from: A, .badTag))])
        #expect(server.registry.entry(for: alice) != nil)
        let exit = server.sessionBytes(alice) { .exit(id: alice, counter: $0, tag: .zero) }
        let entry = extendedEntry(alice, A, alicePrivate, .endpointIndependent, aliceKey, sequence: 0,
                                  sessionKey: server.sessionKeys[alice], lastCounter: 2)
        #expect(server.receiveBytes(exit, from: A, at: at(2)) == [
            .report(.unregistered(entry)),
            .send(.unregistered(alice, A), to: B),
            .sendExtended(.peerLeft(alice, reason: .unregistered, publicEndpoint: A), to: C),
        ])
        #expect(server.registry.entry(for: alice) == nil)
        #expect(!server.registry.hasExtendedClient(at: A))
        #expect(server.registry.hasExtendedClient(at: C))
        #expect(!server.registry.hasExtendedClient(at: B)) // classic clients never count
        // Sweep: carol (extended) evicted, bob told in classic.
        _ = server.registry.receive(.keepAlive(bob), from: B, now: at(20))
        let swept = server.registry.sweep(now: at(31))
        #expect(swept.contains(.send(.offline(carol, C), to: B)))
        #expect(!server.registry.hasExtendedClient(at: C))
    }

    @Test func messagesNotForTheServerAreIgnored() {
        var server = Server.withThree()
        let messages: [ExtendedMessage] = [
            .challenge(cookie: .zero), .unknownSession(alice), .keepAliveAck(publicEndpoint: A),
            .ping(from: alice, to: carol, transaction: 1, tag: .zero),
            .chat(from: alice, to: carol, messageID: 1, sealed: Array(repeating: 0, count: 16)),
            .relayed(from: alice, payload: [1]), .peer(info(alice, A, [], .unknown, aliceKey)),
        ]
        for message in messages {
            #expect(server.receiveBytes(message.encode(), from: A, at: at(1)) == [.report(.ignoredExtended(from: A, .notForServer))])
        }
    }
}

@Suite("Registry punching and relay")
struct ExtendedPunchRelayTests {
    @Test func connectSendsBothSidesAPunch() {
        var server = Server.withThree()
        let actions = server.connect(alice, to: carol, from: A, at: at(1))
        #expect(actions == [
            .sendExtended(.punch(peer: info(carol, C, [], .endpointDependent, carolKey), round: 1, delayMillis: 0), to: A),
            .sendExtended(.punch(peer: info(alice, A, [], .endpointIndependent, aliceKey), round: 1, delayMillis: 0), to: C),
            .report(.punchRound(alice, carol, round: 1)),
        ])
        // The other side asking within the window: the same round, itself first.
        #expect(server.connect(carol, to: alice, from: C, at: at(2)) == [
            .sendExtended(.punch(peer: info(alice, A, [], .endpointIndependent, aliceKey), round: 1, delayMillis: 0), to: C),
            .sendExtended(.punch(peer: info(carol, C, [], .endpointDependent, carolKey), round: 1, delayMillis: 0), to: A),
            .report(.punchRound(carol, alice, round: 1)),
        ])
        // Round 2: alice (first in ID order) goes first, carol 800 ms later.
        #expect(server.connect(alice, to: carol, from: A, at: at(4)) == [
            .sendExtended(.punch(peer: info(carol, C, [], .endpointDependent, carolKey), round: 2, delayMillis: 0), to: A),
            .sendExtended(.punch(peer: info(alice, A, [], .endpointIndependent, aliceKey), round: 2, delayMillis: 800), to: C),
            .report(.punchRound(alice, carol, round: 2)),
        ])
    }

    @Test func punchCarriesPrivateEndpointsBehindTheSamePublicAddress() {
        var server = Server.withThree()
        _ = server.register(dave, daveKey, from: D, privateEndpoints: davePrivate, natKind: .unknown, at: at(0))
        #expect(server.connect(dave, to: alice, from: D, at: at(1)) == [
            .sendExtended(.punch(peer: info(alice, A, alicePrivate, .endpointIndependent, aliceKey), round: 1, delayMillis: 0), to: D),
            .sendExtended(.punch(peer: info(dave, D, davePrivate, .unknown, daveKey), round: 1, delayMillis: 0), to: A),
            .report(.punchRound(dave, alice, round: 1)),
        ])
    }

    @Test func connectRefusals() {
        var server = Server.withThree()
        for peer in [bob, alice, id("zed")] { // classic, itself, unknown
            #expect(server.connect(alice, to: peer, from: A, at: at(1)) == [.report(.ignoredExtended(from: A, .peerUnavailable))])
        }
        var forged = server.sessionBytes(alice) { .connect(id: alice, peer: carol, counter: $0, tag: .zero) }
        forged[forged.count - 1] ^= 0x01
        #expect(server.receiveBytes(forged, from: A, at: at(1)) == [.sendExtended(.unknownSession(alice), to: A)])
    }

    @Test func relayOnlyBetweenExtendedClients() {
        var server = Server.withThree()
        let payload: [UInt8] = [0xFE, 0x01, 0x83, 1, 2, 3]
        #expect(server.relay(alice, to: carol, payload, from: A, at: at(1)) == [
            .sendExtended(.relayed(from: alice, payload: payload), to: C),
            .report(.relayed(from: alice, to: carol, bytes: 6)),
        ])
        #expect(server.relay(carol, to: alice, [9], from: C, at: at(1)) == [
            .sendExtended(.relayed(from: carol, payload: [9]), to: A),
            .report(.relayed(from: carol, to: alice, bytes: 1)),
        ])
        #expect(server.relay(alice, to: bob, payload, from: A, at: at(1)) == [.report(.ignoredExtended(from: A, .peerUnavailable))])
        #expect(server.relay(alice, to: id("zed"), payload, from: A, at: at(1)) == [.report(.ignoredExtended(from: A, .peerUnavailable))])
        // Replays and forgeries are not forwarded.
        let bytes = server.sessionBytes(alice) { .relay(id: alice, to: carol, payload: payload, counter: $0, tag: .zero) }
        _ = server.receiveBytes(bytes, from: A, at: at(1))
        #expect(server.receiveBytes(bytes, from: A, at: at(1)) == [.sendExtended(.unknownSession(alice), to: A)])
        // Another client cannot relay in alice's name (it has no session key of hers).
        let impersonation = server.sessionBytes(carol, key: server.sessionKeys[carol]) {
            .relay(id: alice, to: carol, payload: payload, counter: $0, tag: .zero)
        }
        #expect(server.receiveBytes(impersonation, from: C, at: at(1)) == [.sendExtended(.unknownSession(alice), to: C)])
    }

    @Test func relayIsRateLimitedPerClient() {
        var relay = RelayLimiter<ClientID>.Configuration()
        relay.packetsPerSecond = 3
        var server = Server(configuration: .init(relay: relay))
        _ = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .unknown, at: at(0))
        _ = server.register(carol, carolKey, from: C, privateEndpoints: carolPrivate, natKind: .unknown, at: at(0))
        for _ in 0..<3 {
            #expect(server.relay(alice, to: carol, [1], from: A, at: at(1)).first == .sendExtended(.relayed(from: alice, payload: [1]), to: C))
        }
        #expect(server.relay(alice, to: carol, [1], from: A, at: at(1)) == [.report(.ignoredExtended(from: A, .relayRateLimited))])
        // carol's allowance is her own.
        #expect(server.relay(carol, to: alice, [2], from: C, at: at(1)).first == .sendExtended(.relayed(from: carol, payload: [2]), to: A))
        // A second later alice may relay again.
        #expect(server.relay(alice, to: carol, [1], from: A, at: at(2)).first == .sendExtended(.relayed(from: alice, payload: [1]), to: C))
    }
}
