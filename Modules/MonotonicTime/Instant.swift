/// A point on a monotonic clock, in nanoseconds since an arbitrary origin.
///
/// Every protocol core in natchat takes time as an argument (`now: Instant`) and never
/// reads a clock itself, so tests drive it with a ``ManualClock`` and the I/O layer with
/// ``SystemClock``.
public struct Instant: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// Nanoseconds since the clock's origin.
    public var nanoseconds: Int64

    public init(nanoseconds: Int64) { self.nanoseconds = nanoseconds }

    /// The origin of a clock; handy for tests.
    public static let zero = Instant(nanoseconds: 0)

    public static func < (lhs: Instant, rhs: Instant) -> Bool { lhs.nanoseconds < rhs.nanoseconds }

    /// Saturating: a huge duration gives the end of time, never a wrap into the past.
    public static func + (lhs: Instant, rhs: Duration) -> Instant {
        let (sum, overflow) = lhs.nanoseconds.addingReportingOverflow(rhs.nanosecondsClamped)
        if overflow { return Instant(nanoseconds: rhs.nanosecondsClamped > 0 ? .max : .min) }
        return Instant(nanoseconds: sum)
    }

    public static func - (lhs: Instant, rhs: Duration) -> Instant {
        let (difference, overflow) = lhs.nanoseconds.subtractingReportingOverflow(rhs.nanosecondsClamped)
        if overflow { return Instant(nanoseconds: rhs.nanosecondsClamped > 0 ? .min : .max) }
        return Instant(nanoseconds: difference)
    }

    /// The time from `earlier` to `self` (negative when `earlier` is later).
    public static func - (lhs: Instant, rhs: Instant) -> Duration {
        .nanoseconds(lhs.nanoseconds &- rhs.nanoseconds)
    }

    public var description: String {
        let seconds = Double(nanoseconds) / 1e9
        return "t+\(seconds)s"
    }
}

extension Duration {
    /// This duration in whole nanoseconds, clamped to `Int64`.
    public var nanosecondsClamped: Int64 {
        let (seconds, attoseconds) = components
        let (product, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        let (sum, overflow2) = product.addingReportingOverflow(attoseconds / 1_000_000_000)
        if overflow2 { return seconds < 0 ? .min : .max }
        return sum
    }

    /// This duration in seconds as a `Double` (for display and option parsing).
    public var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    /// A duration from a number of seconds that may be fractional (command-line options).
    public static func fractionalSeconds(_ value: Double) -> Duration {
        .nanoseconds(Int64((value * 1e9).rounded()))
    }
}
