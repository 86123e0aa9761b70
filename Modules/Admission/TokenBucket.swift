import MonotonicTime

/// A token bucket: `rate` tokens per second up to `burst`. Pure; time is an argument.
public struct TokenBucket: Hashable, Sendable {
    public var rate: Double
    public var burst: Double
    private var tokens: Double
    private var updated: Instant

    public init(rate: Double, burst: Double, now: Instant) {
        self.rate = rate
        self.burst = burst
        tokens = burst
        updated = now
    }

    /// Takes `cost` tokens when there are enough; `false` (and nothing taken) otherwise.
    public mutating func take(_ cost: Double = 1, now: Instant) -> Bool {
        guard canTake(cost, now: now) else { return false }
        tokens -= cost
        return true
    }

    /// Whether `cost` tokens are there now (refills; takes nothing).
    public mutating func canTake(_ cost: Double = 1, now: Instant) -> Bool {
        refill(now: now)
        return tokens >= cost
    }

    private mutating func refill(now: Instant) {
        guard now > updated else { return }
        tokens = min(burst, tokens + (now - updated).seconds * rate)
        updated = now
    }
}
