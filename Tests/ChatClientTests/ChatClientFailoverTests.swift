import Addressing
import ChatClient
import ChatRouter
import ClientSession
import Identity
import MonotonicTime
import Roster
import Testing
import Wire

// Failover as the whole client sees it: the session moves to the next server when its own
// stops answering; the client follows it (which datagrams are the server's, where relayed
// and server messages go), reconciles the new server's roster with the peers it holds, and
// says one line.

private func id(_ text: String) -> ClientID { try! ClientID(text) }
private func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }
private func at(_ seconds: Int64) -> Instant { Instant.zero + .seconds(seconds) }
private func at(ms: Int64) -> Instant { Instant.zero + .milliseconds(ms) }

private let S = ep("198.51.100.1:10080"), S2 = ep("198.51.100.2:10080")
private let A = ep("203.0.113.7:40001")
private let bobAt = ep("192.0.2.2:4000"), carolAt = ep("192.0.2.3:4000"), daveAt = ep("192.0.2.4:4000"), eveAt = ep("192.0.2.5:4000")
private let alice = id("alice"), bob = id("bob"), carol = id("carol"), dave = id("dave"), eve = id("eve")
private let cookie1 = Token128(high: 0xC001, low: 1), cookie2 = Token128(high: 0xC002, low: 2)
private let nonce1 = Token128(high: 0x7777, low: 1), nonce2 = Token128(high: 0x7777, low: 2)
private let peerKeys = IdentityKey().publicKeys

private typealias Output = ChatClientStateMachine.Output

private func events(_ outputs: [Output]) -> [ClientEvent] {
    outputs.compactMap { if case .event(let event) = $0 { event } else { nil } }
}

private func datagrams(_ outputs: [Output]) -> [(bytes: [UInt8], to: Endpoint)] {
    outputs.compactMap { if case .send(let bytes, let destination) = $0 { (bytes, destination) } else { nil } }
}

/// The natchat/2 messages among `outputs` sent to `server`, decoded.
private func messages(_ outputs: [Output], to server: Endpoint) -> [ExtendedMessage] {
    datagrams(outputs).compactMap { bytes, destination in
        guard destination == server, ExtendedMessage.looksExtended(bytes) else { return nil }
        return try? ExtendedDatagram.decode(bytes).message
    }
}

private func present(_ peer: ClientID, _ endpoint: Endpoint, version: UInt64) -> RosterRecord {
    .present(RosterEntry(info: PeerInfo(id: peer, publicEndpoint: endpoint, privateEndpoints: [], dialect: .extended, keys: peerKeys),
                         order: version, version: version))
}

private func roster(epoch: UInt32, _ records: [RosterRecord]) -> ExtendedMessage {
    .roster(RosterDelta(epoch: epoch, sequence: 1, version: records.map(\.version).max() ?? 1, registered: UInt32(records.count + 1),
                        scope: .complete, synced: true, records: records))
}

/// alice with two servers, `S` then `S2`, registered with `S` at 0, holding bob, carol and
/// dave from `S`'s roster at 1 s.
private struct Alice {
    var machine: ChatClientStateMachine
    let identity = IdentityKey()
    let serverKey = IdentityKey()

    init() {
        machine = ChatClientStateMachine(configuration: .init(
            id: alice, server: S, fallbackServers: [S2], privateAddress: IPv4Address(10, 0, 0, 5), identity: identity))
        _ = machine.start(now: at(0))
        _ = receive(.challenge(cookie: cookie1), from: S, at: at(0))
        _ = receive(registered(cookie: cookie1, nonce: nonce1), from: S, at: at(0))
        let listing = receive(roster(epoch: 1, [present(bob, bobAt, version: 1), present(carol, carolAt, version: 2),
                                                present(dave, daveAt, version: 3)]), from: S, at: at(1))
        #expect(events(listing).filter { if case .joined = $0 { true } else { false } }.count == 3)
    }

    mutating func receive(_ message: ExtendedMessage, from source: Endpoint, at now: Instant) -> [Output] {
        machine.receive(message.encode(), from: source, now: now)
    }

