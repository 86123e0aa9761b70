import Addressing
import Admission
import Crypto
import Testing
import Identity
import MonotonicTime
@testable import Registry
import Store
import Wire
import TestSupport

// Extended-dialect (natchat/2) behaviour of the Registry, next to classic clients.
//
// Fixtures: alice (extended) and bob (classic) share a NAT (203.0.113.7, 10.0.0.0/24);
// carol (extended) is elsewhere (198.51.100.9); dave (extended) shares the public address
// but not the /24; X is a new source address (NAT rebinding, or an attacker).

private func id(_ text: String) -> ClientID { try! ClientID(text) }
private func ip(_ text: String) -> IPv4Address { try! IPv4Address(parsing: text) }
private func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }
private func at(_ seconds: Int64) -> Instant { Instant.zero + .seconds(seconds) }
/// The tag trailer of an encoded session message.
private func tag(_ bytes: [UInt8]) -> Token128 { Token128(bytes: bytes.suffix(16)) }

private let alice = id("alice"), bob = id("bob"), carol = id("carol"), dave = id("dave"), erin = id("erin")
private let A = ep("203.0.113.7:40001"), B = ep("203.0.113.7:40002"), C = ep("198.51.100.9:50000")
private let D = ep("203.0.113.7:40003"), E = ep("198.51.100.9:50001"), X = ep("192.0.2.99:33333")
private let alicePrivate = [ep("10.0.0.5:10081")], bobPrivate = ip("10.0.0.6")
private let carolPrivate = [ep("10.0.0.7:10081")], davePrivate = [ep("10.0.1.5:10081")]

/// Accepts exactly the cookies it made for a source, dated like the server's: the high word
/// is the issue time (nanoseconds), the low word names the address; valid for 60 s.
private struct FakeValidator: AddressValidator {
    func cookie(for source: Endpoint, now: Instant) -> Token128 {
        Token128(high: UInt64(now.nanoseconds), low: UInt64(source.address.bits) << 16 | UInt64(source.port))
    }

    func issueTime(of cookie: Token128, for source: Endpoint, now: Instant) -> Instant? {
        guard cookie.low == UInt64(source.address.bits) << 16 | UInt64(source.port), cookie.high <= UInt64(Int64.max) else { return nil }
        let issued = Instant(nanoseconds: Int64(cookie.high))
        guard issued <= now, now - issued <= cookieLifetime else { return nil }
        return issued
    }

    var cookieLifetime: Duration { .seconds(60) }
}

private func identity(_ seed: UInt8) -> IdentityKey {
    IdentityKey(signing: try! Curve25519.Signing.PrivateKey(rawRepresentation: Array(repeating: seed, count: 32)),
                agreement: try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: Array(repeating: seed &+ 0x40, count: 32)))
}

private let aliceKey = identity(1), carolKey = identity(3), daveKey = identity(4), malloryKey = identity(9)
private let serverPrivateKey = try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: Array(repeating: 0x77, count: 32))
private let serverPublicKey = Array(serverPrivateKey.publicKey.rawRepresentation)

/// The `registered` answer to a registration from `endpoint` whose challenge was issued at `issued`.
private func registeredMessage(_ endpoint: Endpoint, nonce: Token128?, issued: Instant = .zero, alternatePort: UInt16 = 0) -> Registry.Output {
    .sendExtended(.registered(serverKey: serverPublicKey, publicEndpoint: endpoint, keepAliveMillis: 10_000,
                              alternatePort: alternatePort, nonce: nonce ?? .zero,
                              cookie: FakeValidator().cookie(for: endpoint, now: issued)), to: endpoint)
}

/// A registry, a generator, and the session keys the extended clients derived (with the
/// cookie they echoed and the nonce the server's registered message carried).
private struct Server {
    var registry: Registry
    var random: SplitMix64
    var sessionKeys: [ClientID: KeyBytes] = [:]
    var nonces: [ClientID: Token128] = [:]
    var cookies: [ClientID: Token128] = [:]
    var counters: [ClientID: UInt64] = [:]
    let validator: any AddressValidator

    /// Roster datagrams go out as soon as they are due (coalescing is RosterFeed's own test).
    static let instantRoster = Registry.Configuration(rosterFeed: .init(flushInterval: .zero))

    init(configuration: Registry.Configuration = instantRoster, validator: any AddressValidator = FakeValidator(), seed: UInt64 = 1) {
        self.validator = validator
        random = SplitMix64(state: seed)
        registry = Registry(configuration: configuration, validator: validator, serverKey: serverPrivateKey, now: at(0))
    }

    /// The nonce the registry draws next (the first thing an extended registration takes
    /// from the generator).
    func nextNonce() -> Token128 {
        var copy = random
        return Token128.random(using: &copy)
    }

    /// The whole extended registration: classic offer, challenge, signed registration.
    mutating func register(_ clientID: ClientID, _ key: IdentityKey, from source: Endpoint, privateEndpoints: [Endpoint],
                           natKind: NATKind, at now: Instant) -> [Registry.Output] {
        let offer = ClassicMessage.register(clientID, privateAddress: privateEndpoints.first?.address ?? source.address,
                                            offers: [ExtendedMessage.offer])
        let challenge = registry.receive(offer, from: source, now: now)
        let cookie = validator.cookie(for: source, now: now)
        #expect(challenge == [.sendExtended(.challenge(cookie: cookie), to: source)])
        let bytes = SessionCrypto.signedRegistration(id: clientID, cookie: cookie, privateEndpoints: privateEndpoints,
                                                     natKind: natKind, identity: key)
        return receiveRegistration(bytes, clientID, key, cookie: cookie, from: source, at: now)
    }

    /// Feeds a signed registration datagram; when the server answers `registered`, derives
    /// the session key as the client does (cookie and the server's nonce) and starts counting.
    mutating func receiveRegistration(_ bytes: [UInt8], _ clientID: ClientID, _ key: IdentityKey, cookie: Token128,
                                      from source: Endpoint, at now: Instant) -> [Registry.Output] {
        let actions = receiveBytes(bytes, from: source, at: now)
        for case .sendExtended(.registered(let serverKey, _, _, _, let nonce, _), let destination) in actions where destination == source {
            let sessionKey = SessionCrypto.sessionKey(privateKey: key.agreement, peerPublicKey: serverKey,
                                                      cookie: cookie, nonce: nonce, id: clientID)
            // A new session starts counting again; the same session goes on.
            if sessionKey != sessionKeys[clientID] { counters[clientID] = 0 }
            sessionKeys[clientID] = sessionKey
            nonces[clientID] = nonce
            cookies[clientID] = cookie
        }
        return actions
    }

    mutating func registerClassic(_ clientID: ClientID, _ privateAddress: IPv4Address, from source: Endpoint,
                                  at now: Instant) -> [Registry.Output] {
        registry.receive(.register(clientID, privateAddress: privateAddress), from: source, now: now)
    }

    mutating func receiveBytes(_ bytes: [UInt8], from source: Endpoint, at now: Instant) -> [Registry.Output] {
        guard let datagram = try? ExtendedDatagram.decode(bytes) else {
            Issue.record("undecodable datagram")
            return []
        }
        return registry.receive(datagram, bytes: bytes, from: source, now: now, random: &random)
    }

    /// Encodes a session message of `clientID` with its next counter (or `counter`) and a tag
    /// under its session key (or `key`).
    mutating func sessionBytes(_ clientID: ClientID, counter: UInt64? = nil, key: KeyBytes? = nil,
                               _ message: ExtendedMessage) -> [UInt8] {
        let value = counter ?? (counters[clientID, default: 0] + 1)
        counters[clientID] = max(counters[clientID, default: 0], value)
        return SessionCrypto.sealed(message, counter: value, key: key ?? sessionKeys[clientID]!)
    }

    mutating func keepAlive(_ clientID: ClientID, natKind: NATKind = .endpointIndependent, counter: UInt64? = nil,
                            from source: Endpoint, at now: Instant) -> [Registry.Output] {
        receiveBytes(sessionBytes(clientID, counter: counter, .keepAlive(id: clientID, natKind: natKind)),
                     from: source, at: now)
    }

    mutating func connect(_ clientID: ClientID, to peer: ClientID, from source: Endpoint, at now: Instant) -> [Registry.Output] {
        receiveBytes(sessionBytes(clientID, .connect(id: clientID, peer: peer)), from: source, at: now)
    }

    mutating func relay(_ clientID: ClientID, to peer: ClientID, _ payload: [UInt8], from source: Endpoint,
                        at now: Instant) -> [Registry.Output] {
        receiveBytes(sessionBytes(clientID, .relay(id: clientID, to: peer, payload: payload)),
                     from: source, at: now)
    }

    /// The roster records the feeds sent at `now`, per recipient endpoint. The datagrams to
    /// the clients in `acking` are acknowledged as those clients would (so they are not sent
    /// again later; an acknowledgement is fresh proof, so it keeps its sender alive).
    mutating func rosterSent(at now: Instant, acking: Set<ClientID> = []) -> [Endpoint: [RosterRecord]] {
        var sent: [Endpoint: [RosterRecord]] = [:]
        for _ in 0..<20 {
            guard let due = registry.rosterDeadline, due <= now else { break }
            for case .sendExtended(.roster(let delta), let destination) in registry.flushRoster(now: now) {
                sent[destination, default: []] += delta.records
                guard let client = registry.clients.first(where: { $0.publicEndpoint == destination })?.id,
                      acking.contains(client), sessionKeys[client] != nil else { continue }
                _ = receiveBytes(sessionBytes(client, .rosterAck(id: client, largest: delta.sequence, received: 0)), from: destination, at: now)
            }
        }
        return sent
    }

