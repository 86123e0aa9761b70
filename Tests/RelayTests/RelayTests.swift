import Testing
import MonotonicTime
import Relay
import Wire

private func ms(_ milliseconds: Int64) -> Instant { Instant.zero + .milliseconds(milliseconds) }

@Suite("TokenBucket")
struct TokenBucketTests {
    @Test func burstThenRefillAtRate() {
        var bucket = TokenBucket(rate: 4, burst: 2, now: ms(0))
        #expect(bucket.take(now: ms(0)) == true)
        #expect(bucket.take(now: ms(0)) == true)
        #expect(bucket.take(now: ms(0)) == false)
        // 125 ms at 4/s is half a token: not enough yet, but it is kept.
        #expect(bucket.take(now: ms(125)) == false)
        #expect(bucket.take(now: ms(250)) == true)
        #expect(bucket.take(now: ms(250)) == false)
        #expect(bucket.take(now: ms(500)) == true)
        #expect(bucket.take(now: ms(500)) == false)
    }

    @Test func refillIsCappedAtTheBurst() {
        var bucket = TokenBucket(rate: 4, burst: 2, now: ms(0))
        #expect(bucket.take(now: ms(0)) == true)
        #expect(bucket.take(now: ms(10_000)) == true)
        #expect(bucket.take(now: ms(10_000)) == true)
        #expect(bucket.take(now: ms(10_000)) == false)
    }

    @Test func costsAndRefusalTakesNothing() {
        var bucket = TokenBucket(rate: 1, burst: 5, now: ms(0))
        #expect(bucket.take(3, now: ms(0)) == true)
        #expect(bucket.take(3, now: ms(0)) == false)
        #expect(bucket.take(2, now: ms(0)) == true)
        #expect(bucket.take(0.5, now: ms(0)) == false)
        #expect(bucket.take(0, now: ms(0)) == true)
        #expect(bucket.take(6, now: ms(100_000)) == false) // more than the burst never fits
        #expect(bucket.take(5, now: ms(100_000)) == true)
    }

    @Test func timeGoingBackwardsAddsNothing() {
        var bucket = TokenBucket(rate: 4, burst: 1, now: ms(1_000))
        #expect(bucket.take(now: ms(1_000)) == true)
        #expect(bucket.take(now: ms(0)) == false)
        #expect(bucket.take(now: ms(1_000)) == false)
        #expect(bucket.take(now: ms(1_250)) == true)
    }
}

@Suite("RelayLimiter")
struct RelayLimiterTests {
    private func limiter(packets: Double = 4, bytes: Double = 1_000, global: Double = 10_000) -> RelayLimiter<String> {
        var configuration = RelayLimiter<String>.Configuration()
        configuration.packetsPerSecond = packets
        configuration.bytesPerSecond = bytes
        configuration.globalBytesPerSecond = global
        return RelayLimiter(configuration: configuration, now: ms(0))
    }

    @Test func defaults() {
        let configuration = RelayLimiter<String>.Configuration()
        #expect(configuration.packetsPerSecond == 200)
        #expect(configuration.bytesPerSecond == 128 * 1024)
        #expect(configuration.globalBytesPerSecond == 32 * 1024 * 1024)
    }

