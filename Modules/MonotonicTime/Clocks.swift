#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// Something that tells the time. Only the thin I/O layers hold one; cores get `Instant`s.
public protocol InstantSource: Sendable {
    func now() -> Instant
}

/// The process's monotonic clock (`CLOCK_MONOTONIC`).
public struct SystemClock: InstantSource {
    public init() {}

    public func now() -> Instant {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return Instant(nanoseconds: Int64(spec.tv_sec) * 1_000_000_000 + Int64(spec.tv_nsec))
    }
}

/// A clock that moves only when told to: the fake clock for deterministic tests.
public final class ManualClock: InstantSource {
    private let current: Mutex<Instant>

    public init(start: Instant = .zero) { current = Mutex(start) }

    public func now() -> Instant { current.withLock { $0 } }

    /// Moves the clock forward by `duration`.
    public func advance(by duration: Duration) { current.withLock { $0 = $0 + duration } }

    /// Sets the clock to `instant`.
    public func set(_ instant: Instant) { current.withLock { $0 = instant } }
}
