import Addressing
import Crypto
import Identity
import MonotonicTime
@testable import Registry
import Store
import Testing
import TestSupport
import Wire

// Several registries sharing one MemoryClusterStore, as rendezvous servers share a database.
// No sockets and no clock: a small synchronous "link" (``Cluster``) moves each registry's
// cluster outputs to the store and to the other registries, the way ClusterLink and the
// servers' sockets do.
//
// Fixtures: servers "a" (192.0.2.1:7000) and "b" (192.0.2.2:7000), sometimes "c".
// alice and bob share a NAT (203.0.113.7); carol and dave are elsewhere.

private func id(_ text: String) -> ClientID { try! ClientID(text) }
private func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }
private func at(_ seconds: Int64) -> Instant { Instant.zero + .seconds(seconds) }

private let alice = id("alice"), bob = id("bob"), carol = id("carol"), dave = id("dave")
private let aliceEP = ep("203.0.113.7:40001"), bobEP = ep("203.0.113.7:40002"), carolEP = ep("198.51.100.9:50000")
private let daveEP = ep("198.51.100.20:50001"), malloryEP = ep("192.0.2.99:33333"), strangerEP = ep("192.0.2.200:7000")
private let alicePrivate = [ep("10.0.0.5:10081")], bobPrivate = [ep("10.0.0.6:10081")], carolPrivate = [ep("10.0.0.7:10081")]

private func identity(_ seed: UInt8) -> IdentityKey {
    IdentityKey(signing: try! Curve25519.Signing.PrivateKey(rawRepresentation: Array(repeating: seed, count: 32)),
                agreement: try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: Array(repeating: seed &+ 0x40, count: 32)))
}

private let aliceKey = identity(1), bobKey = identity(2), carolKey = identity(3), daveKey = identity(4), malloryKey = identity(9)
private let secret = Array(repeating: UInt8(0x5A), count: 32)
private let unixBase: Int64 = 1_700_000_000

/// Accepts exactly the cookies it made for a source; the high word is the issue time.
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

/// One server of the test cluster.
private final class Node {
    let name: String
    let advertise: Endpoint
    var registry: Registry
    var random: SplitMix64
    /// Per other server: the sequence of the last presence record read.
    var cursors: [String: Int64] = [:]

    init(name: String, advertise: Endpoint, configuration: Registry.Configuration, seed: UInt64) {
        self.name = name
        self.advertise = advertise
        random = SplitMix64(state: seed)
        let key = try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: Array(repeating: UInt8(0x70) &+ UInt8(seed), count: 32))
        registry = Registry(configuration: configuration, validator: FakeValidator(), serverKey: key, now: at(0), unixTime: unixBase)
    }
}

/// What a registry emitted, and which registry.
private struct Sent: Hashable {
    let node: String
    let output: Registry.Output
}

/// A client's session with the server it registered with.
private struct Session {
    var server: String
    var endpoint: Endpoint
    var key: KeyBytes
    var counter: UInt64 = 0
}

/// The servers, the store they share, the clients' sessions, and the link between them.
private final class Cluster {
    static let configuration = Registry.Configuration(keepAliveTimeout: .seconds(30), sweepInterval: .seconds(10),
                                                      rosterFeed: .init(flushInterval: .zero), claimTTL: .seconds(86_400))
    static let claimTTL: Int64 = 86_400

    let store = MemoryClusterStore(secret: { secret })
    var nodes: [String: Node] = [:]
    var sessions: [ClientID: Session] = [:]
    /// Registrations waiting for their `registered` answer: (server, endpoint) → (ID, key, cookie).
    var registering: [String: (ClientID, IdentityKey, Token128)] = [:]
    var now: Instant = at(0)
    /// Claims are left waiting (``held``) for the test to decide with ``decideHeld()``.
    var holdClaims = false
    var held: [(node: String, record: ClaimRecord)] = []
    /// The database does not answer: claims are decided `nil`.
    var databaseDown = false
    /// Servers that read no presence (their link is behind) until ``catchUp(_:)``.
    var deaf: Set<String> = []

    init(_ names: [String] = ["a", "b"], configuration: Registry.Configuration = Cluster.configuration) async throws {
        for (index, name) in names.enumerated() {
            let node = Node(name: name, advertise: ep("192.0.2.\(index + 1):7000"), configuration: configuration,
                            seed: UInt64(index + 1))
            let shared = try await store.join(ServerRecord(name: name, advertise: "\(node.advertise)", heartbeat: unixBase))
            node.registry.joinCluster(name: name, secret: shared, now: at(0))
            nodes[name] = node
        }
        try await heartbeat()
    }

    subscript(name: String) -> Node { nodes[name]! }

    var unixTime: Int64 { unixBase + (now - .zero).components.seconds }

    /// Every server beats and is told of the others (as each heartbeat does).
    @discardableResult
    func heartbeat(except silent: Set<String> = []) async throws -> [Sent] {
        var sent: [Sent] = []
        for name in nodes.keys.sorted() where !silent.contains(name) {
            let servers = try await store.heartbeat(server: name, at: unixTime)
            sent += try await run(name, self[name].registry.updateServers(servers, unixTime: unixTime, now: now))
        }
        return sent
    }

