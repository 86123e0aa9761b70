import Addressing
import Crypto
import Testing
@testable import ChatRouter
import ClientSession
import HolePunch
import Identity
import MonotonicTime
import Registry
import Wire
import TestSupport

// Two (or three) ExtendedRouters wired through a real Registry acting as the server, with
// instantaneous in-memory delivery. The hosts have public addresses (no NAT), so punching
// works whenever direct datagrams are delivered.

private func id(_ text: String) -> ClientID { try! ClientID(text) }
private func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }
private func ms(_ milliseconds: Int64) -> Instant { Instant.zero + .milliseconds(milliseconds) }

private let alice = id("alice"), bob = id("bob"), carol = id("carol")
private let S = ep("198.51.100.1:10080")
private let A = ep("203.0.113.7:40001"), B = ep("198.51.100.9:50000"), C = ep("192.0.2.4:60000")
private let elsewhere = ep("192.0.2.66:6666")

/// Dated cookies, like the server's: the high word is the issue time, the low one names the source.
private struct FakeValidator: AddressValidator {
    func cookie(for source: Endpoint, now: Instant) -> Token128 {
        Token128(high: UInt64(now.nanoseconds), low: UInt64(source.address.bits) << 16 | UInt64(source.port))
    }

    func issueTime(of cookie: Token128, for source: Endpoint, now: Instant) -> Instant? {
        guard cookie.low == UInt64(source.address.bits) << 16 | UInt64(source.port), cookie.high <= UInt64(Int64.max) else { return nil }
        let issued = Instant(nanoseconds: Int64(cookie.high))
        return issued <= now && now - issued <= cookieLifetime ? issued : nil
    }

    var cookieLifetime: Duration { .seconds(60) }
}

private func identity(_ seed: UInt8) -> IdentityKey {
    IdentityKey(signing: try! Curve25519.Signing.PrivateKey(rawRepresentation: Array(repeating: seed, count: 32)),
                agreement: try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: Array(repeating: seed &+ 0x40, count: 32)))
}

private let keys: [ClientID: IdentityKey] = [alice: identity(1), bob: identity(2), carol: identity(3)]

/// A member's identity: the fixed ones above, else one derived from its name.
private func identity(of member: ClientID) -> IdentityKey {
    keys[member] ?? identity(UInt8(truncatingIfNeeded: member.rawValue.utf8.reduce(10) { $0 &+ Int($1) }))
}
private let mallory = identity(9)

/// One datagram on the wire.
private struct Datagram {
    var from: ClientID
    var at: Instant
    var destination: Endpoint
    var bytes: [UInt8]
    var message: ExtendedMessage? { try? ExtendedMessage.decode(bytes) }

    /// The chat inside, sent directly or through the relay.
    var chat: (messageID: UInt64, relayed: Bool)? {
        switch message {
        case .chat(_, _, let messageID, _)?: return (messageID, false)
        case .relay(_, _, let payload)?:
            if case .chat(_, _, let messageID, _)? = try? ExtendedMessage.decode(payload) { return (messageID, true) }
            return nil
        default: return nil
        }
    }
}

/// Roster datagrams go out as soon as they are due (coalescing is RosterFeed's own test).
private let instantRoster = Registry.Configuration(rosterFeed: .init(flushInterval: .zero))

/// What the server asks the world to do.
private typealias ServerOutput = Registry.Output

/// A member's natchat/2 session with the server, kept as ``ClientSession`` keeps it: the
/// router hands its messages for the server over unsealed, and each is sealed with the
/// session's next counter and its tag under the session key.
private struct TestSession {
    var key: KeyBytes
    var counter: UInt64 = 0

    mutating func seal(_ message: ExtendedMessage) -> [UInt8] {
        counter += 1
        return SessionCrypto.sealed(message, counter: counter, key: key)
    }
}

private struct World {
    var registry: Registry
    var random = SplitMix64(state: 5)
    var routers: [ClientID: ExtendedRouter] = [:]
    var sessions: [ClientID: TestSession] = [:]
    var endpoints: [ClientID: Endpoint] = [:]
    /// Datagrams each member's router asked to send, not delivered yet, in order.
    var outboxes: [ClientID: [(bytes: [UInt8], destination: Endpoint)]] = [:]
    var now = Instant.zero
    /// Whether peer-to-peer datagrams are delivered (server traffic always is).
    var directUp = true
    /// Drops a datagram (sender, destination, decoded message) when it returns `true`.
    var drop: (ClientID, Endpoint, ExtendedMessage) -> Bool = { _, _, _ in false }
    /// Drops a datagram from the server (recipient, message) when it returns `true`.
    var dropFromServer: (ClientID, ExtendedMessage) -> Bool = { _, _ in false }
    var wire: [Datagram] = []
    var events: [ClientID: [ExtendedRouter.Event]] = [:]

    init(_ members: [(ClientID, Endpoint)], configuration: Registry.Configuration = instantRoster) {
        registry = Registry(configuration: configuration, validator: FakeValidator(),
                            serverKey: try! .init(rawRepresentation: Array(repeating: 0x77, count: 32)))
        for (member, endpoint) in members { join(member, at: endpoint) }
    }

    func owner(of endpoint: Endpoint) -> ClientID? { endpoints.first { $0.value == endpoint }?.key }

    mutating func join(_ member: ClientID, at endpoint: Endpoint, natKind: NATKind = .none) {
        let key = identity(of: member)
        let cookie = FakeValidator().cookie(for: endpoint, now: now)
        let challenge = registry.receive(.register(member, privateAddress: endpoint.address, offers: [ExtendedMessage.offer]),
                                         from: endpoint, now: now)
        #expect(challenge == [.sendExtended(.challenge(cookie: cookie), to: endpoint)])
        let bytes = SessionCrypto.signedRegistration(id: member, cookie: cookie, privateEndpoints: [], natKind: natKind, identity: key)
        let actions = registry.receive(try! ExtendedDatagram.decode(bytes), bytes: bytes, from: endpoint, now: now, random: &random)
        guard case .sendExtended(.registered(let serverKey, let observed, _, _, let nonce, let echoed), _)? = actions.first else {
            Issue.record("\(member) not registered: \(actions)")
            return
        }
        #expect(observed == endpoint)
        #expect(echoed == cookie)
        let sessionKey = SessionCrypto.sessionKey(privateKey: key.agreement, peerPublicKey: serverKey, cookie: cookie, nonce: nonce,
                                                  id: member)!
        var router = ExtendedRouter(selfID: member, identity: key, firstMessageID: UInt64(endpoints.count + 1) * 1_000,
                                    transactionSeed: UInt64(endpoints.count + 1))
        router.natKind = natKind
        routers[member] = router
        sessions[member] = TestSession(key: sessionKey)
        endpoints[member] = endpoint
        perform(actions)
        pump()
    }