    /// What the roster told `endpoint`'s client at `now`: present clients as they were
    /// described, departures as (ID, reason, endpoint).
    mutating func announced(at now: Instant, to endpoint: Endpoint, acking: Set<ClientID> = []) -> [Announcement] {
        (rosterSent(at: now, acking: acking)[endpoint] ?? []).map { record in
            switch record {
            case .present(let entry): .present(entry.info)
            case .absent(let id, _, let reason, let endpoint): .absent(id, reason, endpoint)
            }
        }
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

/// A roster record as a test reads it.
private enum Announcement: Hashable {
    case present(PeerInfo)
    case absent(ClientID, LeaveReason, Endpoint)
}

private func info(_ clientID: ClientID, _ endpoint: Endpoint, _ privates: [Endpoint], _ kind: NATKind, _ keys: IdentityKey?) -> PeerInfo {
    PeerInfo(id: clientID, publicEndpoint: endpoint, privateEndpoints: privates, natKind: kind,
             dialect: keys == nil ? .classic : .extended, keys: keys?.publicKeys)
}

private func extendedEntry(_ clientID: ClientID, _ endpoint: Endpoint, _ privates: [Endpoint], _ kind: NATKind, _ key: IdentityKey,
                           sequence: UInt64, sessionKey: KeyBytes?, lastCounter: UInt64 = 0, cookieIssuedAt: Instant = .zero,
                           nonce: Token128?) -> Registry.Entry {
    Registry.Entry(id: clientID, publicEndpoint: endpoint, privateAddress: privates.first?.address ?? endpoint.address,
                   sequence: sequence, dialect: .extended, sessionKey: sessionKey, keys: key.publicKeys, lastCounter: lastCounter,
                   cookieIssuedAt: cookieIssuedAt,
                   privateEndpoints: privates, natKind: kind)
}

@Suite("Registry extended registration")
struct ExtendedRegistrationTests {
    @Test func offerGetsAChallengeAndNothingElse() {
        var server = Server()
        for offers in [[ExtendedMessage.offer], ["x-1", ExtendedMessage.offer]] {
            let actions = server.registry.receive(.register(alice, privateAddress: ip("10.0.0.5"), offers: offers), from: A, now: at(0))
            #expect(versionless(actions) == [.sendExtended(.challenge(cookie: server.validator.cookie(for: A, now: at(0))), to: A)])
        }
        #expect(server.registry.count == 0)
        // Another offer token is just a classic registration.
        let classic = server.registry.receive(.register(alice, privateAddress: ip("10.0.0.5"), offers: ["natchat/3"]), from: A, now: at(0))
        #expect(classic.contains(.send(.peer(alice, A), to: A)))
        #expect(server.registry.entry(for: alice)?.dialect == .classic)
    }

    @Test func firstRegistration() throws {
        var server = Server()
        let nonce = server.nextNonce()
        #expect(nonce != .zero)
        let actions = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(0))
        let sessionKey = try #require(server.sessionKeys[alice])
        let entry = extendedEntry(alice, A, alicePrivate, .endpointIndependent, aliceKey, sequence: 0, sessionKey: sessionKey,
                                  cookieIssuedAt: at(0), nonce: nonce)
        // An extended client gets no line about itself: the registered message says it all,
        // the server's fresh nonce included.
        #expect(versionless(actions) == [registeredMessage(A, nonce: nonce), .report(.registered(entry))])
        // Alone: the feed has nobody to list, and says the copy is whole.
        let first = server.registry.flushRoster(now: at(0))
        #expect(first.count == 1)
        if case .sendExtended(.roster(let delta), A)? = first.first {
            #expect(delta.records.isEmpty && delta.synced && delta.sequence == 1 && delta.registered == 1 && delta.scope == .complete)
        } else {
            Issue.record("expected a synced roster delta for alice: \(first)")
        }
        #expect(server.nonces[alice] == nonce)
        // The session key the server holds is the one the client derived (with that nonce).
        #expect(versionless(server.registry.entry(for: alice)) == entry)
        let withoutNonce = SessionCrypto.sessionKey(privateKey: aliceKey.agreement, peerPublicKey: serverPublicKey,
                                                    cookie: server.validator.cookie(for: A, now: at(0)), id: alice)
        #expect(withoutNonce != nil)
        #expect(withoutNonce != sessionKey)
        #expect(server.registry.hasExtendedClient(at: A))
        #expect(!server.registry.hasExtendedClient(at: X))
    }

    @Test func alternatePortIsAnnounced() {
        var server = Server(configuration: .init(keepAliveInterval: .seconds(15), alternatePort: 10_082))
        let nonce = server.nextNonce()
        let actions = server.register(alice, aliceKey, from: A, privateEndpoints: [], natKind: .unknown, at: at(0))
        #expect(actions.first == .sendExtended(.registered(serverKey: serverPublicKey, publicEndpoint: A, keepAliveMillis: 15_000,
                                                           alternatePort: 10_082, nonce: nonce,
                                                           cookie: server.validator.cookie(for: A, now: at(0))), to: A))
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
        let goodDatagram = try ExtendedDatagram.decode(good)
        guard case .register(_, _, let endpoints, let kind, _, _) = goodDatagram.message else {
            Issue.record("not a registration"); return
        }
        let swapped = ExtendedDatagram(.register(id: alice, cookie: cookie, privateEndpoints: endpoints, natKind: kind,
                                                 keys: malloryKey.publicKeys), trailer: goodDatagram.trailer).encode()
        #expect(server.receiveBytes(swapped, from: A, at: at(0)) == [.report(.ignoredExtended(from: A, .badSignature))])
        // A signed field altered after signing (the private endpoint).
        var altered = good
        let index = try #require(altered.firstIndex(of: 10)) // first octet of 10.0.0.5
        altered[index] = 192
        #expect(server.receiveBytes(altered, from: A, at: at(0)) == [.report(.ignoredExtended(from: A, .badSignature))])
        #expect(server.registry.count == 0)
        // Refused registrations draw no randomness: the good one gets the generator's first nonce.
        #expect(server.nextNonce() == Server().nextNonce())
        let nonce = server.nextNonce()
        #expect(server.receiveBytes(good, from: A, at: at(0)).contains(.sendExtended(
            .registered(serverKey: serverPublicKey, publicEndpoint: A, keepAliveMillis: 10_000, alternatePort: 0, nonce: nonce,
                        cookie: server.validator.cookie(for: A, now: at(0))), to: A)))
    }

    @Test func refreshFromTheSameAddressWithTheSameKey() throws {
        var server = Server.withThree()
        let firstNonce = try #require(server.nonces[alice])
        let firstKey = try #require(server.sessionKeys[alice])
        _ = server.keepAlive(alice, counter: 4, from: A, at: at(1))
        #expect(server.registry.entry(for: alice)?.lastCounter == 4)
        // A fresh challenge's cookie, the same key and address: a new session (a fresh nonce,
        // so a new key, counting from zero) under the same registration.
        let nonce = server.nextNonce()
        let actions = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(5))
        let key = try #require(server.sessionKeys[alice])
        #expect(server.nonces[alice] == nonce && nonce != firstNonce)
        #expect(key != firstKey)
        let entry = extendedEntry(alice, A, alicePrivate, .endpointIndependent, aliceKey, sequence: 0,
                                  sessionKey: key, lastCounter: 0, cookieIssuedAt: at(5), nonce: nonce)
        #expect(versionless(actions) == [.report(.refreshed(entry)), registeredMessage(A, nonce: nonce, issued: at(5))])
        // A new session: alice's roster feed starts over, and lists everyone again.
        let sent = server.rosterSent(at: at(5), acking: [alice, carol])
        #expect(sent[A]?.compactMap { if case .present(let entry) = $0 { entry.info } else { nil } }
                == [info(bob, B, [ep("10.0.0.6:10081")], .unknown, nil), info(carol, C, [], .endpointDependent, carolKey)])
        // carol's records are her first listing (alice, bob): nothing about alice changed for her.
        #expect(sent[C]?.map(\.id) == [alice, bob])
        #expect(server.announced(at: at(5), to: C) == [])
        // A changed NAT kind is announced to the extended peers only.
        let changed = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointDependent, at: at(6))
        #expect(!changed.contains { if case .send(_, B) = $0 { true } else { false } })
        #expect(server.announced(at: at(6), to: C) == [.present(info(alice, A, [], .endpointDependent, aliceKey))])
    }
}