    /// Performs `outputs` of server `name` and everything they cause, as the link and the
    /// servers' sockets would; returns every output emitted on the way (in order).
    @discardableResult
    func run(_ name: String, _ outputs: [Registry.Output]) async throws -> [Sent] {
        var produced: [Sent] = []
        var queue: [(String, [Registry.Output])] = [(name, outputs)]
        var rounds = 0
        while !queue.isEmpty {
            rounds += 1
            guard rounds < 1000 else {
                Issue.record("the cluster does not settle")
                break
            }
            let (source, actions) = queue.removeFirst()
            var published: [PresenceRecord] = []
            for action in actions {
                produced.append(Sent(node: source, output: action))
                switch action {
                case .publish(let record):
                    published.append(record)
                case .persist(let change):
                    try store.apply([change])
                case .confirmClaim(let record):
                    if holdClaims {
                        held.append((source, record))
                    } else {
                        queue.append((source, try await decide(record, on: source)))
                    }
                case .sendToServer(let bytes, let destination):
                    guard let target = nodes.values.first(where: { $0.advertise == destination }) else {
                        Issue.record("a datagram for an unknown server \(destination)")
                        continue
                    }
                    queue.append((target.name, deliver(bytes, to: target.name, from: self[source].advertise)))
                case .sendExtended(.registered(let serverKey, _, _, _, let nonce, _), let destination):
                    if let (client, key, cookie) = registering.removeValue(forKey: "\(source) \(destination)"),
                       let sessionKey = SessionCrypto.sessionKey(privateKey: key.agreement, peerPublicKey: serverKey, cookie: cookie,
                                                                 nonce: nonce, id: client) {
                        sessions[client] = Session(server: source, endpoint: destination, key: sessionKey)
                    }
                default:
                    break
                }
            }
            if !published.isEmpty {
                try await store.publish(published)
                for other in nodes.keys.sorted() where other != source && !deaf.contains(other) {
                    queue.append((other, try await readPresence(of: source, on: other)))
                }
            }
        }
        return produced
    }

    /// Server `name` hears again, and reads what every other server published meanwhile.
    @discardableResult
    func catchUp(_ name: String) async throws -> [Sent] {
        deaf.remove(name)
        var sent: [Sent] = []
        for home in nodes.keys.sorted() where home != name { sent += try await run(name, try await readPresence(of: home, on: name)) }
        return sent
    }

    /// What server `reader` reads of `home`'s presence since its cursor, applied.
    func readPresence(of home: String, on reader: String) async throws -> [Registry.Output] {
        let node = self[reader]
        let records = try await store.presence(home: home, after: node.cursors[home] ?? 0, limit: 1000)
        guard let last = records.last else { return [] }
        node.cursors[home] = last.sequence
        return node.registry.applyPresence(records, now: now)
    }

    /// The database decides `record` for server `name` (or does not answer).
    func decide(_ record: ClaimRecord, on name: String) async throws -> [Registry.Output] {
        var outcome: ClaimOutcome?
        var mail: [MailRecord] = []
        if !databaseDown {
            let decided = try await store.claim(record, ttl: Self.claimTTL, at: unixTime)
            if case .granted = decided { mail = try await store.mail(for: record.id) }
            outcome = decided
        }
        let node = self[name]
        return node.registry.claimDecided(try ClientID(record.id), outcome: outcome, mail: mail, now: now, random: &node.random)
    }

    /// Decides the claims left waiting, in the order they were asked.
    @discardableResult
    func decideHeld() async throws -> [Sent] {
        var sent: [Sent] = []
        let waiting = held
        held = []
        for (name, record) in waiting { sent += try await run(name, try await decide(record, on: name)) }
        return sent
    }

    /// Server `name` receives `bytes` (a datagram) from `source`.
    func deliver(_ bytes: [UInt8], to name: String, from source: Endpoint) -> [Registry.Output] {
        guard let datagram = try? ExtendedDatagram.decode(bytes) else {
            Issue.record("undecodable datagram")
            return []
        }
        let node = self[name]
        return node.registry.receive(datagram, bytes: bytes, from: source, now: now, random: &node.random)
    }

    /// The whole natchat/2 registration of `client` with server `name`: offer, challenge,
    /// signed registration (then, in a cluster, the claim).
    @discardableResult
    func register(_ client: ClientID, _ key: IdentityKey, from source: Endpoint, privateEndpoints: [Endpoint] = [],
                  on name: String) async throws -> [Sent] {
        let offer = ClassicMessage.register(client, privateAddress: privateEndpoints.first?.address ?? source.address,
                                            offers: [ExtendedMessage.offer])
        let challenge = self[name].registry.receive(offer, from: source, now: now)
        let cookie = FakeValidator().cookie(for: source, now: now)
        #expect(challenge == [.sendExtended(.challenge(cookie: cookie), to: source)])
        let bytes = SessionCrypto.signedRegistration(id: client, cookie: cookie, privateEndpoints: privateEndpoints,
                                                     natKind: .endpointIndependent, identity: key)
        registering["\(name) \(source)"] = (client, key, cookie)
        return try await run(name, deliver(bytes, to: name, from: source))
    }

    /// `client`'s session message to its server (next counter, its session key).
    func sessionBytes(_ client: ClientID, _ message: ExtendedMessage) -> [UInt8] {
        guard var session = sessions[client] else {
            Issue.record("\(client) has no session")
            return []
        }
        session.counter += 1
        sessions[client] = session
        return SessionCrypto.sealed(message, counter: session.counter, key: session.key)
    }