    @Test func packetBurstThenRefill() {
        var relay = limiter()
        for _ in 0..<4 { #expect(relay.allow("a", bytes: 10, now: ms(0)) == true) }
        #expect(relay.allow("a", bytes: 10, now: ms(0)) == false)
        #expect(relay.refused == 1)
        #expect(relay.allow("a", bytes: 10, now: ms(250)) == true)
        #expect(relay.allow("a", bytes: 10, now: ms(250)) == false)
        #expect(relay.refused == 2)
    }

    @Test func byteBudgetPerClient() {
        var relay = limiter()
        #expect(relay.allow("a", bytes: 1_000, now: ms(0)) == true)
        #expect(relay.allow("a", bytes: 1, now: ms(0)) == false)
        #expect(relay.allow("b", bytes: 1_000, now: ms(0)) == true)
        // 1000 bytes/s: 100 ms later 100 bytes fit, 101 do not.
        #expect(relay.allow("a", bytes: 101, now: ms(100)) == false)
    }

    @Test func oneFloodingClientDoesNotConsumeAnothersAllowance() {
        var relay = limiter()
        var allowed = 0
        for _ in 0..<1_000 where relay.allow("flooder", bytes: 100, now: ms(0)) { allowed += 1 }
        #expect(allowed == 4)
        #expect(relay.refused == 996)
        for _ in 0..<4 { #expect(relay.allow("quiet", bytes: 100, now: ms(0)) == true) }
        #expect(relay.allow("quiet", bytes: 100, now: ms(0)) == false)
    }

    @Test func globalCap() {
        var relay = limiter(packets: 100, bytes: 1_000, global: 2_500)
        #expect(relay.allow("a", bytes: 1_000, now: ms(0)) == true)
        #expect(relay.allow("b", bytes: 1_000, now: ms(0)) == true)
        #expect(relay.allow("c", bytes: 1_000, now: ms(0)) == false) // only 500 left globally
        #expect(relay.refused == 1)
        // Refills at the global rate.
        #expect(relay.allow("d", bytes: 500, now: ms(0)) == true)
        #expect(relay.allow("d", bytes: 1, now: ms(0)) == false)
        #expect(relay.allow("e", bytes: 250, now: ms(100)) == true)
    }

    /// A relay refused because the *global* budget ran out (other clients used it) must
    /// not be charged to the client: otherwise heavy users starve light ones of their own
    /// per-client allowance too.
    @Test func globalRefusalDoesNotChargeTheClient() {
        var relay = limiter(packets: 100, bytes: 1_000, global: 2_500)
        #expect(relay.allow("a", bytes: 1_000, now: ms(0)) == true)
        #expect(relay.allow("b", bytes: 1_000, now: ms(0)) == true)
        #expect(relay.allow("c", bytes: 1_000, now: ms(0)) == false) // refused: only 500 left globally
        // c's own 1000-byte allowance is untouched and 500 bytes remain globally.
        #expect(relay.allow("c", bytes: 500, now: ms(0)) == true)
    }

    @Test func forgetResetsTheClient() {
        var relay = limiter()
        for _ in 0..<4 { _ = relay.allow("a", bytes: 10, now: ms(0)) }
        #expect(relay.allow("a", bytes: 10, now: ms(0)) == false)
        relay.forget("a")
        #expect(relay.allow("a", bytes: 10, now: ms(0)) == true)
    }
}

@Suite("SourceGuard")
struct SourceGuardTests {
    private let client = Endpoint(address: IPv4Address(203, 0, 113, 7), port: 40001)
    private let samePortOtherIP = Endpoint(address: IPv4Address(203, 0, 113, 8), port: 40001)
    private let sameIPOtherPort = Endpoint(address: IPv4Address(203, 0, 113, 7), port: 40002)

    @Test func amplificationLimitForUnvalidatedSources() {
        var guardian = SourceGuard()
        guardian.received(100, from: client, now: ms(0))
        #expect(guardian.allowSend(300, to: client, validated: false, classic: false, now: ms(0)) == true)
        #expect(guardian.allowSend(1, to: client, validated: false, classic: false, now: ms(0)) == false)
        #expect(guardian.withheld == 1)
        // Validated destinations are not limited.
        #expect(guardian.allowSend(10_000, to: client, validated: true, classic: false, now: ms(0)) == true)
        // More received, more allowed.
        guardian.received(10, from: client, now: ms(1))
        #expect(guardian.allowSend(30, to: client, validated: false, classic: false, now: ms(1)) == true)
        #expect(guardian.allowSend(1, to: client, validated: false, classic: false, now: ms(1)) == false)
        // Nothing heard from an address: nothing sent to it.
        #expect(guardian.allowSend(1, to: samePortOtherIP, validated: false, classic: false, now: ms(1)) == false)
        #expect(guardian.withheld == 3)
    }

    @Test func classicBucketBeyondTheAmplificationBudget() {
        var configuration = SourceGuard.Configuration()
        configuration.classicBytesPerSecond = 1_000
        configuration.classicBurstBytes = 2_000
        var guardian = SourceGuard(configuration: configuration)
        guardian.received(10, from: client, now: ms(0))
        #expect(guardian.allowSend(30, to: client, validated: false, classic: true, now: ms(0)) == true)   // 3 × 10
        #expect(guardian.allowSend(2_000, to: client, validated: false, classic: true, now: ms(0)) == true) // the bucket
        #expect(guardian.allowSend(1, to: client, validated: false, classic: true, now: ms(0)) == false)
        #expect(guardian.allowSend(500, to: client, validated: false, classic: true, now: ms(500)) == true)
        // Extended messages never use the classic bucket.
        #expect(guardian.allowSend(1, to: client, validated: false, classic: false, now: ms(10_000)) == false)
    }

    @Test func registrationRatePerAddress() {
        var configuration = SourceGuard.Configuration()
        configuration.registrationsPerSecond = 5
        configuration.registrationBurst = 3
        var guardian = SourceGuard(configuration: configuration)
        for _ in 0..<3 { #expect(guardian.allowRegistration(from: client, now: ms(0)) == true) }
        // Another port of the same address shares the budget; another address does not.
        #expect(guardian.allowRegistration(from: sameIPOtherPort, now: ms(0)) == false)
        #expect(guardian.allowRegistration(from: samePortOtherIP, now: ms(0)) == true)
        #expect(guardian.registrationsLimited == 1)
        #expect(guardian.allowRegistration(from: client, now: ms(200)) == true)
        #expect(guardian.allowRegistration(from: client, now: ms(200)) == false)
        #expect(guardian.registrationsLimited == 2)
    }

    @Test func forgetAndBoundedMemory() {
        var configuration = SourceGuard.Configuration()
        configuration.maxSources = 8
        var guardian = SourceGuard(configuration: configuration)
        guardian.received(100, from: client, now: ms(0))
        guardian.forget(client)
        #expect(guardian.trackedSources == 0)
        #expect(guardian.allowSend(1, to: client, validated: false, classic: false, now: ms(0)) == false)
        guardian.forget(client)
        for index in 1...9 {
            guardian.received(1, from: Endpoint(address: IPv4Address(192, 0, 2, UInt8(index)), port: 1), now: ms(Int64(index)))
        }
        // Over the limit: the least recently seen are dropped, down to 7/8 of it.
        #expect(guardian.trackedSources == 7)
        #expect(guardian.allowSend(3, to: Endpoint(address: IPv4Address(192, 0, 2, 9), port: 1), validated: false, classic: false,
                                   now: ms(10)) == true)
        #expect(guardian.allowSend(3, to: Endpoint(address: IPv4Address(192, 0, 2, 1), port: 1), validated: false, classic: false,
                                   now: ms(10)) == false)
    }
}