@Suite("Registry extended listing in both dialects")
struct ExtendedListingTests {
    @Test func everyoneHearsOfEveryoneInTheirOwnDialect() throws {
        var server = Server()
        _ = server.registerClassic(bob, bobPrivate, from: B, at: at(0))

        // alice (extended) joins: bob is listed as a classic PeerInfo with his private
        // address as a hint (same public address); bob hears of alice as classic lines.
        let aliceNonce = server.nextNonce()
        let aliceJoins = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(1))
        let aliceEntry = try #require(server.registry.entry(for: alice))
        #expect(aliceJoins == [
            registeredMessage(A, nonce: aliceNonce, issued: at(1)),
            .report(.registered(aliceEntry)),
            .send(.peer(alice, A), to: B),
            .send(.peerPrivate(alice, ip("10.0.0.5")), to: B),
        ])
        #expect(server.announced(at: at(1), to: A, acking: [alice]) == [.present(info(bob, B, [ep("10.0.0.6:10081")], .unknown, nil))])

        // carol (extended, another public address): no private hints either way.
        let carolNonce = server.nextNonce()
        let carolJoins = server.register(carol, carolKey, from: C, privateEndpoints: carolPrivate, natKind: .endpointDependent, at: at(2))
        let carolEntry = try #require(server.registry.entry(for: carol))
        #expect(carolNonce != aliceNonce)
        #expect(carolJoins == [
            registeredMessage(C, nonce: carolNonce, issued: at(2)),
            .report(.registered(carolEntry)),
            .send(.peer(carol, C), to: B),
        ])
        var sent = server.rosterSent(at: at(2), acking: [alice, carol])
        #expect(sent[C]?.map(\.id) == [bob, alice])
        #expect(sent[C]?.compactMap { if case .present(let entry) = $0 { entry.info } else { nil } }
                == [info(bob, B, [], .unknown, nil), info(alice, A, [], .endpointIndependent, aliceKey)])
        #expect(sent[A]?.compactMap { if case .present(let entry) = $0 { entry.info } else { nil } }
                == [info(carol, C, [], .endpointDependent, carolKey)])
        // Records carry the registration order and increasing versions.
        if case .present(let bobEntry)? = sent[C]?.first, case .present(let aliceRecord)? = sent[C]?.last {
            #expect(bobEntry.order < aliceRecord.order && bobEntry.version < aliceRecord.version)
        }

        // dave (extended, alice's public address, another /24): extended peers on that
        // address get his private endpoints (same public address is the only hint rule),
        // the classic bob does not get a private line (other /24).
        let daveNonce = server.nextNonce()
        let daveJoins = server.register(dave, daveKey, from: D, privateEndpoints: davePrivate, natKind: .unknown, at: at(3))
        let daveEntry = try #require(server.registry.entry(for: dave))
        #expect(daveJoins == [
            registeredMessage(D, nonce: daveNonce, issued: at(3)),
            .report(.registered(daveEntry)),
            .send(.peer(dave, D), to: B),
        ])
        sent = server.rosterSent(at: at(3), acking: [alice, carol, dave])
        #expect(sent[D]?.compactMap { if case .present(let entry) = $0 { entry.info } else { nil } } == [
            info(bob, B, [ep("10.0.0.6:10081")], .unknown, nil),
            info(alice, A, alicePrivate, .endpointIndependent, aliceKey),
            info(carol, C, [], .endpointDependent, carolKey),
        ])
        #expect(sent[A]?.compactMap { if case .present(let entry) = $0 { entry.info } else { nil } }
                == [info(dave, D, davePrivate, .unknown, daveKey)])
        #expect(sent[C]?.compactMap { if case .present(let entry) = $0 { entry.info } else { nil } }
                == [info(dave, D, [], .unknown, daveKey)])

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
            .send(.peer(erin, E), to: E),
            .send(.peerPrivate(erin, ip("10.0.0.8")), to: E),
        ])
        sent = server.rosterSent(at: at(4), acking: [alice, carol, dave])
        #expect(sent.mapValues { $0.compactMap { if case .present(let entry) = $0 { entry.info } else { nil } } } == [
            A: [info(erin, E, [], .unknown, nil)],
            C: [info(erin, E, [ep("10.0.0.8:10081")], .unknown, nil)],
            D: [info(erin, E, [], .unknown, nil)],
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
        let bytes = server.sessionBytes(alice, counter: 5, .keepAlive(id: alice, natKind: .endpointIndependent))
        #expect(server.receiveBytes(bytes, from: A, at: at(1)) == [.sendExtended(.keepAliveAck(publicEndpoint: A), to: A)])
        // A valid tag with a used counter is a replay: nothing is sent back.
        #expect(server.receiveBytes(bytes, from: A, at: at(2)) == [.report(.ignoredExtended(from: A, .replayed))])
        for counter: UInt64 in [0, 3, 5] {
            #expect(server.keepAlive(alice, counter: counter, from: A, at: at(3)) == [.report(.ignoredExtended(from: A, .replayed))])
        }
        #expect(server.registry.entry(for: alice)?.lastCounter == 5)
        #expect(server.keepAlive(alice, counter: 6, from: A, at: at(4)) == [.sendExtended(.keepAliveAck(publicEndpoint: A), to: A)])
        // A replay from another address does not move the registration either.
        #expect(server.receiveBytes(bytes, from: X, at: at(5)) == [.report(.ignoredExtended(from: X, .replayed))])
        #expect(server.registry.entry(for: alice)?.publicEndpoint == A)
    }

    @Test func badTagIsRefused() {
        var server = Server.withThree()
        var bytes = server.sessionBytes(alice, .keepAlive(id: alice, natKind: .endpointIndependent))
        bytes[bytes.count - 1] ^= 0x01
        // The refusal echoes the refused message's tag (only its real sender knows it).
        #expect(server.receiveBytes(bytes, from: A, at: at(1)) == [.sendExtended(.unknownSession(alice, echo: tag(bytes)), to: A)])
        #expect(tag(bytes) != .zero)
        // Tagged under another client's session key.
        let wrongKey = server.sessionBytes(alice, counter: 2, key: server.sessionKeys[carol], .keepAlive(id: alice, natKind: .endpointIndependent))
        #expect(server.receiveBytes(wrongKey, from: A, at: at(1)) == [.sendExtended(.unknownSession(alice, echo: tag(wrongKey)), to: A)])
        // A classic client has no session.
        let classic = server.sessionBytes(bob, counter: 1, key: server.sessionKeys[alice], .keepAlive(id: bob, natKind: .unknown))
        #expect(server.receiveBytes(classic, from: B, at: at(1)) == [.sendExtended(.unknownSession(bob, echo: tag(classic)), to: B)])
        // Unknown ID.
        let unknown = server.sessionBytes(id("zed"), counter: 1, key: server.sessionKeys[alice], .keepAlive(id: id("zed"), natKind: .unknown))
        #expect(server.receiveBytes(unknown, from: X, at: at(1)) == [.sendExtended(.unknownSession(id("zed"), echo: tag(unknown)), to: X)])
        #expect(server.registry.entry(for: alice)?.lastCounter == 0)
    }

    @Test func onlyValidKeepAlivesKeepTheClientAlive() {
        var server = Server.withThree()
        _ = server.keepAlive(alice, from: A, at: at(20))
        var bad = server.sessionBytes(carol, .keepAlive(id: carol, natKind: .endpointDependent))
        bad[bad.count - 1] ^= 0x01
        _ = server.receiveBytes(bad, from: C, at: at(20))
        // bob (classic) and carol (bad tag only) were last heard at 0, alice at 20.
        let swept = server.registry.sweep(now: at(31))
        #expect(swept.compactMap { if case .report(.evicted(let entry)) = $0 { entry.id } else { nil } } == [bob, carol])
        #expect(server.registry.clients.map(\.id) == [alice])
        #expect(Set(server.announced(at: at(31), to: A)) == [.absent(bob, .offline, B), .absent(carol, .offline, C)])
    }

    @Test func keepAliveFromANewSourceMovesTheEntryAndTellsPeers() {
        var server = Server.withThree()
        let actions = server.keepAlive(alice, from: X, at: at(1))
        // The session (key, cookie, nonce) moves with it.
        let moved = extendedEntry(alice, X, alicePrivate, .endpointIndependent, aliceKey, sequence: 0,
                                  sessionKey: server.sessionKeys[alice], lastCounter: 1, cookieIssuedAt: at(0),
                                  nonce: server.nonces[alice])
        #expect(actions.map { action -> Registry.Output in
            // The version is the roster's; compare the rest.
            if case .report(.moved(var entry, let from)) = action { entry.version = moved.version; return .report(.moved(entry, from: from)) }
            return action
        } == [
            .report(.moved(moved, from: A)),
            .sendExtended(.keepAliveAck(publicEndpoint: X), to: X),
            .send(.peer(alice, X), to: B),
        ])
        // carol's first listing was still waiting: it goes out with alice where she is now.
        #expect(server.announced(at: at(1), to: C) == [.present(info(alice, X, [], .endpointIndependent, aliceKey)),
                                                       .present(info(bob, B, [], .unknown, nil))])
        #expect(server.registry.entry(for: alice)?.publicEndpoint == X)
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
        #expect(versionless(actions) == [.sendExtended(.keepAliveAck(publicEndpoint: A), to: A)])
        // carol's first listing was still waiting: it goes out with alice as she is now.
        #expect(server.announced(at: at(1), to: C, acking: [carol]) == [.present(info(alice, A, [], .endpointDependent, aliceKey)),
                                                                       .present(info(bob, B, [], .unknown, nil))])
        #expect(server.registry.entry(for: alice)?.natKind == .endpointDependent)
        // The same kind again: nobody is told.
        #expect(server.keepAlive(alice, natKind: .endpointDependent, from: A, at: at(2))
                == [.sendExtended(.keepAliveAck(publicEndpoint: A), to: A)])
        #expect(server.announced(at: at(2), to: C) == [])
    }

    /// A registration datagram can be repeated (a duplicate, or a copy an observer replays
    /// with alice's source address within the cookie's lifetime). The very registration the
    /// session began with is not answered and changes nothing: not the session, not the
    /// counters, not the endpoint, and not the liveness: it proves nothing about alice being
    /// alive now. (A client whose answer was lost asks for a new challenge.)
    @Test func repeatedRegistrationTouchesNothing() throws {
        var server = Server()
        let cookie = server.validator.cookie(for: A, now: at(0))
        let registration = SessionCrypto.signedRegistration(id: alice, cookie: cookie, privateEndpoints: alicePrivate,
                                                            natKind: .endpointIndependent, identity: aliceKey)
        _ = server.registry.receive(.register(alice, privateAddress: ip("10.0.0.5"), offers: [ExtendedMessage.offer]), from: A, now: at(0))
        let first = server.receiveRegistration(registration, alice, aliceKey, cookie: cookie, from: A, at: at(0))
        let nonce = try #require(server.nonces[alice])
        let key = try #require(server.sessionKeys[alice])
        #expect(first.first == registeredMessage(A, nonce: nonce))
        let oldKeepAlive = server.sessionBytes(alice, counter: 1, .keepAlive(id: alice, natKind: .endpointIndependent))
        #expect(server.receiveBytes(oldKeepAlive, from: A, at: at(1)) == [.sendExtended(.keepAliveAck(publicEndpoint: A), to: A)])
        _ = server.keepAlive(alice, counter: 2, from: A, at: at(2))
        let entry = try #require(server.registry.entry(for: alice))
        #expect(entry.lastCounter == 2)
        // The same registration datagram again, every 10 s: the same answer, nothing else.
        #expect(server.nextNonce() != nonce) // a fresh draw would differ
        for second in stride(from: Int64(10), through: 30, by: 10) {
            let again = server.receiveRegistration(registration, alice, aliceKey, cookie: cookie, from: A, at: at(second))
            #expect(again == [.report(.ignoredExtended(from: A, .repeatedRegistration))])
            #expect(server.sessionKeys[alice] == key)
            #expect(server.registry.entry(for: alice) == entry)
        }
        // The first keep-alive, replayed from elsewhere and from alice's address: a replay.
        #expect(server.receiveBytes(oldKeepAlive, from: X, at: at(31)) == [.report(.ignoredExtended(from: X, .replayed))])
        #expect(server.receiveBytes(oldKeepAlive, from: A, at: at(31)) == [.report(.ignoredExtended(from: A, .replayed))])
        // Silent since 2 s whatever was repeated: evicted once past the 30 s timeout.
        #expect(server.registry.sweep(now: at(32)).isEmpty)
        let swept = server.registry.sweep(now: at(33))
        #expect(swept.contains { if case .report(.evicted(let gone)) = $0 { gone.id == alice } else { false } })
        // After the eviction the repeat is a replay of a departed session: it brings nobody back.
        let late = server.receiveBytes(registration, from: A, at: at(40))
        #expect(late == [.report(.ignoredExtended(from: A, .replayed))])
        #expect(versionless(server.registry.entry(for: alice)) == nil)
    }

    /// The issue-12 attack: alice dies; an attacker re-sends every datagram she sent the
    /// server (registration, keep-alives, a punch request, a relay request) from her address
    /// every 2 s. None of them is fresh: she is evicted on time, her peer is told, and no
    /// replay registers her again.
    @Test func replayingEveryCapturedDatagramKeepsNobodyAlive() throws {
        var server = Server.withThree()
        let offer = ClassicMessage.register(alice, privateAddress: ip("10.0.0.5"), offers: [ExtendedMessage.offer])
        let cookie = try #require(server.cookies[alice])
        let registration = SessionCrypto.signedRegistration(id: alice, cookie: cookie, privateEndpoints: alicePrivate,
                                                            natKind: .endpointIndependent, identity: aliceKey)
        // The registration above was made with this very datagram's cookie at 0 (withThree).
        var captured: [[UInt8]] = [registration]
        captured.append(server.sessionBytes(alice, .keepAlive(id: alice, natKind: .endpointIndependent)))
        captured.append(server.sessionBytes(alice, .connect(id: alice, peer: carol)))
        captured.append(server.sessionBytes(alice, .relay(id: alice, to: carol, payload: [1, 2, 3])))
        for (index, bytes) in captured.dropFirst().enumerated() {
            _ = server.receiveBytes(bytes, from: A, at: at(Int64(index + 1)))
        }
        #expect(server.registry.entry(for: alice)?.lastCounter == 3)
        // alice is killed at 3 s; carol stays alive on her own keep-alives.
        var evictedAt: Int64?
        var toldCarol = false
        for second in stride(from: Int64(4), through: 70, by: 2) {
            #expect(server.registry.receive(offer, from: A, now: at(second)).allSatisfy {
                if case .sendExtended(.challenge, to: A) = $0 { true } else { false }
            })
            for bytes in captured {
                let actions = server.receiveBytes(bytes, from: A, at: at(second))
                for action in actions {
                    switch action {
                    case .report(.registered), .report(.refreshed), .report(.moved): Issue.record("a replay at \(second) s registered alice: \(action)")
                    case .sendExtended(.keepAliveAck, _), .sendExtended(.punch, _), .sendExtended(.relayed, _):
                        Issue.record("a replay at \(second) s was taken as fresh: \(action)")
                    default: break
                    }
                }
            }
            _ = server.keepAlive(carol, from: C, at: at(second))
            for action in server.registry.sweep(now: at(second)) {
                if case .report(.evicted(let gone)) = action, gone.id == alice { evictedAt = second }
            }
            if server.announced(at: at(second), to: C, acking: [carol]).contains(where: { if case .absent(alice, .offline, _) = $0 { true } else { false } }) {
                toldCarol = true
            }
        }
        // Her last fresh datagram was at 3 s: silent for strictly more than 30 s at 34 s.
        #expect(evictedAt == 34)
        #expect(toldCarol)
        #expect(versionless(server.registry.entry(for: alice)) == nil)
    }

    /// A registration from an earlier session (its cookie older than the current session's)
    /// is a replay even from the current address: it neither starts a session (which would
    /// cut alice off her own) nor touches anything.
    @Test func anOlderSessionsRegistrationIsAReplay() throws {
        var server = Server()
        _ = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(0))
        let oldCookie = try #require(server.cookies[alice])
        let oldRegistration = SessionCrypto.signedRegistration(id: alice, cookie: oldCookie, privateEndpoints: alicePrivate,
                                                               natKind: .endpointIndependent, identity: aliceKey)
        // alice registers again at 5 s (a fresh challenge), then moves to X at 6 s.
        _ = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(5))
        let key = try #require(server.sessionKeys[alice])
        let entry = try #require(server.registry.entry(for: alice))
        #expect(entry.cookieIssuedAt == at(5))
        #expect(server.receiveBytes(oldRegistration, from: A, at: at(6)) == [.report(.ignoredExtended(from: A, .replayed))])
        #expect(server.registry.entry(for: alice) == entry)
        _ = server.keepAlive(alice, from: X, at: at(7))
        #expect(server.registry.entry(for: alice)?.publicEndpoint == X)
        // The old session's registration cannot move her back to A either.
        #expect(server.receiveBytes(oldRegistration, from: A, at: at(8)) == [.report(.ignoredExtended(from: A, .replayed))])
        #expect(server.registry.entry(for: alice)?.publicEndpoint == X)
        #expect(server.sessionKeys[alice] == key)
        // A fresh registration from A (a new challenge) does move her back: fresh proof.
        let actions = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(9))
        #expect(actions.contains { if case .report(.moved(_, from: X)) = $0 { true } else { false } })
        #expect(server.registry.entry(for: alice)?.publicEndpoint == A)
    }

    /// A departed session's cookie is remembered only as long as such a cookie can pass.
    @Test func departedCookiesAreForgottenAfterACookieLifetime() throws {
        var server = Server()
        _ = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(0))
        let cookie = try #require(server.cookies[alice])
        let registration = SessionCrypto.signedRegistration(id: alice, cookie: cookie, privateEndpoints: alicePrivate,
                                                            natKind: .endpointIndependent, identity: aliceKey)
        let exit = server.sessionBytes(alice, .exit(id: alice))
        _ = server.receiveBytes(exit, from: A, at: at(1))
        #expect(versionless(server.registry.entry(for: alice)) == nil)
        #expect(server.receiveBytes(registration, from: A, at: at(59)) == [.report(.ignoredExtended(from: A, .replayed))])
        // Past the lifetime the cookie itself is refused, and the memory of it is pruned.
        #expect(server.receiveBytes(registration, from: A, at: at(61)) == [.report(.ignoredExtended(from: A, .badCookie))])
        _ = server.registry.sweep(now: at(61))
        #expect(server.registry.departedCount == 0)
        // alice herself comes back with a fresh challenge at any time.
        let actions = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(62))
        #expect(actions.contains { if case .report(.registered) = $0 { true } else { false } })
    }

    /// Registrations with different cookies are different sessions: a fresh nonce, another
    /// session key, and the counters start over under it.
    @Test func differentCookiesGiveDifferentSessionKeys() throws {
        var server = Server()
        _ = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(0))
        let firstCookie = try #require(server.cookies[alice])
        let firstNonce = try #require(server.nonces[alice])
        let firstKey = try #require(server.sessionKeys[alice])
        let oldKeepAlive = server.sessionBytes(alice, counter: 3, .keepAlive(id: alice, natKind: .endpointIndependent))
        #expect(server.receiveBytes(oldKeepAlive, from: A, at: at(1)) == [.sendExtended(.keepAliveAck(publicEndpoint: A), to: A)])

        // 12 s later the validator hands out another cookie to the same address.
        let nonce = server.nextNonce()
        let actions = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(12))
        let secondCookie = try #require(server.cookies[alice])
        let secondKey = try #require(server.sessionKeys[alice])
        #expect(secondCookie != firstCookie)
        #expect(server.nonces[alice] == nonce)
        #expect(nonce != firstNonce)
        #expect(secondKey != firstKey)
        let entry = extendedEntry(alice, A, alicePrivate, .endpointIndependent, aliceKey, sequence: 0, sessionKey: secondKey,
                                  lastCounter: 0, cookieIssuedAt: at(12), nonce: nonce)
        #expect(versionless(Array(actions.prefix(2))) == [.report(.refreshed(entry)), registeredMessage(A, nonce: nonce, issued: at(12))])
        #expect(versionless(server.registry.entry(for: alice)) == entry)
        // The old session's messages are worthless now, whatever their counter.
        #expect(server.receiveBytes(oldKeepAlive, from: A, at: at(13))
                == [.sendExtended(.unknownSession(alice, echo: tag(oldKeepAlive)), to: A)])
        let oldHigher = server.sessionBytes(alice, counter: 50, key: firstKey, .keepAlive(id: alice, natKind: .endpointIndependent))
        #expect(server.receiveBytes(oldHigher, from: X, at: at(13)) == [.sendExtended(.unknownSession(alice, echo: tag(oldHigher)), to: X)])
        #expect(versionless(server.registry.entry(for: alice)) == entry)
        // The new one counts from 1.
        #expect(server.keepAlive(alice, counter: 1, from: A, at: at(14)) == [.sendExtended(.keepAliveAck(publicEndpoint: A), to: A)])
        #expect(server.registry.entry(for: alice)?.lastCounter == 1)
    }

    /// After the session ended (alice left and registers again), the previous session's
    /// keep-alives are worthless under the new session key, whatever their counter.
    @Test func replayedKeepAliveAfterAFreshRegistrationIsRefused() throws {
        var server = Server()
        _ = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(0))
        let cookie = try #require(server.cookies[alice])
        let firstKey = try #require(server.sessionKeys[alice])
        let firstNonce = try #require(server.nonces[alice])
        let captured = (1...3).map { counter in
            server.sessionBytes(alice, counter: UInt64(counter), .keepAlive(id: alice, natKind: .endpointIndependent))
        }
        for (index, bytes) in captured.enumerated() {
            #expect(server.receiveBytes(bytes, from: A, at: at(Int64(index + 1))) == [.sendExtended(.keepAliveAck(publicEndpoint: A), to: A)])
        }
        let exit = server.sessionBytes(alice, .exit(id: alice))
        #expect(server.receiveBytes(exit, from: A, at: at(4)).first.map { if case .report(.unregistered) = $0 { true } else { false } } == true)
        #expect(versionless(server.registry.entry(for: alice)) == nil)

        // alice registers again with a fresh challenge (the old registration would be a replay).
        _ = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(5))
        #expect(server.cookies[alice] != cookie)
        let secondKey = try #require(server.sessionKeys[alice])
        #expect(server.nonces[alice] != firstNonce)
        #expect(secondKey != firstKey)

        // Every captured keep-alive, replayed from alice's address or another: refused, and
        // neither the endpoint nor the counter nor the liveness moves.
        let entry = server.registry.entry(for: alice)
        #expect(entry?.lastCounter == 0)
        for (index, bytes) in captured.enumerated() {
            for source in [A, X] {
                #expect(server.receiveBytes(bytes, from: source, at: at(6))
                        == [.sendExtended(.unknownSession(alice, echo: tag(captured[index])), to: source)])
            }
        }
        // The old session's exit does not end the new one.
        #expect(server.receiveBytes(exit, from: A, at: at(6)) == [.report(.ignoredExtended(from: A, .badTag))])
        #expect(server.registry.entry(for: alice) == entry)
        // Alice's own first keep-alive of the new session is accepted.
        #expect(server.keepAlive(alice, counter: 1, from: A, at: at(7)) == [.sendExtended(.keepAliveAck(publicEndpoint: A), to: A)])
        // Replays later on do not keep her alive: silent since 7, she is evicted at 38.
        #expect(server.receiveBytes(captured[2], from: A, at: at(20)) == [.sendExtended(.unknownSession(alice, echo: tag(captured[2])), to: A)])
        #expect(server.registry.sweep(now: at(37)).isEmpty)
        let swept = server.registry.sweep(now: at(38))
        #expect(swept.contains { if case .report(.evicted(let entry)) = $0 { entry.id == alice } else { false } })
    }

    @Test func sameKeyFromAnotherAddressMovesTheRegistration() throws {
        var server = Server.withThree()
        let oldKey = try #require(server.sessionKeys[alice])
        let oldNonce = try #require(server.nonces[alice])
        let nonce = server.nextNonce()
        let actions = server.register(alice, aliceKey, from: X, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(5))
        let newKey = try #require(server.sessionKeys[alice])
        #expect(newKey != oldKey) // the cookie differs per address, and the nonce is fresh
        #expect(server.nonces[alice] == nonce)
        #expect(nonce != oldNonce)
        let moved = extendedEntry(alice, X, alicePrivate, .endpointIndependent, aliceKey, sequence: 0, sessionKey: newKey,
                                  cookieIssuedAt: at(5), nonce: nonce)
        #expect(actions.map { action -> Registry.Output in
            if case .report(.moved(var entry, let from)) = action { entry.version = moved.version; return .report(.moved(entry, from: from)) }
            return action
        } == [
            .report(.moved(moved, from: A)),
            registeredMessage(X, nonce: nonce, issued: at(5)),
            .send(.peer(alice, X), to: B),
        ])
        let sent = server.rosterSent(at: at(5), acking: [alice, carol])
        #expect(sent[X]?.compactMap { if case .present(let entry) = $0 { entry.info } else { nil } }
                == [info(bob, B, [], .unknown, nil), info(carol, C, [], .endpointDependent, carolKey)])
        #expect(sent[C]?.compactMap { if case .present(let entry) = $0 { entry.info } else { nil } }
                .contains(info(alice, X, [], .endpointIndependent, aliceKey)) == true)
        #expect(server.registry.entry(for: alice)?.sessionMAC == moved.sessionMAC)
        #expect(server.registry.count == 3)
        // The old session is gone.
        let stale = server.sessionBytes(alice, counter: 99, key: oldKey, .keepAlive(id: alice, natKind: .unknown))
        #expect(server.receiveBytes(stale, from: A, at: at(6)) == [.sendExtended(.unknownSession(alice, echo: tag(stale)), to: A)])
        #expect(server.keepAlive(alice, from: X, at: at(6)) == [.sendExtended(.keepAliveAck(publicEndpoint: X), to: X)])
    }

    @Test func anotherKeyForAHeldIDIsRefused() {
        var server = Server.withThree()
        let refusal = "registration refused: ID alice - the ID is in use from another address"
        for source in [X, A] {
            let actions = server.register(alice, malloryKey, from: source, privateEndpoints: [], natKind: .unknown, at: at(5))
            #expect(versionless(actions) == [.report(.refused(alice, from: source, .idInUse)), .sendExtended(.refused(text: refusal), to: source)])
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
        // A classic registration of the ID from alice's own address can only be a forgery:
        // ignored, and nobody (alice least of all) is sent anything.
        let before = server.registry.entry(for: alice)
        #expect(server.registry.receive(.register(alice, privateAddress: ip("10.0.0.5")), from: A, now: at(2))
                == [.report(.ignored(.register(alice, privateAddress: ip("10.0.0.5")), from: A, .heldByExtendedClient))])
        #expect(server.registry.receive(.register(alice, privateAddress: ip("10.9.9.9"), offers: ["x-1"]), from: A, now: at(2))
                == [.report(.ignored(.register(alice, privateAddress: ip("10.9.9.9"), offers: ["x-1"]), from: A, .heldByExtendedClient))])
        #expect(server.registry.entry(for: alice) == before)
        // From another address (even another port of alice's) it is refused, in the classic dialect.
        for source in [X, D] {
            #expect(server.registry.receive(.register(alice, privateAddress: ip("10.0.0.5")), from: source, now: at(2)) == [
                .report(.refused(alice, from: source, .idInUse)),
                .send(.serverNotice("registration refused: ID alice - the ID is in use from another address"), to: source),
            ])
        }
        #expect(server.registry.entry(for: alice) == before)
        // The classic keep-alive did not keep alice alive.
        let swept = server.registry.sweep(now: at(31))
        #expect(swept.contains { if case .report(.evicted(let entry)) = $0 { entry.id == alice } else { false } })
    }

    @Test func extendedExitAndEviction() throws {
        var server = Server.withThree()
        var badExit = server.sessionBytes(alice, .exit(id: alice))
        badExit[badExit.count - 2] ^= 0x10
        #expect(server.receiveBytes(badExit, from: A, at: at(1)) == [.report(.ignoredExtended(from: A, .badTag))])
        #expect(server.registry.entry(for: alice) != nil)
        let exit = server.sessionBytes(alice, .exit(id: alice))
        var before = try #require(server.registry.entry(for: alice))
        before.lastCounter = 2 // the exit's own counter is recorded before it leaves
        _ = server.rosterSent(at: at(1)) // carol's first listing, left unacknowledged
        #expect(server.receiveBytes(exit, from: A, at: at(2)) == [
            .report(.unregistered(before)),
            .send(.unregistered(alice, A), to: B),
        ])
        // The departure goes first; bob's record of the lost first listing is sent again.
        #expect(server.announced(at: at(2), to: C) == [.absent(alice, .unregistered, A),
                                                       .present(info(bob, B, [], .unknown, nil))])
        #expect(versionless(server.registry.entry(for: alice)) == nil)
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
            .challenge(cookie: .zero), .unknownSession(alice, echo: Token128(high: 1, low: 2)), .keepAliveAck(publicEndpoint: A),
            .ping(from: alice, to: carol, transaction: 1),
            .chat(from: alice, to: carol, messageID: 1, sealed: Array(repeating: 0, count: 16)),
            .relayed(from: alice, payload: [1]), .listPage(query: 1, total: 0, offset: 0, entries: []),
            .roster(RosterDelta(epoch: 1, sequence: 1, version: 1, registered: 1, scope: .complete, synced: true, records: [])),
            .lookupResult(query: 1, epoch: 1, version: 1, peer: alice, found: nil),
        ]
        for message in messages {
            // A peer check carries its pair tag; the server ignores it all the same.
            let trailer: ExtendedDatagram.Trailer = message.authentication == .pair ? .pair(tag: .zero) : .none
            let bytes = ExtendedDatagram(message, trailer: trailer).encode()
            #expect(server.receiveBytes(bytes, from: A, at: at(1)) == [.report(.ignoredExtended(from: A, .notForServer))])
        }
    }
}