    /// `client` sends `message` to its server; returns everything that follows.
    @discardableResult
    func send(_ client: ClientID, _ message: ExtendedMessage) async throws -> [Sent] {
        let bytes = sessionBytes(client, message)
        guard let session = sessions[client] else { return [] }
        return try await run(session.server, deliver(bytes, to: session.server, from: session.endpoint))
    }

    /// The sweep and whatever is due on server `name` at the current time.
    @discardableResult
    func timeout(on name: String) async throws -> [Sent] {
        try await run(name, self[name].registry.handleTimeout(now: now))
    }

    /// The roster records server `name` pushes now, per recipient, acknowledged by their
    /// clients (so nothing is sent twice).
    func roster(on name: String) async throws -> [ClientID: [RosterRecord]] {
        var records: [ClientID: [RosterRecord]] = [:]
        let node = self[name]
        for _ in 0..<20 {
            guard let due = node.registry.rosterDeadline, due <= now else { break }
            for case .sendExtended(.roster(let delta), let destination) in node.registry.flushRoster(now: now) {
                guard let client = sessions.first(where: { $0.value.server == name && $0.value.endpoint == destination })?.key else {
                    continue
                }
                records[client, default: []] += delta.records
                let ack = sessionBytes(client, .rosterAck(id: client, largest: delta.sequence, received: 0))
                _ = node.registry.receive(try ExtendedDatagram.decode(ack), bytes: ack, from: destination, now: now,
                                          random: &node.random)
            }
        }
        return records
    }
}

/// The outputs of `sent` that server `node` emitted.
private func outputs(_ sent: [Sent], of node: String) -> [Registry.Output] {
    sent.filter { $0.node == node }.map(\.output)
}

/// The presence records of `sent` that server `node` emitted.
private func published(_ sent: [Sent], by node: String) -> [PresenceRecord] {
    outputs(sent, of: node).compactMap { if case .publish(let record) = $0 { record } else { nil } }
}

private func events(_ sent: [Sent], of node: String) -> [Registry.Event] {
    outputs(sent, of: node).compactMap { if case .report(let event) = $0 { event } else { nil } }
}

private func registered(_ sent: [Sent], of node: String) -> [ClientID] {
    events(sent, of: node).compactMap { if case .registered(let entry) = $0 { entry.id } else { nil } }
}

/// The datagrams of `sent` that server `node` sent to clients at `endpoint`.
private func messages(_ sent: [Sent], of node: String, to endpoint: Endpoint) -> [ExtendedMessage] {
    outputs(sent, of: node).compactMap { if case .sendExtended(let message, endpoint) = $0 { message } else { nil } }
}

