import Addressing
import Testing
import Delivery
import MonotonicTime

private func id(_ text: String) -> ClientID { try! ClientID(text) }
private func ms(_ milliseconds: Int64) -> Instant { Instant.zero + .milliseconds(milliseconds) }
private let alice = id("alice"), bob = id("bob"), carol = id("carol")

/// The messages among a sender's outputs, by kind.
private extension Array where Element == ReliableSender.Output {
    var sent: [ReliableSender.Message] { compactMap { if case .send(let message) = $0 { message } else { nil } } }
    var expired: [ReliableSender.Message] { compactMap { if case .expired(let message) = $0 { message } else { nil } } }
    var delivered: [ReliableSender.Message] { compactMap { if case .delivered(let message) = $0 { message } else { nil } } }
    var abandoned: [ReliableSender.Message] { compactMap { if case .abandoned(let message) = $0 { message } else { nil } } }
}

private extension ReliableSender {
    /// Sends one message and returns it (its first attempt is the one output).
    mutating func sendOne(_ text: String, to peer: ClientID, now: Instant) throws(SendError) -> Message {
        let outputs = try send(text, to: peer, now: now)
        guard outputs.count == 1, case .send(let message)? = outputs.first else { fatalError("send gave \(outputs)") }
        return message
    }
}

@Suite("ReliableSender")
struct ReliableSenderTests {
    @Test func enqueueGivesConsecutiveIDs() throws {
        var sender = ReliableSender(firstID: 1_000)
        let first = try sender.sendOne("one", to: bob, now: ms(0))
        let second = try sender.sendOne("two", to: carol, now: ms(5))
        #expect(first.id == 1_000)
        #expect(second.id == 1_001)
        #expect(first.attempts == 1)
        #expect(first.firstSent == ms(0))
        #expect(first.peer == bob)
        #expect(first.text == "one")
        #expect(sender.count == 2)
        #expect(sender.nextDeadline == ms(400))
    }

    @Test func idsWrapAround() throws {
        var sender = ReliableSender(firstID: .max)
        #expect(try sender.sendOne("a", to: bob, now: ms(0)).id == .max)
        #expect(try sender.sendOne("b", to: bob, now: ms(0)).id == 0)
    }

    @Test func backoffDoublesToTheMaximumThenExpiresAtTheDeadline() throws {
        var sender = ReliableSender(firstID: 1)
        _ = try sender.sendOne("hello", to: bob, now: ms(0))
        var retransmitted: [(at: Int64, attempts: Int)] = []
        var expired: [ReliableSender.Message] = []
        var now = ms(0)
        while let deadline = sender.nextDeadline {
            let early = sender.handleTimeout(now: deadline - .nanoseconds(1))
            #expect(early.sent.isEmpty && early.expired.isEmpty)
            now = deadline
            let due = sender.handleTimeout(now: now)
            retransmitted += due.sent.map { (now.nanoseconds / 1_000_000, $0.attempts) }
            expired += due.expired
            guard now < ms(100_000) else { break }
        }
        // 400 ms, doubling to the 2 s maximum (the default), then every 2 s.
        #expect(ReliableSender.Configuration().maxTimeout == .seconds(2))
        #expect(retransmitted.map(\.at) == [400, 1_200, 2_800] + Array(stride(from: 4_800, through: 28_800, by: 2_000)))
        #expect(retransmitted.map(\.attempts) == Array(2...17))
        // Given up exactly at the 30 s deadline (nextDeadline includes it).
        #expect(expired.count == 1)
        #expect(expired.first?.text == "hello")
        #expect(expired.first?.attempts == 17)
        #expect(now == ms(30_000))
        #expect(sender.count == 0)
        #expect(sender.nextDeadline == nil)
    }

    @Test func nothingIsDueEarly() throws {
        var sender = ReliableSender(firstID: 1)
        _ = try sender.sendOne("x", to: bob, now: ms(0))
        let early = sender.handleTimeout(now: ms(399))
        #expect(early.sent.isEmpty)
        #expect(early.expired.isEmpty)
        let due = sender.handleTimeout(now: ms(400))
        #expect(due.sent.map(\.id) == [1])
        #expect(sender.nextDeadline == ms(1_200))
        // The same instant again: nothing more.
        #expect(sender.handleTimeout(now: ms(400)).sent.isEmpty)
    }

    @Test func configurableTimings() throws {
        var configuration = ReliableSender.Configuration()
        configuration.initialTimeout = .milliseconds(100)
        configuration.maxTimeout = .milliseconds(250)
        configuration.deadline = .seconds(1)
        var sender = ReliableSender(firstID: 1, configuration: configuration)
        _ = try sender.sendOne("x", to: bob, now: ms(0))
        var times: [Int64] = []
        var expiredAt: Int64?
        while let deadline = sender.nextDeadline {
            let due = sender.handleTimeout(now: deadline)
            if !due.sent.isEmpty { times.append(deadline.nanoseconds / 1_000_000) }
            if !due.expired.isEmpty { expiredAt = deadline.nanoseconds / 1_000_000 }
        }
        #expect(times == [100, 300, 550, 800])
        #expect(expiredAt == 1_000)
    }

