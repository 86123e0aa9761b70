import Testing
@testable import KeepAlive
import MonotonicTime

private func at(_ seconds: Int64) -> Instant { Instant.zero + .seconds(seconds) }
private let nanosecond = Duration.nanoseconds(1)

@Suite("KeepAliveSchedule")
struct KeepAliveScheduleTests {
    @Test func defaultsAndNotStarted() {
        var schedule = KeepAliveSchedule()
        #expect(schedule.interval == .seconds(10))
        #expect(schedule.nextDeadline == nil)
        #expect(schedule.handleTimeout(now: at(0)).isEmpty)
        #expect(schedule.handleTimeout(now: at(1_000)).isEmpty)
        #expect(schedule.nextDeadline == nil)
    }

    @Test func firstDueAfterOneInterval() {
        var schedule = KeepAliveSchedule(interval: .seconds(10))
        schedule.start(now: at(5))
        #expect(schedule.nextDeadline == at(15))
        #expect(schedule.handleTimeout(now: at(5)).isEmpty)
        #expect(schedule.handleTimeout(now: at(15) - nanosecond).isEmpty)
        #expect(schedule.nextDeadline == at(15))
        #expect(schedule.handleTimeout(now: at(15)) == [.keepAliveDue])
        #expect(schedule.nextDeadline == at(25))
    }

    @Test func oncePerInterval() {
        var schedule = KeepAliveSchedule(interval: .seconds(10))
        schedule.start(now: at(0))
        var sentAt: [Int64] = []
        // Poll every 250 ms for 60 s.
        for step in 0...240 {
            let now = Instant.zero + .milliseconds(250 * step)
            if !schedule.handleTimeout(now: now).isEmpty { sentAt.append(now.nanoseconds / 1_000_000) }
        }
        #expect(sentAt == [10_000, 20_000, 30_000, 40_000, 50_000, 60_000])
        #expect(schedule.nextDeadline == at(70))
    }

    @Test func secondPollAtSameInstantIsNotDue() {
        var schedule = KeepAliveSchedule(interval: .seconds(10))
        schedule.start(now: at(0))
        #expect(schedule.handleTimeout(now: at(10)) == [.keepAliveDue])
        #expect(schedule.handleTimeout(now: at(10)).isEmpty)
        #expect(schedule.handleTimeout(now: at(20) - nanosecond).isEmpty)
        #expect(schedule.handleTimeout(now: at(20)) == [.keepAliveDue])
    }

    @Test func lateWakeKeepsTheCadence() {
        var schedule = KeepAliveSchedule(interval: .seconds(10))
        schedule.start(now: at(0))
        #expect(schedule.handleTimeout(now: at(13)) == [.keepAliveDue])
        // Still less than one interval late: the next stays on the original grid.
        #expect(schedule.nextDeadline == at(20))
    }

    @Test func sleepingThroughSeveralIntervalsSendsOne() {
        var schedule = KeepAliveSchedule(interval: .seconds(10))
        schedule.start(now: at(0))
        #expect(schedule.handleTimeout(now: at(75)) == [.keepAliveDue])
        #expect(schedule.handleTimeout(now: at(75)).isEmpty)
        #expect(schedule.nextDeadline == at(85))
        #expect(schedule.handleTimeout(now: at(84)).isEmpty)
        #expect(schedule.handleTimeout(now: at(85)) == [.keepAliveDue])
        #expect(schedule.nextDeadline == at(95))
    }

    @Test func sleepingExactlyTwoIntervals() {
        var schedule = KeepAliveSchedule(interval: .seconds(10))
        schedule.start(now: at(0))
        // deadline 10, now 20: next on the grid would be 20 (<= now), so it moves to 30.
        #expect(schedule.handleTimeout(now: at(20)) == [.keepAliveDue])
        #expect(schedule.nextDeadline == at(30))
        #expect(schedule.handleTimeout(now: at(20)).isEmpty)
    }

    @Test func stop() {
        var schedule = KeepAliveSchedule(interval: .seconds(10))
        schedule.start(now: at(0))
        schedule.stop()
        #expect(schedule.nextDeadline == nil)
        #expect(schedule.handleTimeout(now: at(10)).isEmpty)
        #expect(schedule.handleTimeout(now: at(1_000)).isEmpty)
        // and it can be restarted
        schedule.start(now: at(1_000))
        #expect(schedule.nextDeadline == at(1_010))
        #expect(schedule.handleTimeout(now: at(1_010)) == [.keepAliveDue])
    }

