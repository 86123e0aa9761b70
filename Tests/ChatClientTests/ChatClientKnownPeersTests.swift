import Addressing
import ChatClient
import ChatRouter
import Identity
import KnownPeers
import MonotonicTime
import Testing
import Wire

// Known peers in the client: a peer whose key differs from the one remembered from earlier
// sessions is held (warning, chat refused both ways) until @trust; the table is saved a
// second after it changes. A fake clock; the server is played by hand.

private func id(_ text: String) -> ClientID { try! ClientID(text) }
private func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }
private func at(_ seconds: Int64) -> Instant { Instant.zero + .seconds(seconds) }

private typealias Output = ChatClientStateMachine.Output

private let S = ep("198.51.100.1:10080"), A = ep("203.0.113.7:40001"), B = ep("198.51.100.9:50000")
private let alice = id("alice"), bob = id("bob"), carol = id("carol"), dave = id("dave")
private let serverName = "chat.example.org:10080"
/// The Unix time at the fake clock's zero: 2026-05-01T10:00:00Z.
private let day: Int64 = 1_777_629_600

private func events(_ outputs: [Output]) -> [ClientEvent] {
    outputs.compactMap { if case .event(let event) = $0 { event } else { nil } }
}

private func saves(_ outputs: [Output]) -> [[KnownPeers.Record]] {
    outputs.compactMap { if case .saveKnownPeers(let records) = $0 { records } else { nil } }
}

/// The natchat/2 messages among `outputs` sent to the server.
private func toServer(_ outputs: [Output]) -> [ExtendedMessage] {
    outputs.compactMap {
        guard case .send(let bytes, S) = $0, ExtendedMessage.looksExtended(bytes) else { return nil }
        return try? ExtendedDatagram.decode(bytes).message
    }
}

private func entry(_ name: String, _ endpoint: Endpoint, keys: PublicKeys?, version: UInt64) -> RosterEntry {
    RosterEntry(info: PeerInfo(id: id(name), publicEndpoint: endpoint, dialect: keys == nil ? .classic : .extended, keys: keys),
                order: version, version: version)
}

private func roster(_ sequence: UInt32, _ records: [RosterRecord]) -> ExtendedMessage {
    .roster(RosterDelta(epoch: 1, sequence: sequence, version: records.map(\.version).max() ?? 0, registered: 3,
                        scope: .complete, synced: true, records: records))
}

/// alice registered in natchat/2 at t=0, remembering bob's and dave's old keys.
private struct Alice {
    var machine: ChatClientStateMachine
    let identity = IdentityKey()
    let serverKey = IdentityKey()

    init(known: [KnownPeers.Record]?) {
        machine = ChatClientStateMachine(configuration: .init(
            id: alice, server: S, privateAddress: IPv4Address(10, 0, 0, 5), identity: identity,
            knownPeers: known.map { KnownPeers(records: $0) }, knownPeersServer: serverName,
            wallClock: .init(instant: .zero, unixSeconds: day)))
        _ = machine.start(now: at(0))
        _ = machine.receive(ExtendedMessage.challenge(cookie: Token128(high: 1, low: 1)).encode(), from: S, now: at(0))
        let registered = ExtendedMessage.registered(
            serverKey: serverKey.publicKeys.agreement, publicEndpoint: A, keepAliveMillis: 10_000, alternatePort: 0,
            nonce: Token128(high: 2, low: 2), cookie: Token128(high: 1, low: 1))
        _ = machine.receive(registered.encode(), from: S, now: at(0))
    }

    mutating func receive(_ message: ExtendedMessage, at now: Instant) -> [Output] {
        machine.receive(message.encode(), from: S, now: now)
    }