@Suite("Registry punching and relay")
struct ExtendedPunchRelayTests {
    @Test func connectSendsBothSidesAPunch() {
        var server = Server.withThree()
        let actions = server.connect(alice, to: carol, from: A, at: at(1))
        #expect(versionless(actions) == [
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
        var forged = server.sessionBytes(alice, .connect(id: alice, peer: carol))
        forged[forged.count - 1] ^= 0x01
        #expect(server.receiveBytes(forged, from: A, at: at(1)) == [.sendExtended(.unknownSession(alice, echo: tag(forged)), to: A)])
        // A valid connect replayed: dropped without an answer, and no punch round.
        let connect = server.sessionBytes(alice, .connect(id: alice, peer: carol))
        #expect(server.receiveBytes(connect, from: A, at: at(1)).last == .report(.punchRound(alice, carol, round: 1)))
        #expect(server.receiveBytes(connect, from: A, at: at(2)) == [.report(.ignoredExtended(from: A, .replayed))])
        #expect(server.receiveBytes(connect, from: X, at: at(2)) == [.report(.ignoredExtended(from: X, .replayed))])
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
        let bytes = server.sessionBytes(alice, .relay(id: alice, to: carol, payload: payload))
        _ = server.receiveBytes(bytes, from: A, at: at(1))
        #expect(server.receiveBytes(bytes, from: A, at: at(1)) == [.report(.ignoredExtended(from: A, .replayed))])
        // Another client cannot relay in alice's name (it has no session key of hers).
        let impersonation = server.sessionBytes(carol, key: server.sessionKeys[carol], .relay(id: alice, to: carol, payload: payload))
        #expect(server.receiveBytes(impersonation, from: C, at: at(1)) == [.sendExtended(.unknownSession(alice, echo: tag(impersonation)), to: C)])
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

    /// A path report is counted (a typed report for the driver) and answered with nothing.
    @Test func pathReportsAreReportedNotAnswered() {
        var server = Server.withThree()
        for outcome in PathOutcome.allCases {
            let report = server.sessionBytes(alice, .pathReport(id: alice, peer: carol, outcome: outcome))
            #expect(server.receiveBytes(report, from: A, at: at(1)) == [.report(.pathReport(alice, peer: carol, outcome))])
            // The same datagram again is a replay: not counted twice.
            #expect(server.receiveBytes(report, from: A, at: at(1)) == [.report(.ignoredExtended(from: A, .replayed))])
        }
        // About a peer that left (or never was): still counted, the attempt happened.
        #expect(server.receiveBytes(server.sessionBytes(alice, .pathReport(id: alice, peer: id("gone"), outcome: .relayed)),
                                    from: A, at: at(1)) == [.report(.pathReport(alice, peer: id("gone"), .relayed))])
        // About itself: nonsense, ignored.
        #expect(server.receiveBytes(server.sessionBytes(alice, .pathReport(id: alice, peer: alice, outcome: .direct)),
                                    from: A, at: at(1)) == [.report(.ignoredExtended(from: A, .pathReportRateLimited))])
    }

    @Test func pathReportsNeedTheSession() {
        var server = Server.withThree()
        var forged = server.sessionBytes(alice, .pathReport(id: alice, peer: carol, outcome: .direct))
        forged[forged.count - 1] ^= 0x01
        #expect(server.receiveBytes(forged, from: A, at: at(1)) == [.sendExtended(.unknownSession(alice, echo: tag(forged)), to: A)])
        // Under carol's name with alice's key: not carol's session.
        let borrowed = server.sessionBytes(alice, .pathReport(id: carol, peer: alice, outcome: .direct))
        #expect(!server.receiveBytes(borrowed, from: A, at: at(1)).contains(.report(.pathReport(carol, peer: alice, .direct))))
    }

    /// A flood of reports counts for the burst, then for the rate only (12 a minute: one
    /// every 5 s); each client has its own budget.
    @Test func pathReportsAreRateLimitedPerClient() {
        var server = Server.withThree()
        func report(_ from: ClientID, _ peer: ClientID, at now: Instant, source: Endpoint) -> Bool {
            let outputs = server.receiveBytes(server.sessionBytes(from, .pathReport(id: from, peer: peer, outcome: .direct)),
                                              from: source, at: now)
            return outputs == [.report(.pathReport(from, peer: peer, .direct))]
        }
        let counted = (0..<100).filter { _ in report(alice, carol, at: at(1), source: A) }.count
        #expect(counted == 8)
        #expect(report(carol, alice, at: at(1), source: C))
        #expect(!report(alice, carol, at: at(3), source: A))
        #expect(report(alice, carol, at: at(7), source: A))
        #expect(!report(alice, carol, at: at(7), source: A))
    }
}

