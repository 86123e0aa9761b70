import Testing
import MonotonicTime
import Roster

private func ms(_ milliseconds: Int64) -> Instant { Instant.zero + .milliseconds(milliseconds) }

private typealias Feed = RosterFeed<Int, String>

/// Every datagram due at `now`.
private func drain(_ feed: inout Feed, at now: Instant) -> [Feed.Batch] {
    feed.handleTimeout(now: now)
}

/// The record size that puts `perDatagram` records in one datagram of the default budget.
private func size(fitting perDatagram: Int) -> Int {
    RosterFeedConfiguration().datagramBudget / perDatagram
}

@Suite("RosterFeed")
struct RosterFeedTests {
    @Test func anIdleFeedSendsAtOnceThenCoalescesForAnInterval() {
        var feed = Feed()
        // A fresh feed owes its subscriber a synced notice.
        let notice = drain(&feed, at: ms(0))
        #expect(notice.count == 1 && notice[0].items.isEmpty && notice[0].synced)
        feed.acknowledge(largest: 1, received: 0, now: ms(1))
        #expect(feed.isIdle && feed.nextDeadline == nil)

        feed.mark(7, "a", size: size(fitting: 8))
        // 50 ms have passed since the last datagram: the change goes at once.
        let first = drain(&feed, at: ms(60))
        #expect(first.map { $0.items.map(\.id) } == [[7]])
        // Three more within the interval wait for it, and go together, the last note winning.
        feed.mark(8, "b", size: size(fitting: 8))
        feed.mark(9, "c", size: size(fitting: 8))
        feed.mark(8, "b2", size: size(fitting: 8))
        let polled1 = drain(&feed, at: ms(70))
        #expect(polled1.isEmpty)
        #expect(feed.nextDeadline == ms(110))
        let second = drain(&feed, at: ms(110))
        #expect(second.count == 1)
        #expect(second[0].items.map(\.id) == [8, 9])
        #expect(second[0].items.map(\.note) == ["b2", "c"])
        #expect(second[0].sequence == 3)
    }

    @Test func aFullDatagramsWorthGoesWithoutWaiting() {
        var feed = Feed(configuration: .init(fullBatch: 4))
        _ = drain(&feed, at: ms(0))
        feed.acknowledge(largest: 1, received: 0, now: ms(0))
        for id in 1...10 { feed.mark(id, "x", size: size(fitting: 4)) }
        // 10 waiting, 4 to a datagram: two full ones now, the last two after the interval.
        let burst = drain(&feed, at: ms(10))
        #expect(burst.map { $0.items.count } == [4, 4])
        let polled2 = drain(&feed, at: ms(20))
        #expect(polled2.isEmpty)
        let polled3 = drain(&feed, at: ms(60))
        #expect(polled3.map { $0.items.count } == [2])
    }

    @Test func theWindowBoundsDatagramsInFlight() {
        var feed = Feed(configuration: .init(window: 2, fullBatch: 1))
        for id in 1...5 { feed.mark(id, "x", size: size(fitting: 1)) }
        let sent = drain(&feed, at: ms(0))
        #expect(sent.count == 2)
        feed.acknowledge(largest: 2, received: 1, now: ms(5))
        let polled4 = drain(&feed, at: ms(5))
        #expect(polled4.count == 2)
        #expect(feed.inFlightCount == 2)
    }

    @Test func aTimedOutDatagramIsSentAgainWithWhatIsCurrent() {
        var feed = Feed(configuration: .init(initialRetransmitTimeout: .milliseconds(300)))
        feed.mark(1, "joined", size: size(fitting: 8))
        let first = drain(&feed, at: ms(0))
        #expect(first.count == 1 && first[0].sequence == 1)
        // Nothing acknowledged: at 300 ms the change is sent again, under a new number.
        let polled5 = drain(&feed, at: ms(299))
        #expect(polled5.isEmpty)
        let again = drain(&feed, at: ms(300))
        #expect(again.map { $0.sequence } == [2])
        #expect(again[0].items.map(\.note) == ["joined"])
        // The timeout doubled; a newer note replaces the lost one's when both wait.
        feed.mark(1, "left", size: size(fitting: 8))
        let polled6 = drain(&feed, at: ms(350))
        #expect(polled6.map { $0.items.map(\.note) } == [["left"]])
        // Datagram 2 times out at 900 ms; the id rides in datagram 3, so 2's note is not resent.
        let late = drain(&feed, at: ms(900))
        #expect(late.allSatisfy { $0.items.allSatisfy { $0.note == "left" } })
        feed.acknowledge(largest: 3, received: 0, now: ms(901))
        #expect(feed.waitingCount == 0)
    }

    @Test func laterAcknowledgementsDeclareAGapLost() {
        var feed = Feed(configuration: .init(fullBatch: 1))
        for id in 1...5 { feed.mark(id, "x", size: size(fitting: 1)) }
        let sent = drain(&feed, at: ms(0))
        #expect(sent.map { $0.sequence } == [1, 2, 3, 4, 5])
        // 2..5 acknowledged, 1 not: three later ones got through, so 1 is lost now, not at a timeout.
        feed.acknowledge(largest: 5, received: 0b0111, now: ms(10))
        #expect(feed.inFlightCount == 0)
        let resent = drain(&feed, at: ms(10))
        #expect(resent.map { $0.items.map(\.id) } == [[1]])
    }

    @Test func acknowledgementsOfNumbersNeverSentAreIgnored() {
        var feed = Feed()
        feed.mark(1, "x", size: size(fitting: 8))
        _ = drain(&feed, at: ms(0))
        feed.acknowledge(largest: 9, received: .max, now: ms(1))
        #expect(feed.inFlightCount == 1)
        feed.acknowledge(largest: 0, received: .max, now: ms(1))
        #expect(feed.inFlightCount == 1)
    }

    @Test func syncedMeansNothingWaitsAndNothingElseIsInFlight() {
        var feed = Feed(configuration: .init(initialRetransmitTimeout: .milliseconds(100), fullBatch: 1))
        feed.mark(1, "x", size: size(fitting: 1))
        feed.mark(2, "y", size: size(fitting: 1))
        let sent = drain(&feed, at: ms(0))
        #expect(sent.map { $0.synced } == [false, false])
        feed.acknowledge(largest: 2, received: 1, now: ms(10))
        // Both got through but neither said so: an empty synced notice follows.
        let notice = drain(&feed, at: ms(60))
        #expect(notice.count == 1 && notice[0].items.isEmpty && notice[0].synced)
        // Lost: sent again.
        let polled7 = drain(&feed, at: ms(160))
        #expect(polled7.map { $0.synced } == [true])
        feed.acknowledge(largest: 4, received: 0, now: ms(170))
        #expect(feed.isIdle)
        // Once acknowledged, a later lone change carries the flag and no notice follows.
        feed.mark(3, "z", size: size(fitting: 1))
        let polled8 = drain(&feed, at: ms(300))
        #expect(polled8.map { $0.synced } == [true])
        feed.acknowledge(largest: 5, received: 0, now: ms(301))
        #expect(feed.isIdle)
        // A reset owes a notice again and numbers from 1.
        feed.reset()
        let polled9 = drain(&feed, at: ms(400))
        #expect(polled9.map { $0.sequence } == [1])
    }
}
