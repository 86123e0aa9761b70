import Addressing
import ChatClient
import ChatRouter
import ClientSession
import HolePunch
import Identity
import MonotonicTime
import Roster
import STUN
import Testing
import Wire

// The whole client as one sans-I/O machine: datagrams, commands and clock ticks in, typed
// outputs out. No sockets, no display text: the assertions read `ClientEvent`s, and the
// datagrams as the server or a peer would decode them.

private func id(_ text: String) -> ClientID { try! ClientID(text) }
private func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }
private func at(_ seconds: Int64) -> Instant { Instant.zero + .seconds(seconds) }
private func at(ms: Int64) -> Instant { Instant.zero + .milliseconds(ms) }

private let S = ep("198.51.100.1:10080")
private let A = ep("203.0.113.7:40001"), B = ep("203.0.113.7:40002"), C = ep("198.51.100.9:50000")
private let stranger = ep("192.0.2.66:6666")
private let alice = id("alice"), bob = id("bob"), carol = id("carol"), dave = id("dave")

private typealias Output = ChatClientStateMachine.Output

private func text(_ message: String) -> [UInt8] { Array(message.utf8) }

private func events(_ outputs: [Output]) -> [ClientEvent] {
    outputs.compactMap { if case .event(let event) = $0 { event } else { nil } }
}

private func datagrams(_ outputs: [Output]) -> [(bytes: [UInt8], to: Endpoint)] {
    outputs.compactMap { if case .send(let bytes, let destination) = $0 { (bytes, destination) } else { nil } }
}

private func completions(_ outputs: [Output]) -> [(request: Int, ids: [String])] {
    outputs.compactMap { if case .completion(let request, let ids) = $0 { (request, ids) } else { nil } }
}

/// A natchat/2 datagram sent to the server, as the server decodes it.
private struct ServerDatagram {
    var message: ExtendedMessage
    var trailer: ExtendedDatagram.Trailer
    var bytes: [UInt8]
}

/// The natchat/2 datagrams among `outputs` sent to the server, decoded (STUN left out).
private func toServer(_ outputs: [Output]) -> [ServerDatagram] {
    datagrams(outputs).compactMap { bytes, destination in
        guard destination == S, ExtendedMessage.looksExtended(bytes), let datagram = try? ExtendedDatagram.decode(bytes) else { return nil }
        return ServerDatagram(message: datagram.message, trailer: datagram.trailer, bytes: bytes)
    }
}

private let cookie1 = Token128(high: 0xC001, low: 1), cookie2 = Token128(high: 0xC002, low: 2)
private let nonce1 = Token128(high: 0x7777, low: 1), nonce2 = Token128(high: 0x7777, low: 2)
private let someKeys = IdentityKey().publicKeys

/// A machine for alice, and the server's key to play the rendezvous server with.
private struct Client {
    var machine: ChatClientStateMachine
    let identity = IdentityKey()
    let serverKey = IdentityKey()

    init(offerExtended: Bool, listPageSize: Int = 50, peerPrivatePort: UInt16 = 10081) {
        machine = ChatClientStateMachine(configuration: .init(
            id: alice, server: S, privateAddress: IPv4Address(10, 0, 0, 5), identity: identity,
            peerPrivatePort: peerPrivatePort, offerExtended: offerExtended, listPageSize: listPageSize))
    }

    mutating func receive(_ line: String, from source: Endpoint = S, at now: Instant) -> [Output] {
        machine.receive(text(line), from: source, now: now)
    }

    mutating func receive(_ message: ExtendedMessage, from source: Endpoint = S, at now: Instant) -> [Output] {
        machine.receive(message.encode(), from: source, now: now)
    }

    /// Handles every deadline up to `end`, in order; returns what they produced.
    mutating func run(until end: Instant) -> [Output] {
        var outputs: [Output] = []
        while let deadline = machine.nextDeadline, deadline <= end { outputs += machine.handleTimeout(now: deadline) }
        return outputs
    }

    /// The key the server derives for the session of `cookie` and `nonce`.
    func sessionKey(cookie: Token128, nonce: Token128) -> KeyBytes {
        SessionCrypto.sessionKey(privateKey: serverKey.agreement, peerPublicKey: identity.publicKeys.agreement,
                                 cookie: cookie, nonce: nonce, id: alice)!
    }

    func registered(cookie: Token128, nonce: Token128, endpoint: Endpoint = A, alternatePort: UInt16 = 3479) -> ExtendedMessage {
        .registered(serverKey: serverKey.publicKeys.agreement, publicEndpoint: endpoint, keepAliveMillis: 10_000,
                    alternatePort: alternatePort, nonce: nonce, cookie: cookie)
    }