    /// Gives `member`'s router an input (called with the router and the current time) and
    /// carries out what it returns: messages for the server are sealed in the member's
    /// session, datagrams wait in its outbox for ``pump()``, events are kept.
    mutating func input(_ member: ClientID,
                        _ body: (inout ExtendedRouter, Instant) throws -> [ExtendedRouter.Output]) rethrows {
        let now = self.now
        let outputs = try body(&routers[member]!, now)
        for output in outputs {
            switch output {
            case .sendToServer(let message):
                outboxes[member, default: []].append((sessions[member]!.seal(message), S))
            case .send(let bytes, let destination):
                outboxes[member, default: []].append((bytes, destination))
            case .event(let event):
                events[member, default: []].append(event)
            case .sendFromProbeSocket, .openProbeSockets, .closeProbeSockets:
                break   // no probe sockets in this simulation (no hard-to-easy pairs)
            }
        }
    }

    mutating func perform(_ actions: [ServerOutput]) {
        for case .sendExtended(let message, let destination) in actions {
            guard let recipient = owner(of: destination) else { continue }
            if dropFromServer(recipient, message) { continue }
            input(recipient) { $0.handleServerMessage(message, now: $1) }
        }
    }

    /// Sends the roster datagrams the server has due.
    mutating func flushRoster() {
        guard let due = registry.rosterDeadline, due <= now else { return }
        perform(registry.flushRoster(now: now))
    }

    /// Delivers every pending datagram until nothing moves.
    mutating func pump() {
        var moved = true
        var rounds = 0
        while moved {
            moved = false
            rounds += 1
            guard rounds < 1_000 else { Issue.record("datagrams never settle"); return }
            if let due = registry.rosterDeadline, due <= now {
                moved = true
                flushRoster()
            }
            for sender in routers.keys.sorted() {
                while let transmit = outboxes[sender]?.first {
                    outboxes[sender]!.removeFirst()
                    moved = true
                    deliver(transmit.bytes, to: transmit.destination, from: sender)
                }
            }
        }
    }

    private mutating func deliver(_ bytes: [UInt8], to destination: Endpoint, from sender: ClientID) {
        wire.append(Datagram(from: sender, at: now, destination: destination, bytes: bytes))
        guard let datagram = try? ExtendedDatagram.decode(bytes) else {
            Issue.record("\(sender) sent an undecodable datagram")
            return
        }
        let message = datagram.message
        if drop(sender, destination, message) { return }
        let source = endpoints[sender]!
        if destination == S {
            perform(registry.receive(datagram, bytes: bytes, from: source, now: now, random: &random))
        } else if directUp, let recipient = owner(of: destination) {
            input(recipient) { $0.handlePeerMessage(message, bytes: bytes, from: source, now: $1) }
        }
    }

    mutating func run(until end: Instant) {
        pump()
        var steps = 0
        while let next = (routers.values.compactMap(\.nextDeadline) + [registry.rosterDeadline].compactMap { $0 }).min(), next <= end {
            steps += 1
            guard steps < 100_000 else { Issue.record("timers never settle"); return }
            now = max(now, next)
            for member in routers.keys.sorted() {
                if let deadline = routers[member]!.nextDeadline, deadline <= now { input(member) { $0.handleTimeout(now: $1) } }
            }
            pump()
        }
        now = max(now, end)
    }

    mutating func send(_ text: String, from sender: ClientID, to recipient: ClientID) throws {
        try input(sender) { router, now throws(ExtendedRouter.SendError) in try router.sendChat(to: recipient, text: text, now: now) }
        pump()
    }

    /// The member's events so far (after delivering whatever is pending), then forgets them.
    mutating func takeEvents(_ member: ClientID) -> [ExtendedRouter.Event] {
        pump()
        defer { events[member] = [] }
        return events[member] ?? []
    }

    func chats(_ member: ClientID) -> [(from: ClientID, text: String, route: ExtendedRouter.Route)] {
        (events[member] ?? []).compactMap { if case .chat(let from, let text, let route) = $0 { (from, text, route) } else { nil } }
    }
}

private func peerInfo(_ member: ClientID, _ endpoint: Endpoint, keys identityKey: IdentityKey? = nil) -> PeerInfo {
    PeerInfo(id: member, publicEndpoint: endpoint, privateEndpoints: [], natKind: .none, dialect: .extended,
             keys: (identityKey ?? keys[member]!).publicKeys)
}

/// A roster datagram announcing `info` at `version` (higher than anything the registry issued).
private func announce(_ info: PeerInfo, version: UInt64) -> ExtendedMessage {
    .roster(RosterDelta(epoch: 1, sequence: 999, version: version, registered: 2, scope: .complete, synced: false,
                        records: [.present(RosterEntry(info: info, order: 1, version: version))]))
}

private func pairKey(_ me: IdentityKey, _ self_: ClientID, _ peer: ClientID, _ peerKey: IdentityKey) -> KeyBytes {
    SessionCrypto.pairKey(privateKey: me.agreement, peerPublicKey: peerKey.publicKeys.agreement, selfID: self_, peerID: peer)!
}

@Suite("ExtendedRouter end to end")
struct ExtendedRouterEndToEndTests {
    @Test func joiningListsPeersWithTheirKeys() {
        var world = World([(alice, A), (bob, B)])
        // alice was alone and whole when bob registered: news. bob got the listing, then "whole".
        #expect(world.takeEvents(alice) == [.rosterSynced(registered: 1), .joined(peerInfo(bob, B), .registered)])
        #expect(world.takeEvents(bob) == [.joined(peerInfo(alice, A), .listed), .rosterSynced(registered: 2)])
        #expect(world.routers[alice]!.roster.listedIDs == [bob])
        #expect(world.routers[alice]!.path(to: bob) == PathAgent.Path.none)
        #expect(world.routers[alice]!.peer(bob)?.keys == keys[bob]!.publicKeys)
    }

