import Addressing
import MonotonicTime

/// The server's defences per source address, as pure state:
///
/// - **Anti-amplification** (QUIC's rule, RFC 9000 §8): to an address that has not proved
///   it receives (an extended client registers only by echoing a cookie), the server sends
///   at most ``Configuration/amplificationFactor`` times the bytes it received from it.
///   Classic clients can never prove it (the seed protocol has no round trip), so classic
///   lists and notices to them are also allowed within a per-address byte bucket; that
///   residual, bounded amplification is the price of the classic dialect, and
///   `natchat-server --classic off` removes it.
/// - **Registration rate** per source IP (token bucket), so one address cannot churn IDs
///   or make the server broadcast joins in a loop.
/// - **Bounded memory**: at most ``Configuration/maxSources`` addresses are tracked; the
///   least recently seen are forgotten first.
public struct SourceGuard: Sendable {
    public struct Configuration: Hashable, Sendable {
        public var amplificationFactor = 3
        public var registrationsPerSecond: Double = 5
        public var registrationBurst: Double = 20
        /// Classic registrations per second from all addresses together (classic clients
        /// cannot prove their address and every classic join is pushed to every classic
        /// client): a flood from many addresses cannot make the server announce joins without
        /// limit. Extended registrations, which prove their address, are not counted here.
        public var totalRegistrationsPerSecond: Double = 20
        public var totalRegistrationBurst: Double = 50
        /// Bytes per second, all together, that unvalidated (classic) destinations may get
        /// beyond their 3x allowance.
        public var totalClassicBytesPerSecond: Double = 1_048_576
        public var totalClassicBurstBytes: Double = 2_097_152
        public var classicBytesPerSecond: Double = 4096
        public var classicBurstBytes: Double = 16384
        public var maxSources = 65536
        public init() {}
    }

    struct Traffic: Sendable {
        var received: Int
        var sent: Int
        var classic: TokenBucket
        var lastSeen: Instant
    }

    public let configuration: Configuration
    private var traffic: [Endpoint: Traffic] = [:]
    private var registrations: [IPv4Address: TokenBucket] = [:]
    private var totalRegistrations: TokenBucket?
    private var totalClassic: TokenBucket?
    /// Datagrams withheld by the amplification limit.
    public private(set) var withheld = 0
    /// Registrations dropped by the rate limit.
    public private(set) var registrationsLimited = 0

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
    }

    /// Records `bytes` received from `source`.
    public mutating func received(_ bytes: Int, from source: Endpoint, now: Instant) {
        var entry = traffic[source] ?? newTraffic(now: now)
        entry.received = entry.received &+ bytes
        entry.lastSeen = now
        traffic[source] = entry
        trim()
    }

    /// Whether a registration from `source` is within its IP's rate and, for an unvalidated
    /// (`counted`) one, within the server-wide rate.
    public mutating func allowRegistration(from source: Endpoint, countsTowardsTotal: Bool = true, now: Instant) -> Bool {
        var bucket = registrations[source.address]
            ?? TokenBucket(rate: configuration.registrationsPerSecond, burst: configuration.registrationBurst, now: now)
        var total = totalRegistrations
            ?? TokenBucket(rate: configuration.totalRegistrationsPerSecond, burst: configuration.totalRegistrationBurst, now: now)
        let allowed = bucket.canTake(1, now: now) && (!countsTowardsTotal || total.canTake(1, now: now))
        if allowed {
            _ = bucket.take(1, now: now)
            if countsTowardsTotal { _ = total.take(1, now: now) }
        }
        registrations[source.address] = bucket
        totalRegistrations = total
        if registrations.count > configuration.maxSources, let victim = registrations.keys.first(where: { $0 != source.address }) {
            registrations[victim] = nil
        }
        if !allowed { registrationsLimited += 1 }
        return allowed
    }

    /// Whether `bytes` may go to `destination` now. `validated`: the destination proved it
    /// receives. `classic`: a classic-dialect message (may use the classic bucket).
    public mutating func allowSend(_ bytes: Int, to destination: Endpoint, validated: Bool, classic: Bool, now: Instant) -> Bool {
        if validated { return true }
        var entry = traffic[destination] ?? newTraffic(now: now)
        defer { traffic[destination] = entry }
        if entry.sent + bytes <= entry.received * configuration.amplificationFactor {
            entry.sent += bytes
            return true
        }
        var total = totalClassic
            ?? TokenBucket(rate: configuration.totalClassicBytesPerSecond, burst: configuration.totalClassicBurstBytes, now: now)
        defer { totalClassic = total }
        if classic, entry.classic.canTake(Double(bytes), now: now), total.canTake(Double(bytes), now: now) {
            _ = entry.classic.take(Double(bytes), now: now)
            _ = total.take(Double(bytes), now: now)
            return true
        }
        withheld += 1
        return false
    }

    /// Forgets `source` (it proved itself and registered, or left).
    public mutating func forget(_ source: Endpoint) { traffic[source] = nil }

    public var trackedSources: Int { traffic.count }

    private func newTraffic(now: Instant) -> Traffic {
        Traffic(received: 0, sent: 0,
                classic: TokenBucket(rate: configuration.classicBytesPerSecond, burst: configuration.classicBurstBytes, now: now),
                lastSeen: now)
    }

    private mutating func trim() {
        guard traffic.count > configuration.maxSources else { return }
        // Rare (only under a flood of new addresses): drop the least recently seen eighth.
        let keep = configuration.maxSources - configuration.maxSources / 8
        let sorted = traffic.sorted { $0.value.lastSeen > $1.value.lastSeen }
        traffic = Dictionary(uniqueKeysWithValues: sorted.prefix(keep).map { ($0.key, $0.value) })
    }
}