    func registered(cookie: Token128, nonce: Token128) -> ExtendedMessage {
        .registered(serverKey: serverKey.publicKeys.agreement, publicEndpoint: A, keepAliveMillis: 10_000, alternatePort: 3479,
                    nonce: nonce, cookie: cookie)
    }

    mutating func run(until end: Instant) -> [Output] {
        var outputs: [Output] = []
        while let deadline = machine.nextDeadline, deadline <= end { outputs += machine.handleTimeout(now: deadline) }
        return outputs
    }

    /// `S` dies after its roster at 1 s: 24 s later the client offers to `S2`, which registers it.
    mutating func failOver() -> (silence: [Output], registration: [Output]) {
        let silence = run(until: at(25))
        #expect(machine.server == S2)
        _ = receive(.challenge(cookie: cookie2), from: S2, at: at(ms: 25_100))
        let registration = receive(registered(cookie: cookie2, nonce: nonce2), from: S2, at: at(ms: 25_200))
        return (silence, registration)
    }
}

@Suite("ChatClientStateMachine failover")
struct ChatClientFailoverTests {
    /// One line for the move, none for losing the session; the peers in both rosters neither
    /// leave nor join (even though the new server numbers its roster otherwise); a peer that is
    /// gone from the new roster did leave, and a new one joined.
    @Test func aMoveIsOneLineAndPeersStay() throws {
        var client = Alice()
        let (silence, registration) = client.failOver()
        #expect(!events(silence).contains { if case .registeringAgain = $0 { true } else { false } })
        #expect(datagrams(silence).last.map { $0.to == S2 && $0.bytes == Array("alice 10.0.0.5 natchat/2".utf8) } == true)
        #expect(events(registration) == [.serverChanged(from: S, to: S2, publicEndpoint: A)])
        #expect(events(registration).flatMap(ShellFormatter.lines(for:))
            == ["* server 198.51.100.1:10080 is not answering; now registered with 198.51.100.2:10080"])
        // S2's roster: another epoch, bob at a higher version, carol at a lower one, eve new, dave gone.
        let resync = client.receive(roster(epoch: 9, [present(bob, bobAt, version: 40), present(carol, carolAt, version: 1),
                                                      present(eve, eveAt, version: 41)]), from: S2, at: at(26))
        #expect(events(resync) == [.joined(eve, publicEndpoint: eveAt, classicPeer: false), .left(dave, .offline, daveAt)])
        #expect(messages(resync, to: S2).contains { if case .rosterAck = $0 { true } else { false } })
        #expect(client.machine.natchat2Router?.peer(bob) != nil && client.machine.natchat2Router?.peer(carol) != nil)
        // The known peers are remembered under the whole list, whichever server answers.
        #expect(client.machine.configuration.knownPeersServer == "198.51.100.1:10080,198.51.100.2:10080")
    }

    /// Once moved, the old server's datagrams are a stranger's: logged, never acted on.
    @Test func lateDatagramsFromTheOldServerAreIgnored() throws {
        var client = Alice()
        _ = client.failOver()
        for message: ExtendedMessage in [.keepAliveAck(publicEndpoint: ep("203.0.113.7:1")), .challenge(cookie: cookie1),
                                         client.registered(cookie: cookie1, nonce: nonce1), .unknownSession(alice),
                                         roster(epoch: 1, [present(eve, eveAt, version: 9)]), .refused(text: "late")] {
            let late = client.receive(message, from: S, at: at(27))
            #expect(events(late).isEmpty && datagrams(late).isEmpty, "\(message)")
            #expect(late.allSatisfy { if case .diagnostic(.ignored(from: S, _)) = $0 { true } else { false } })
        }
        #expect(client.machine.natchat2Router?.peer(eve) == nil)
        #expect(client.machine.server == S2 && client.machine.isRegistered)
    }

    /// What went to the server goes to the new one: a relayed chat, a look-up.
    @Test func relayAndLookUpsGoToTheNewServer() throws {
        var client = Alice()
        _ = client.failOver()
        let chat = client.machine.handle(.chat(to: bob, text: "still here"), now: at(27))
        #expect(messages(chat, to: S2).contains { if case .relay(_, bob, _) = $0 { true } else { false } })
        let lookup = client.machine.handle(.chat(to: id("zoe"), text: "hi"), now: at(27))
        #expect(messages(lookup, to: S2).contains { if case .lookup(_, _, let peer) = $0 { peer == id("zoe") } else { false } })
        #expect(!datagrams(chat + lookup).contains { $0.to == S })
    }

    /// A chat typed while the server is dead goes out again through the new server.
    @Test func aChatTypedMeanwhileIsRelayedByTheNextServer() throws {
        var client = Alice()
        _ = client.run(until: at(20))
        let typed = client.machine.handle(.chat(to: bob, text: "are you there"), now: at(20))
        #expect(messages(typed, to: S).contains { if case .relay = $0 { true } else { false } })
        _ = client.failOver()
        let again = client.run(until: at(35))
        #expect(messages(again, to: S2).contains { if case .relay(_, bob, _) = $0 { true } else { false } })
        #expect(!events(again).contains { if case .undelivered = $0 { true } else { false } })
    }

    /// One server: the move never happens and silence is told as before.
    @Test func oneServerNeverMoves() {
        var machine = ChatClientStateMachine(configuration: .init(id: alice, server: S, privateAddress: IPv4Address(10, 0, 0, 5)))
        #expect(machine.configuration.knownPeersServer == "198.51.100.1:10080")
        _ = machine.start(now: at(0))
        var told: [ClientEvent] = []
        while let deadline = machine.nextDeadline, deadline <= at(60) { told += events(machine.handleTimeout(now: deadline)) }
        #expect(!told.contains { if case .serverChanged = $0 { true } else { false } })
        #expect(machine.server == S)
    }
}