    @Test func relayFirstThenDirectAfterPings() throws {
        var world = World([(alice, A), (bob, B)])
        _ = world.takeEvents(alice); _ = world.takeEvents(bob)
        try world.send("hello bob, this is secret", from: alice, to: bob)
        // The first message went through the server while the punch was set up.
        #expect(world.chats(bob).map(\.text) == ["hello bob, this is secret"])
        #expect(world.chats(bob).first?.route == .relayed)
        let firstChats = world.wire.filter { $0.from == alice && $0.chat != nil }
        #expect(firstChats.count == 1)
        #expect(firstChats.first?.chat?.relayed == true)
        #expect(firstChats.first?.destination == S)
        // The connect request made the server punch both: each verified the other.
        #expect(world.routers[alice]!.path(to: bob) == .direct(B, .publicEndpoint))
        #expect(world.routers[bob]!.path(to: alice) == .direct(A, .publicEndpoint))
        let aliceEvents = world.takeEvents(alice)
        #expect(aliceEvents.filter { if case .pathChanged = $0 { true } else { false } }
                == [.pathChanged(bob, .relayed), .pathChanged(bob, .direct(B, .publicEndpoint))])
        #expect(aliceEvents.contains(.delivered(to: bob, messageID: 1_000, attempts: 1)))
        #expect(world.routers[alice]!.messagesInFlight == 0)
        #expect(world.wire.contains { $0.from == alice && $0.destination == B && $0.message.map { if case .ping = $0 { true } else { false } } == true })

        // From now on chats go straight to the peer, both ways.
        try world.send("second", from: alice, to: bob)
        try world.send("reply", from: bob, to: alice)
        #expect(world.chats(bob).last?.text == "second")
        #expect(world.chats(bob).last?.route == .direct(A))
        #expect(world.chats(alice).last?.text == "reply")
        #expect(world.chats(alice).last?.route == .direct(B))
        let secondChat = world.wire.last { $0.from == alice && $0.chat != nil }
        #expect(secondChat?.destination == B)
        #expect(secondChat?.chat?.relayed == false)