@Suite("Cluster registries")
struct ClusterRegistryTests {
    @Test func aRegistrationWaitsForTheDatabase() async throws {
        let cluster = try await Cluster()
        cluster.holdClaims = true
        let parked = try await cluster.register(alice, aliceKey, from: aliceEP, privateEndpoints: alicePrivate, on: "a")
        // Nothing is answered, registered or published before the database decides.
        #expect(parked.map(\.output) == [.confirmClaim(ClaimRecord(id: "alice", signingKey: aliceKey.publicKeys.signing,
                                                                    agreementKey: aliceKey.publicKeys.agreement,
                                                                    claimedAt: unixBase, lastSeen: unixBase))])
        #expect(cluster["a"].registry.pendingClaimCount == 1)
        #expect(cluster["a"].registry.count == 0)
        #expect(cluster.held.count == 1)

        // The same registration sent again while it waits: the database is asked once.
        cluster.now = at(1)
        let again = try await cluster.register(alice, aliceKey, from: aliceEP, privateEndpoints: alicePrivate, on: "a")
        #expect(again.isEmpty)
        #expect(cluster.held.count == 1)

        let decided = try await cluster.decideHeld()
        #expect(cluster["a"].registry.pendingClaimCount == 0)
        #expect(registered(decided, of: "a") == [alice])
        #expect(messages(decided, of: "a", to: aliceEP).contains { if case .registered = $0 { true } else { false } })
        #expect(cluster.sessions[alice]?.server == "a")
        // The claim is the database's now, and the registry publishes alice's presence.
        let claim = try await cluster.store.currentClaim(of: "alice", ttl: Cluster.claimTTL, at: cluster.unixTime)
        #expect(claim?.signingKey == aliceKey.publicKeys.signing)
        let records = published(decided, by: "a")
        #expect(records.count == 1)
        let record = try #require(records.first)
        #expect(record.id == "alice" && record.home == "a" && record.departure == nil)
        // Her session began with the cookie of t = 1 s.
        #expect(record.sessionStart == unixBase * 1000 + 1000)
        let info = try PeerInfo.decode(record.info)
        #expect(info.id == alice && info.publicEndpoint == aliceEP && info.privateEndpoints == alicePrivate)
        #expect(info.keys == aliceKey.publicKeys && info.claimedSince == UInt32(unixBase))
        // And b shows her.
        #expect(cluster["b"].registry.remoteCount == 1)
        #expect(cluster["b"].registry.entry(for: alice).map { !$0.isLocal } == true)
    }

    @Test func remoteClientsAppearAndLeave() async throws {
        let cluster = try await Cluster()
        try await cluster.register(bob, bobKey, from: bobEP, privateEndpoints: bobPrivate, on: "b")
        _ = try await cluster.roster(on: "b")
        let registration = try await cluster.register(alice, aliceKey, from: aliceEP, privateEndpoints: alicePrivate, on: "a")
        #expect(events(registration, of: "b").contains { if case .remoteChanged(let entry, "a") = $0 { entry.id == alice } else { false } })
        #expect(cluster["b"].registry.remoteCount == 1 && cluster["b"].registry.count == 2)
        #expect(cluster["a"].registry.remoteCount == 1 && cluster["a"].registry.count == 2)
        // The O(1) counts the admin listener reads leave the remote entry out.
        #expect(cluster["b"].registry.localClientCounts == (classic: 0, extended: 1))
        #expect(cluster["a"].registry.localClientCounts == (classic: 0, extended: 1))

        // bob's feed on b shows alice with a's view of her; behind the same NAT, with her private endpoint.
        let pushed = try await cluster.roster(on: "b")
        let aliceRecord = pushed[bob]?.compactMap { if case .present(let entry) = $0, entry.info.id == alice { entry.info } else { nil } }
        #expect(aliceRecord?.count == 1)
        #expect(aliceRecord?.first?.publicEndpoint == aliceEP && aliceRecord?.first?.privateEndpoints == alicePrivate)
        #expect(aliceRecord?.first?.keys == aliceKey.publicKeys)

        // Look-up and list pages on b include her.
        let lookup = try await cluster.send(bob, .lookup(id: bob, query: 7, peer: alice))
        let found = messages(lookup, of: "b", to: bobEP).compactMap { if case .lookupResult(7, _, _, alice, let found) = $0 { found } else { nil } }
        #expect(found.first?.info.publicEndpoint == aliceEP)
        let list = try await cluster.send(bob, .listQuery(id: bob, query: 8, prefix: "", offset: 0, limit: 10))
        let page = messages(list, of: "b", to: bobEP).compactMap { if case .listPage(8, let total, _, let entries) = $0 { (total, entries) } else { nil } }
        #expect(page.first?.0 == 2)
        #expect(page.first?.1.map(\.id) == [alice, bob])

        // alice says goodbye on a: bob hears she unregistered.
        cluster.now = at(2)
        let exit = try await cluster.send(alice, .exit(id: alice))
        #expect(published(exit, by: "a").map(\.departure) == [.unregistered])
        #expect(events(exit, of: "b").contains { if case .remoteLeft(let entry, "a") = $0 { entry.id == alice } else { false } })
        #expect(cluster["b"].registry.entry(for: alice) == nil && cluster["b"].registry.remoteCount == 0)
        #expect(cluster["a"].registry.localClientCounts == (classic: 0, extended: 0))
        #expect(cluster["b"].registry.localClientCounts == (classic: 0, extended: 1))
        let afterExit = try await cluster.roster(on: "b")
        #expect(afterExit[bob]?.count == 1)
        #expect(afterExit[bob]?.contains { if case .absent(alice, _, .unregistered, aliceEP) = $0 { true } else { false } } == true)
        let listAfter = try await cluster.send(bob, .listQuery(id: bob, query: 9, prefix: "", offset: 0, limit: 10))
        #expect(messages(listAfter, of: "b", to: bobEP).contains { if case .listPage(9, 1, _, _) = $0 { true } else { false } })

        // carol registers on a and goes silent: a evicts her, bob hears she is off-line.
        try await cluster.register(carol, carolKey, from: carolEP, privateEndpoints: carolPrivate, on: "a")
        #expect(cluster["b"].registry.entry(for: carol)?.home != 0)
        _ = try await cluster.roster(on: "b")
        cluster.now = at(45)
        let sweep = try await cluster.timeout(on: "a")
        #expect(events(sweep, of: "a").contains { if case .evicted(let entry) = $0 { entry.id == carol } else { false } })
        #expect(published(sweep, by: "a").map(\.departure) == [.offline])
        #expect(cluster["b"].registry.entry(for: carol) == nil)
        let afterEviction = try await cluster.roster(on: "b")
        #expect(afterEviction[bob]?.contains { if case .absent(carol, _, .offline, carolEP) = $0 { true } else { false } } == true)
    }

    @Test func concurrentClaimsOfOneIDGoToOneKey() async throws {
        let cluster = try await Cluster()
        cluster.holdClaims = true
        try await cluster.register(alice, aliceKey, from: aliceEP, on: "a")
        try await cluster.register(alice, malloryKey, from: malloryEP, on: "b")
        #expect(cluster.held.count == 2)
        #expect(cluster["a"].registry.count == 0 && cluster["b"].registry.count == 0)
        let decided = try await cluster.decideHeld()
        #expect(registered(decided, of: "a") == [alice])
        #expect(registered(decided, of: "b").isEmpty)
        #expect(events(decided, of: "b").contains(.refused(alice, from: malloryEP, .claimed)))
        #expect(messages(decided, of: "b", to: malloryEP) == [.refused(text: "ID alice is claimed by another key")])
        // b shows a's alice, with a's key.
        #expect(cluster["b"].registry.entry(for: alice)?.keys == aliceKey.publicKeys)
        #expect(cluster["b"].registry.entry(for: alice)?.isLocal == false)
        #expect(cluster["a"].registry.entry(for: alice)?.isLocal == true)
    }

    @Test func concurrentClaimsDecidedInTheOtherOrder() async throws {
        let cluster = try await Cluster()
        cluster.holdClaims = true
        try await cluster.register(alice, aliceKey, from: aliceEP, on: "a")
        try await cluster.register(alice, malloryKey, from: malloryEP, on: "b")
        cluster.held.reverse()
        let decided = try await cluster.decideHeld()
        #expect(registered(decided, of: "b") == [alice])
        #expect(registered(decided, of: "a").isEmpty)
        #expect(messages(decided, of: "a", to: aliceEP) == [.refused(text: "ID alice is claimed by another key")])
        #expect(cluster["a"].registry.entry(for: alice)?.keys == malloryKey.publicKeys)
    }

    @Test func anUnreachableDatabaseRefusesNewIDsOnly() async throws {
        let cluster = try await Cluster()
        try await cluster.register(alice, aliceKey, from: aliceEP, on: "a")
        #expect(cluster["a"].registry.entry(for: alice)?.isLocal == true)

        cluster.databaseDown = true
        cluster.now = at(5)
        let newcomer = try await cluster.register(carol, carolKey, from: carolEP, on: "a")
        #expect(events(newcomer, of: "a").contains(.refused(carol, from: carolEP, .claimUnavailable)))
        #expect(messages(newcomer, of: "a", to: carolEP).count == 1)
        if case .refused(let text)? = messages(newcomer, of: "a", to: carolEP).first {
            #expect(text.contains("database is unreachable"))
        }
        #expect(!cluster["a"].registry.databaseReachable)
        #expect(cluster["a"].registry.entry(for: carol) == nil)

        // alice's own claim is known here: her new session goes on, at once (the database,
        // known to be unreachable, is not asked: it would only wait for its deadline).
        let owner = try await cluster.register(alice, aliceKey, from: aliceEP, on: "a")
        #expect(messages(owner, of: "a", to: aliceEP).contains { if case .registered = $0 { true } else { false } })
        #expect(!owner.contains { if case .confirmClaim = $0.output { true } else { false } })
        #expect(cluster.sessions[alice]?.server == "a")
        // Another key for her ID is not let through either.
        let mallory = try await cluster.register(alice, malloryKey, from: malloryEP, on: "a")
        #expect(events(mallory, of: "a").contains(.refused(alice, from: malloryEP, .claimUnavailable)))

        // b knows her claim from a's presence: she can move there meanwhile.
        cluster.now = at(6)
        let aliceAtB = ep("203.0.113.7:41001")
        let failover = try await cluster.register(alice, aliceKey, from: aliceAtB, on: "b")
        #expect(messages(failover, of: "b", to: aliceAtB).contains { if case .registered = $0 { true } else { false } })
        #expect(cluster["b"].registry.entry(for: alice)?.isLocal == true)
        #expect(cluster["a"].registry.entry(for: alice)?.isLocal == false)

        // The database answers again, and a's link says so at its next heartbeat: until
        // then a refuses new IDs at once, without asking.
        cluster.databaseDown = false
        cluster.now = at(6)
        let early = try await cluster.register(carol, carolKey, from: carolEP, on: "a")
        #expect(events(early, of: "a").contains(.refused(carol, from: carolEP, .claimUnavailable)))
        #expect(!early.contains { if case .confirmClaim = $0.output { true } else { false } })
        cluster["a"].registry.setDatabaseReachable(true)
        let back = try await cluster.register(carol, carolKey, from: carolEP, on: "a")
        #expect(registered(back, of: "a") == [carol])
        #expect(cluster["a"].registry.databaseReachable)
    }

    @Test func connectAcrossServers() async throws {
        let cluster = try await Cluster()
        try await cluster.register(alice, aliceKey, from: aliceEP, privateEndpoints: alicePrivate, on: "a")
        try await cluster.register(bob, bobKey, from: bobEP, privateEndpoints: bobPrivate, on: "b")
        try await cluster.register(carol, carolKey, from: carolEP, privateEndpoints: carolPrivate, on: "b")
        cluster.now = at(1)

        let connect = try await cluster.send(alice, .connect(id: alice, peer: bob))
        let aliceSees = PeerInfo(id: bob, publicEndpoint: bobEP, privateEndpoints: bobPrivate, natKind: .endpointIndependent,
                                 dialect: .extended, keys: bobKey.publicKeys, claimedSince: UInt32(unixBase))
        #expect(messages(connect, of: "a", to: aliceEP) == [.punch(peer: aliceSees, round: 1, delayMillis: 0)])
        let toB = outputs(connect, of: "a").compactMap { if case .sendToServer(let bytes, let to) = $0 { (bytes, to) } else { nil } }
        #expect(toB.count == 1 && toB.first?.1 == cluster["b"].advertise)
        let forwarded = try ExtendedDatagram.decode(try #require(toB.first?.0))
        guard case .serverPunch(bob, let peer, 1, 0) = forwarded.message else {
            Issue.record("expected a serverPunch for bob: \(forwarded.message)")
            return
        }
        // The other server gets everything; bob is shown her private endpoints (same public address).
        #expect(peer.privateEndpoints == alicePrivate)
        let bobSees = PeerInfo(id: alice, publicEndpoint: aliceEP, privateEndpoints: alicePrivate, natKind: .endpointIndependent,
                               dialect: .extended, keys: aliceKey.publicKeys, claimedSince: UInt32(unixBase))
        #expect(messages(connect, of: "b", to: bobEP) == [.punch(peer: bobSees, round: 1, delayMillis: 0)])

        // carol is elsewhere: no private endpoints for her.
        let toCarol = try await cluster.send(alice, .connect(id: alice, peer: carol))
        var carolSees = bobSees
        carolSees.privateEndpoints = []
        #expect(messages(toCarol, of: "b", to: carolEP) == [.punch(peer: carolSees, round: 1, delayMillis: 0)])
        #expect(messages(toCarol, of: "a", to: aliceEP).count == 1)
    }

    @Test func relayAcrossServers() async throws {
        var configuration = Cluster.configuration
        configuration.relay.packetsPerSecond = 2
        let cluster = try await Cluster(configuration: configuration)
        try await cluster.register(alice, aliceKey, from: aliceEP, on: "a")
        try await cluster.register(bob, bobKey, from: bobEP, on: "b")
        cluster.now = at(1)

        let relay = try await cluster.send(alice, .relay(id: alice, to: bob, payload: [1, 2, 3]))
        #expect(events(relay, of: "a").contains(.relayed(from: alice, to: bob, bytes: 3)))
        #expect(messages(relay, of: "b", to: bobEP) == [.relayed(from: alice, payload: [1, 2, 3])])
        let captured = try #require(outputs(relay, of: "a").compactMap { if case .sendToServer(let bytes, _) = $0 { bytes } else { nil } }.first)

        // a's limits apply: two a second.
        _ = try await cluster.send(alice, .relay(id: alice, to: bob, payload: [4]))
        let limited = try await cluster.send(alice, .relay(id: alice, to: bob, payload: [5]))
        #expect(outputs(limited, of: "a") == [.report(.ignoredExtended(from: aliceEP, .relayRateLimited))])
        #expect(messages(limited, of: "b", to: bobEP).isEmpty)

        // The same server datagram again: a replay.
        let a = cluster["a"].advertise
        #expect(cluster.deliver(captured, to: "b", from: a) == [.report(.ignoredServerDatagram(from: a))])
        // Under another key: forged.
        let counter = UInt64(unixBase + 2) * 1_000_000
        let forged = SessionCrypto.sealed(.serverRelay(from: alice, to: bob, payload: [6]), counter: counter,
                                          key: SessionCrypto.clusterKey(secret: Array(repeating: 1, count: 32)))
        #expect(cluster.deliver(forged, to: "b", from: a) == [.report(.ignoredServerDatagram(from: a))])
        // The captured datagram replayed from another source is no better.
        #expect(cluster.deliver(captured, to: "b", from: strangerEP) == [.report(.ignoredServerDatagram(from: strangerEP))])
        // Under the cluster key, but from a source that is no server of the cluster.
        let clusterKey = SessionCrypto.clusterKey(secret: secret)
        let stray = SessionCrypto.sealed(.serverRelay(from: alice, to: bob, payload: [7]), counter: counter, key: clusterKey)
        #expect(cluster.deliver(stray, to: "b", from: strangerEP) == [.report(.ignoredServerDatagram(from: strangerEP))])
        // An authentic one from a for a client b does not have.
        let unknown = SessionCrypto.sealed(.serverRelay(from: alice, to: dave, payload: [8]), counter: counter + 1, key: clusterKey)
        #expect(cluster.deliver(unknown, to: "b", from: a) == [.report(.ignoredServerDatagram(from: a))])

        // The in-place fast path leaves a remote peer to the general path, and changes nothing.
        cluster.now = at(5)
        let bytes = cluster.sessionBytes(alice, .relay(id: alice, to: bob, payload: [9]))
        let decision = bytes.withUnsafeBytes { raw -> Registry.RelayDecision? in
            guard let frame = ExtendedMessage.RelayFrame(raw) else { return nil }
            return cluster["a"].registry.forwardRelay(frame, from: aliceEP, now: cluster.now)
        }
        #expect(decision == .useGeneralPath)
        let general = try await cluster.run("a", cluster.deliver(bytes, to: "a", from: aliceEP))
        #expect(messages(general, of: "b", to: bobEP) == [.relayed(from: alice, payload: [9])])
    }

    @Test func aClientThatRegistersWithAnotherServerMoves() async throws {
        let cluster = try await Cluster()
        try await cluster.register(carol, carolKey, from: carolEP, on: "a")
        try await cluster.register(alice, aliceKey, from: aliceEP, privateEndpoints: alicePrivate, on: "a")
        _ = try await cluster.roster(on: "a")
        #expect(cluster["b"].registry.count == 2 && cluster["b"].registry.remoteCount == 2)

        // a is unreachable for alice: she registers with b, whose NAT mapping for her differs.
        cluster.now = at(5)
        let aliceAtB = ep("203.0.113.7:41001")
        let failover = try await cluster.register(alice, aliceKey, from: aliceAtB, privateEndpoints: alicePrivate, on: "b")
        #expect(messages(failover, of: "b", to: aliceAtB).contains { if case .registered = $0 { true } else { false } })
        #expect(cluster["b"].registry.entry(for: alice)?.isLocal == true)
        let record = try #require(published(failover, by: "b").first)
        #expect(record.home == "b" && record.departure == nil && record.sessionStart == (unixBase + 5) * 1000)
        // a takes her for moved: a remote entry now, and nothing published by a.
        #expect(events(failover, of: "a").contains { if case .movedAway(let entry, "b") = $0 { entry.id == alice } else { false } })
        #expect(published(failover, by: "a").isEmpty)
        #expect(cluster["a"].registry.entry(for: alice).map { !$0.isLocal && $0.publicEndpoint == aliceAtB } == true)
        #expect(cluster["a"].registry.remoteCount == 1)
        #expect(!cluster["a"].registry.hasExtendedClient(at: aliceEP))
        // carol sees her move, not leave.
        let pushed = try await cluster.roster(on: "a")
        let seen = try #require(pushed[carol])
        #expect(!seen.contains { if case .absent = $0 { true } else { false } })
        #expect(seen.contains { if case .present(let entry) = $0 { entry.info.id == alice && entry.info.publicEndpoint == aliceAtB } else { false } })
        // Her old session on a is over: a keep-alive on it is not a session any more.
        let stale = SessionCrypto.sealed(.keepAlive(id: alice, natKind: .endpointIndependent), counter: 99,
                                         key: KeyBytes(Array(repeating: 0, count: 32)))
        #expect(cluster.deliver(stale, to: "a", from: aliceEP).allSatisfy { if case .sendExtended(.unknownSession, _) = $0 { true } else { false } })

        // a's sweep, long after, does not evict her (she is b's).
        cluster.now = at(40)
        try await cluster.send(carol, .keepAlive(id: carol, natKind: .endpointIndependent))
        let sweep = try await cluster.timeout(on: "a")
        #expect(!events(sweep, of: "a").contains { if case .evicted = $0 { true } else { false } })
        #expect(cluster["a"].registry.entry(for: alice)?.isLocal == false)

        // b evicts her when she goes silent there, and a hears she is off-line.
        #expect(cluster["b"].registry.nextDeadline != nil)
        cluster.now = at(60)
        let bSweep = try await cluster.timeout(on: "b")
        #expect(events(bSweep, of: "b").contains { if case .evicted(let entry) = $0 { entry.id == alice } else { false } })
        #expect(cluster["a"].registry.entry(for: alice) == nil)
    }

    @Test func aClientThatMovedAndLeftBeforeAServerReadTheMoveLeavesThere() async throws {
        let cluster = try await Cluster(["a", "b", "c"])
        try await cluster.register(bob, bobKey, from: bobEP, on: "b")
        try await cluster.register(alice, aliceKey, from: aliceEP, on: "a")
        #expect(cluster["b"].registry.entry(for: alice)?.isLocal == false)
        _ = try await cluster.roster(on: "b")

        // b's link is behind while alice moves to c and says goodbye there: the database
        // keeps one record per ID, so all b will read of her is c's departure.
        cluster.deaf = ["b"]
        cluster.now = at(3)
        try await cluster.register(alice, aliceKey, from: aliceEP, on: "c")
        cluster.now = at(4)
        try await cluster.send(alice, .exit(id: alice))
        // a, which heard her move, heard her leave.
        #expect(cluster["a"].registry.entry(for: alice) == nil)
        let caughtUp = try await cluster.catchUp("b")
        #expect(events(caughtUp, of: "b").contains { if case .remoteLeft(let entry, _) = $0 { entry.id == alice } else { false } })
        #expect(cluster["b"].registry.entry(for: alice) == nil)
        let pushed = try await cluster.roster(on: "b")
        #expect(pushed[bob]?.contains { if case .absent(alice, _, .unregistered, _) = $0 { true } else { false } } == true)

        // A departure of an older session than the one shown changes nothing.
        try await cluster.register(alice, aliceKey, from: aliceEP, on: "a")
        #expect(cluster["b"].registry.entry(for: alice)?.isLocal == false)
        let old = PresenceRecord(id: "alice", home: "c", sessionStart: (unixBase + 4) * 1000, info: [], departure: .offline)
        #expect(cluster["b"].registry.applyPresence([old], now: cluster.now).isEmpty)
        #expect(cluster["b"].registry.entry(for: alice) != nil)
    }

    @Test func aSilentServersClientsLeave() async throws {
        let cluster = try await Cluster(["a", "b", "c"])
        try await cluster.register(alice, aliceKey, from: aliceEP, on: "a")
        try await cluster.register(bob, bobKey, from: bobEP, on: "b")
        // carol was on a and moved to c; dave was on a and moved to b.
        try await cluster.register(carol, carolKey, from: carolEP, on: "a")
        try await cluster.register(dave, daveKey, from: daveEP, on: "a")
        cluster.now = at(3)
        try await cluster.register(carol, carolKey, from: carolEP, on: "c")
        try await cluster.register(dave, daveKey, from: daveEP, on: "b")
        #expect(cluster["b"].registry.entry(for: carol)?.home == cluster["b"].registry.cluster?.indexByName["c"])
        _ = try await cluster.roster(on: "b")

        // a stops beating; 31 s after its last heartbeat b takes it for dead.
        cluster.now = at(30)
        let first = try await cluster.heartbeat(except: ["a"])
        #expect(!events(first, of: "b").contains(.serverStatus(name: "a", alive: false)))
        cluster.now = at(31)
        let beat = try await cluster.heartbeat(except: ["a"])
        #expect(events(beat, of: "b").contains(.serverStatus(name: "a", alive: false)))
        #expect(events(beat, of: "b").contains { if case .remoteLeft(let entry, "a") = $0 { entry.id == alice } else { false } })
        #expect(cluster["b"].registry.entry(for: alice) == nil)
        // Those who had moved stay.
        #expect(cluster["b"].registry.entry(for: carol) != nil && cluster["b"].registry.entry(for: dave)?.isLocal == true)
        #expect(cluster["b"].registry.count == 3)
        #expect(cluster["b"].registry.clusterServers.first { $0.name == "a" }?.alive == false)
        // Nobody publishes a's clients' departures (their home is gone, not them).
        #expect(published(beat, by: "b").isEmpty)
        let pushed = try await cluster.roster(on: "b")
        #expect(pushed[bob]?.contains { if case .absent(alice, _, .offline, aliceEP) = $0 { true } else { false } } == true)
        #expect(pushed[bob]?.contains { $0.id == carol || $0.id == dave } == false)

        // a beats again: reported alive.
        cluster.now = at(33)
        let back = try await cluster.heartbeat()
        #expect(events(back, of: "b").contains(.serverStatus(name: "a", alive: true)))
    }

    @Test func mailboxSerialsAndSharedMail() async throws {
        let cluster = try await Cluster()
        #expect(Registry.serialTag(of: "a") != Registry.serialTag(of: "b"))
        try await cluster.register(alice, aliceKey, from: aliceEP, on: "a")
        try await cluster.register(bob, bobKey, from: bobEP, on: "b")
        // dave claims his ID, then leaves: both servers know his claim.
        try await cluster.register(dave, daveKey, from: daveEP, on: "a")
        try await cluster.send(dave, .exit(id: dave))
        #expect(cluster["b"].registry.entry(for: dave) == nil)
        #expect(cluster["b"].registry.claimedSince(dave, now: cluster.now) != nil)

        var serials: [String: [Int64]] = [:]
        for query in UInt32(1)...3 {
            for (sender, node) in [(alice, "a"), (bob, "b")] {
                let sent = try await cluster.send(sender, .deposit(id: sender, query: query, to: dave, sealed: [UInt8(query)]))
                for case .persist(.putMail(let record)) in outputs(sent, of: node) { serials[node, default: []].append(record.serial) }
            }
        }
        #expect(serials["a"]?.count == 3 && serials["b"]?.count == 3)
        let all = (serials["a"] ?? []) + (serials["b"] ?? [])
        #expect(Set(all).count == 6)
        #expect(serials["a"]?.allSatisfy { $0 & 0xFF == Int64(Registry.serialTag(of: "a")) } == true)
        #expect(serials["b"]?.allSatisfy { $0 & 0xFF == Int64(Registry.serialTag(of: "b")) } == true)
        #expect(cluster["b"].registry.mailCount == 3)

        // One of b's was delivered through another server meanwhile: the database no longer has it.
        let gone = try #require(serials["b"]?.first)
        try cluster.store.apply([.removeMail(serial: gone)])

        // dave registers with b: the database's list replaces b's, and goes to him.
        cluster.now = at(10)
        let registration = try await cluster.register(dave, daveKey, from: daveEP, on: "b")
        #expect(messages(registration, of: "b", to: daveEP).contains { if case .registered = $0 { true } else { false } })
        #expect(cluster["b"].registry.mailCount == 5)
        let delivery = try await cluster.timeout(on: "b")
        let delivered = messages(delivery, of: "b", to: daveEP).compactMap { if case .mail(let serial, _, _, _) = $0 { Int64(serial) } else { nil } }
        #expect(Set(delivered) == Set(all).subtracting([gone]))
        #expect(delivered == delivered.sorted())
    }
}

