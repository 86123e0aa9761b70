import Addressing
import ChatClient
import ChatRouter
import Identity
import KnownPeers
import MonotonicTime
import Testing
import Wire

// The mailbox in the client: mail shown in the shell's words and checked against the known
// peers; a chat to an offline peer queued; the claim's key vetted before mail is sealed to it.
// A fake clock; the server is played by hand.

private func id(_ text: String) -> ClientID { try! ClientID(text) }
private func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }
private func at(_ seconds: Int64) -> Instant { Instant.zero + .seconds(seconds) }

private typealias Output = ChatClientStateMachine.Output

private let S = ep("198.51.100.1:10080"), A = ep("203.0.113.7:40001")
private let bob = id("bob"), alice = id("alice")
private let serverName = "chat.example.org:10080"
/// The Unix time at the fake clock's zero: 2026-12-04T14:03:00Z.
private let unixAtZero: Int64 = 1_796_392_980

private func lines(_ outputs: [Output]) -> [String] {
    outputs.flatMap { output -> [String] in
        guard case .event(let event) = output else { return [] }
        return ShellFormatter.lines(for: event)
    }
}

private func toServer(_ outputs: [Output]) -> [ExtendedMessage] {
    outputs.compactMap {
        guard case .send(let bytes, S) = $0, ExtendedMessage.looksExtended(bytes) else { return nil }
        return try? ExtendedDatagram.decode(bytes).message
    }
}

/// bob registered in natchat/2 at t=0, with the given known peers.
private struct Bob {
    var machine: ChatClientStateMachine
    let identity = IdentityKey()

    init(known: [KnownPeers.Record]) {
        machine = ChatClientStateMachine(configuration: .init(
            id: bob, server: S, privateAddress: IPv4Address(10, 0, 0, 5), identity: identity,
            knownPeers: KnownPeers(records: known), knownPeersServer: serverName,
            wallClock: .init(instant: .zero, unixSeconds: unixAtZero)))
        _ = machine.start(now: at(0))
        _ = machine.receive(ExtendedMessage.challenge(cookie: Token128(high: 1, low: 1)).encode(), from: S, now: at(0))
        let registered = ExtendedMessage.registered(
            serverKey: IdentityKey().publicKeys.agreement, publicEndpoint: A, keepAliveMillis: 10_000, alternatePort: 0,
            nonce: Token128(high: 2, low: 2), cookie: Token128(high: 1, low: 1))
        _ = machine.receive(registered.encode(), from: S, now: at(0))
    }

    mutating func receive(_ message: ExtendedMessage, at now: Instant) -> [Output] {
        machine.receive(message.encode(), from: S, now: now)
    }
}

@Suite("ChatClientStateMachine mailbox")
struct ChatClientMailboxTests {
    let aliceKey = IdentityKey(), mallory = IdentityKey()

    @Test func mailFromAnUnknownPeerIsShownOnceAndItsKeyPinned() throws {
        var client = Bob(known: [])
        let sealed = try MailSeal.seal("hello", sentAt: UInt64(unixAtZero) + 59, from: alice, identity: aliceKey, to: bob,
                                       keys: client.identity.publicKeys)
        let mail = ExtendedMessage.mail(serial: 3, from: alice, queuedAt: UInt64(unixAtZero) + 60, sealed: sealed)
        let first = client.receive(mail, at: at(1))
        #expect(lines(first) == ["From alice [hello] (sent 2026-12-04 14:03, queued)"])
        #expect(toServer(first) == [.mailAck(id: bob, serial: 3)])
        let again = client.receive(mail, at: at(3))
        #expect(lines(again) == [])
        #expect(toServer(again) == [.mailAck(id: bob, serial: 3)])
        // Trust on first use, as for a chat: alice's key is now known.
        #expect(client.machine.knownPeers?.whois(server: serverName, id: "alice")?.fingerprint == aliceKey.fingerprint)
    }