        // Sealed: the text never appears on the wire, relayed or direct.
        let secret = Array("this is secret".utf8), second = Array("second".utf8)
        for datagram in world.wire {
            #expect(!datagram.bytes.contains(subsequence: secret))
            #expect(!datagram.bytes.contains(subsequence: second))
        }
    }

    @Test func aHeldPeerGetsNoChatAndItsChatsAreDroppedUntilReleased() throws {
        var world = World([(alice, A), (bob, B)])
        _ = world.takeEvents(alice); _ = world.takeEvents(bob)
        world.routers[alice]!.hold(bob)
        #expect(world.routers[alice]!.heldPeers == [bob])
        // To bob: not sent, nothing in flight.
        try world.send("not for an unchecked key", from: alice, to: bob)
        #expect(world.takeEvents(alice) == [.chatHeld(to: bob, text: "not for an unchecked key")])
        #expect(world.routers[alice]!.messagesInFlight == 0)
        #expect(world.chats(bob).isEmpty)
        // From bob: dropped, not acknowledged, reported once whatever the retransmissions.
        try world.send("it is me", from: bob, to: alice)
        world.run(until: world.now + .seconds(3))
        #expect(world.takeEvents(alice).filter { if case .pathChanged = $0 { false } else { true } } == [.chatFromHeldPeer(bob)])
        #expect(world.routers[bob]!.messagesInFlight == 1)
        #expect(!world.takeEvents(bob).contains { if case .delivered = $0 { true } else { false } })
        // Released: bob's next retransmission is shown and acknowledged; alice's chat goes out.
        world.routers[alice]!.release(bob)
        world.run(until: world.now + .seconds(3))
        #expect(world.chats(alice).map(\.text) == ["it is me"])
        #expect(world.takeEvents(bob).contains { if case .delivered(to: alice, _, _) = $0 { true } else { false } })
        try world.send("checked now", from: alice, to: bob)
        #expect(world.chats(bob).map(\.text) == ["checked now"])
    }

    @Test func shownOnceWhenDeliveredBothDirectAndRelayed() throws {
        var world = World([(alice, A), (bob, B)])
        try world.send("warm-up", from: alice, to: bob)
        #expect(world.routers[alice]!.path(to: bob)?.directEndpoint == B)
        _ = world.takeEvents(alice); _ = world.takeEvents(bob)
        // bob's direct acks get lost: alice's retry goes through the relay.
        world.drop = { sender, destination, message in
            if sender == bob, destination == A, case .chatAck = message { return true }
            return false
        }
        try world.send("only once", from: alice, to: bob)
        world.run(until: world.now + .seconds(2))
        let copies = world.wire.filter { $0.from == alice && $0.chat?.messageID == 1_001 }
        #expect(copies.map { $0.chat?.relayed } == [false, true])
        #expect(world.chats(bob).map(\.text) == ["only once"])
        #expect(world.chats(bob).first?.route == .direct(A))
        #expect(world.takeEvents(alice).contains(.delivered(to: bob, messageID: 1_001, attempts: 2)))
        #expect(world.routers[alice]!.messagesInFlight == 0)
    }

    @Test func acksStopRetransmission() throws {
        var world = World([(alice, A), (bob, B)])
        try world.send("acked", from: alice, to: bob)
        world.run(until: ms(60_000))
        #expect(world.wire.filter { $0.from == alice && $0.chat?.messageID == 1_000 }.count == 1)
        #expect(world.routers[alice]!.messagesInFlight == 0)
        #expect(!(world.events[alice] ?? []).contains { if case .undelivered = $0 { true } else { false } })
        // The path is held by keep-alives the whole time.
        #expect(world.routers[alice]!.path(to: bob) == .direct(B, .publicEndpoint))

        // Without acks (bob receives nothing) alice retries with backoff, then gives up.
        var lossy = World([(alice, A), (bob, B)])
        lossy.drop = { _, destination, message in
            if destination == B { return true }
            if case .relay = message { return true }
            return false
        }
        try lossy.send("lost", from: alice, to: bob)
        // Reported at the 30 s deadline, not before.
        lossy.run(until: ms(29_999))
        #expect(!(lossy.events[alice] ?? []).contains(.undelivered(to: bob, text: "lost", reason: .notAcknowledged)))
        lossy.run(until: ms(31_000))
        let attempts = lossy.wire.filter { $0.from == alice && $0.chat?.messageID == 1_000 }
        // 400 ms doubling to the 2 s maximum, then every 2 s until the 30 s deadline.
        #expect(attempts.map(\.at) == ([0, 400, 1_200, 2_800] + Array(stride(from: 4_800, through: 28_800, by: 2_000))).map(ms))
        #expect((lossy.events[alice] ?? []).contains(.undelivered(to: bob, text: "lost", reason: .notAcknowledged)))
        #expect(lossy.routers[alice]!.messagesInFlight == 0)
        #expect(lossy.chats(bob).isEmpty)
    }

    @Test func forgedChatIsDroppedAndReported() throws {
        var world = World([(alice, A), (bob, B)])
        _ = world.takeEvents(alice)
        let before = world.wire.count
        // mallory claims to be bob, sealing with a key from her own agreement key.
        let forgedKey = pairKey(mallory, bob, alice, keys[alice]!)
        let sealed = try #require(SessionCrypto.seal("send me your password", from: bob, to: alice, messageID: 7, key: forgedKey))
        let forged = ExtendedMessage.chat(from: bob, to: alice, messageID: 7, sealed: sealed)
        world.input(alice) { $0.handlePeerMessage(forged, bytes: forged.encode(), from: elsewhere, now: $1) }
        // Through the relay too (the server vouches only for the sender's ID, not the content).
        world.input(alice) { $0.handleServerMessage(.relayed(from: bob, payload: forged.encode()), now: $1) }
        // A genuine ciphertext altered in flight.
        var altered = try #require(SessionCrypto.seal("hi", from: bob, to: alice, messageID: 8,
                                                        key: pairKey(keys[bob]!, bob, alice, keys[alice]!)))
        altered[0] ^= 0x01
        let alteredChat = ExtendedMessage.chat(from: bob, to: alice, messageID: 8, sealed: altered)
        world.input(alice) { $0.handlePeerMessage(alteredChat, bytes: alteredChat.encode(), from: B, now: $1) }
        // A ping tagged under the wrong key.
        let ping = SessionCrypto.sealed(.ping(from: bob, to: alice, transaction: 1), key: forgedKey)
        let pingMessage = try ExtendedMessage.decode(ping)
        world.input(alice) { $0.handlePeerMessage(pingMessage, bytes: ping, from: elsewhere, now: $1) }
        world.pump()
        #expect(world.takeEvents(alice) == [.forged(claimedFrom: bob), .forged(claimedFrom: bob), .forged(claimedFrom: bob),
                                            .forged(claimedFrom: bob)])
        #expect(!world.wire.dropFirst(before).contains { $0.from == alice }) // no ack, no pong
        #expect(world.routers[alice]!.path(to: bob) == PathAgent.Path.none)
    }

    @Test func datagramsForSomeoneElseAreDroppedSilently() throws {
        var world = World([(alice, A), (bob, B), (carol, C)])
        _ = world.takeEvents(alice)
        let before = world.wire.count
        // bob → carol, sealed correctly for carol, arriving at alice (a colliding private address).
        let forCarol = try #require(SessionCrypto.seal("hi carol", from: bob, to: carol, messageID: 1,
                                                         key: pairKey(keys[bob]!, bob, carol, keys[carol]!)))
        let chat = ExtendedMessage.chat(from: bob, to: carol, messageID: 1, sealed: forCarol)
        world.input(alice) { $0.handlePeerMessage(chat, bytes: chat.encode(), from: B, now: $1) }
        // Addressed to carol but sealed with the alice–bob key.
        let misaddressed = try #require(SessionCrypto.seal("hi", from: bob, to: carol, messageID: 2,
                                                             key: pairKey(keys[bob]!, bob, alice, keys[alice]!)))
        let other = ExtendedMessage.chat(from: bob, to: carol, messageID: 2, sealed: misaddressed)
        world.input(alice) { $0.handlePeerMessage(other, bytes: other.encode(), from: B, now: $1) }
        // A check and an ack for carol.
        let bobCarol = pairKey(keys[bob]!, bob, carol, keys[carol]!)
        for message: ExtendedMessage in [.ping(from: bob, to: carol, transaction: 1),
                                         .pong(from: bob, to: carol, transaction: 1, observed: C),
                                         .chatAck(from: bob, to: carol, messageID: 1)] {
            let bytes = SessionCrypto.sealed(message, key: bobCarol)
            world.input(alice) { $0.handlePeerMessage(message, bytes: bytes, from: B, now: $1) }
        }
        // The relay says the sender is carol, the inner chat says bob: dropped.
        let bobAlice = try #require(SessionCrypto.seal("x", from: bob, to: alice, messageID: 3,
                                                        key: pairKey(keys[bob]!, bob, alice, keys[alice]!)))
        let relayed = ExtendedMessage.relayed(from: carol,
                                              payload: ExtendedMessage.chat(from: bob, to: alice, messageID: 3, sealed: bobAlice).encode())
        world.input(alice) { $0.handleServerMessage(relayed, now: $1) }
        // From an ID alice does not know.
        let stranger = ExtendedMessage.ping(from: id("zed"), to: alice, transaction: 1)
        world.input(alice) { $0.handlePeerMessage(stranger, bytes: stranger.encode() + Token128.zero.bytes, from: elsewhere, now: $1) }
        world.pump()
        #expect(world.takeEvents(alice) == [])
        // Nothing to anyone but the server, which is only asked who zed is (the next check
        // from zed could then be answered, if the server vouches for it).
        let sent = world.wire.dropFirst(before).filter { $0.from == alice }
        #expect(sent.allSatisfy { $0.destination == S })
        #expect(sent.compactMap { if case .lookup(_, _, let peer)? = $0.message { peer } else { nil } } == [id("zed")])
    }

    @Test func keyChangeIsReportedAndTheOldKeyKept() throws {
        var world = World([(alice, A), (bob, B)])
        _ = world.takeEvents(alice)
        world.input(alice) { $0.handleServerMessage(announce(peerInfo(bob, ep("192.0.2.200:1"), keys: mallory), version: 1_000), now: $1) }
        #expect(world.takeEvents(alice) == [.keyChanged(bob)])
        #expect(world.routers[alice]!.peer(bob)?.keys == keys[bob]!.publicKeys)
        #expect(world.routers[alice]!.peer(bob)?.publicEndpoint == B) // the announcement was not taken at all
        // A punch naming the new keys is not acted on either.
        let punch = ExtendedMessage.punch(peer: peerInfo(bob, ep("192.0.2.200:1"), keys: mallory), round: 1, delayMillis: 0)
        world.input(alice) { $0.handleServerMessage(punch, now: $1) }
        world.pump()
        #expect(!world.wire.contains { $0.from == alice && $0.destination == ep("192.0.2.200:1") })
        // The real bob still talks to alice under the pinned key.
        try world.send("still me", from: bob, to: alice)
        #expect(world.chats(alice).map(\.text) == ["still me"])
        try world.send("and you", from: alice, to: bob)
        #expect(world.chats(bob).map(\.text) == ["and you"])
        // The same keys again are fine: an update, not a change.
        var moved = peerInfo(bob, B)
        moved.natKind = .endpointIndependent
        world.input(alice) { $0.handleServerMessage(announce(moved, version: 1_001), now: $1) }
        #expect(world.takeEvents(alice).last == .updated(moved))
    }

    @Test func lostDirectPathFallsBackToTheRelay() throws {
        var world = World([(alice, A), (bob, B)])
        try world.send("warm-up", from: alice, to: bob)
        #expect(world.routers[alice]!.path(to: bob) == .direct(B, .publicEndpoint))
        _ = world.takeEvents(alice); _ = world.takeEvents(bob)
        world.directUp = false
        // Attempt 1 takes the dead direct path; attempt 2 (400 ms) the relay, and the
        // unacknowledged chat makes alice check the path at once.
        try world.send("via relay", from: alice, to: bob)
        world.run(until: ms(1_000))
        #expect(world.chats(bob).map(\.text) == ["via relay"])
        #expect(world.chats(bob).first?.route == .relayed)
        #expect(world.takeEvents(alice).contains(.delivered(to: bob, messageID: 1_001, attempts: 2)))
        // Suspicion at 0.4 s starts checks every 500 ms, but the path is given up only at
        // the consent timeout: 15 s after the last answered check (0 s).
        world.run(until: ms(14_999))
        #expect(world.routers[alice]!.path(to: bob) == .direct(B, .publicEndpoint))
        world.run(until: ms(15_000))
        let pathEvents = world.takeEvents(alice).filter { if case .pathChanged = $0 { true } else { false } }
        #expect(pathEvents == [.pathChanged(bob, .relayed)])
        #expect(world.routers[alice]!.path(to: bob) == .relayed)
        // A new round was requested from the server.
        let connects = world.wire.filter {
            guard $0.from == alice, $0.at > .zero, case .connect? = $0.message else { return false }
            return true
        }
        #expect(!connects.isEmpty)
        // The next chat goes through the relay at once.
        try world.send("next", from: alice, to: bob)
        #expect(world.wire.last { $0.from == alice && $0.chat != nil }?.chat?.relayed == true)
        #expect(world.chats(bob).last?.text == "next")
        #expect(world.takeEvents(alice).contains(.delivered(to: bob, messageID: 1_002, attempts: 1)))
    }

    /// A captured chat and a captured ack from the peer, replayed from its address every
    /// 500 ms, are genuine (the chat is acknowledged each time, and shown once) but prove
    /// nothing about the direct path now: it is lost at the consent timeout, 15 s after the
    /// last answered check (0 s), exactly as without them. Only pongs to the agent's own
    /// checks refresh consent; the router gives the agent nothing for chat or acks.
    @Test func replayedChatAndAcksDoNotKeepADeadPath() throws {
        var world = World([(alice, A), (bob, B)])
        try world.send("warm-up", from: alice, to: bob)
        #expect(world.routers[alice]!.path(to: bob) == .direct(B, .publicEndpoint))
        #expect(world.routers[bob]!.path(to: alice) == .direct(A, .publicEndpoint))
        try world.send("second", from: alice, to: bob) // bob acknowledges it directly
        try world.send("captured", from: bob, to: alice)
        let isDirectAck: (Datagram) -> Bool = { if case .chatAck? = $0.message { true } else { false } }
        let ack = try #require(world.wire.last { $0.from == bob && $0.destination == A && isDirectAck($0) })
        let chat = try #require(world.wire.last { $0.from == bob && $0.destination == A && $0.chat?.relayed == false })
        let ackMessage = try #require(ack.message), chatMessage = try #require(chat.message)
        #expect(world.chats(alice).map(\.text) == ["captured"])
        _ = world.takeEvents(alice)
        let before = world.wire.count
        world.directUp = false
        for step in 1...29 {
            world.run(until: ms(Int64(step) * 500))
            world.input(alice) { $0.handlePeerMessage(chatMessage, bytes: chat.bytes, from: B, now: $1) }
            world.input(alice) { $0.handlePeerMessage(ackMessage, bytes: ack.bytes, from: B, now: $1) }
        }
        world.run(until: ms(14_999))
        #expect(world.routers[alice]!.path(to: bob) == .direct(B, .publicEndpoint))
        world.run(until: ms(15_000))
        #expect(world.routers[alice]!.path(to: bob) == .relayed)
        let events = world.takeEvents(alice)
        #expect(events.filter { if case .pathChanged = $0 { true } else { false } } == [.pathChanged(bob, .relayed)])
        #expect(!events.contains { if case .chat = $0 { true } else { false } }) // the replays were shown never again
        // Each replayed chat was genuine and acknowledged (into the void).
        #expect(world.wire.dropFirst(before).filter { $0.from == alice && $0.destination == B && isDirectAck($0) }.count >= 29)
    }

    @Test func peerLeavingCancelsItsMessages() throws {
        var world = World([(alice, A), (bob, B)])
        world.directUp = false
        world.drop = { sender, _, _ in sender == bob }
        try world.send("are you there?", from: alice, to: bob)
        _ = world.takeEvents(alice)
        let left = ExtendedMessage.roster(RosterDelta(
            epoch: 1, sequence: 1_000, version: 1_000, registered: 1, scope: .complete, synced: false,
            records: [.absent(bob, version: 1_000, reason: .offline, publicEndpoint: B)]))
        world.input(alice) { $0.handleServerMessage(left, now: $1) }
        // The chat then goes to the mailbox's claim look-up, which this world's server answers
        // with no claim: undelivered, after the departure.
        #expect(world.takeEvents(alice) == [.left(bob, .offline, B), .undelivered(to: bob, text: "are you there?", reason: .peerLeft)])
        #expect(world.routers[alice]!.messagesInFlight == 0)
        #expect(world.routers[alice]!.roster.listedIDs == [])
    }
}