/// What `window` answers to each of `counters`, in turn.
private func feed(_ window: inout ReplayWindow, _ counters: [UInt64]) -> [Bool] {
    counters.map { window.accept($0) }
}

@Suite("ReplayWindow")
struct ReplayWindowTests {
    @Test func inOrder() {
        var window = ReplayWindow()
        #expect(feed(&window, Array(1...200)).allSatisfy { $0 })
        #expect(window.highest == 200)
    }

    @Test func reorderedWithinTheWindow() {
        var window = ReplayWindow()
        // 37 is 63 below the highest: the window's last slot.
        #expect(feed(&window, [100, 98, 99, 37, 110, 101, 47]) == [true, true, true, true, true, true, true])
    }

    @Test func duplicates() {
        var window = ReplayWindow()
        #expect(feed(&window, [100, 100, 90, 90, 200, 200, 150, 150]) == [true, false, true, false, true, false, true, false])
    }

    @Test func tooOld() {
        var window = ReplayWindow()
        // 64 below the highest is out of the window; 63 below is in.
        #expect(feed(&window, [1000, 936, 1, 937]) == [true, false, false, true])
        // A jump past the window forgets everything below it.
        #expect(feed(&window, [5000, 1000, 4936, 4937, 4937]) == [true, false, false, true, false])
    }
}