    /// A chat `peer` (holding `key`) sent through the relay.
    func relayedChat(from peer: ClientID, key: IdentityKey, messageID: UInt64, text: String) -> ExtendedMessage {
        let pairKey = SessionCrypto.pairKey(privateKey: key.agreement, peerPublicKey: identity.publicKeys.agreement,
                                            selfID: peer, peerID: alice)!
        let sealed = SessionCrypto.seal(text, from: peer, to: alice, messageID: messageID, key: pairKey)!
        return .relayed(from: peer, payload: ExtendedMessage.chat(from: peer, to: alice, messageID: messageID, sealed: sealed).encode())
    }
}

@Suite("ChatClientStateMachine known peers")
struct ChatClientKnownPeersTests {
    let bobOld = IdentityKey(), bobNew = IdentityKey(), daveOld = IdentityKey(), daveNew = IdentityKey(), carolKey = IdentityKey()
    var known: [KnownPeers.Record] {
        [KnownPeers.Record(server: serverName, id: "bob", fingerprint: bobOld.fingerprint, firstSeen: day - 86_400, lastSeen: day - 3600),
         KnownPeers.Record(server: serverName, id: "dave", fingerprint: daveOld.fingerprint, firstSeen: day - 86_400, lastSeen: day - 3600),
         // Another server's bob is another peer.
         KnownPeers.Record(server: "other.example.org:10080", id: "bob", fingerprint: bobNew.fingerprint, firstSeen: 0, lastSeen: 0)]
    }

    @Test func aChangedKeyHoldsChatUntilTrust() throws {
        var client = Alice(known: known)
        #expect(client.machine.natchat2Router != nil)

        // The roster shows bob with another key: a warning, and bob is held.
        let shown = client.receive(roster(1, [.present(entry("bob", B, keys: bobNew.publicKeys, version: 1))]), at: at(1))
        #expect(events(shown).contains(.peerKeyChanged(bob, pinned: bobOld.fingerprint, seen: bobNew.fingerprint)))
        #expect(client.machine.natchat2Router?.heldPeers == [bob])
        #expect(client.machine.knownPeers?.isHeld(server: serverName, id: "bob") == true)
        // A hold is not a change to save.
        #expect(saves(client.run(until: at(3))).isEmpty)

        // Chat to bob is refused, and nothing goes out for it.
        let refused = client.machine.handle(.chat(to: bob, text: "hi bob"), now: at(4))
        #expect(events(refused) == [.chatHeld(to: bob, text: "hi bob")])
        #expect(toServer(refused).isEmpty)
        #expect(client.machine.natchat2Router?.messagesInFlight == 0)

        // Chat from bob is not shown and not acknowledged, and its retransmission is not reported again.
        let chat = client.relayedChat(from: bob, key: bobNew, messageID: 77, text: "it is me, bob")
        let dropped = client.receive(chat, at: at(5))
        #expect(events(dropped) == [.chatFromHeldPeer(bob)])
        #expect(toServer(dropped).isEmpty)
        #expect(events(client.receive(chat, at: at(6))).isEmpty)

        // @whois tells the pin, the dates, the hold and the path.
        let whois = events(client.machine.handle(.whois(bob), now: at(7)))
        var record = known[0]
        record.heldFingerprint = bobNew.fingerprint
        #expect(whois == [.whois(WhoisReport(id: bob, record: record, path: .path(.none)))])
        #expect(ShellFormatter.lines(for: whois[0]).last
            == "* bob is HELD: it showed key \(bobNew.fingerprint) instead; check it with bob out of band, then @trust bob")

        // @trust: the new key is pinned and chat goes on both ways.
        let trusted = client.machine.handle(.trust(bob), now: at(8))
        #expect(events(trusted) == [.trusted(bob, previous: bobOld.fingerprint, now: bobNew.fingerprint)])
        #expect(client.machine.natchat2Router?.heldPeers == [])
        // A retransmission of the chat that was dropped is shown now, and acknowledged.
        let retransmitted = client.receive(chat, at: at(8))
        #expect(events(retransmitted) == [.chat(from: bob, text: "it is me, bob", origin: .authenticated(.relayed))])
        #expect(toServer(retransmitted).contains { if case .relay(alice, bob, _) = $0 { true } else { false } })
        let sent = client.machine.handle(.chat(to: bob, text: "hi bob"), now: at(8))
        #expect(toServer(sent).contains { if case .relay(alice, bob, _) = $0 { true } else { false } })
        #expect(client.machine.natchat2Router?.messagesInFlight == 1)