    @Test func restartMovesTheDeadline() {
        var schedule = KeepAliveSchedule(interval: .seconds(10))
        schedule.start(now: at(0))
        schedule.start(now: at(7))
        #expect(schedule.nextDeadline == at(17))
        #expect(schedule.handleTimeout(now: at(10)).isEmpty)
    }

    @Test func subSecondInterval() {
        var schedule = KeepAliveSchedule(interval: .milliseconds(300))
        schedule.start(now: .zero)
        #expect(schedule.handleTimeout(now: Instant.zero + .milliseconds(299)).isEmpty)
        #expect(schedule.handleTimeout(now: Instant.zero + .milliseconds(300)) == [.keepAliveDue])
        #expect(schedule.nextDeadline == Instant.zero + .milliseconds(600))
    }
}

@Suite("LivenessTable")
struct LivenessTableTests {
    @Test func defaults() {
        let table = LivenessTable<String>()
        #expect(table.timeout == .seconds(30))
        #expect(table.count == 0)
        #expect(table.lastHeard("a") == nil)
        #expect(table.isExpired("a", now: at(1_000)) == false)
    }

    @Test func exactlyAtTheTimeoutIsNotExpired() {
        var table = LivenessTable<String>(timeout: .seconds(30))
        table.touch("a", now: at(0))
        #expect(table.isExpired("a", now: at(30)) == false)
        #expect(table.handleTimeout(now: at(30)) == [])
        #expect(table.count == 1)
        #expect(table.lastHeard("a") == at(0))
    }

    @Test func oneNanosecondPastTheTimeoutIsExpired() {
        var table = LivenessTable<String>(timeout: .seconds(30))
        table.touch("a", now: at(0))
        #expect(table.isExpired("a", now: at(30) + nanosecond) == true)
        #expect(table.handleTimeout(now: at(30) + nanosecond) == ["a"])
        #expect(table.count == 0)
        #expect(table.lastHeard("a") == nil)
        #expect(table.isExpired("a", now: at(100)) == false) // gone, so not "expired"
        #expect(table.handleTimeout(now: at(100)) == [])
    }

    @Test func touchRefreshes() {
        var table = LivenessTable<String>(timeout: .seconds(30))
        table.touch("a", now: at(0))
        table.touch("a", now: at(20))
        #expect(table.lastHeard("a") == at(20))
        #expect(table.isExpired("a", now: at(31)) == false)
        #expect(table.handleTimeout(now: at(31)) == [])
        #expect(table.handleTimeout(now: at(50)) == [])
        #expect(table.count == 1)
        #expect(table.handleTimeout(now: at(50) + nanosecond) == ["a"])
    }

    @Test func touchWithAnOlderInstantIsIgnored() {
        var table = LivenessTable<String>(timeout: .seconds(30))
        table.touch("a", now: at(20))
        table.touch("a", now: at(10))
        table.touch("a", now: at(20))
        #expect(table.lastHeard("a") == at(20))
        #expect(table.handleTimeout(now: at(50)) == [])
        #expect(table.handleTimeout(now: at(50) + nanosecond) == ["a"])
    }

    @Test func remove() {
        var table = LivenessTable<String>(timeout: .seconds(30))
        table.touch("a", now: at(0))
        table.touch("b", now: at(0))
        table.remove("a")
        #expect(table.count == 1)
        #expect(table.lastHeard("a") == nil)
        #expect(table.isExpired("a", now: at(100)) == false)
        #expect(table.handleTimeout(now: at(100)) == ["b"])
        table.remove("nobody") // harmless
        #expect(table.count == 0)
    }

    @Test func expiryOrderIsOldestFirst() {
        var table = LivenessTable<String>(timeout: .seconds(30))
        table.touch("c", now: at(1))
        table.touch("a", now: at(2))
        table.touch("b", now: at(3))
        table.touch("c", now: at(4)) // c is now the newest
        #expect(table.handleTimeout(now: at(32)) == [])
        #expect(table.handleTimeout(now: at(32) + nanosecond) == ["a"])
        #expect(table.handleTimeout(now: at(40)) == ["b", "c"])
        #expect(table.count == 0)
    }

    @Test func sameInstantKeepsTouchOrder() {
        var table = LivenessTable<Int>(timeout: .seconds(30))
        for key in [5, 3, 9, 1] { table.touch(key, now: at(0)) }
        #expect(table.handleTimeout(now: at(31)) == [5, 3, 9, 1])
    }

