import MonotonicTime

/// The client's side of keep-alive: when the next keep-alive is due.
///
/// Call ``start(now:)`` once registered, then ``handleTimeout(now:)`` at ``nextDeadline``;
/// it answers ``Output/keepAliveDue`` once per interval. Time is always an argument, so the
/// schedule is deterministic under test.
public struct KeepAliveSchedule: Sendable, SansIOCore {
    public enum Output: Hashable, Sendable {
        /// Send a keep-alive now.
        case keepAliveDue
    }

    /// Time between keep-alives (10 s in the classic protocol).
    public var interval: Duration
    /// When the next keep-alive is due, or `nil` before ``start(now:)``.
    public private(set) var nextDeadline: Instant?

    public init(interval: Duration = .seconds(10)) {
        self.interval = interval
    }

    /// Starts the schedule: the first keep-alive is due one interval after `now`.
    public mutating func start(now: Instant) { nextDeadline = now + interval }

    /// Stops it (after `@exit`).
    public mutating func stop() { nextDeadline = nil }

    /// A keep-alive when one is due at `now`; the next one is then scheduled one interval
    /// later (if the process slept through several intervals, only one is sent).
    public mutating func handleTimeout(now: Instant) -> [Output] {
        guard let deadline = nextDeadline, now >= deadline else { return [] }
        var next = deadline + interval
        if next <= now { next = now + interval }
        nextDeadline = next
        return [.keepAliveDue]
    }
}
