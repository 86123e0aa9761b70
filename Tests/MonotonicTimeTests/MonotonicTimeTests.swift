import Testing
import MonotonicTime

@Suite("Instant")
struct InstantTests {
    @Test func zero() {
        #expect(Instant.zero.nanoseconds == 0)
        #expect(Instant.zero == Instant(nanoseconds: 0))
    }

    @Test func addAndSubtractDurations() {
        #expect((Instant.zero + .seconds(30)).nanoseconds == 30_000_000_000)
        #expect((Instant.zero + .milliseconds(1_500)).nanoseconds == 1_500_000_000)
        #expect((Instant.zero + .nanoseconds(1)).nanoseconds == 1)
        #expect((Instant(nanoseconds: 10) - .nanoseconds(15)).nanoseconds == -5)
        #expect((Instant.zero + .seconds(30) - .seconds(30)) == .zero)
        #expect((Instant.zero + .seconds(-2)).nanoseconds == -2_000_000_000)
        #expect(Instant.zero + .seconds(1) + .seconds(2) == Instant.zero + .seconds(3))
    }

    @Test func differenceOfInstants() {
        let a = Instant(nanoseconds: 5_000_000_000)
        let b = Instant(nanoseconds: 2_500_000_000)
        #expect(a - b == .milliseconds(2_500))
        #expect(b - a == .milliseconds(-2_500))
        #expect(a - a == .zero)
        #expect((Instant.zero + .seconds(30) + .nanoseconds(1)) - Instant.zero > .seconds(30))
        #expect((Instant.zero + .seconds(30)) - Instant.zero == .seconds(30))
    }

    @Test func ordering() {
        #expect(Instant(nanoseconds: -1) < .zero)
        #expect(Instant.zero < Instant(nanoseconds: 1))
        #expect(!(Instant.zero < Instant.zero))
        #expect([Instant(nanoseconds: 3), Instant(nanoseconds: -7), .zero].sorted()
                == [Instant(nanoseconds: -7), .zero, Instant(nanoseconds: 3)])
        #expect([Instant(nanoseconds: 3), Instant(nanoseconds: 1)].min() == Instant(nanoseconds: 1))
    }

    @Test func description() {
        #expect(Instant.zero.description == "t+0.0s")
        #expect((Instant.zero + .milliseconds(1_500)).description == "t+1.5s")
        #expect((Instant.zero + .seconds(30)).description == "t+30.0s")
    }

    @Test func addingAHugeDurationClampsTheDuration() {
        #expect((Instant.zero + .seconds(Int64.max)).nanoseconds == Int64.max)
        #expect((Instant.zero - .seconds(Int64.max)).nanoseconds == -Int64.max)
    }

    // `Instant + Duration` clamps the duration to Int64 nanoseconds but then adds with
    // wrapping arithmetic (`&+`), so "now + a very long time" from any positive `now` lands
    // in the far past: a deadline meant as "practically never" fires at once.
    @Test func addingAHugeDurationToALaterInstantDoesNotWrapIntoThePast() {
        let now = Instant(nanoseconds: 1_000_000_000)
        let later = now + .seconds(Int64.max)
        #expect(later > now)
        #expect(later.nanoseconds == Int64.max)
        let earlier = Instant(nanoseconds: -1_000_000_000) - .seconds(Int64.max)
        #expect(earlier < Instant(nanoseconds: -1_000_000_000))
    }
}

@Suite("Duration helpers")
struct DurationTests {
    @Test("nanosecondsClamped in range", arguments: [
        (Duration.zero, Int64(0)),
        (.nanoseconds(1), 1),
        (.nanoseconds(-1), -1),
        (.microseconds(7), 7_000),
        (.milliseconds(1_500), 1_500_000_000),
        (.milliseconds(-1_500), -1_500_000_000),
        (.seconds(30), 30_000_000_000),
        (.seconds(-30), -30_000_000_000),
        (.nanoseconds(Int64.max), Int64.max),
        (.nanoseconds(Int64.min), Int64.min),
    ])
    func inRange(_ duration: Duration, _ expected: Int64) {
        #expect(duration.nanosecondsClamped == expected)
    }

