import Addressing
import Crypto
import Testing
@testable import ChatRouter
import Identity
import MonotonicTime
import Wire

// The mailbox, client side: one router (alice's, or bob's) with the server played by hand,
// instants in milliseconds from a fake clock.

private func id(_ text: String) -> ClientID { try! ClientID(text) }
private func ms(_ milliseconds: Int64) -> Instant { Instant.zero + .milliseconds(milliseconds) }

private let alice = id("alice"), bob = id("bob")
private let B = try! Endpoint(parsing: "198.51.100.9:50000")
/// The Unix time at instant zero: 2026-12-04T14:03:00Z.
private let unixAtZero: Int64 = 1_796_392_980
private let week: UInt32 = 7 * 86_400

private func identity(_ seed: UInt8) -> IdentityKey {
    IdentityKey(signing: try! Curve25519.Signing.PrivateKey(rawRepresentation: Array(repeating: seed, count: 32)),
                agreement: try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: Array(repeating: seed &+ 0x40, count: 32)))
}

private let aliceKey = identity(1), bobKey = identity(2), mallory = identity(9)

private func router(_ me: ClientID, _ key: IdentityKey) -> ExtendedRouter {
    var made = ExtendedRouter(selfID: me, identity: key, firstMessageID: 1, transactionSeed: 1)
    made.wallClock = .init(instant: .zero, unixSeconds: unixAtZero)
    return made
}

/// A look-up's answer holding `member` (online, natchat/2).
private func found(_ member: ClientID, _ key: IdentityKey, query: UInt32) -> ExtendedMessage {
    let info = PeerInfo(id: member, publicEndpoint: B, privateEndpoints: [], natKind: .none, dialect: .extended, keys: key.publicKeys)
    return .lookupResult(query: query, epoch: 1, version: 1, peer: member, found: RosterEntry(info: info, order: 1, version: 1))
}

private func events(_ outputs: [ExtendedRouter.Output]) -> [ExtendedRouter.Event] {
    outputs.compactMap { if case .event(let event) = $0 { event } else { nil } }
}

private func toServer(_ outputs: [ExtendedRouter.Output]) -> [ExtendedMessage] {
    outputs.compactMap { if case .sendToServer(let message) = $0 { message } else { nil } }
}

/// Runs the router's timers from `from` to `until`, returning everything they gave.
private func runTimers(_ router: inout ExtendedRouter, until end: Instant) -> [ExtendedRouter.Output] {
    var all: [ExtendedRouter.Output] = []
    while let next = router.nextDeadline, next <= end {
        all += router.handleTimeout(now: next)
    }
    return all
}

private func fingerprint(_ key: IdentityKey) -> String { IdentityKey.fingerprint(of: key.publicKeys) }

