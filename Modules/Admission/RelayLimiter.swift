import MonotonicTime

/// The server's relay policy: forward only between registered clients, within a
/// per-client rate (packets and bytes) and a global byte budget, so one client cannot
/// starve the others or make the server a free bulk relay.
public struct RelayLimiter<Key: Hashable & Sendable>: Sendable {
    public struct Configuration: Hashable, Sendable {
        public var packetsPerSecond: Double = 200
        public var bytesPerSecond: Double = 128 * 1024
        public var globalBytesPerSecond: Double = 32 * 1024 * 1024
        public init() {}
    }

    public let configuration: Configuration
    private var perClient: [Key: (packets: TokenBucket, bytes: TokenBucket)] = [:]
    private var global: TokenBucket
    public private(set) var refused = 0

    public init(configuration: Configuration = Configuration(), now: Instant) {
        self.configuration = configuration
        global = TokenBucket(rate: configuration.globalBytesPerSecond, burst: configuration.globalBytesPerSecond, now: now)
    }

    /// Whether client `key` may relay `bytes` now.
    public mutating func allow(_ key: Key, bytes: Int, now: Instant) -> Bool {
        var buckets = perClient[key] ?? (TokenBucket(rate: configuration.packetsPerSecond, burst: configuration.packetsPerSecond, now: now),
                                         TokenBucket(rate: configuration.bytesPerSecond, burst: configuration.bytesPerSecond, now: now))
        defer { perClient[key] = buckets }
        // Check every bucket before taking from any: a refusal charges nobody.
        guard buckets.packets.canTake(1, now: now), buckets.bytes.canTake(Double(bytes), now: now),
              global.canTake(Double(bytes), now: now)
        else {
            refused += 1
            return false
        }
        _ = buckets.packets.take(1, now: now)
        _ = buckets.bytes.take(Double(bytes), now: now)
        _ = global.take(Double(bytes), now: now)
        return true
    }

    /// Forgets client `key` (it left).
    public mutating func forget(_ key: Key) { perClient[key] = nil }
}