    @Test func mailSignedByAnotherKeyThanThePinnedOneIsNotShown() throws {
        let pinned = KnownPeers.Record(server: serverName, id: "alice", fingerprint: aliceKey.fingerprint, firstSeen: 0, lastSeen: 0)
        var client = Bob(known: [pinned])
        let forged = try MailSeal.seal("pay mallory", sentAt: 1, from: alice, identity: mallory, to: bob, keys: client.identity.publicKeys)
        let outputs = client.receive(.mail(serial: 4, from: alice, queuedAt: 2, sealed: forged), at: at(1))
        #expect(lines(outputs) == ["* WARNING: a queued message said to be from alice was not shown: it is signed by key "
            + "\(mallory.fingerprint), not by alice's key \(aliceKey.fingerprint). Someone may be impersonating alice."])
        // Acknowledged all the same, so that the server does not resend it for ever.
        #expect(toServer(outputs) == [.mailAck(id: bob, serial: 4)])
        #expect(client.machine.knownPeers?.whois(server: serverName, id: "alice")?.fingerprint == aliceKey.fingerprint)
        // alice's own mail is shown.
        let real = try MailSeal.seal("hi", sentAt: 1, from: alice, identity: aliceKey, to: bob, keys: client.identity.publicKeys)
        #expect(lines(client.receive(.mail(serial: 5, from: alice, queuedAt: 2, sealed: real), at: at(2)))
            == ["From alice [hi] (sent 1970-01-01 00:00, queued)"])
    }

    @Test func aChatToAnOfflinePeerIsQueuedUnlessItsClaimShowsAnotherKey() throws {
        let pinned = KnownPeers.Record(server: serverName, id: "alice", fingerprint: aliceKey.fingerprint, firstSeen: 0, lastSeen: 0)
        var client = Bob(known: [pinned])
        guard case .lookup(_, let query, alice)? = toServer(client.machine.handle(.chat(to: alice, text: "hi"), now: at(1))).first
        else { Issue.record("no look-up"); return }
        guard case .claimLookup(_, let claimQuery, alice)?
                = toServer(client.receive(.lookupResult(query: query, epoch: 1, version: 1, peer: alice, found: nil), at: at(1))).first
        else { Issue.record("no claim look-up"); return }
        // The claim's key is alice's: sealed and deposited, then queued.
        let deposited = toServer(client.receive(.claimResult(query: claimQuery, peer: alice, keys: aliceKey.publicKeys, claimedSince: 1),
                                                at: at(1)))
        guard case .deposit(_, let depositQuery, alice, _)? = deposited.first else { Issue.record("no deposit"); return }
        #expect(lines(client.receive(.depositResult(query: depositQuery, to: alice, outcome: .queued(serial: 8, keptSeconds: 604_800)),
                                     at: at(1))) == ["* alice is offline: queued at the server (kept 7 days)"])
        #expect(lines(client.receive(.mailDelivered(to: alice, serial: 8), at: at(9))) == ["* delivered to alice"])
        #expect(lines(client.receive(.mailDelivered(to: alice, serial: 2), at: at(9))) == ["* delivered to alice (queued earlier)"])

        // Another chat; this time the claim shows mallory's key: held, nothing sealed to it.
        guard case .lookup(_, let query2, alice)? = toServer(client.machine.handle(.chat(to: alice, text: "again"), now: at(10))).first
        else { Issue.record("no second look-up"); return }
        guard case .claimLookup(_, let claimQuery2, alice)?
                = toServer(client.receive(.lookupResult(query: query2, epoch: 1, version: 2, peer: alice, found: nil), at: at(10))).first
        else { Issue.record("no second claim look-up"); return }
        let held = client.receive(.claimResult(query: claimQuery2, peer: alice, keys: mallory.publicKeys, claimedSince: 1), at: at(10))
        #expect(lines(held) == [
            "* WARNING: alice's key changed: pinned \(aliceKey.fingerprint), now \(mallory.fingerprint). Chat with alice is held; "
                + "check the new fingerprint with alice out of band, then @trust alice",
            "* NOT sent to alice: \"again\" (chat with alice is held: its key changed; @whois alice, then @trust alice)",
        ])
        #expect(!toServer(held).contains { if case .deposit = $0 { true } else { false } })
    }
}