    @Test func acknowledgementRemovesTheMessage() throws {
        var sender = ReliableSender(firstID: 7)
        let message = try sender.sendOne("hi", to: bob, now: ms(0))
        _ = sender.handleTimeout(now: ms(400))
        let acked = sender.acknowledge(message.id, from: bob).delivered
        #expect(acked.map(\.id) == [7])
        #expect(acked.first?.attempts == 2)
        #expect(sender.count == 0)
        #expect(sender.nextDeadline == nil)
        #expect(sender.acknowledge(message.id, from: bob).isEmpty)
        let later = sender.handleTimeout(now: ms(60_000))
        #expect(later.sent.isEmpty)
        #expect(later.expired.isEmpty)
    }

    @Test func ackFromTheWrongPeerIsIgnored() throws {
        var sender = ReliableSender(firstID: 7)
        let message = try sender.sendOne("hi", to: bob, now: ms(0))
        #expect(sender.acknowledge(message.id, from: carol).isEmpty)
        #expect(sender.acknowledge(message.id + 1, from: bob).isEmpty)
        #expect(sender.count == 1)
        #expect(sender.handleTimeout(now: ms(400)).sent.map(\.id) == [7])
        #expect(sender.acknowledge(message.id, from: bob).delivered.count == 1)
    }

    @Test func maxInFlight() throws {
        var configuration = ReliableSender.Configuration()
        configuration.maxInFlight = 2
        var sender = ReliableSender(firstID: 1, configuration: configuration)
        let first = try sender.sendOne("1", to: bob, now: ms(0))
        _ = try sender.sendOne("2", to: carol, now: ms(0))
        #expect(throws: ReliableSender.SendError.tooManyInFlight) {
            try sender.send("3", to: bob, now: ms(0))
        }
        #expect(sender.count == 2)
        _ = sender.acknowledge(first.id, from: bob)
        let third = try sender.sendOne("3", to: bob, now: ms(1))
        #expect(third.id == 3) // the refused one used no ID
    }

    @Test func retransmitsAndExpiriesComeSortedByID() throws {
        var sender = ReliableSender(firstID: 10)
        for index in 0..<20 { _ = try sender.sendOne("m\(index)", to: index % 2 == 0 ? bob : carol, now: ms(0)) }
        let due = sender.handleTimeout(now: ms(400))
        #expect(due.sent.map(\.id) == Array(10..<30))
        let cancelled = sender.cancel(peer: carol).abandoned
        #expect(cancelled.map(\.id) == Array(stride(from: 11, to: 30, by: 2)))
        #expect(cancelled.allSatisfy { $0.peer == carol })
        #expect(sender.count == 10)
        var expired: [UInt64] = []
        var now = ms(400)
        while let deadline = sender.nextDeadline {
            now = deadline
            expired += sender.handleTimeout(now: now).expired.map(\.id)
        }
        #expect(expired == Array(stride(from: 10, to: 30, by: 2)))
        #expect(sender.cancel(peer: bob).isEmpty)
    }
}

@Suite("DuplicateFilter")
struct DuplicateFilterTests {
    @Test func firstSightingOnlyOncePerPeer() {
        var filter = DuplicateFilter()
        #expect(filter.firstSighting(of: 1, from: bob) == true)
        #expect(filter.firstSighting(of: 1, from: bob) == false)
        #expect(filter.firstSighting(of: 1, from: carol) == true)
        #expect(filter.firstSighting(of: 2, from: bob) == true)
        #expect(filter.firstSighting(of: 2, from: bob) == false)
    }

    @Test func boundedPerPeerOldestForgottenFirst() {
        var filter = DuplicateFilter(perPeer: 3)
        for messageID: UInt64 in 1...3 { #expect(filter.firstSighting(of: messageID, from: bob) == true) }
        #expect(filter.firstSighting(of: 1, from: bob) == false)
        #expect(filter.firstSighting(of: 4, from: bob) == true) // pushes 1 out
        #expect(filter.firstSighting(of: 2, from: bob) == false)
        #expect(filter.firstSighting(of: 4, from: bob) == false)
        #expect(filter.firstSighting(of: 1, from: bob) == true) // forgotten: seen as new (pushes 2 out)
        #expect(filter.firstSighting(of: 3, from: bob) == false)
        #expect(filter.firstSighting(of: 2, from: bob) == true)
    }

    @Test func boundedInPeers() {
        var filter = DuplicateFilter(perPeer: 8, maxPeers: 1)
        #expect(filter.firstSighting(of: 1, from: alice) == true)
        #expect(filter.firstSighting(of: 1, from: alice) == false)
        #expect(filter.firstSighting(of: 1, from: bob) == true)   // alice's history dropped
        #expect(filter.firstSighting(of: 1, from: alice) == true) // so it looks new again
        #expect(filter.firstSighting(of: 1, from: alice) == false)
    }

    @Test func forgetStartsOver() {
        var filter = DuplicateFilter()
        #expect(filter.firstSighting(of: 5, from: bob) == true)
        #expect(filter.firstSighting(of: 5, from: carol) == true)
        filter.forget(bob)
        #expect(filter.firstSighting(of: 5, from: bob) == true)
        #expect(filter.firstSighting(of: 5, from: carol) == false)
    }
}