@Suite("Registry keep-alive in place")
struct KeepAliveInPlaceTests {
    /// The in-place path on `bytes` from `source`.
    private func inPlace(_ server: inout Server, _ bytes: [UInt8], from source: Endpoint, at now: Instant) -> Bool {
        bytes.withUnsafeBytes { server.registry.acknowledgeKeepAlive($0, from: source, now: now) }
    }

    private func keepAliveBytes(_ server: inout Server, _ clientID: ClientID, natKind: NATKind = .endpointIndependent,
                                counter: UInt64? = nil) -> [UInt8] {
        server.sessionBytes(clientID, counter: counter, .keepAlive(id: clientID, natKind: natKind))
    }

    @Test func aValidKeepAliveFromTheRegisteredEndpointIsAcknowledgedInPlace() throws {
        var server = Server.withThree()
        let bytes = keepAliveBytes(&server, alice, counter: 7)
        #expect(inPlace(&server, bytes, from: A, at: at(25)))
        #expect(server.registry.entry(for: alice)?.lastCounter == 7)
        // It counted as a keep-alive: at 40 s alice (heard at 25) stays, carol (heard at 0) goes.
        let swept = server.registry.sweep(now: at(40))
        #expect(swept.contains { if case .report(.evicted(let entry)) = $0 { entry.id == carol } else { false } })
        #expect(server.registry.entry(for: alice) != nil)
        // The same datagram again is a replay: not in place, and the general path drops it.
        #expect(!inPlace(&server, bytes, from: A, at: at(41)))
        #expect(server.receiveBytes(bytes, from: A, at: at(41)) == [.report(.ignoredExtended(from: A, .replayed))])
    }

    @Test func everythingElseIsLeftToTheGeneralPathUnchanged() throws {
        var server = Server.withThree()
        let before = try #require(server.registry.entry(for: alice))
        var cases: [(String, [UInt8], Endpoint)] = []
        // From another address (a NAT rebinding): the general path moves the registration.
        cases.append(("moved", keepAliveBytes(&server, alice, counter: 10), X))
        // A changed NAT kind: the general path announces it.
        cases.append(("NAT kind", keepAliveBytes(&server, alice, natKind: .endpointDependent, counter: 11), A))
        // A tag under another key, a flipped tag bit, a cut datagram, trailing garbage.
        cases.append(("wrong key", server.sessionBytes(alice, counter: 12, key: KeyBytes(Array(repeating: 1, count: 32)), .keepAlive(id: alice, natKind: .endpointIndependent)), A))
        var flipped = keepAliveBytes(&server, alice, counter: 13)
        flipped[flipped.count - 1] ^= 0x80
        cases.append(("flipped tag", flipped, A))
        let good = keepAliveBytes(&server, alice, counter: 14)
        cases.append(("cut", Array(good.dropLast()), A))
        cases.append(("trailing", good + [0], A))
        // carol's keep-alive sent from alice's endpoint, and one for an ID nobody holds.
        cases.append(("other ID", keepAliveBytes(&server, carol, counter: 5), A))
        cases.append(("unknown", SessionCrypto.sealed(.keepAlive(id: erin, natKind: .unknown), counter: 1,
                                                      key: KeyBytes(Array(repeating: 2, count: 32))), A))
        // A classic client's endpoint, and a datagram that is not a keep-alive at all.
        cases.append(("classic endpoint", keepAliveBytes(&server, alice, counter: 15), B))
        cases.append(("connect", server.sessionBytes(alice, counter: 16, .connect(id: alice, peer: carol)), A))
        for (name, bytes, source) in cases {
            #expect(!inPlace(&server, bytes, from: source, at: at(1)), "\(name)")
            #expect(server.registry.entry(for: alice) == before, "\(name)")
        }
        // The unchanged registry still takes the good datagram (counter 14 > 0).
        #expect(inPlace(&server, good, from: A, at: at(2)))
        #expect(server.registry.entry(for: alice)?.lastCounter == 14)
    }

    @Test func clientsSharingOneSocketAreAllAcknowledgedInPlace() throws {
        var server = Server.withThree()
        // erin registers from alice's endpoint as well: one socket, two identities (as a load
        // generator's clients are).
        _ = server.register(erin, IdentityKey(), from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(1))
        #expect(server.registry.entry(for: erin)?.publicEndpoint == A)
        #expect(server.registry.entry(for: alice)?.publicEndpoint == A)
        for (step, clientID) in [alice, erin, alice, erin].enumerated() {
            let bytes = keepAliveBytes(&server, clientID)
            #expect(inPlace(&server, bytes, from: A, at: at(Int64(2 + step))), "\(clientID)")
        }
        #expect(server.registry.entry(for: alice)?.lastCounter == 2)
        #expect(server.registry.entry(for: erin)?.lastCounter == 2)
        // Only from the endpoint each registered at: from carol's endpoint neither is taken.
        #expect(!inPlace(&server, keepAliveBytes(&server, erin), from: C, at: at(7)))
        #expect(!inPlace(&server, keepAliveBytes(&server, alice), from: C, at: at(7)))
        #expect(server.registry.entry(for: erin)?.lastCounter == 2)
    }

    /// A leave moves the client table's last entry into the hole: erin (registered last)
    /// takes alice's place when alice exits, and the in-place paths find her there.
    @Test func theInPlacePathsFindAnEntryMovedByALeave() throws {
        var server = Server.withThree()
        _ = server.register(erin, IdentityKey(), from: E, privateEndpoints: [], natKind: .endpointIndependent, at: at(1))
        let exit = server.sessionBytes(alice, .exit(id: alice))
        let actions = server.receiveBytes(exit, from: A, at: at(2))
        #expect(actions.contains { if case .report(.unregistered(let entry)) = $0 { entry.id == alice } else { false } })
        #expect(versionless(server.registry.entry(for: alice)) == nil)
        #expect(server.registry.count == 3)
        #expect(inPlace(&server, keepAliveBytes(&server, erin, counter: 5), from: E, at: at(3)))
        #expect(server.registry.entry(for: erin)?.lastCounter == 5)
        #expect(inPlace(&server, keepAliveBytes(&server, carol, natKind: .endpointDependent, counter: 6), from: C, at: at(3)))
        #expect(server.registry.entry(for: carol)?.lastCounter == 6)
        let relay = server.sessionBytes(erin, counter: 7, .relay(id: erin, to: carol, payload: [9]))
        let decision = relay.withUnsafeBytes { raw in
            ExtendedMessage.RelayFrame(raw).map { server.registry.forwardRelay($0, from: E, now: at(4)) }
        }
        #expect(decision == .forward(to: C))
        #expect(server.registry.clients.map(\.id) == [bob, carol, erin])
    }