    /// Starts at t=0 and lets a seed server list bob (same NAT), carol, then alice.
    static func classic(offerExtended: Bool = false, listPageSize: Int = 50) -> Client {
        var client = Client(offerExtended: offerExtended, listPageSize: listPageSize)
        _ = client.machine.start(now: at(0))
        for line in ["bob 203.0.113.7:40002", "bob@private:10.0.0.6", "carol 198.51.100.9:50000", "alice 203.0.113.7:40001",
                     "alice@private:10.0.0.5"] {
            _ = client.receive(line, at: at(0))
        }
        return client
    }

    /// Offer, challenge, signed registration, registered: natchat/2 at t=0. `probe`: the
    /// outputs of the registration (the event and the STUN probes).
    static func natchat2(listPageSize: Int = 50, alternatePort: UInt16 = 3479) -> (client: Client, registration: [Output]) {
        var client = Client(offerExtended: true, listPageSize: listPageSize)
        let offer = client.machine.start(now: at(0))
        #expect(offer == [.send(text("alice 10.0.0.5 natchat/2"), to: S)])
        let signed = toServer(client.receive(.challenge(cookie: cookie1), at: at(0)))
        guard signed.count == 1, case .register(let who, let echoed, _, _, let keys, _) = signed[0].message,
              case .signature(let signature) = signed[0].trailer else {
            Issue.record("no signed registration: \(signed)")
            return (client, [])
        }
        #expect(who == alice && echoed == cookie1 && keys == client.identity.publicKeys)
        #expect(SessionCrypto.verifyRegistration(signed[0].bytes, keys: keys, signature: signature))
        let registration = client.receive(client.registered(cookie: cookie1, nonce: nonce1, alternatePort: alternatePort), at: at(0))
        return (client, registration)
    }

    static func natchat2Registered(listPageSize: Int = 50) -> Client {
        natchat2(listPageSize: listPageSize).client
    }
}

/// A roster datagram from the server.
private func rosterDelta(_ sequence: UInt32, _ records: [RosterRecord], synced: Bool = false, scope: RosterScope = .complete,
                         registered: UInt32 = 0) -> ExtendedMessage {
    .roster(RosterDelta(epoch: 1, sequence: sequence, version: records.map(\.version).max() ?? UInt64(sequence),
                        registered: registered, scope: scope, synced: synced, records: records))
}

private func present(_ name: String, _ endpoint: Endpoint, version: UInt64, dialect: Dialect = .extended,
                     privateEndpoints: [Endpoint] = []) -> RosterRecord {
    .present(RosterEntry(info: PeerInfo(id: id(name), publicEndpoint: endpoint, privateEndpoints: privateEndpoints,
                                        dialect: dialect, keys: dialect == .extended ? someKeys : nil),
                         order: version, version: version))
}

// MARK: - Classic