private extension Array where Element == UInt8 {
    func contains(subsequence: [UInt8]) -> Bool {
        guard !subsequence.isEmpty, subsequence.count <= count else { return false }
        return (0...(count - subsequence.count)).contains { Array(self[$0..<($0 + subsequence.count)]) == subsequence }
    }
}

/// The router hands its messages for the server over unsealed (``ExtendedRouter/Output/sendToServer(_:)``);
/// the client's ``ClientSession`` seals them with the session's counter and tag, remembers
/// the recent tags (an `unknownSession` must echo one of them), and starts both over with a
/// new session. (Before ClientSession the router kept the key, counter and tags itself.)
@Suite("ExtendedRouter session with the server")
struct ExtendedRouterServerSessionTests {
    private static let serverKey = try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: Array(repeating: 0x77, count: 32))

    private struct NotSealed: Error {}

    private func makeRouter() -> ExtendedRouter {
        ExtendedRouter(selfID: alice, identity: keys[alice]!, firstMessageID: 1, transactionSeed: 1)
    }

    /// alice's session, registering (its offer sent).
    private func startedSession() -> ClientSession {
        var session = ClientSession(configuration: .init(id: alice, server: S, privateEndpoint: A, identity: keys[alice]!))
        #expect(session.start(now: .zero).count == 1) // the offer
        return session
    }

    /// The server's part of a registration, played by hand: a challenge with `cookie`, then
    /// `registered` with `nonce`. Returns what the session answered to `registered` and the
    /// session key both sides derive.
    private func register(_ session: inout ClientSession, cookie: Token128, nonce: Token128) throws
        -> (outputs: [ClientSession.Output], key: KeyBytes) {
        #expect(session.handleServerMessage(.challenge(cookie: cookie), now: .zero).count == 1) // the signed registration
        let outputs = session.handleServerMessage(registered(cookie: cookie, nonce: nonce), now: .zero)
        let key = try #require(SessionCrypto.sessionKey(privateKey: keys[alice]!.agreement,
                                                        peerPublicKey: Array(Self.serverKey.publicKey.rawRepresentation),
                                                        cookie: cookie, nonce: nonce, id: alice))
        return (outputs, key)
    }

    private func registered(cookie: Token128, nonce: Token128) -> ExtendedMessage {
        .registered(serverKey: Array(Self.serverKey.publicKey.rawRepresentation), publicEndpoint: A, keepAliveMillis: 0,
                    alternatePort: 0, nonce: nonce, cookie: cookie)
    }

    /// The router's next message for the server (a list query), as it leaves the router and
    /// as the session seals it: the datagram, its counter and its tag.
    private func nextMessage(_ router: inout ExtendedRouter, _ session: inout ClientSession) throws
        -> (bytes: [UInt8], counter: UInt64, tag: Token128) {
        let (query, outputs) = router.listIDs(prefix: "", offset: 0, limit: 10, now: .zero)
        let message = ExtendedMessage.listQuery(id: alice, query: query, prefix: "", offset: 0, limit: 10)
        #expect(outputs == [.sendToServer(message)]) // unsealed: the router holds no session
        let sent = session.send(message)
        guard sent.count == 1, case .send(let bytes, let destination)? = sent.first else {
            Issue.record("not sealed: \(sent)")
            throw NotSealed()
        }
        #expect(destination == S)
        #expect(try ExtendedMessage.decode(bytes) == message)
        guard case .session(let counter, let tag) = try ExtendedDatagram.decode(bytes).trailer else {
            Issue.record("no session trailer")
            throw NotSealed()
        }
        return (bytes, counter, tag)
    }

    /// Whether an `unknownSession` echoing `tag` ends the session (tried on a copy).
    private func believes(_ session: ClientSession, echo tag: Token128) -> Bool {
        var probe = session
        let answer = probe.handleServerMessage(.unknownSession(alice, echo: tag), now: .zero)
        #expect(answer.isEmpty || answer.first == .sessionLost(.unknownSession), "\(answer)")
        return !answer.isEmpty
    }

    /// An unknownSession answer counts only when it echoes the tag of one of the last 32
    /// messages sent to the server.
    @Test func sentRecentlyRemembersTheLast32Tags() throws {
        var router = makeRouter()
        var session = startedSession()
        let (outputs, key) = try register(&session, cookie: Token128(high: 1, low: 1), nonce: Token128(high: 2, low: 2))
        #expect(outputs == [.registered(publicEndpoint: A, alternatePort: 0)])
        #expect(!believes(session, echo: .zero))
        var tags: [Token128] = []
        for expected in 1...40 {
            let sent = try nextMessage(&router, &session)
            #expect(SessionCrypto.verifyAuthenticated(sent.bytes, key: key))
            #expect(sent.counter == UInt64(expected))
            tags.append(sent.tag)
        }
        #expect(ClientSession.recentTagLimit == 32)
        for (index, tag) in tags.enumerated() {
            #expect(believes(session, echo: tag) == (index >= 8), "message \(index + 1)")
        }
        #expect(!believes(session, echo: .zero))
        let last = try #require(tags.last)
        #expect(!believes(session, echo: Token128(high: last.high ^ 1, low: last.low)))
        #expect(!believes(session, echo: Token128(high: last.high, low: last.low ^ (1 << 63))))
    }

    @Test func sessionKeyAndReset() throws {
        var router = makeRouter()
        var session = startedSession()
        let firstCookie = Token128(high: 1, low: 1), firstNonce = Token128(high: 2, low: 2)
        let (_, key) = try register(&session, cookie: firstCookie, nonce: firstNonce)
        // The roster is whole in this session; its acknowledgement is the session's message 1.
        let synced = router.handleServerMessage(.roster(RosterDelta(epoch: 1, sequence: 1, version: 1, registered: 1, scope: .complete,
                                                                    synced: true, records: [])), now: .zero)
        #expect(router.roster.isSynced)
        #expect(synced.contains { if case .sendToServer(.rosterAck(alice, 1, _)) = $0 { true } else { false } })
        for case .sendToServer(let message) in synced { #expect(session.send(message).count == 1) }
        let old = try (0..<3).map { _ in try nextMessage(&router, &session) }
        #expect(old.map(\.counter) == [2, 3, 4])
        // A repeated answer for this session (the same cookie) changes nothing, and neither
        // does an answer to some other registration: the counter goes on under the same key.
        #expect(session.handleServerMessage(registered(cookie: firstCookie, nonce: firstNonce), now: .zero) == [])
        #expect(session.handleServerMessage(registered(cookie: Token128(high: 9, low: 9), nonce: Token128(high: 8, low: 8)),
                                            now: .zero) == [])
        let fourth = try nextMessage(&router, &session)
        #expect(fourth.counter == 5)
        #expect(SessionCrypto.verifyAuthenticated(fourth.bytes, key: key))
        // The server lost the session (it answers the last message with unknownSession):
        // registering again gives a new session, and the router's roster starts over.
        let lost = session.handleServerMessage(.unknownSession(alice, echo: fourth.tag), now: .zero)
        #expect(lost.first == .sessionLost(.unknownSession))
        let (again, otherKey) = try register(&session, cookie: Token128(high: 3, low: 3), nonce: Token128(high: 4, low: 4))
        #expect(again == [.registeredAgain(publicEndpoint: A)])
        #expect(otherKey != key)
        router.beginSession()
        #expect(!router.roster.isSynced)
        let fresh = try nextMessage(&router, &session)
        #expect(fresh.counter == 1)
        #expect(SessionCrypto.verifyAuthenticated(fresh.bytes, key: otherKey))
        #expect(!SessionCrypto.verifyAuthenticated(fresh.bytes, key: key))
        #expect(believes(session, echo: fresh.tag))
        // The previous session's tags are gone: a late unknownSession about it is not ours.
        for message in old + [fourth] { #expect(!believes(session, echo: message.tag)) }
    }
}