    @Test func inPlaceAndGeneralPathsLeaveTheSameState() throws {
        var fast = Server.withThree()
        var general = Server.withThree()
        for step in 1...20 {
            let now = at(Int64(step))
            let bytes = keepAliveBytes(&fast, alice)
            _ = keepAliveBytes(&general, alice)
            #expect(inPlace(&fast, bytes, from: A, at: now))
            let actions = general.receiveBytes(bytes, from: A, at: now)
            // The general path's whole answer is the acknowledgement the service writes in place.
            #expect(versionless(actions) == [.sendExtended(.keepAliveAck(publicEndpoint: A), to: A)])
        }
        #expect(fast.registry.entry(for: alice) == general.registry.entry(for: alice))
        #expect(fast.registry.sweep(now: at(40)) == general.registry.sweep(now: at(40)))
        #expect(fast.registry.clients == general.registry.clients)
    }
}

@Suite("Registry relay in place")
struct RelayInPlaceTests {
    private func relayBytes(_ server: inout Server, _ clientID: ClientID, to peer: ClientID, _ payload: [UInt8],
                            counter: UInt64? = nil, key: KeyBytes? = nil) -> [UInt8] {
        server.sessionBytes(clientID, counter: counter, key: key, .relay(id: clientID, to: peer, payload: payload))
    }

    private func inPlace(_ server: inout Server, _ bytes: [UInt8], from source: Endpoint, at now: Instant) -> Registry.RelayDecision? {
        bytes.withUnsafeBytes { raw in
            guard let frame = ExtendedMessage.RelayFrame(raw) else { return nil }
            return server.registry.forwardRelay(frame, from: source, now: now)
        }
    }

    @Test func aRelayBetweenRegisteredClientsIsForwardedInPlaceAsTheGeneralPathWould() throws {
        var fast = Server.withThree()
        var general = Server.withThree()
        for step in 1...5 {
            let payload = Array("hello \(step)".utf8)
            let bytes = relayBytes(&fast, alice, to: carol, payload)
            _ = relayBytes(&general, alice, to: carol, payload)
            #expect(inPlace(&fast, bytes, from: A, at: at(Int64(step))) == .forward(to: C))
            // What the general path sends is what RelayFrame writes.
            let actions = general.receiveBytes(bytes, from: A, at: at(Int64(step)))
            #expect(versionless(actions) == [.sendExtended(.relayed(from: alice, payload: payload), to: C),
                                .report(.relayed(from: alice, to: carol, bytes: payload.count))])
            var written: [UInt8] = []
            bytes.withUnsafeBytes { raw in
                guard let frame = ExtendedMessage.RelayFrame(raw) else { return }
                written = [UInt8](unsafeUninitializedCapacity: frame.relayedLength) { buffer, count in
                    count = frame.writeRelayed(into: UnsafeMutableRawBufferPointer(buffer))
                }
                #expect(frame.relayedLength == written.count)
            }
            #expect(written == ExtendedMessage.relayed(from: alice, payload: payload).encode())
        }
        #expect(fast.registry.entry(for: alice) == general.registry.entry(for: alice))
        // The same datagram again is a replay, in place and in general.
        let again = relayBytes(&fast, alice, to: carol, [1], counter: 5)
        #expect(inPlace(&fast, again, from: A, at: at(9)) == .useGeneralPath)
    }

    @Test func everythingElseIsLeftToTheGeneralPathUnchanged() throws {
        var server = Server.withThree()
        let before = try #require(server.registry.entry(for: alice))
        var flipped = relayBytes(&server, alice, to: carol, [1, 2, 3], counter: 3)
        flipped[flipped.count - 1] ^= 1
        let cases: [(String, [UInt8], Endpoint)] = [
            ("to a classic client", relayBytes(&server, alice, to: bob, [1], counter: 2), A),
            ("to nobody", relayBytes(&server, alice, to: erin, [1], counter: 2), A),
            ("to itself? no: from another address", relayBytes(&server, alice, to: carol, [1], counter: 2), X),
            ("wrong key", relayBytes(&server, alice, to: carol, [1], counter: 2, key: KeyBytes(Array(repeating: 3, count: 32))), A),
            ("flipped tag", flipped, A),
            ("carol's from alice's address", relayBytes(&server, carol, to: alice, [1], counter: 2), A),
        ]
        for (name, bytes, source) in cases {
            #expect(inPlace(&server, bytes, from: source, at: at(1)) == .useGeneralPath, "\(name)")
            #expect(server.registry.entry(for: alice) == before, "\(name)")
        }
    }

    @Test func theRelayLimitStillAppliesAndARefusalSpendsTheCounterAsTheGeneralPathDoes() throws {
        var limits = RelayLimiter<ClientID>.Configuration()
        limits.packetsPerSecond = 2
        var fast = Server(configuration: .init(relay: limits))
        var general = Server(configuration: .init(relay: limits))
        for server in [0, 1] {
            var copy = server == 0 ? fast : general
            _ = copy.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(0))
            _ = copy.register(carol, carolKey, from: C, privateEndpoints: carolPrivate, natKind: .endpointDependent, at: at(0))
            if server == 0 { fast = copy } else { general = copy }
        }
        var decisions: [Registry.RelayDecision?] = []
        for _ in 0..<5 {
            let bytes = relayBytes(&fast, alice, to: carol, [7])
            _ = relayBytes(&general, alice, to: carol, [7])
            decisions.append(inPlace(&fast, bytes, from: A, at: at(1)))
            _ = general.receiveBytes(bytes, from: A, at: at(1))
        }
        #expect(decisions == [.forward(to: C), .forward(to: C), .rateLimited, .rateLimited, .rateLimited])
        #expect(fast.registry.entry(for: alice) == general.registry.entry(for: alice))
        #expect(fast.registry.entry(for: alice)?.lastCounter == 5)
    }
}

@Suite("Registry roster feeds")
struct RosterFeedRegistryTests {
    private static func classicEndpoint(_ index: Int) -> Endpoint {
        Endpoint(address: IPv4Address(192, 0, 2, UInt8(1 + index / 250)), port: UInt16(1_000 + index % 250))
    }

    /// 100 clients join within 10 ms: the subscriber gets them in a few full datagrams, not
    /// one datagram per join, and the last partial one only after the coalescing interval.
    @Test func joinsAreCoalesced() throws {
        var server = Server(configuration: .init())
        _ = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(0))
        _ = server.rosterSent(at: at(0), acking: [alice])
        var datagrams = 0, records = 0
        for index in 0..<100 {
            let now = at(1) + .microseconds(Int64(index) * 100)
            _ = server.registerClassic(id("c\(index)"), ip("10.9.0.1"), from: Self.classicEndpoint(index), at: now)
            for case .sendExtended(.roster(let delta), A) in server.registry.flushRoster(now: now) {
                datagrams += 1
                records += delta.records.count
                _ = server.receiveBytes(server.sessionBytes(alice, .rosterAck(id: alice, largest: delta.sequence, received: .max)), from: A, at: now)
            }
        }
        // The first join went at once (the feed was idle); full datagrams went as they filled.
        #expect(datagrams >= 8 && datagrams <= 14, "\(datagrams) datagrams for \(records) records")
        #expect(records < 100)
        // The rest waits for the 50 ms interval after the last datagram, then goes.
        let due = try #require(server.registry.rosterDeadline)
        #expect(due > at(1) + .microseconds(9_900) && due <= at(1) + .milliseconds(60))
        let rest = server.rosterSent(at: due, acking: [alice])[A] ?? []
        #expect(records + rest.count == 100)
    }

    /// Past the roster limit a join reaches only the subscribers that asked about the
    /// newcomer: none here, so a join costs no roster datagram at all, whatever the count.
    @Test func pastTheLimitJoinsReachOnlyInterestedSubscribers() throws {
        var server = Server(configuration: .init(rosterLimit: 5, rosterFeed: .init(flushInterval: .zero)))
        _ = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(0))
        for index in 0..<10 {
            _ = server.registerClassic(id("c\(index)"), ip("10.9.0.1"), from: Self.classicEndpoint(index), at: at(1))
        }
        #expect(server.registry.rosterScope == .interest)
        // The switch was announced (an empty interest-scope feed), then nothing more.
        var sent = server.rosterSent(at: at(1), acking: [alice])[A] ?? []
        _ = sent
        for index in 10..<30 {
            _ = server.registerClassic(id("c\(index)"), ip("10.9.0.1"), from: Self.classicEndpoint(index), at: at(2))
        }
        sent = server.rosterSent(at: at(2), acking: [alice])[A] ?? []
        #expect(sent.isEmpty)
        // alice asks about c25: found, and from then on she hears of c25 (and only c25).
        let lookup = server.sessionBytes(alice, .lookup(id: alice, query: 7, peer: id("c25")))
        let answer = server.receiveBytes(lookup, from: A, at: at(3))
        guard case .sendExtended(.lookupResult(7, _, _, id("c25"), let found?), A)? = answer.first else {
            Issue.record("no answer: \(answer)"); return
        }
        #expect(found.info.publicEndpoint == Self.classicEndpoint(25))
        _ = server.registry.receive(.unregister(id("c25")), from: Self.classicEndpoint(25), now: at(4))
        _ = server.registry.receive(.unregister(id("c26")), from: Self.classicEndpoint(26), now: at(4))
        #expect(server.announced(at: at(4), to: A, acking: [alice]) == [.absent(id("c25"), .unregistered, Self.classicEndpoint(25))])
    }

    /// The whole roster pushed to every subscriber may take at most the fan-out limit in
    /// records (registered × subscribers): past it the scope turns to interest even below the
    /// roster limit, and comes back when the product falls under 90 % of the limit.
    @Test func theFanOutLimitBoundsTheCompleteScope() {
        var server = Server(configuration: .init(rosterLimit: 1000, rosterFanOutLimit: 10, rosterFeed: .init(flushInterval: .zero)))
        _ = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(0))
        _ = server.register(carol, carolKey, from: C, privateEndpoints: carolPrivate, natKind: .endpointDependent, at: at(0))
        for index in 0..<3 {
            _ = server.registerClassic(id("c\(index)"), ip("10.9.0.1"), from: Self.classicEndpoint(index), at: at(1))
        }
        // 5 registered × 2 subscribers = 10 records: still complete.
        #expect(server.registry.rosterScope == .complete)
        _ = server.registerClassic(id("c3"), ip("10.9.0.1"), from: Self.classicEndpoint(3), at: at(1))
        // 6 × 2 = 12 > 10.
        #expect(server.registry.rosterScope == .interest)
        _ = server.registry.receive(.unregister(id("c3")), from: Self.classicEndpoint(3), now: at(2))
        // 5 × 2 = 10: not under 90 % of the limit, so the scope holds.
        #expect(server.registry.rosterScope == .interest)
        _ = server.registry.receive(.unregister(id("c2")), from: Self.classicEndpoint(2), now: at(2))
        // 4 × 2 = 8 <= 9.
        #expect(server.registry.rosterScope == .complete)
    }

    /// A look-up of an ID nobody holds says so, with the roster version.
    @Test func lookUpOfAnUnknownID() {
        var server = Server.withThree()
        let lookup = server.sessionBytes(alice, .lookup(id: alice, query: 1, peer: id("zed")))
        let answer = server.receiveBytes(lookup, from: A, at: at(1))
        #expect(answer.count == 1)
        if case .sendExtended(.lookupResult(1, 1, let version, id("zed"), nil), A)? = answer.first {
            #expect(version >= 3)
        } else {
            Issue.record("unexpected answer \(answer)")
        }
        // Replayed: no answer.
        #expect(server.receiveBytes(lookup, from: A, at: at(2)) == [.report(.ignoredExtended(from: A, .replayed))])
    }

    /// List queries page through the sorted IDs by prefix, with the total.
    @Test func listQueriesPageThroughSortedIDs() throws {
        var server = Server.withThree()
        for (index, name) in ["bo", "boris", "bobby", "zed"].enumerated() {
            _ = server.registerClassic(id(name), ip("10.9.0.1"), from: Self.classicEndpoint(index), at: at(1))
        }
        func page(_ prefix: String, offset: UInt32, limit: UInt16) -> (total: UInt32, ids: [String]) {
            let bytes = server.sessionBytes(carol, .listQuery(id: carol, query: 9, prefix: prefix, offset: offset, limit: limit))
            guard case .sendExtended(.listPage(9, let total, _, let entries), C)? = server.receiveBytes(bytes, from: C, at: at(2)).first
            else { return (0, []) }
            return (total, entries.map(\.id.rawValue))
        }
        #expect(page("", offset: 0, limit: 3) == (7, ["alice", "bo", "bob"]))
        #expect(page("", offset: 5, limit: 3) == (7, ["carol", "zed"]))
        #expect(page("bo", offset: 0, limit: 10) == (4, ["bo", "bob", "bobby", "boris"]))
        #expect(page("bo", offset: 2, limit: 1) == (4, ["bobby"]))
        #expect(page("bob", offset: 0, limit: 10) == (2, ["bob", "bobby"]))
        #expect(page("x", offset: 0, limit: 10) == (0, []))
        #expect(page("zed", offset: 5, limit: 10) == (1, []))
    }

    /// More than 40 look-ups at once from one client: the rest are dropped (20/s, burst 40).
    @Test func queriesAreRateLimited() {
        var server = Server.withThree()
        var answered = 0, limited = 0
        for query in 0..<60 {
            let bytes = server.sessionBytes(alice, .lookup(id: alice, query: UInt32(query), peer: carol))
            let actions = server.receiveBytes(bytes, from: A, at: at(1))
            if case .sendExtended(.lookupResult, A)? = actions.first { answered += 1 }
            if actions == [.report(.ignoredExtended(from: A, .queryRateLimited))] { limited += 1 }
        }
        #expect(answered == 40 && limited == 20)
    }
}