        // The trust is saved a second later (not at once), with every server's records.
        #expect(client.machine.nextDeadline.map { $0 <= at(9) } == true)
        let saved = saves(client.run(until: at(9)))
        #expect(saved.count == 1)
        let bobRecord = saved.first?.first { $0.server == serverName && $0.id == "bob" }
        #expect(bobRecord == KnownPeers.Record(server: serverName, id: "bob", fingerprint: bobNew.fingerprint,
                                                firstSeen: day + 8, lastSeen: day + 8))
        #expect(saved.first?.count == 3)
        #expect(events(client.machine.handle(.trust(bob), now: at(10))) == [.trustNotNeeded(bob, fingerprint: bobNew.fingerprint)])
        #expect(events(client.machine.handle(.trust(carol), now: at(10))) == [.nothingPinned(carol)])
    }

    @Test func aPeerChattedWithIsPinnedAndSavedAfterADelay() {
        var client = Alice(known: known)
        let shown = client.receive(roster(1, [.present(entry("carol", B, keys: carolKey.publicKeys, version: 1))]), at: at(1))
        #expect(!events(shown).contains { if case .peerKeyChanged = $0 { true } else { false } })
        // Listed only: not remembered (the file holds the peers talked to, not the server's roster).
        #expect(client.machine.knownPeers?.whois(server: serverName, id: "carol") == nil)
        #expect(saves(client.run(until: at(5))).isEmpty)
        // A chat from carol: her key is pinned, and saved a second later.
        let chat = client.receive(client.relayedChat(from: carol, key: carolKey, messageID: 5, text: "hi alice"), at: at(6))
        #expect(events(chat) == [.chat(from: carol, text: "hi alice", origin: .authenticated(.relayed))])
        #expect(saves(chat).isEmpty)
        #expect(client.machine.knownPeers?.whois(server: serverName, id: "carol")?.fingerprint == carolKey.fingerprint)
        #expect(saves(client.machine.handleTimeout(now: at(6) + .milliseconds(500))).isEmpty)
        let saved = saves(client.run(until: at(7)))
        #expect(saved.count == 1 && saved.first?.contains { $0.id == "carol" && $0.firstSeen == day + 6 } == true)
        // Seen again within the minute: nothing to save.
        _ = client.receive(roster(2, [.present(entry("carol", ep("198.51.100.9:50001"), keys: carolKey.publicKeys, version: 2))]),
                           at: at(30))
        #expect(saves(client.run(until: at(40))).isEmpty)
        // A minute later it is: last seen moved.
        _ = client.receive(roster(3, [.present(entry("carol", B, keys: carolKey.publicKeys, version: 3))]), at: at(70))
        #expect(saves(client.run(until: at(72))).first?.first { $0.id == "carol" }?.lastSeen == day + 70)
        // A classic peer has no key: nothing is pinned.
        _ = client.receive(roster(4, [.present(entry("eve", ep("192.0.2.5:1"), keys: nil, version: 4))]), at: at(73))
        #expect(client.machine.knownPeers?.whois(server: serverName, id: "eve") == nil)
        #expect(events(client.machine.handle(.whois(id("eve")), now: at(74)))
            == [.whois(WhoisReport(id: id("eve"), record: nil, path: .classicPeer))])
    }

    @Test func theKnownKeyIsChatAsUsual() {
        var client = Alice(known: known)
        let shown = client.receive(roster(1, [.present(entry("bob", B, keys: bobOld.publicKeys, version: 1))]), at: at(120))
        #expect(!events(shown).contains { if case .peerKeyChanged = $0 { true } else { false } })
        #expect(client.machine.natchat2Router?.heldPeers == [])
        let sent = client.machine.handle(.chat(to: bob, text: "hello"), now: at(121))
        #expect(toServer(sent).contains { if case .relay(alice, bob, _) = $0 { true } else { false } })
        // Last seen moved: saved when leaving, without waiting.
        let left = client.machine.leave(now: at(121))
        #expect(saves(left).first?.first { $0.id == "bob" && $0.server == serverName }?.lastSeen == day + 120)
    }

    @Test func aChatWaitingForALookUpIsNotSentToAChangedKey() {
        var client = Alice(known: known)
        let asked = client.machine.handle(.chat(to: dave, text: "are you there?"), now: at(1))
        guard let query = toServer(asked).compactMap({ if case .lookup(_, let query, dave) = $0 { query } else { nil } }).first else {
            Issue.record("no look-up: \(asked)")
            return
        }
        let answer = client.receive(.lookupResult(query: query, epoch: 1, version: 5, peer: dave,
                                                  found: entry("dave", B, keys: daveNew.publicKeys, version: 5)), at: at(2))
        #expect(events(answer).contains(.peerKeyChanged(dave, pinned: daveOld.fingerprint, seen: daveNew.fingerprint)))
        #expect(events(answer).contains(.chatHeld(to: dave, text: "are you there?")))
        #expect(!toServer(answer).contains { if case .relay = $0 { true } else { false } })
        #expect(client.machine.natchat2Router?.messagesInFlight == 0)
    }

    @Test func knownPeersOffHoldNothing() {
        var client = Alice(known: nil)
        let shown = client.receive(roster(1, [.present(entry("bob", B, keys: bobNew.publicKeys, version: 1))]), at: at(1))
        #expect(!events(shown).contains { if case .peerKeyChanged = $0 { true } else { false } })
        #expect(client.machine.natchat2Router?.heldPeers == [])
        #expect(toServer(client.machine.handle(.chat(to: bob, text: "hi"), now: at(2))).contains {
            if case .relay(alice, bob, _) = $0 { true } else { false }
        })
        #expect(events(client.machine.handle(.trust(bob), now: at(3))) == [.knownPeersOff])
        #expect(events(client.machine.handle(.whois(bob), now: at(3)))
            == [.whois(WhoisReport(id: bob, record: nil, path: .path(.relayed), knownPeersOff: true))])
        #expect(saves(client.machine.leave(now: at(4))).isEmpty)
    }

    @Test func aHeldPeerStaysHeldInANewSessionAndWhenItLeavesAndComesBack() {
        var client = Alice(known: known)
        _ = client.receive(roster(1, [.present(entry("bob", B, keys: bobNew.publicKeys, version: 1))]), at: at(1))
        // bob leaves and registers again with the same new key: held, without a second warning.
        _ = client.receive(roster(2, [.absent(bob, version: 2, reason: .unregistered, publicEndpoint: B)]), at: at(2))
        let again = client.receive(roster(3, [.present(entry("bob", B, keys: bobNew.publicKeys, version: 3))]), at: at(3))
        #expect(!events(again).contains { if case .peerKeyChanged = $0 { true } else { false } })
        #expect(client.machine.natchat2Router?.heldPeers == [bob])
        #expect(events(client.machine.handle(.chat(to: bob, text: "x"), now: at(4))) == [.chatHeld(to: bob, text: "x")])
    }
}

private extension Alice {
    /// Handles every deadline up to `end`, in order.
    mutating func run(until end: Instant) -> [Output] {
        var outputs: [Output] = []
        while let deadline = machine.nextDeadline, deadline <= end { outputs += machine.handleTimeout(now: deadline) }
        return outputs
    }
}
