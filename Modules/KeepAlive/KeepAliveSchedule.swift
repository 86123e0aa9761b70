import MonotonicTime

/// The client's side of keep-alive: when the next keep-alive is due.
///
/// Call ``start(now:)`` once registered, then ``poll(now:)`` whenever the I/O layer wakes
/// up; it answers `true` once per interval. ``nextDeadline`` tells the I/O layer when to
/// wake. Time is always an argument, so the schedule is deterministic under test.
public struct KeepAliveSchedule: Sendable {
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

    /// Whether a keep-alive is due at `now`. When it is, the next one is scheduled one
    /// interval later; if the process slept through several intervals only one is sent.
    public mutating func poll(now: Instant) -> Bool {
        guard let deadline = nextDeadline, now >= deadline else { return false }
        var next = deadline + interval
        if next <= now { next = now + interval }
        nextDeadline = next
        return true
    }
}