@Suite("Registry ID claims")
struct ClaimTests {
    /// Claims kept for 100 s after the owner's latest registration; Unix time = seconds since at(0).
    static let withClaims = Registry.Configuration(rosterFeed: .init(flushInterval: .zero), claimTTL: .seconds(100))

    private static func persisted(_ actions: [Registry.Output]) -> [StoreChange] {
        actions.compactMap { if case .persist(let change) = $0 { change } else { nil } }
    }

    private static func aliceClaim(claimedAt: Int64, lastSeen: Int64) -> StoreChange {
        .putClaim(ClaimRecord(id: "alice", signingKey: aliceKey.publicKeys.signing, agreementKey: aliceKey.publicKeys.agreement,
                              claimedAt: claimedAt, lastSeen: lastSeen))
    }

    private static let claimedRefusal = "ID alice is claimed by another key"

    /// The first key claims the ID; once its owner is gone, another key is still refused, and
    /// the owner's key comes back and refreshes the claim.
    @Test func theFirstKeyClaimsAndAnotherIsRefusedWhileTheOwnerIsAway() {
        var server = Server(configuration: Self.withClaims)
        let first = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(0))
        #expect(Self.persisted(first) == [Self.aliceClaim(claimedAt: 0, lastSeen: 0)])
        #expect(server.registry.claimedSince(alice, now: at(1)) == 0)
        _ = server.receiveBytes(server.sessionBytes(alice, .exit(id: alice)), from: A, at: at(1))
        #expect(server.registry.entry(for: alice) == nil)
        let impostor = server.register(alice, malloryKey, from: X, privateEndpoints: [], natKind: .unknown, at: at(5))
        #expect(versionless(impostor) == [.report(.refused(alice, from: X, .claimed)),
                                          .sendExtended(.refused(text: Self.claimedRefusal), to: X)])
        #expect(server.registry.entry(for: alice) == nil)
        let back = server.register(alice, aliceKey, from: X, privateEndpoints: [], natKind: .unknown, at: at(50))
        #expect(back.contains { if case .report(.registered) = $0 { true } else { false } })
        #expect(Self.persisted(back) == [Self.aliceClaim(claimedAt: 0, lastSeen: 50)])
    }

    /// A classic client proves no key: it cannot register a claimed ID, but unclaimed IDs stay open to it.
    @Test func aClassicClientCannotTakeAClaimedID() {
        var server = Server(configuration: Self.withClaims)
        _ = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(0))
        _ = server.receiveBytes(server.sessionBytes(alice, .exit(id: alice)), from: A, at: at(1))
        let refused = server.registerClassic(alice, bobPrivate, from: B, at: at(2))
        #expect(refused == [.report(.refused(alice, from: B, .claimed)), .send(.serverNotice(Self.claimedRefusal), to: B)])
        let bobRegisters = server.registerClassic(bob, bobPrivate, from: B, at: at(2))
        #expect(bobRegisters.contains { if case .report(.registered) = $0 { true } else { false } })
        #expect(Self.persisted(bobRegisters).isEmpty)
    }

    /// A claim lives a TTL after its owner's latest registration; after that another key may
    /// claim the ID, and the hourly scan deletes expired claims from the store.
    @Test func anExpiredClaimIsOpenAndScannedOut() {
        var server = Server(configuration: Self.withClaims)
        _ = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(0))
        _ = server.register(carol, carolKey, from: C, privateEndpoints: carolPrivate, natKind: .endpointIndependent, at: at(0))
        _ = server.receiveBytes(server.sessionBytes(alice, .exit(id: alice)), from: A, at: at(1))
        // At 99 s the claim lives, at 100 s it is gone.
        #expect(server.register(alice, malloryKey, from: X, privateEndpoints: [], natKind: .unknown, at: at(99))
            .contains(.report(.refused(alice, from: X, .claimed))))
        let takeover = server.register(alice, malloryKey, from: X, privateEndpoints: [], natKind: .unknown, at: at(100))
        #expect(Self.persisted(takeover) == [.putClaim(ClaimRecord(id: "alice", signingKey: malloryKey.publicKeys.signing,
                                                                  agreementKey: malloryKey.publicKeys.agreement,
                                                                  claimedAt: 100, lastSeen: 100))])
        // carol's claim (last seen at 0) expired too: the sweep's scan deletes it.
        _ = server.receiveBytes(server.sessionBytes(carol, .exit(id: carol)), from: C, at: at(101))
        let swept = server.registry.handleTimeout(now: at(150))
        #expect(Self.persisted(swept) == [.removeClaim(id: "carol")])
        #expect(server.registry.claimCount == 1)
    }

    /// Claims restored from the store (a restart) hold as before.
    @Test func restoredClaimsHoldAcrossARestart() {
        var server = Server(configuration: Self.withClaims)
        server.registry.restore(StoreSnapshot(claims: [ClaimRecord(id: "alice", signingKey: aliceKey.publicKeys.signing,
                                                                   agreementKey: aliceKey.publicKeys.agreement,
                                                                   claimedAt: -1000, lastSeen: -50),
                                                       ClaimRecord(id: "broken", signingKey: [1, 2], agreementKey: [],
                                                                   claimedAt: 0, lastSeen: 0)]))
        #expect(server.registry.claimCount == 1)
        #expect(server.register(alice, malloryKey, from: X, privateEndpoints: [], natKind: .unknown, at: at(1))
            .contains(.report(.refused(alice, from: X, .claimed))))
        let owner = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(2))
        #expect(Self.persisted(owner) == [Self.aliceClaim(claimedAt: -1000, lastSeen: 2)])
    }

    /// The owner releases its claim: another key may take the ID once the owner is gone.
    @Test func theOwnerReleasesItsClaim() {
        var server = Server(configuration: Self.withClaims)
        _ = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(0))
        let released = server.receiveBytes(server.sessionBytes(alice, .releaseClaim(id: alice)), from: A, at: at(1))
        #expect(released == [.persist(.removeClaim(id: "alice")), .sendExtended(.claimChanged(id: alice, keys: nil), to: A)])
        // Asked again (the answer was lost): the same answer, nothing to store.
        #expect(server.receiveBytes(server.sessionBytes(alice, .releaseClaim(id: alice)), from: A, at: at(2))
            == [.sendExtended(.claimChanged(id: alice, keys: nil), to: A)])
        _ = server.receiveBytes(server.sessionBytes(alice, .exit(id: alice)), from: A, at: at(3))
        let other = server.register(alice, malloryKey, from: X, privateEndpoints: [], natKind: .unknown, at: at(4))
        #expect(other.contains { if case .report(.registered) = $0 { true } else { false } })
    }

    /// The owner hands its claim to a new key it proves it holds; the old key is refused after.
    @Test func theOwnerRotatesItsClaimToANewKey() throws {
        var server = Server(configuration: Self.withClaims)
        _ = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(0))
        let newKey = identity(7)
        let statement = ExtendedMessage.rotationStatement(id: alice, newKeys: newKey.publicKeys)
        // Signed by the wrong key: nothing changes.
        let forged = Array(try malloryKey.signing.signature(for: statement))
        #expect(server.receiveBytes(server.sessionBytes(alice, .rotateKey(id: alice, newKeys: newKey.publicKeys, signature: forged)),
                                    from: A, at: at(1)) == [.report(.ignoredExtended(from: A, .badSignature))])
        let signature = Array(try newKey.signing.signature(for: statement))
        let rotated = server.receiveBytes(server.sessionBytes(alice, .rotateKey(id: alice, newKeys: newKey.publicKeys, signature: signature)),
                                          from: A, at: at(2))
        #expect(rotated == [.persist(.putClaim(ClaimRecord(id: "alice", signingKey: newKey.publicKeys.signing,
                                                          agreementKey: newKey.publicKeys.agreement, claimedAt: 0, lastSeen: 2))),
                            .sendExtended(.claimChanged(id: alice, keys: newKey.publicKeys), to: A)])
        _ = server.receiveBytes(server.sessionBytes(alice, .exit(id: alice)), from: A, at: at(3))
        #expect(server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(4))
            .contains(.report(.refused(alice, from: A, .claimed))))
        let back = server.register(alice, newKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(5))
        #expect(back.contains { if case .report(.registered) = $0 { true } else { false } })
    }

    /// Without a claim TTL (`--store memory`) nothing outlives a session, as before claims.
    @Test func withoutClaimsAnotherKeyTakesAFreeID() {
        var server = Server()
        let first = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(0))
        #expect(Self.persisted(first).isEmpty)
        _ = server.receiveBytes(server.sessionBytes(alice, .exit(id: alice)), from: A, at: at(1))
        let other = server.register(alice, malloryKey, from: X, privateEndpoints: [], natKind: .unknown, at: at(5))
        #expect(other.contains { if case .report(.registered) = $0 { true } else { false } })
    }
}

@Suite("Registry mailbox")
struct MailboxTests {
    static func configuration(_ mailbox: MailboxConfiguration = .init()) -> Registry.Configuration {
        Registry.Configuration(rosterFeed: .init(flushInterval: .zero), claimTTL: .seconds(90 * 86_400), mailbox: mailbox)
    }

    private static func persisted(_ actions: [Registry.Output]) -> [StoreChange] {
        actions.compactMap { if case .persist(let change) = $0 { change } else { nil } }
    }

    private static func mails(_ actions: [Registry.Output], to endpoint: Endpoint) -> [UInt64] {
        actions.compactMap { if case .sendExtended(.mail(let serial, _, _, _), endpoint) = $0 { serial } else { nil } }
    }