@Suite("ChatClientStateMachine classic")
struct ChatClientStateMachineClassicTests {
    @Test func registrationAndTheOthersOnline() {
        var client = Client(offerExtended: false)
        #expect(client.machine.start(now: at(0)) == [.send(text("alice 10.0.0.5"), to: S)])
        #expect(client.machine.dialect == .negotiating)
        #expect(client.receive("bob 203.0.113.7:40002", at: at(1)).isEmpty)
        #expect(client.receive("bob@private:10.0.0.6", at: at(1)).isEmpty)
        #expect(client.receive("carol 198.51.100.9:50000", at: at(1)).isEmpty)
        #expect(!client.machine.isRegistered)
        #expect(client.receive("alice 203.0.113.7:40001", at: at(1))
            == [.event(.registered(alice, publicEndpoint: A, .classic(online: [bob, carol])))])
        #expect(client.machine.dialect == .classic)
        #expect(client.machine.isRegistered)
        #expect(client.machine.natchat2Router == nil)
        #expect(client.machine.classicRouter?.isRegistered == true)
        // Registered: only keep-alives are left, from the start.
        #expect(client.machine.nextDeadline == at(10))
        #expect(client.machine.handleTimeout(now: at(3)).isEmpty)
        #expect(client.machine.handleTimeout(now: at(10)) == [.send(text("alice@keepalive"), to: S)])
    }

    @Test func anOfferingClientFallsBackWhenTheServerIsClassic() {
        var client = Client(offerExtended: true)
        #expect(client.machine.start(now: at(0)) == [.send(text("alice 10.0.0.5 natchat/2"), to: S)])
        #expect(client.machine.handleTimeout(now: at(1)) == [.send(text("alice 10.0.0.5 natchat/2"), to: S)])
        #expect(client.receive("alice 203.0.113.7:40001", at: at(2))
            == [.event(.registered(alice, publicEndpoint: A, .classic(online: [])))])
        #expect(client.machine.dialect == .classic)
        #expect(client.machine.nextDeadline == at(10))
    }

    @Test func joinsLeavesMovesAndSameNAT() {
        var client = Client.classic()
        #expect(client.receive("dave 192.0.2.4:60000", at: at(1)) == [.event(.joined(dave, publicEndpoint: ep("192.0.2.4:60000"),
                                                                                      classicPeer: false))])
        #expect(client.receive("dave@private:10.0.0.9", at: at(1)) == [.event(.sameNAT(dave, privateAddress: IPv4Address(10, 0, 0, 9)))])
        #expect(client.receive("bob 203.0.113.7:41000", at: at(2)) == [.event(.moved(bob, ep("203.0.113.7:41000")))])
        #expect(client.receive("alice 203.0.113.7:41001", at: at(2)) == [.event(.publicEndpointChanged(ep("203.0.113.7:41001")))])
        #expect(client.receive("carol is off-line 198.51.100.9:50000", at: at(3)) == [.event(.left(carol, .offline, C))])
        #expect(client.receive("dave is unregistered 192.0.2.4:60000", at: at(4))
            == [.event(.left(dave, .unregistered, ep("192.0.2.4:60000")))])
        // Lists from anyone but the server change nothing.
        let forged = client.receive("eve 192.0.2.5:1", from: stranger, at: at(5))
        #expect(events(forged).isEmpty)
        #expect(forged.allSatisfy { if case .diagnostic(.ignored(from: stranger, _)) = $0 { true } else { false } })
        #expect(client.machine.classicRouter?.peer(id("eve")) == nil)
    }

    @Test func chatGoesToASameNATPeersPrivateAddress() {
        var client = Client.classic()
        #expect(client.machine.handle(.chat(to: bob, text: "I love Network!!"), now: at(1))
            == [.send(text("alice@chat I love Network!!"), to: ep("10.0.0.6:10081"))])
        #expect(client.machine.handle(.chat(to: carol, text: "hi @ 10:30"), now: at(1)) == [.send(text("alice@chat hi @ 10:30"), to: C)])
    }

    @Test func chatToAnUnknownPeer() {
        var client = Client.classic()
        #expect(client.machine.handle(.chat(to: dave, text: "hi"), now: at(1)) == [.event(.noSuchPeer(dave))])
    }

    @Test func incomingChatAndNotices() {
        var client = Client.classic()
        #expect(client.receive("client2@chat I love Network!!", from: stranger, at: at(1))
            == [.event(.chat(from: id("client2"), text: "I love Network!!", origin: .classicSession))])
        #expect(client.receive("server@chat maintenance at noon", at: at(1)) == [.event(.serverNotice("maintenance at noon"))])
        #expect(client.machine.nextDeadline == at(10), "a notice after registration is only shown")
    }

    @Test func aNoticeBeforeRegistrationIsTheRefusal() {
        var client = Client(offerExtended: true)
        _ = client.machine.start(now: at(0))
        let notice = "registration refused: ID alice - the ID is in use from another address"
        // Not from the server: nothing.
        #expect(events(client.receive("server@chat " + notice, from: stranger, at: at(0))).isEmpty)
        #expect(client.receive("server@chat " + notice, at: at(0)) == [.event(.serverNotice(notice)), .event(.registrationRefused(notice))])
        #expect(client.machine.nextDeadline == nil)
        #expect(client.machine.handleTimeout(now: at(1)).isEmpty)
        #expect(client.machine.handleTimeout(now: at(10)).isEmpty)
    }

    @Test func showListAndCompletion() {
        var client = Client.classic()
        #expect(client.machine.handle(.showList(), now: at(1)) == [.event(.listEntry(.classic(bob, B))), .event(.listEntry(.classic(carol, C))),
                                                                 .event(.listEntry(.classic(alice, A)))])
        #expect(client.machine.completePeerIDs(prefix: "", request: 1, now: at(1)) == [.completion(request: 1, ids: ["bob", "carol"])])
        #expect(client.machine.completePeerIDs(prefix: "c", request: 2, now: at(1)) == [.completion(request: 2, ids: ["carol"])])
        #expect(client.machine.handle(.help, now: at(1)) == [.event(.help)])
        var unregistered = Client(offerExtended: false)
        _ = unregistered.machine.start(now: at(0))
        #expect(unregistered.machine.handle(.showList(), now: at(0)) == [.event(.listEmpty)])
        #expect(unregistered.machine.completePeerIDs(prefix: "", request: 3, now: at(0)) == [.completion(request: 3, ids: [])])
    }

    @Test func exitUnregistersOnceAndThenNothingHappens() {
        var client = Client.classic()
        #expect(client.machine.handle(.exit, now: at(5)) == [.send(text("alice @exit"), to: S)])
        #expect(client.machine.leave(now: at(6)).isEmpty)
        #expect(client.machine.handle(.exit, now: at(6)).isEmpty)
        #expect(client.machine.nextDeadline == nil)
        #expect(client.receive("bob@chat still there?", from: B, at: at(6)).isEmpty)
        #expect(client.receive("dave 192.0.2.4:60000", at: at(6)).isEmpty)
        #expect(client.machine.handleTimeout(now: at(10)).isEmpty)
        #expect(client.machine.classicRouter?.peer(dave) == nil)
    }

    @Test func malformedDatagramsAreDiagnosed() {
        var client = Client.classic()
        for (bytes, source) in [(text("garbage"), S), ([0xFF, 0x00], stranger), (text("bob@chat \u{1B}[2J"), stranger),
                                ([0xFE, 0x01], stranger), ([0xFE, 0x01, 0x42, 0x00], S)] as [([UInt8], Endpoint)] {
            let outputs = client.machine.receive(bytes, from: source, now: at(1))
            #expect(outputs.count == 1, "\(bytes)")
            guard case .diagnostic(.malformed(let from, let reason))? = outputs.first else {
                Issue.record("not diagnosed as malformed: \(outputs)"); continue
            }
            #expect(from == source)
            #expect(!reason.isEmpty)
        }
        #expect(client.machine.malformedCount == 5)
        #expect(client.machine.isRegistered)
    }
}