/// A seeded coin for lossy links, shared by the closures that decide what is dropped.
private final class Coin: @unchecked Sendable {
    private var generator: SplitMix64
    init(seed: UInt64) { generator = SplitMix64(state: seed) }
    func lands(_ probability: Double) -> Bool { Double(generator.next() % 10_000) < probability * 10_000 }
}

@Suite("ExtendedRouter roster under loss")
struct ExtendedRouterRosterLossTests {
    private static let members: [(ClientID, Endpoint)] = (0..<8).map { index in
        (id("m\(index)"), Endpoint(address: IPv4Address(198, 51, 100, UInt8(10 + index)), port: 4_000))
    }

    /// Eight clients join one after another while 40 % of the roster datagrams and of their
    /// acknowledgements are lost: resent on the feed's timer, every roster is whole within a
    /// few seconds (virtual), and holds exactly the others.
    @Test(arguments: [0.0, 0.2, 0.4])
    func rostersConvergeUnderLoss(loss: Double) {
        let coin = Coin(seed: 11)
        var world = World([])
        world.dropFromServer = { _, message in
            if case .roster = message { return coin.lands(loss) }
            return false
        }
        world.drop = { _, destination, message in
            if destination == S, case .rosterAck = message { return coin.lands(loss) }
            return false
        }
        for (index, member) in Self.members.enumerated() {
            world.now = ms(Int64(index) * 10)
            world.join(member.0, at: member.1)
        }
        world.run(until: ms(10_000))
        let everyone = Set(Self.members.map(\.0))
        for (member, _) in Self.members {
            let roster = world.routers[member]!.roster
            #expect(Set(roster.listedIDs) == everyone.subtracting([member]), "\(member) at \(loss)")
            #expect(roster.isSynced, "\(member) at \(loss)")
        }
    }