@Suite("ExtendedRouter mailbox")
struct ExtendedRouterMailboxTests {
    /// alice chats to bob, who is not registered: the look-up says so, the claim look-up
    /// gives bob's keys, and the sealed message is deposited (resent with the same query
    /// until answered) and queued.
    private func queueToOfflineBob() throws -> (router: ExtendedRouter, sealed: [UInt8]) {
        var alices = router(alice, aliceKey)
        #expect(try alices.sendChat(to: bob, text: "hello", now: ms(0)) == [.sendToServer(.lookup(id: alice, query: 1, peer: bob))])
        #expect(alices.handleServerMessage(.lookupResult(query: 1, epoch: 1, version: 1, peer: bob, found: nil), now: ms(10))
            == [.sendToServer(.claimLookup(id: alice, query: 2, peer: bob))])
        // Resent with the look-ups' backoff.
        #expect(alices.nextDeadline == ms(410))
        #expect(alices.handleTimeout(now: ms(410)) == [.sendToServer(.claimLookup(id: alice, query: 2, peer: bob))])
        let deposited = alices.handleServerMessage(.claimResult(query: 2, peer: bob, keys: bobKey.publicKeys, claimedSince: 1),
                                                   now: ms(500))
        guard deposited.count == 1, case .sendToServer(.deposit(alice, 3, bob, let sealed)) = deposited[0] else {
            Issue.record("no deposit: \(deposited)")
            throw CancellationError()
        }
        // Sealed to bob's key, signed by alice's, dated when it was typed.
        let opened = try MailSeal.open(sealed, identity: bobKey, recipientID: bob, from: alice)
        #expect(opened == MailSeal.Contents(text: "hello", sentAt: UInt64(unixAtZero), senderSigningKey: aliceKey.publicKeys.signing))
        #expect(!sealed.contains(subsequence: Array("hello".utf8)))
        // The same deposit, same query, until answered.
        #expect(alices.handleTimeout(now: ms(900)) == [.sendToServer(.deposit(id: alice, query: 3, to: bob, sealed: sealed))])
        // A stale or misaddressed answer changes nothing.
        #expect(alices.handleServerMessage(.depositResult(query: 2, to: bob, outcome: .unknownRecipient), now: ms(950)) == [])
        return (alices, sealed)
    }

    @Test func anOfflineClaimedPeerGetsTheChatQueued() throws {
        var (alices, _) = try queueToOfflineBob()
        #expect(alices.handleServerMessage(.depositResult(query: 3, to: bob, outcome: .queued(serial: 42, keptSeconds: week)), now: ms(1000))
            == [.event(.queued(to: bob, text: "hello", serial: 42, keptSeconds: week, reason: .offline))])
        #expect(alices.nextDeadline == nil)
        // A repeated answer (to a resent deposit) is not news.
        #expect(alices.handleServerMessage(.depositResult(query: 3, to: bob, outcome: .queued(serial: 42, keptSeconds: week)), now: ms(1001)) == [])
        // bob has it: this session queued it; one queued by an earlier run is told apart.
        #expect(alices.handleServerMessage(.mailDelivered(to: bob, serial: 42), now: ms(5000))
            == [.event(.mailDelivered(to: bob, serial: 42, queuedThisSession: true))])
        #expect(alices.handleServerMessage(.mailDelivered(to: bob, serial: 7), now: ms(5001))
            == [.event(.mailDelivered(to: bob, serial: 7, queuedThisSession: false))])
    }

    @Test func anUnclaimedIDIsNotRegistered() throws {
        var alices = router(alice, aliceKey)
        let zed = id("zed")
        _ = try alices.sendChat(to: zed, text: "hi", now: ms(0))
        _ = alices.handleServerMessage(.lookupResult(query: 1, epoch: 1, version: 1, peer: zed, found: nil), now: ms(10))
        #expect(alices.handleServerMessage(.claimResult(query: 2, peer: zed, keys: nil, claimedSince: 0), now: ms(20))
            == [.event(.noSuchPeer(zed, text: "hi"))])
        #expect(alices.nextDeadline == nil)
        // The claim went between the claim look-up and the deposit: the same answer.
        var (other, _) = try queueToOfflineBob()
        #expect(other.handleServerMessage(.depositResult(query: 3, to: bob, outcome: .unknownRecipient), now: ms(1000))
            == [.event(.noSuchPeer(bob, text: "hello"))])
    }

    @Test func refusalsAndSilenceAreUndelivered() throws {
        var (alices, _) = try queueToOfflineBob()
        #expect(alices.handleServerMessage(.depositResult(query: 3, to: bob, outcome: .refused(.recipientFull)), now: ms(1000))
            == [.event(.undelivered(to: bob, text: "hello", reason: .mailboxRefused(.recipientFull)))])
        // A server that never answers the deposit: given up at the chat's deadline (30 s from
        // when it was typed), retried every 2 s at most until then.
        var (silent, sealed) = try queueToOfflineBob()
        let resent = runTimers(&silent, until: ms(40_000))
        #expect(toServer(resent).allSatisfy { $0 == .deposit(id: alice, query: 3, to: bob, sealed: sealed) })
        #expect(toServer(resent).count >= 14)
        #expect(events(resent) == [.undelivered(to: bob, text: "hello", reason: .mailboxSilent)])
        #expect(silent.nextDeadline == nil)
    }

    @Test func aRecipientThatCameOnlineGetsTheChat() throws {
        var (alices, _) = try queueToOfflineBob()
        // bob registered meanwhile: looked up again, and chatted to as usual.
        #expect(alices.handleServerMessage(.depositResult(query: 3, to: bob, outcome: .recipientOnline), now: ms(1000))
            == [.sendToServer(.lookup(id: alice, query: 4, peer: bob))])
        let sent = alices.handleServerMessage(found(bob, bobKey, query: 4), now: ms(1010))
        #expect(toServer(sent).contains { if case .relay(alice, bob, _) = $0 { true } else { false } })
        #expect(alices.messagesInFlight == 1)
    }

    @Test func aChatNotAcknowledgedGoesToTheMailbox() throws {
        var alices = router(alice, aliceKey)
        _ = try alices.sendChat(to: bob, text: "are you there?", now: ms(0))
        _ = alices.handleServerMessage(found(bob, bobKey, query: 1), now: ms(10))
        #expect(alices.messagesInFlight == 1)
        // bob never acknowledges: at the deadline the claim is looked up instead of giving up.
        let expired = runTimers(&alices, until: ms(30_010))
        #expect(events(expired).allSatisfy { if case .undelivered = $0 { false } else { true } })
        let claimLookups = toServer(expired).filter { if case .claimLookup = $0 { true } else { false } }
        guard case .claimLookup(alice, let claimQuery, bob)? = claimLookups.first else {
            Issue.record("no claim look-up: \(expired)")
            return
        }
        let deposited = toServer(alices.handleServerMessage(.claimResult(query: claimQuery, peer: bob, keys: bobKey.publicKeys,
                                                                         claimedSince: 1), now: ms(30_100)))
        guard case .deposit(alice, let depositQuery, bob, _)? = deposited.first else {
            Issue.record("no deposit: \(deposited)")
            return
        }
        // The server still sees bob online: asked again 2 s later (a new query), then queued.
        #expect(alices.handleServerMessage(.depositResult(query: depositQuery, to: bob, outcome: .recipientOnline), now: ms(30_200)) == [])
        let again = toServer(runTimers(&alices, until: ms(32_200)))
        guard case .deposit(alice, let secondQuery, bob, _)? = again.last, secondQuery != depositQuery else {
            Issue.record("no second deposit: \(again)")
            return
        }
        #expect(alices.handleServerMessage(.depositResult(query: secondQuery, to: bob, outcome: .queued(serial: 9, keptSeconds: week)),
                                           now: ms(32_300))
            == [.event(.queued(to: bob, text: "are you there?", serial: 9, keptSeconds: week, reason: .notAcknowledged))])
    }

    /// bob leaves with alice's chat unacknowledged: it goes to the mailbox (his ID is claimed).
    @Test func aChatToAPeerThatLeftGoesToTheMailbox() throws {
        var alices = router(alice, aliceKey)
        _ = try alices.sendChat(to: bob, text: "wait for me", now: ms(0))
        _ = alices.handleServerMessage(found(bob, bobKey, query: 1), now: ms(10))
        let left = ExtendedMessage.roster(RosterDelta(epoch: 1, sequence: 1, version: 5, registered: 1, scope: .complete, synced: false,
                                                      records: [.absent(bob, version: 5, reason: .unregistered, publicEndpoint: B)]))
        let afterLeaving = alices.handleServerMessage(left, now: ms(100))
        #expect(events(afterLeaving).allSatisfy { if case .undelivered = $0 { false } else { true } })
        guard case .claimLookup(alice, let claimQuery, bob)? = toServer(afterLeaving).first(where: { if case .claimLookup = $0 { true } else { false } })
        else {
            Issue.record("no claim look-up: \(afterLeaving)")
            return
        }
        let deposited = toServer(alices.handleServerMessage(.claimResult(query: claimQuery, peer: bob, keys: bobKey.publicKeys,
                                                                         claimedSince: 1), now: ms(200)))
        guard case .deposit(alice, let depositQuery, bob, _)? = deposited.first else {
            Issue.record("no deposit: \(deposited)")
            return
        }
        #expect(alices.handleServerMessage(.depositResult(query: depositQuery, to: bob, outcome: .queued(serial: 3, keptSeconds: week)),
                                           now: ms(300))
            == [.event(.queued(to: bob, text: "wait for me", serial: 3, keptSeconds: week, reason: .peerLeft))])
    }

    @Test func aChatNotAcknowledgedToAnUnclaimedPeerIsUndelivered() throws {
        var alices = router(alice, aliceKey)
        _ = try alices.sendChat(to: bob, text: "hi", now: ms(0))
        _ = alices.handleServerMessage(found(bob, bobKey, query: 1), now: ms(10))
        let expired = runTimers(&alices, until: ms(30_010))
        guard case .claimLookup(alice, let claimQuery, bob)? = toServer(expired).first(where: { if case .claimLookup = $0 { true } else { false } })
        else {
            Issue.record("no claim look-up: \(expired)")
            return
        }
        #expect(events(alices.handleServerMessage(.claimResult(query: claimQuery, peer: bob, keys: nil, claimedSince: 0), now: ms(30_100)))
            == [.undelivered(to: bob, text: "hi", reason: .notAcknowledged)])
        // A server that does not know claim look-ups: the old line, 10 s later.
        var old = router(alice, aliceKey)
        _ = try old.sendChat(to: bob, text: "hi", now: ms(0))
        _ = old.handleServerMessage(found(bob, bobKey, query: 1), now: ms(10))
        let given = runTimers(&old, until: ms(45_000))
        #expect(events(given).filter { if case .undelivered = $0 { true } else { false } }
            == [.undelivered(to: bob, text: "hi", reason: .notAcknowledged)])
    }

    @Test func aHeldPeerGetsNoMail() throws {
        var alices = router(alice, aliceKey)
        _ = try alices.sendChat(to: bob, text: "hello", now: ms(0))
        _ = alices.handleServerMessage(.lookupResult(query: 1, epoch: 1, version: 1, peer: bob, found: nil), now: ms(10))
        alices.hold(bob)
        #expect(alices.handleServerMessage(.claimResult(query: 2, peer: bob, keys: bobKey.publicKeys, claimedSince: 1), now: ms(20))
            == [.event(.chatHeld(to: bob, text: "hello"))])
        #expect(alices.nextDeadline == nil)
    }

    @Test func mailIsShownOnceAndAcknowledgedEveryTime() throws {
        let sealed = try MailSeal.seal("hello", sentAt: 1_796_393_039, from: alice, identity: aliceKey, to: bob, keys: bobKey.publicKeys)
        var bobs = router(bob, bobKey)
        let mail = ExtendedMessage.mail(serial: 5, from: alice, queuedAt: 1_796_393_040, sealed: sealed)
        #expect(bobs.handleServerMessage(mail, now: ms(0))
            == [.sendToServer(.mailAck(id: bob, serial: 5)),
                .event(.mail(from: alice, text: "hello", sentAt: 1_796_393_039, queuedAt: 1_796_393_040, signedBy: fingerprint(aliceKey)))])
        // The server resends until it sees the ack (acks can be lost): acked again, not shown.
        #expect(bobs.handleServerMessage(mail, now: ms(2000)) == [.sendToServer(.mailAck(id: bob, serial: 5))])
        #expect(bobs.handleServerMessage(mail, now: ms(4000)) == [.sendToServer(.mailAck(id: bob, serial: 5))])
    }

    @Test func mailThatIsNotTheSendersIsNotShown() throws {
        var bobs = router(bob, bobKey)
        // A bad signature: acknowledged (or it would come back for ever), never shown.
        var tampered = try MailSeal.seal("hello", sentAt: 1, from: alice, identity: aliceKey, to: bob, keys: bobKey.publicKeys)
        tampered[tampered.count - 1] ^= 1
        #expect(bobs.handleServerMessage(.mail(serial: 6, from: alice, queuedAt: 2, sealed: tampered), now: ms(0))
            == [.sendToServer(.mailAck(id: bob, serial: 6)), .event(.mailRejected(from: alice, .unreadable(.badSignature)))])
        // Sealed to someone else.
        let forCarol = try MailSeal.seal("hello", sentAt: 1, from: alice, identity: aliceKey, to: bob, keys: mallory.publicKeys)
        #expect(events(bobs.handleServerMessage(.mail(serial: 7, from: alice, queuedAt: 2, sealed: forCarol), now: ms(0)))
            == [.mailRejected(from: alice, .unreadable(.cannotDecrypt))])
        // Signed well, but by mallory's key, while the roster holds alice with hers.
        _ = try bobs.sendChat(to: alice, text: "hi", now: ms(0))
        _ = bobs.handleServerMessage(found(alice, aliceKey, query: 1), now: ms(10))
        let forged = try MailSeal.seal("pay mallory", sentAt: 1, from: alice, identity: mallory, to: bob, keys: bobKey.publicKeys)
        #expect(bobs.handleServerMessage(.mail(serial: 8, from: alice, queuedAt: 2, sealed: forged), now: ms(20))
            == [.sendToServer(.mailAck(id: bob, serial: 8)),
                .event(.mailRejected(from: alice, .otherKey(seen: fingerprint(mallory), known: fingerprint(aliceKey))))])
    }

    @Test func mailFromAHeldPeerWaitsForRelease() throws {
        let sealed = try MailSeal.seal("hello", sentAt: 1, from: alice, identity: aliceKey, to: bob, keys: bobKey.publicKeys)
        var bobs = router(bob, bobKey)
        let mail = ExtendedMessage.mail(serial: 5, from: alice, queuedAt: 2, sealed: sealed)
        bobs.hold(alice)
        // Not acknowledged, reported once.
        #expect(bobs.handleServerMessage(mail, now: ms(0)) == [.event(.chatFromHeldPeer(alice))])
        #expect(bobs.handleServerMessage(mail, now: ms(2000)) == [])
        bobs.release(alice)
        #expect(bobs.handleServerMessage(mail, now: ms(4000))
            == [.sendToServer(.mailAck(id: bob, serial: 5)),
                .event(.mail(from: alice, text: "hello", sentAt: 1, queuedAt: 2, signedBy: fingerprint(aliceKey)))])
    }
}

extension Array where Element == UInt8 {
    fileprivate func contains(subsequence: [UInt8]) -> Bool {
        guard !subsequence.isEmpty, count >= subsequence.count else { return false }
        return (0...(count - subsequence.count)).contains { Array(self[$0..<($0 + subsequence.count)]) == subsequence }
    }
}