// MARK: - natchat/2

@Suite("ChatClientStateMachine natchat/2")
struct ChatClientStateMachineNatchat2Tests {
    @Test func registrationThenTheMappingProbe() throws {
        let (client, registration) = Client.natchat2(alternatePort: 3479)
        var machine = client.machine
        #expect(events(registration) == [.registered(alice, publicEndpoint: A, .natchat2(keyFingerprint: client.identity.fingerprint))])
        #expect(registration.first == .event(.registered(alice, publicEndpoint: A, .natchat2(keyFingerprint: client.identity.fingerprint))))
        #expect(machine.dialect == .natchat2)
        #expect(machine.isRegistered)
        #expect(machine.natchat2Router != nil)
        #expect(machine.classicRouter == nil)
        // The probe: a Binding request to the server's port and one to its alternate port.
        let probes = datagrams(registration)
        let alternate = Endpoint(address: S.address, port: 3479)
        #expect(probes.map(\.to) == [S, alternate])
        var transactions: [STUN.TransactionID] = []
        for probe in probes {
            #expect(STUN.looksLikeSTUN(probe.bytes))
            guard case .bindingRequest(let transaction) = try STUN.decode(probe.bytes) else {
                Issue.record("not a Binding request"); continue
            }
            transactions.append(transaction)
        }
        try #require(transactions.count == 2)
        // Both answer with the same mapping: endpoint-independent; the server is told at once.
        #expect(machine.receive(STUN.bindingSuccess(transactions[0], mapped: A), from: S, now: at(ms: 50)).isEmpty)
        let settled = machine.receive(STUN.bindingSuccess(transactions[1], mapped: A), from: alternate, now: at(ms: 60))
        #expect(events(settled) == [.natClassified(.endpointIndependent)])
        let told = toServer(settled)
        #expect(told.map(\.message) == [.keepAlive(id: alice, natKind: .endpointIndependent)])
        #expect(told.first?.trailer.counter == 1)
        #expect(told.first.map { SessionCrypto.verifyAuthenticated($0.bytes, key: client.sessionKey(cookie: cookie1, nonce: nonce1)) } == true)
        #expect(machine.natKind == .endpointIndependent)
        #expect(machine.natchat2Router?.natKind == .endpointIndependent)
    }

    @Test func aProbeWithoutAnswersSettlesOnUnknown() {
        var client = Client.natchat2(alternatePort: 0).client
        var settled: [ClientEvent] = []
        var probes = 0
        while let deadline = client.machine.nextDeadline, deadline < at(5) {
            let outputs = client.machine.handleTimeout(now: deadline)
            probes += datagrams(outputs).filter { STUN.looksLikeSTUN($0.bytes) }.count
            settled += events(outputs)
        }
        #expect(settled == [.natClassified(.unknown)])
        #expect(probes == 3, "four attempts in all, one at registration")
    }