    /// bob's registration never reaches alice's roster (every roster datagram to her is
    /// lost), yet her chat to him right away is not refused: she asks, and it is delivered.
    @Test func aChatToAPeerNotYetHeldIsNotRefused() throws {
        var world = World([(alice, A)])
        world.dropFromServer = { recipient, message in
            if recipient == alice, case .roster = message { return true }
            return false
        }
        world.join(bob, at: B)
        _ = world.takeEvents(alice)
        #expect(world.routers[alice]!.roster.peer(bob) == nil)
        try world.send("are you there already?", from: alice, to: bob)
        world.run(until: ms(2_000))
        let events = world.takeEvents(alice)
        #expect(!events.contains { if case .noSuchPeer = $0 { true } else { false } })
        #expect(events.contains { if case .delivered(bob, _, _) = $0 { true } else { false } })
        #expect(world.chats(bob).map(\.text) == ["are you there already?"])
        // And an ID nobody holds is refused, on the server's word.
        try world.send("hello?", from: alice, to: id("nobody"))
        world.run(until: ms(3_000))
        #expect(world.takeEvents(alice).contains(.noSuchPeer(id("nobody"), text: "hello?")))
    }
}

/// The path reports a member sent the server, in order.
private func pathReports(_ world: World, from member: ClientID) -> [(peer: ClientID, outcome: PathOutcome)] {
    world.wire.compactMap { datagram in
        guard datagram.from == member, datagram.destination == S,
              case .pathReport(member, let peer, let outcome)? = datagram.message else { return nil }
        return (peer, outcome)
    }
}

@Suite("ExtendedRouter status and @ping")
struct ExtendedRouterStatusTests {
    @Test func pingOnTheDirectPathNamesItAndMeasuresIt() throws {
        var world = World([(alice, A), (bob, B)])
        try world.send("warm-up", from: alice, to: bob)
        #expect(world.routers[alice]!.path(to: bob) == .direct(B, .publicEndpoint))
        _ = world.takeEvents(alice)
        let sentBefore = world.wire.count
        try world.input(alice) { try $0.ping(bob, now: $1).outputs }
        world.now = world.now + .milliseconds(12)
        #expect(world.takeEvents(alice) == [.pingAnswered(bob, path: .direct(B, .publicEndpoint), roundTrip: .milliseconds(12))])
        // The check went straight to bob, and bob answered straight back: no relay.
        let exchanged = world.wire[sentBefore...]
        #expect(exchanged.contains { $0.from == alice && $0.destination == B })
        #expect(!exchanged.contains { $0.destination == S })
        // Nothing is left waiting: no timeout later.
        world.run(until: world.now + .seconds(4))
        #expect(!world.takeEvents(alice).contains { if case .pingUnanswered = $0 { true } else { false } })
    }