    @Test func manyEntries() {
        var table = LivenessTable<Int>(timeout: .seconds(30))
        // 5000 keys heard once each, one per millisecond from t=0.
        for key in 0..<5_000 { table.touch(key, now: Instant.zero + .milliseconds(key)) }
        // keys 0..<2500 are refreshed at t=10 s
        for key in 0..<2_500 { table.touch(key, now: at(10)) }
        #expect(table.count == 5_000)
        // at 32.5 s: key 2500 (heard at 2.5 s) is silent exactly 30 s; keys below were refreshed.
        #expect(table.handleTimeout(now: at(32) + .milliseconds(500)) == [])
        // at 35 s: keys 2500..<5000 (heard at 2.500..4.999 s, never refreshed) have been
        // silent for more than 30 s; the refreshed ones have not.
        #expect(table.handleTimeout(now: at(35)) == Array(2_500..<5_000))
        #expect(table.count == 2_500)
        #expect(table.handleTimeout(now: at(40)) == [])
        #expect(table.handleTimeout(now: at(40) + nanosecond) == Array(0..<2_500))
        #expect(table.count == 0)
        // the table still works after its queue was compacted
        table.touch(7, now: at(100))
        #expect(table.handleTimeout(now: at(130)) == [])
        #expect(table.handleTimeout(now: at(131)) == [7])
    }

    @Test func aKeyTouchedWithoutPauseKeepsTheQueueBounded() {
        var table = LivenessTable<String>(timeout: .seconds(30))
        table.touch("quiet", now: .zero)
        var now = Instant.zero
        for _ in 0..<50_000 {
            now = now + .milliseconds(1)
            table.touch("flood", now: now)
        }
        // 50 000 touches within one timeout; the queue holds at most twice the keys plus the slack.
        #expect(table.queuedCount <= 2 * table.count + LivenessTable<String>.compactionSlack + 1)
        // Expiry is unchanged: quiet goes 30 s after its touch, flood 30 s after its last one.
        #expect(table.handleTimeout(now: .zero + .seconds(30)).isEmpty)
        #expect(table.handleTimeout(now: .zero + .seconds(30) + .nanoseconds(1)) == ["quiet"])
        #expect(table.handleTimeout(now: now + .seconds(30)).isEmpty)
        #expect(table.handleTimeout(now: now + .seconds(30) + .nanoseconds(1)) == ["flood"])
        #expect(table.count == 0)
    }

    @Test func droppingStaleEntriesKeepsTheExpiryOrder() {
        var table = LivenessTable<Int>(timeout: .seconds(10))
        // 100 keys touched in turn, 100 rounds: 10 000 touches, several passes over the queue.
        for round in 0..<100 {
            for key in 0..<100 { table.touch(key, now: .zero + .milliseconds(round * 100 + key)) }
        }
        // The last round touched key k at 9 900 + k ms: they expire one by one, in that order.
        let last = Instant.zero + .milliseconds(9_900)
        #expect(table.handleTimeout(now: last + .seconds(10)).isEmpty)
        #expect(table.handleTimeout(now: last + .seconds(10) + .milliseconds(49) + .nanoseconds(1)) == Array(0...49))
        #expect(table.handleTimeout(now: last + .seconds(11)) == Array(50..<100))
    }

    @Test func readdAfterRemove() {
        var table = LivenessTable<String>(timeout: .seconds(30))
        table.touch("a", now: at(0))
        table.remove("a")
        table.touch("a", now: at(20))
        #expect(table.count == 1)
        #expect(table.lastHeard("a") == at(20))
        // The stale queue entry from t=0 must not evict the re-added key.
        #expect(table.handleTimeout(now: at(31)) == [])
        #expect(table.count == 1)
        #expect(table.handleTimeout(now: at(50) + nanosecond) == ["a"])
    }

    @Test func readdAtTheSameInstantAfterRemove() {
        var table = LivenessTable<String>(timeout: .seconds(30))
        table.touch("a", now: at(0))
        table.remove("a")
        table.touch("a", now: at(0))
        #expect(table.count == 1)
        #expect(table.handleTimeout(now: at(31)) == ["a"]) // reported once, not twice
        #expect(table.count == 0)
    }

    @Test func readdAfterExpiry() {
        var table = LivenessTable<String>(timeout: .seconds(30))
        table.touch("a", now: at(0))
        #expect(table.handleTimeout(now: at(31)) == ["a"])
        table.touch("a", now: at(40))
        #expect(table.lastHeard("a") == at(40))
        #expect(table.handleTimeout(now: at(70)) == [])
        #expect(table.handleTimeout(now: at(71)) == ["a"])
    }

    @Test func customTimeout() {
        var table = LivenessTable<String>(timeout: .milliseconds(1_500))
        table.touch("a", now: .zero)
        #expect(table.handleTimeout(now: Instant.zero + .milliseconds(1_500)) == [])
        #expect(table.handleTimeout(now: Instant.zero + .milliseconds(1_500) + nanosecond) == ["a"])
    }
}