    @Test func listingJoinsAreShownUpToAScreenfulThenSummedUp() {
        var client = Client.natchat2Registered()
        let count = ChatClientStateMachine.joinLinesPerListing + 5
        let records = (0..<count).map { present("peer\($0)", Endpoint(address: IPv4Address(192, 0, 2, UInt8($0)), port: 4000),
                                                version: UInt64($0 + 1)) }
        // Ten records a datagram (a datagram holds at most 1500 bytes).
        var listing: [Output] = []
        for (index, start) in stride(from: 0, to: count, by: 10).enumerated() {
            let delta = rosterDelta(UInt32(index + 1), Array(records[start..<min(count, start + 10)]), registered: UInt32(count + 1))
            let outputs = client.receive(delta, at: at(1))
            // Each is acknowledged under the session.
            #expect(toServer(outputs).map(\.message) == [.rosterAck(id: alice, largest: UInt32(index + 1),
                                                                       received: (UInt64(1) << UInt64(index)) - 1)])
            listing += outputs
        }
        #expect(events(listing) == (0..<ChatClientStateMachine.joinLinesPerListing).map {
            .joined(id("peer\($0)"), publicEndpoint: Endpoint(address: IPv4Address(192, 0, 2, UInt8($0)), port: 4000), classicPeer: false)
        })
        let synced = client.receive(rosterDelta(4, [], synced: true, registered: UInt32(count + 1)), at: at(1))
        #expect(events(synced) == [.moreOnline(5)])
        // News after the listing is always shown.
        let news = client.receive(rosterDelta(5, [present("zed", C, version: 100)]), at: at(2))
        #expect(events(news) == [.joined(id("zed"), publicEndpoint: C, classicPeer: false)])
        let gone = client.receive(rosterDelta(6, [.absent(id("zed"), version: 101, reason: .offline, publicEndpoint: C)]), at: at(3))
        #expect(events(gone) == [.left(id("zed"), .offline, C)])
        // A whole listing that fits a screenful sums nothing up.
        var small = Client.natchat2Registered()
        _ = small.receive(rosterDelta(1, [present("bob", B, version: 1)]), at: at(1))
        #expect(events(small.receive(rosterDelta(2, [], synced: true, registered: 2), at: at(1))).isEmpty)
    }

    @Test func aClassicPeerBehindOurNATIsReachedPrivately() {
        var client = Client.natchat2Registered()
        let daveInfo = present("dave", ep("203.0.113.7:5000"), version: 1, dialect: .classic,
                               privateEndpoints: [ep("10.0.0.9:10081")])
        #expect(events(client.receive(rosterDelta(1, [daveInfo]), at: at(1)))
            == [.joined(dave, publicEndpoint: ep("203.0.113.7:5000"), classicPeer: true), .sameNAT(dave, privateAddress: IPv4Address(10, 0, 0, 9))])
        // Classic peers cannot answer checks: the seed's same-NAT rule picks the address.
        #expect(client.machine.handle(.chat(to: dave, text: "hi"), now: at(2)) == [.send(text("alice@chat hi"), to: ep("10.0.0.9:10081"))])
        // Its chats are shown as unverified.
        #expect(client.receive("dave@chat yo", from: ep("10.0.0.9:10081"), at: at(2))
            == [.event(.chat(from: dave, text: "yo", origin: .unverifiedClassicPeer))])
        #expect(client.receive("server@chat maintenance", at: at(2)) == [.event(.serverNotice("maintenance"))])
        #expect(client.receive("server@chat maintenance", from: stranger, at: at(2)).isEmpty)
    }

    @Test func chatToAnIDTheServerDoesNotKnow() throws {
        var client = Client.natchat2Registered()
        let asked = toServer(client.machine.handle(.chat(to: dave, text: "anyone?"), now: at(1)))
        guard case .lookup(_, let query, dave)? = asked.first?.message else {
            Issue.record("no look-up: \(asked)"); return
        }
        let claimAsked = toServer(client.receive(.lookupResult(query: query, epoch: 1, version: 3, peer: dave, found: nil), at: at(1)))
        guard case .claimLookup(_, let claimQuery, dave)? = claimAsked.first?.message else {
            Issue.record("no claim look-up: \(claimAsked)"); return
        }
        #expect(events(client.receive(.claimResult(query: claimQuery, peer: dave, keys: nil, claimedSince: 0), at: at(1)))
            == [.noSuchPeer(dave)])
    }

    @Test func completionIsAnsweredAtOnceFromTheRoster() {
        var client = Client.natchat2Registered()
        #expect(client.machine.completePeerIDs(prefix: "", request: 1, now: at(1)) == [.completion(request: 1, ids: [])])
        _ = client.receive(rosterDelta(1, [present("carol", C, version: 1), present("bob", B, version: 2),
                                           present("bobby", A, version: 3)], synced: true, registered: 4), at: at(1))
        #expect(client.machine.completePeerIDs(prefix: "", request: 2, now: at(2)) == [.completion(request: 2, ids: ["bob", "bobby", "carol"])])
        #expect(client.machine.completePeerIDs(prefix: "bob", request: 3, now: at(2)) == [.completion(request: 3, ids: ["bob", "bobby"])])
        #expect(client.machine.completePeerIDs(prefix: "z", request: 4, now: at(2)) == [.completion(request: 4, ids: [])])
    }

    /// Past the server's roster limit the client holds only the peers it deals with:
    /// completion asks the server, and falls back on the peers held when no answer comes
    /// within the console's 2 s.
    @Test func pastTheRosterLimitCompletionAsksTheServer() throws {
        var client = Client.natchat2Registered()
        _ = client.run(until: at(1)) // the mapping probe settles
        let key = client.sessionKey(cookie: cookie1, nonce: nonce1)
        let scoped = client.receive(rosterDelta(1, [], scope: .interest, registered: 100_001), at: at(1))
        #expect(events(scoped) == [.rosterScopeChanged(.interest, registered: 100_001)])
        // The server pushes bob (talked to).
        _ = client.receive(rosterDelta(2, [present("bob", B, version: 7)], synced: true, scope: .interest, registered: 100_001), at: at(1))

        // Answered by the server.
        let asked = client.machine.completePeerIDs(prefix: "b", request: 5, now: at(2))
        #expect(completions(asked).isEmpty, "not answered before the server is")
        let queries = toServer(asked)
        guard queries.count == 1, case .listQuery(alice, let query, "b", 0, let limit) = queries[0].message else {
            Issue.record("no list query: \(queries)"); return
        }
        #expect(Int(limit) == ChatClientStateMachine.completionLimit)
        #expect(SessionCrypto.verifyAuthenticated(queries[0].bytes, key: key))
        let entries = [ListEntry(id: bob, publicEndpoint: B, natKind: .unknown, dialect: .extended),
                       ListEntry(id: id("bobby"), publicEndpoint: A, natKind: .unknown, dialect: .extended),
                       ListEntry(id: id("boris"), publicEndpoint: C, natKind: .unknown, dialect: .classic)]
        let answered = client.receive(.listPage(query: query, total: 3, offset: 0, entries: entries), at: at(2))
        #expect(answered == [.completion(request: 5, ids: ["bob", "bobby", "boris"])])
        // An answer to a question not asked (or already answered) answers nothing.
        #expect(completions(client.receive(.listPage(query: query, total: 3, offset: 0, entries: entries), at: at(2))).isEmpty)
        // Our own ID is not offered.
        let all = toServer(client.machine.completePeerIDs(prefix: "", request: 6, now: at(2)))
        guard case .listQuery(_, let allQuery, "", _, _)? = all.first?.message else {
            Issue.record("no list query: \(all)"); return
        }
        let withSelf = [ListEntry(id: alice, publicEndpoint: A, natKind: .unknown, dialect: .extended)] + entries
        #expect(completions(client.receive(.listPage(query: allQuery, total: 4, offset: 0, entries: withSelf), at: at(2))).map(\.ids)
            == [["bob", "bobby", "boris"]])

        // Not answered: asked again, then the peers held after 2 s.
        let start = at(3)
        var resent = toServer(client.machine.completePeerIDs(prefix: "b", request: 7, now: start)).count
        var answers: [(request: Int, ids: [String])] = []
        var when: Instant?
        while answers.isEmpty, let deadline = client.machine.nextDeadline, deadline <= start + .seconds(3) {
            let outputs = client.machine.handleTimeout(now: deadline)
            resent += toServer(outputs).filter { if case .listQuery = $0.message { true } else { false } }.count
            answers = completions(outputs)
            if !answers.isEmpty { when = deadline }
        }
        #expect(answers.map(\.request) == [7])
        #expect(answers.first?.ids == ["bob"])
        #expect(when == start + .seconds(2))
        #expect(resent == 3, "asked at once, then after 400 ms and 800 ms more")
    }

    @Test func pastTheRosterLimitShowListAsksTheServer() throws {
        var client = Client.natchat2Registered(listPageSize: 3)
        _ = client.run(until: at(1)) // the mapping probe settles
        _ = client.receive(rosterDelta(1, [], scope: .interest, registered: 5), at: at(1))
        let asked = client.machine.handle(.showList(), now: at(2))
        #expect(events(asked).isEmpty)
        guard case .listQuery(_, let query, "", 0, 3)? = toServer(asked).first?.message else {
            Issue.record("no list query: \(toServer(asked))"); return
        }
        // The server sends two of the three: the rest is asked for from where they end.
        let first = [ListEntry(id: alice, publicEndpoint: A, natKind: .unknown, dialect: .extended),
                     ListEntry(id: bob, publicEndpoint: B, natKind: .unknown, dialect: .extended)]
        let partial = client.receive(.listPage(query: query, total: 5, offset: 0, entries: first), at: at(2))
        #expect(events(partial).isEmpty)
        guard case .listQuery(_, let rest, "", 2, 1)? = toServer(partial).first?.message else {
            Issue.record("no query for the rest: \(toServer(partial))"); return
        }
        let shown = client.receive(.listPage(query: rest, total: 5, offset: 2,
                                             entries: [ListEntry(id: dave, publicEndpoint: C, natKind: .unknown, dialect: .classic)]),
                                   at: at(2))
        #expect(events(shown) == [.listEntry(.own(alice, A, client.machine.natKind)), .listEntry(.peer(bob, B, PathAgent.Path.none)),
                                  .listEntry(.peer(dave, C, nil)),
                                  .listFooter(ListFooter(total: 5, shown: 3, first: 0, prefix: nil, page: 1, pageSize: 3)!)])
        // Unanswered, the page is reported after the list deadline.
        _ = client.machine.handle(.showList(page: 2), now: at(3))
        var reported: [ClientEvent] = []
        while let deadline = client.machine.nextDeadline, deadline <= at(9) {
            reported += events(client.machine.handleTimeout(now: deadline)).filter { $0 == .listUnanswered }
        }
        #expect(reported == [.listUnanswered])
    }

    @Test func heldRosterShowList() {
        var client = Client.natchat2Registered(listPageSize: 2)
        _ = client.receive(rosterDelta(1, [present("bob", B, version: 1), present("carol", C, version: 2)], synced: true, registered: 3),
                           at: at(1))
        #expect(events(client.machine.handle(.showList(), now: at(2)))
            == [.listEntry(.own(alice, A, .unknown)), .listEntry(.peer(bob, B, PathAgent.Path.none)),
                .listFooter(ListFooter(total: 3, shown: 2, first: 0, prefix: nil, page: 1, pageSize: 2)!)])
        #expect(events(client.machine.handle(.showList(prefix: "c"), now: at(2)))
            == [.listEntry(.peer(carol, C, PathAgent.Path.none)),
                .listFooter(ListFooter(total: 1, shown: 1, first: 0, prefix: "c", page: 1, pageSize: 2)!)])
    }

    @Test func theSessionsNewsReachTheUser() throws {
        var client = Client.natchat2Registered()
        let key1 = client.sessionKey(cookie: cookie1, nonce: nonce1)
        #expect(client.receive(.keepAliveAck(publicEndpoint: ep("203.0.113.7:41001")), at: at(1))
            == [.event(.publicEndpointChanged(ep("203.0.113.7:41001")))])
        #expect(client.receive(.refused(text: "slow down"), at: at(1)) == [.event(.serverNotice("slow down"))])
        // A natchat/2 answer from anyone but the server is only a diagnostic.
        let forged = client.receive(.unknownSession(alice), from: stranger, at: at(1))
        #expect(events(forged).isEmpty && datagrams(forged).isEmpty && forged.count == 1)
        // The server lost the session: registering again, then registered again.
        let keepAlive = try #require(toServer(client.machine.handleTimeout(now: at(10))).first { if case .keepAlive = $0.message { true } else { false } })
        #expect(SessionCrypto.verifyAuthenticated(keepAlive.bytes, key: key1))
        let tag = try #require(keepAlive.trailer.tag)
        let lost = client.receive(.unknownSession(alice, echo: tag), at: at(11))
        #expect(events(lost) == [.registeringAgain(.unknownSession)])
        #expect(datagrams(lost).map(\.bytes) == [text("alice 10.0.0.5 natchat/2")])
        _ = client.receive(.challenge(cookie: cookie2), at: at(11))
        #expect(client.receive(client.registered(cookie: cookie2, nonce: nonce2), at: at(11))
            == [.event(.registeredAgain(alice, publicEndpoint: A))])
        // Silence: registering again.
        var silent: [ClientEvent] = []
        while silent.isEmpty, let deadline = client.machine.nextDeadline, deadline <= at(60) {
            silent = events(client.machine.handleTimeout(now: deadline)).filter { $0 == .registeringAgain(.serverSilent) }
        }
        #expect(silent == [.registeringAgain(.serverSilent)])
    }

    @Test func refusedBeforeRegistration() {
        var client = Client(offerExtended: true)
        _ = client.machine.start(now: at(0))
        _ = client.receive(.challenge(cookie: cookie1), at: at(0))
        let text = "registration refused: ID alice is bound to another key"
        #expect(client.receive(.refused(text: text), at: at(0)) == [.event(.serverNotice(text)), .event(.registrationRefused(text))])
        #expect(client.machine.nextDeadline == nil)
    }

    @Test func exitThenNothing() throws {
        var client = Client.natchat2Registered()
        let exit = toServer(client.machine.handle(.exit, now: at(1)))
        #expect(exit.map(\.message) == [.exit(id: alice)])
        #expect(exit.first.map { SessionCrypto.verifyAuthenticated($0.bytes, key: client.sessionKey(cookie: cookie1, nonce: nonce1)) } == true)
        #expect(client.machine.nextDeadline == nil)
        #expect(client.receive(rosterDelta(1, [present("bob", B, version: 1)]), at: at(2)).isEmpty)
        #expect(client.receive(.keepAliveAck(publicEndpoint: B), at: at(2)).isEmpty)
        #expect(client.receive("bob@chat hi", from: B, at: at(2)).isEmpty)
        #expect(client.machine.receive([0xFE], from: stranger, now: at(2)).isEmpty)
        #expect(client.machine.handleTimeout(now: at(30)).isEmpty)
        #expect(client.machine.leave(now: at(31)).isEmpty)
    }
}