@Suite("ServerList")
struct ServerListTests {
    private static let addresses: [String: [IPv4Address]] = [
        "one.example": [IPv4Address(10, 0, 0, 1)],
        "many.example": [IPv4Address(10, 0, 0, 2), IPv4Address(10, 0, 0, 3), IPv4Address(10, 0, 0, 2)],
    ]

    private func parse(_ text: String) throws(ServerList.ParseError) -> ServerList {
        try ServerList(parsing: text, defaultPort: 10080) { host in
            Self.addresses[host] ?? (try? IPv4Address(parsing: host)).map { [$0] } ?? []
        }
    }

    @Test func oneServerAsToday() throws {
        let list = try parse("one.example")
        #expect(list.endpoints == [ep("10.0.0.1:10080")])
        #expect(list.first == ep("10.0.0.1:10080") && list.fallbacks.isEmpty)
        #expect(list.name == "one.example:10080")
    }

    @Test func severalWithPortsAndEveryAddressOfAHostOnce() throws {
        let list = try parse("one.example:10090, many.example,10.0.0.9:7,10.0.0.1:10090")
        #expect(list.endpoints == [ep("10.0.0.1:10090"), ep("10.0.0.2:10080"), ep("10.0.0.3:10080"), ep("10.0.0.9:7")])
        #expect(list.fallbacks.count == 3)
        #expect(list.name == "one.example:10090,many.example:10080,10.0.0.9:7,10.0.0.1:10090")
    }

    @Test func badEntriesAreTypedErrors() {
        #expect(throws: ServerList.ParseError.emptyEntry) { try parse("") }
        #expect(throws: ServerList.ParseError.emptyEntry) { try parse("one.example,,many.example") }
        #expect(throws: ServerList.ParseError.emptyEntry) { try parse(":10080") }
        #expect(throws: ServerList.ParseError.badPort("one.example:0")) { try parse("one.example:0") }
        #expect(throws: ServerList.ParseError.badPort("one.example:x")) { try parse("one.example:x") }
        #expect(throws: ServerList.ParseError.badPort("one.example:70000")) { try parse("one.example:70000") }
        #expect(throws: ServerList.ParseError.unresolved("nowhere.example")) { try parse("one.example,nowhere.example") }
    }
}