    /// carol claims her ID and leaves; alice stays online.
    private static func carolAway(_ configuration: Registry.Configuration = configuration()) -> Server {
        var server = Server(configuration: configuration)
        _ = server.register(carol, carolKey, from: C, privateEndpoints: carolPrivate, natKind: .endpointIndependent, at: at(0))
        _ = server.receiveBytes(server.sessionBytes(carol, .exit(id: carol)), from: C, at: at(1))
        _ = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(2))
        return server
    }

    private static func deposit(_ server: inout Server, query: UInt32, to recipient: ClientID, _ sealed: [UInt8],
                                at now: Instant) -> [Registry.Output] {
        server.receiveBytes(server.sessionBytes(alice, .deposit(id: alice, query: query, to: recipient, sealed: sealed)), from: A, at: now)
    }

    /// The key mail is sealed to: an offline claimed ID's, and nothing for an unclaimed one.
    @Test func aClaimLookupAnswersForOfflineClaimedIDs() {
        var server = Self.carolAway()
        let answer = server.receiveBytes(server.sessionBytes(alice, .claimLookup(id: alice, query: 4, peer: carol)), from: A, at: at(3))
        #expect(answer == [.sendExtended(.claimResult(query: 4, peer: carol, keys: carolKey.publicKeys, claimedSince: 0), to: A)])
        let none = server.receiveBytes(server.sessionBytes(alice, .claimLookup(id: alice, query: 5, peer: erin)), from: A, at: at(3))
        #expect(none == [.sendExtended(.claimResult(query: 5, peer: erin, keys: nil, claimedSince: 0), to: A)])
    }

    /// A message for offline carol is kept (and stored), delivered when she registers, sent
    /// again until she acknowledges it, then deleted; alice gets a receipt.
    @Test func mailWaitsIsDeliveredOnceAcknowledgedAndReceipted() throws {
        var server = Self.carolAway()
        let queued = Self.deposit(&server, query: 1, to: carol, [1, 2, 3], at: at(3))
        #expect(queued.contains(.sendExtended(.depositResult(query: 1, to: carol, outcome: .queued(serial: 1, keptSeconds: 604_800)), to: A)))
        #expect(Self.persisted(queued) == [.putMail(MailRecord(serial: 1, recipient: "carol", sender: "alice", queuedAt: 3, sealed: [1, 2, 3]))])
        #expect(server.registry.mailCount == 1)
        // Nothing goes while carol is away.
        #expect(Self.mails(server.registry.handleTimeout(now: at(9)), to: C).isEmpty)
        _ = server.register(carol, carolKey, from: E, privateEndpoints: carolPrivate, natKind: .endpointIndependent, at: at(10))
        let first = server.registry.handleTimeout(now: at(10))
        #expect(Self.mails(first, to: E) == [1])
        #expect(first.contains(.sendExtended(.mail(serial: 1, from: alice, queuedAt: 3, sealed: [1, 2, 3]), to: E)))
        // Unacknowledged: again after the resend interval.
        #expect(Self.mails(server.registry.handleTimeout(now: at(11)), to: E).isEmpty)
        #expect(Self.mails(server.registry.handleTimeout(now: at(12)), to: E) == [1])
        let acked = server.receiveBytes(server.sessionBytes(carol, .mailAck(id: carol, serial: 1)), from: E, at: at(13))
        #expect(Self.persisted(acked) == [.removeMail(serial: 1)])
        #expect(acked.contains(.sendExtended(.mailDelivered(to: carol, serial: 1), to: A)))
        #expect(server.registry.mailCount == 0)
        #expect(Self.mails(server.registry.handleTimeout(now: at(20)), to: E).isEmpty)
        // A second acknowledgement (a repeat) changes nothing.
        #expect(server.receiveBytes(server.sessionBytes(carol, .mailAck(id: carol, serial: 1)), from: E, at: at(21)).isEmpty)
    }

    /// A deposit sent again (its answer was lost) gets the same answer and is queued once.
    @Test func aRepeatedDepositIsQueuedOnce() {
        var server = Self.carolAway()
        let first = Self.deposit(&server, query: 7, to: carol, [1, 2], at: at(3))
        let again = Self.deposit(&server, query: 7, to: carol, [1, 2], at: at(4))
        let answer = ExtendedMessage.depositResult(query: 7, to: carol, outcome: .queued(serial: 1, keptSeconds: 604_800))
        #expect(first.contains(.sendExtended(answer, to: A)))
        #expect(again == [.sendExtended(answer, to: A)])
        #expect(server.registry.mailCount == 1)
        // Another query is another message.
        #expect(Self.persisted(Self.deposit(&server, query: 8, to: carol, [1, 2], at: at(5))).count == 1)
        #expect(server.registry.mailCount == 2)
    }

    /// Online recipients get chats, unclaimed IDs have no mailbox, a server without claims
    /// keeps no mail.
    @Test func depositsThatAreNotQueued() {
        var server = Self.carolAway()
        _ = server.register(dave, daveKey, from: D, privateEndpoints: davePrivate, natKind: .endpointIndependent, at: at(3))
        #expect(Self.deposit(&server, query: 1, to: dave, [1], at: at(4))
            == [.sendExtended(.depositResult(query: 1, to: dave, outcome: .recipientOnline), to: A)])
        #expect(Self.deposit(&server, query: 2, to: erin, [1], at: at(4))
            == [.sendExtended(.depositResult(query: 2, to: erin, outcome: .unknownRecipient), to: A)])
        var plain = Server()
        _ = plain.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(0))
        #expect(Self.deposit(&plain, query: 3, to: carol, [1], at: at(1))
            == [.sendExtended(.depositResult(query: 3, to: carol, outcome: .refused(.noMailbox)), to: A)])
    }

    /// Per-recipient, per-sender and total limits refuse with their reason; the TTL deletes.
    @Test func limitsAndExpiry() {
        var server = Self.carolAway(Self.configuration(.init(ttl: .seconds(100), perRecipient: 2, perSenderPerMinute: 3, totalBytes: 1000)))
        for query in UInt32(1)...2 {
            #expect(Self.persisted(Self.deposit(&server, query: query, to: carol, [UInt8(query)], at: at(3))).count == 1)
        }
        #expect(Self.deposit(&server, query: 3, to: carol, [3], at: at(3))
            == [.sendExtended(.depositResult(query: 3, to: carol, outcome: .refused(.recipientFull)), to: A)])
        // A second offline recipient: erin claims and leaves.
        _ = server.register(erin, malloryKey, from: X, privateEndpoints: [], natKind: .unknown, at: at(3))
        _ = server.receiveBytes(server.sessionBytes(erin, .exit(id: erin)), from: X, at: at(3))
        #expect(Self.deposit(&server, query: 4, to: erin, Array(repeating: 0, count: 999), at: at(3))
            == [.sendExtended(.depositResult(query: 4, to: erin, outcome: .refused(.storeFull)), to: A)])
        #expect(Self.persisted(Self.deposit(&server, query: 5, to: erin, [5], at: at(3))).count == 1)
        #expect(Self.deposit(&server, query: 6, to: erin, [6], at: at(3))
            == [.sendExtended(.depositResult(query: 6, to: erin, outcome: .refused(.rateLimited)), to: A)])
        // 100 s after they were queued, the sweep deletes all three.
        let swept = server.registry.handleTimeout(now: at(103))
        #expect(Set(Self.persisted(swept)) == [.removeMail(serial: 1), .removeMail(serial: 2), .removeMail(serial: 3)])
        #expect(server.registry.mailCount == 0)
    }

    /// Mail restored from the store (a restart) is delivered, and new serials follow it.
    @Test func restoredMailIsDeliveredAfterARestart() {
        var server = Server(configuration: Self.configuration())
        server.registry.restore(StoreSnapshot(
            claims: [ClaimRecord(id: "carol", signingKey: carolKey.publicKeys.signing, agreementKey: carolKey.publicKeys.agreement,
                                 claimedAt: 0, lastSeen: 0)],
            mail: [MailRecord(serial: 7, recipient: "carol", sender: "alice", queuedAt: 0, sealed: [9])]))
        _ = server.register(alice, aliceKey, from: A, privateEndpoints: alicePrivate, natKind: .endpointIndependent, at: at(1))
        #expect(Self.deposit(&server, query: 1, to: carol, [1], at: at(2))
            .contains(.sendExtended(.depositResult(query: 1, to: carol, outcome: .queued(serial: 8, keptSeconds: 604_800)), to: A)))
        _ = server.register(carol, carolKey, from: C, privateEndpoints: carolPrivate, natKind: .endpointIndependent, at: at(3))
        #expect(Self.mails(server.registry.handleTimeout(now: at(3)), to: C) == [7, 8])
    }
}

/// Port mappings (PCP, NAT-PMP, UPnP) reported in keep-alives, and punch order for NATs
/// that remap after unsolicited inbound.
@Suite("Registry port mappings and punch order")
struct PortMappingRegistryTests {
    private func mappedKeepAlive(_ server: inout Server, _ clientID: ClientID, kind: NATKind, mapped: Endpoint?,
                                 from source: Endpoint, at now: Instant) -> [Registry.Output] {
        server.receiveBytes(server.sessionBytes(clientID, .keepAlive(id: clientID, natKind: kind, mappedEndpoint: mapped)),
                            from: source, at: now)
    }

    private func punchedInfo(_ actions: [Registry.Output], to destination: Endpoint) -> PeerInfo? {
        for case .sendExtended(.punch(let peer, _, _), let target) in actions where target == destination { return peer }
        return nil
    }

    @Test func aMappingOnThePublicAddressReachesPeers() throws {
        var server = Server.withThree()
        let mapped = ep("198.51.100.9:10081")
        _ = mappedKeepAlive(&server, carol, kind: .endpointDependent, mapped: mapped, from: C, at: at(1))
        #expect(server.registry.entry(for: carol)?.mappedEndpoint == mapped)
        let punch = server.connect(alice, to: carol, from: A, at: at(2))
        #expect(punchedInfo(punch, to: A)?.mappedEndpoint == mapped)
        // The mapping ends: the next keep-alive without it clears it.
        _ = mappedKeepAlive(&server, carol, kind: .endpointDependent, mapped: nil, from: C, at: at(3))
        #expect(server.registry.entry(for: carol)?.mappedEndpoint == nil)
    }

    @Test func aMappingOnAnotherPublicAddressIsDropped() throws {
        var server = Server.withThree()
        // Someone else's address: peers' checks would go to a third party.
        _ = mappedKeepAlive(&server, carol, kind: .endpointDependent, mapped: ep("192.0.2.50:10081"), from: C, at: at(1))
        #expect(server.registry.entry(for: carol)?.mappedEndpoint == nil)
        #expect(punchedInfo(server.connect(alice, to: carol, from: A, at: at(2)), to: A)?.mappedEndpoint == nil)
    }

    @Test func aMappingInACarrierNATsRangeIsShownOnlyBehindTheSamePublicAddress() throws {
        var server = Server.withThree()
        _ = server.register(dave, daveKey, from: D, privateEndpoints: davePrivate, natKind: .endpointIndependent, at: at(0))
        let shared = ep("100.64.0.7:10081")
        _ = mappedKeepAlive(&server, alice, kind: .endpointIndependent, mapped: shared, from: A, at: at(1))
        #expect(server.registry.entry(for: alice)?.mappedEndpoint == shared)
        // dave shares alice's public address (203.0.113.7): he is told; carol is not.
        #expect(punchedInfo(server.connect(dave, to: alice, from: D, at: at(2)), to: D)?.mappedEndpoint == shared)
        #expect(punchedInfo(server.connect(carol, to: alice, from: C, at: at(2)), to: C)?.mappedEndpoint == nil)
    }

    @Test func theInPlacePathLeavesAChangedMappingToTheGeneralPath() throws {
        var server = Server.withThree()
        let mapped = ep("203.0.113.7:10081")
        let first = server.sessionBytes(alice, .keepAlive(id: alice, natKind: .endpointIndependent, mappedEndpoint: mapped))
        #expect(!first.withUnsafeBytes { server.registry.acknowledgeKeepAlive($0, from: A, now: at(1)) })
        _ = server.receiveBytes(first, from: A, at: at(1))
        #expect(server.registry.entry(for: alice)?.mappedEndpoint == mapped)
        // The same mapping again changes nothing: acknowledged in place.
        let again = server.sessionBytes(alice, .keepAlive(id: alice, natKind: .endpointIndependent, mappedEndpoint: mapped))
        #expect(again.withUnsafeBytes { server.registry.acknowledgeKeepAlive($0, from: A, now: at(2)) })
    }

    @Test func theSideWhoseNATRemapsAfterUnsolicitedInboundPunchesFirst() throws {
        var server = Server.withThree()
        _ = server.keepAlive(carol, natKind: .endpointIndependentRemappedByInbound, from: C, at: at(1))
        let actions = server.connect(alice, to: carol, from: A, at: at(2))
        var delays: [Endpoint: UInt32] = [:]
        for case .sendExtended(.punch(_, _, let delay), let target) in actions { delays[target] = delay }
        #expect(delays == [A: 800, C: 0])
    }
}