// MARK: - @status and @ping

@Suite("ChatClientStateMachine @status and @ping")
struct ChatClientStatusTests {
    /// Lets time run to `end`, answering every keep-alive `delay` after it went out.
    private func runAnsweringKeepAlives(_ client: inout Client, until end: Instant, delay: Duration) {
        while let deadline = client.machine.nextDeadline, deadline <= end {
            let sent = toServer(client.machine.handleTimeout(now: deadline))
            if sent.contains(where: { if case .keepAlive = $0.message { true } else { false } }) {
                _ = client.receive(.keepAliveAck(publicEndpoint: A), at: deadline + delay)
            }
        }
    }

    @Test func statusReportsTheSessionAndEveryPeer() {
        var client = Client.natchat2Registered()
        _ = client.receive(rosterDelta(1, [present("bob", B, version: 1), present("carol", C, version: 2, dialect: .classic)],
                                       synced: true, registered: 3), at: at(1))
        runAnsweringKeepAlives(&client, until: at(20), delay: .milliseconds(25))
        let report = client.machine.statusReport(now: at(21))
        #expect(report.id == alice)
        #expect(report.keyFingerprint == client.identity.fingerprint)
        #expect(report.session == .natchat2)
        #expect(report.server == S)
        #expect(report.publicEndpoint == A)
        #expect(report.serverRoundTrip == .milliseconds(25))
        #expect(report.peers == [
            StatusReport.Peer(id: bob, route: .relayed, relayReason: .notTriedYet),
            StatusReport.Peer(id: carol, route: .classic(C), relayReason: .classicPeer),
        ])
        #expect(report.otherPeers == 0)
        // @status is that report as an event, and the status socket's text is its lines.
        #expect(events(client.machine.handle(.status, now: at(21))) == [.status(report)])
        #expect(client.machine.statusText(now: at(21)) == ShellFormatter.lines(for: report).joined(separator: "\n"))
    }

    @Test func pingGoesOverTheRelayAndTimesOut() throws {
        var client = Client.natchat2Registered()
        _ = client.receive(rosterDelta(1, [present("bob", B, version: 1), present("carol", C, version: 2, dialect: .classic)],
                                       synced: true, registered: 3), at: at(1))
        let sent = client.machine.handle(.ping(bob), now: at(2))
        #expect(events(sent).isEmpty)
        let relay = try #require(toServer(sent).first)
        guard case .relay(alice, bob, let payload) = relay.message, case .ping(alice, bob, _)? = try? ExtendedMessage.decode(payload) else {
            Issue.record("not a relayed ping: \(relay.message)")
            return
        }
        #expect(events(client.run(until: at(5) - .nanoseconds(1))).filter { if case .pingUnanswered = $0 { true } else { false } }.isEmpty)
        #expect(events(client.run(until: at(5))).contains(.pingUnanswered(bob, route: .relayed, after: .seconds(3))))
        // What cannot be pinged says why, and sends nothing.
        for (peer, problem) in [(carol, PingProblem.classicPeer), (alice, .yourself), (dave, .unknownPeer)] {
            let outputs = client.machine.handle(.ping(peer), now: at(6))
            #expect(events(outputs) == [.pingNotSent(peer, problem)])
            #expect(datagrams(outputs).isEmpty)
        }
    }

    @Test func pingInAClassicSessionIsNotSent() {
        var client = Client.classic()
        #expect(events(client.machine.handle(.ping(bob), now: at(1))) == [.pingNotSent(bob, .classicPeer)])
        #expect(client.machine.statusReport(now: at(1)).session == .classic)
        #expect(client.machine.statusReport(now: at(1)).peers.isEmpty)
    }
}