    @Test func subNanosecondPartsAreTruncatedTowardZero() {
        #expect(Duration(secondsComponent: 0, attosecondsComponent: 1_500_000_000).nanosecondsClamped == 1)
        #expect(Duration(secondsComponent: 0, attosecondsComponent: 999_999_999).nanosecondsClamped == 0)
        #expect(Duration(secondsComponent: 0, attosecondsComponent: -1_500_000_000).nanosecondsClamped == -1)
        #expect(Duration(secondsComponent: 2, attosecondsComponent: 999_999_999_999_999_999).nanosecondsClamped == 2_999_999_999)
    }

    @Test func overflowInTheSecondsProductClamps() {
        #expect(Duration.seconds(Int64.max).nanosecondsClamped == .max)
        #expect(Duration.seconds(Int64.min).nanosecondsClamped == .min)
        #expect(Duration.seconds(9_223_372_037).nanosecondsClamped == .max)
        #expect(Duration.seconds(-9_223_372_037).nanosecondsClamped == .min)
    }

    @Test func overflowWhenAddingTheFractionClamps() {
        // 9_223_372_036 s fits; adding 0.854775808 s (one past Int64.max ns) does not.
        #expect(Duration(secondsComponent: 9_223_372_036, attosecondsComponent: 854_775_807_000_000_000).nanosecondsClamped == .max)
        #expect(Duration(secondsComponent: 9_223_372_036, attosecondsComponent: 854_775_806_000_000_000).nanosecondsClamped == .max - 1)
        #expect(Duration(secondsComponent: 9_223_372_036, attosecondsComponent: 854_775_808_000_000_000).nanosecondsClamped == .max)
        #expect(Duration(secondsComponent: 9_223_372_036, attosecondsComponent: 999_999_999_000_000_000).nanosecondsClamped == .max)
        #expect((Duration.nanoseconds(Int64.min) - .nanoseconds(1)).nanosecondsClamped == .min)
        #expect((Duration.nanoseconds(Int64.max) + .nanoseconds(1)).nanosecondsClamped == .max)
    }

    @Test func seconds() {
        #expect(Duration.zero.seconds == 0)
        #expect(Duration.milliseconds(1_500).seconds == 1.5)
        #expect(Duration.milliseconds(-250).seconds == -0.25)
        #expect(Duration.seconds(30).seconds == 30)
        #expect(Duration.nanoseconds(1).seconds == 1e-9)
    }

    @Test("fractionalSeconds", arguments: [
        (0.0, Duration.zero),
        (1.5, .milliseconds(1_500)),
        (10, .seconds(10)),
        (0.001, .milliseconds(1)),
        (-2.5, .milliseconds(-2_500)),
        (1e-9, .nanoseconds(1)),
        (1.6e-9, .nanoseconds(2)),  // rounded to the nearest nanosecond
        (1.4e-9, .nanoseconds(1)),
        (0.4e-9, .zero),
        (86_399.999_999_999, .nanoseconds(86_399_999_999_999)),
    ])
    func fractionalSeconds(_ value: Double, _ expected: Duration) {
        #expect(Duration.fractionalSeconds(value) == expected)
    }
}

@Suite("Clocks")
struct ClockTests {
    @Test func manualClockStartsWhereTold() {
        #expect(ManualClock().now() == .zero)
        #expect(ManualClock(start: Instant(nanoseconds: 42)).now() == Instant(nanoseconds: 42))
    }

    @Test func manualClockMovesOnlyWhenTold() {
        let clock = ManualClock()
        #expect(clock.now() == .zero)
        #expect(clock.now() == .zero)
        clock.advance(by: .seconds(10))
        #expect(clock.now() == Instant.zero + .seconds(10))
        clock.advance(by: .nanoseconds(1))
        #expect(clock.now() == Instant(nanoseconds: 10_000_000_001))
        clock.set(Instant(nanoseconds: 5))
        #expect(clock.now() == Instant(nanoseconds: 5))
    }

    @Test func manualClockIsUsableAsAnInstantSource() {
        let source: any InstantSource = ManualClock(start: Instant(nanoseconds: 7))
        #expect(source.now() == Instant(nanoseconds: 7))
    }

    @Test func systemClockIsMonotonic() {
        let clock = SystemClock()
        var previous = clock.now()
        #expect(previous > .zero)
        for _ in 0..<1_000 {
            let next = clock.now()
            #expect(next >= previous)
            previous = next
        }
    }
}