    @Test func pingOverTheRelayIsAnsweredOverTheRelay() throws {
        var world = World([(alice, A), (bob, B)])
        world.directUp = false
        try world.send("through the server", from: alice, to: bob)
        world.run(until: ms(7_000))
        #expect(world.routers[alice]!.path(to: bob) == .relayed)
        _ = world.takeEvents(alice)
        let bobPathBefore = world.routers[bob]!.path(to: alice)
        let sentBefore = world.wire.count
        try world.input(alice) { try $0.ping(bob, now: $1).outputs }
        world.now = world.now + .milliseconds(30)
        #expect(world.takeEvents(alice) == [.pingAnswered(bob, path: .relayed, roundTrip: .milliseconds(30))])
        // The relay's round trip is known now (nothing else measures it).
        #expect(world.routers[alice]!.status(of: bob)?.roundTrip?.smoothed == .milliseconds(30))
        let exchanged = world.wire[sentBefore...]
        #expect(exchanged.allSatisfy { $0.destination == S }, "relayed both ways")
        #expect(exchanged.count == 2)
        // A relayed check says nothing about a direct path: bob's agent did not see it.
        #expect(world.routers[bob]!.path(to: alice) == bobPathBefore)
    }

    @Test func unansweredPingsTimeOutAndSeveralAreMatchedByTransaction() throws {
        var world = World([(alice, A), (bob, B)])
        try world.send("warm-up", from: alice, to: bob)
        _ = world.takeEvents(alice)
        // Two pings in flight; the first one's pong is lost.
        var transactions: [UInt64] = []
        try world.input(alice) { router, now in
            let sent = try router.ping(bob, now: now)
            transactions.append(sent.transaction)
            return sent.outputs
        }
        var lostFirst = false
        world.drop = { sender, _, message in
            guard sender == bob, !lostFirst, case .pong(_, _, let transaction, _) = message, transaction == transactions.first else { return false }
            lostFirst = true
            return true
        }
        world.pump()
        world.now = world.now + .milliseconds(5)
        try world.input(alice) { router, now in
            let sent = try router.ping(bob, now: now)
            transactions.append(sent.transaction)
            return sent.outputs
        }
        world.now = world.now + .milliseconds(4)
        #expect(transactions.count == 2 && transactions[0] != transactions[1])
        #expect(world.takeEvents(alice) == [.pingAnswered(bob, path: .direct(B, .publicEndpoint), roundTrip: .milliseconds(4))])
        let sentAt = world.now - .milliseconds(9)
        world.run(until: sentAt + .milliseconds(2_999))
        #expect(!world.takeEvents(alice).contains { if case .pingUnanswered = $0 { true } else { false } })
        world.run(until: sentAt + .seconds(3))
        #expect(world.takeEvents(alice).filter { if case .pingUnanswered = $0 { true } else { false } }
                == [.pingUnanswered(bob, path: .direct(B, .publicEndpoint), after: .seconds(3))])
    }

    @Test func pingRefusals() throws {
        var world = World([(alice, A), (bob, B)])
        #expect(throws: ExtendedRouter.PingError.unknownPeer) { try world.routers[alice]!.ping(id("nobody"), now: world.now) }
        #expect(throws: ExtendedRouter.PingError.unknownPeer) { try world.routers[alice]!.ping(alice, now: world.now) }
        world.routers[alice]!.hold(bob)
        #expect(throws: ExtendedRouter.PingError.noKey) { try world.routers[alice]!.ping(bob, now: world.now) }
        world.routers[alice]!.release(bob)
        world.directUp = false
        for _ in 0..<16 { _ = try world.routers[alice]!.ping(bob, now: world.now) }
        #expect(throws: ExtendedRouter.PingError.tooManyInFlight) { try world.routers[alice]!.ping(bob, now: world.now) }
    }

    @Test func statusShowsPathRoundTripLastHeardAndReason() throws {
        var world = World([(alice, A), (bob, B), (carol, C)])
        // Not talked to: relayed, not tried yet, never heard.
        let untried = world.routers[alice]!.status(of: carol)
        #expect(untried == ExtendedRouter.PeerStatus(id: carol, route: .relayed, roundTrip: nil, lastHeard: nil, relayReason: .notTriedYet))
        world.now = ms(100)
        try world.send("hi", from: alice, to: bob)
        let direct = try #require(world.routers[alice]!.status(of: bob))
        #expect(direct.route == .direct(B))
        #expect(direct.relayReason == nil)
        #expect(direct.lastHeard == ms(100))
        #expect(direct.roundTrip?.smoothed == .zero, "instant delivery in this world")
        #expect(world.routers[alice]!.statuses(rosterLimit: 50).peers.map(\.id) == [bob, carol])
        #expect(world.routers[alice]!.statuses(rosterLimit: 50).others == 0)
        // Past the roster limit only the peers talked to are listed; the rest are counted.
        let limited = world.routers[alice]!.statuses(rosterLimit: 1)
        #expect(limited.peers.map(\.id) == [bob])
        #expect(limited.others == 1)
        // One path report per settled attempt: alice's direct path to bob.
        #expect(pathReports(world, from: alice).map(\.peer) == [bob])
        #expect(pathReports(world, from: alice).map(\.outcome) == [.direct])
    }

    @Test func relayedPeerSaysWhyAndReportsTheFailedRound() throws {
        var world = World([(alice, A), (bob, B)])
        world.directUp = false
        try world.send("hi", from: alice, to: bob)
        #expect(world.routers[alice]!.status(of: bob)?.relayReason == .punchingInProgress)
        #expect(pathReports(world, from: alice).isEmpty)
        world.run(until: ms(6_500))
        let relayed = try #require(world.routers[alice]!.status(of: bob))
        #expect(relayed.route == .relayed)
        #expect(relayed.roundTrip == nil)
        #expect(relayed.relayReason == .noAnswerFromCandidates)
        // The relayed ack was heard (authenticated) at once.
        #expect(relayed.lastHeard == .zero)
        #expect(pathReports(world, from: alice).map(\.outcome) == [.relayed])
    }
}
