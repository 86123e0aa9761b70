import Addressing
import Admission
import Testing
import MonotonicTime

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

    /// With the defaults: 20 at once per address, 50 classic registrations at once from
    /// everyone.
    @Test func globalRegistrationBucketWithTheDefaults() {
        let configuration = SourceGuard.Configuration()
        #expect(configuration.registrationsPerSecond == 5)
        #expect(configuration.registrationBurst == 20)
        #expect(configuration.totalRegistrationsPerSecond == 20)
        #expect(configuration.totalRegistrationBurst == 50)
        var guardian = SourceGuard(configuration: configuration)
        func address(_ index: Int) -> Endpoint {
            Endpoint(address: IPv4Address(bits: 0xC633_6400 + UInt32(index)), port: UInt16(1_000 + index))
        }
        // One address cannot go past its own 20, though the total has room.
        for _ in 0..<20 { #expect(guardian.allowRegistration(from: address(0), now: ms(0)) == true) }
        #expect(guardian.allowRegistration(from: address(0), now: ms(0)) == false)
        #expect(guardian.registrationsLimited == 1)
        // The next address takes its 20, the one after only the 10 left of the total.
        var allowed = 0
        for index in 1...2 {
            for _ in 0..<20 where guardian.allowRegistration(from: address(index), now: ms(0)) { allowed += 1 }
        }
        #expect(allowed == 30)
        #expect(guardian.registrationsLimited == 11)
        // Then nobody, however fresh its own bucket.
        for index in 3..<13 { #expect(guardian.allowRegistration(from: address(index), now: ms(0)) == false) }
        #expect(guardian.registrationsLimited == 21)
        // Registrations that do not count towards the total (an offer, an extended
        // registration) still pass, within their address's own rate.
        for _ in 0..<20 { #expect(guardian.allowRegistration(from: address(13), countsTowardsTotal: false, now: ms(0)) == true) }
        #expect(guardian.allowRegistration(from: address(13), countsTowardsTotal: false, now: ms(0)) == false)
        #expect(guardian.allowRegistration(from: address(0), countsTowardsTotal: false, now: ms(0)) == false)
        // 50 ms later the total has one token again (20 per second).
        #expect(guardian.allowRegistration(from: address(14), now: ms(50)) == true)
        #expect(guardian.allowRegistration(from: address(15), now: ms(50)) == false)
        #expect(guardian.registrationsLimited == 24)
    }

    /// Uncounted registrations do not spend the total: counted ones are still admitted after many.
    @Test func uncountedRegistrationsLeaveTheTotalAlone() {
        var configuration = SourceGuard.Configuration()
        configuration.totalRegistrationsPerSecond = 1
        configuration.totalRegistrationBurst = 2
        var guardian = SourceGuard(configuration: configuration)
        for index in 0..<50 {
            let source = Endpoint(address: IPv4Address(192, 0, 2, UInt8(index)), port: 9)
            #expect(guardian.allowRegistration(from: source, countsTowardsTotal: false, now: ms(0)) == true)
        }
        #expect(guardian.allowRegistration(from: client, now: ms(0)) == true)
        #expect(guardian.allowRegistration(from: samePortOtherIP, now: ms(0)) == true)
        #expect(guardian.allowRegistration(from: sameIPOtherPort, now: ms(0)) == false)
        #expect(guardian.registrationsLimited == 1)
    }

    /// Unvalidated classic destinations share one byte budget beyond their 3x allowance, on
    /// top of each one's own bucket; a refusal by either takes from neither.
    @Test func classicBytesAreCappedForEveryoneTogether() {
        #expect(SourceGuard.Configuration().totalClassicBytesPerSecond == 1_048_576)
        #expect(SourceGuard.Configuration().totalClassicBurstBytes == 2_097_152)
        var configuration = SourceGuard.Configuration()
        configuration.classicBytesPerSecond = 1_000
        configuration.classicBurstBytes = 1_000
        configuration.totalClassicBytesPerSecond = 1_000
        configuration.totalClassicBurstBytes = 2_500
        var guardian = SourceGuard(configuration: configuration)
        let destinations = (1...4).map { Endpoint(address: IPv4Address(198, 51, 100, UInt8($0)), port: 10081) }
        #expect(guardian.allowSend(1_000, to: destinations[0], validated: false, classic: true, now: ms(0)) == true)
        #expect(guardian.allowSend(1, to: destinations[0], validated: false, classic: true, now: ms(0)) == false) // its own bucket
        #expect(guardian.allowSend(1_000, to: destinations[1], validated: false, classic: true, now: ms(0)) == true)
        // 500 bytes of the total left: a fresh destination gets 500, not its 1,000.
        #expect(guardian.allowSend(600, to: destinations[2], validated: false, classic: true, now: ms(0)) == false)
        #expect(guardian.allowSend(500, to: destinations[2], validated: false, classic: true, now: ms(0)) == true)
        #expect(guardian.allowSend(1, to: destinations[3], validated: false, classic: true, now: ms(0)) == false)
        #expect(guardian.withheld == 3)
        // The 3x allowance and validated destinations do not use the total.
        guardian.received(100, from: destinations[3], now: ms(0))
        #expect(guardian.allowSend(300, to: destinations[3], validated: false, classic: true, now: ms(0)) == true)
        #expect(guardian.allowSend(5_000, to: destinations[3], validated: true, classic: true, now: ms(0)) == true)
        // 250 ms later the total has 250 bytes again: destination 2 (whose refused 600 took
        // nothing from its bucket) gets them; destination 0 has 250 of its own but the total
        // is spent.
        #expect(guardian.allowSend(250, to: destinations[2], validated: false, classic: true, now: ms(250)) == true)
        #expect(guardian.allowSend(1, to: destinations[0], validated: false, classic: true, now: ms(250)) == false)
        #expect(guardian.withheld == 4)
    }

    /// A registration needs a token from its address's bucket and from the global one; a
    /// refusal by either takes from neither.
    @Test func registrationNeedsBothBuckets() {
        var configuration = SourceGuard.Configuration()
        configuration.registrationsPerSecond = 1
        configuration.registrationBurst = 3
        configuration.totalRegistrationsPerSecond = 4
        configuration.totalRegistrationBurst = 8
        var guardian = SourceGuard(configuration: configuration)
        let a1 = client, a2 = samePortOtherIP
        let a3 = Endpoint(address: IPv4Address(198, 51, 100, 1), port: 1), a4 = Endpoint(address: IPv4Address(198, 51, 100, 2), port: 1)
        for _ in 0..<3 { #expect(guardian.allowRegistration(from: a1, now: ms(0)) == true) }
        #expect(guardian.allowRegistration(from: sameIPOtherPort, now: ms(0)) == false) // a1's address is spent
        for _ in 0..<3 { #expect(guardian.allowRegistration(from: a2, now: ms(0)) == true) }
        // 6 of the 8 global tokens are gone: a3 gets 2, not its 3.
        #expect(guardian.allowRegistration(from: a3, now: ms(0)) == true)
        #expect(guardian.allowRegistration(from: a3, now: ms(0)) == true)
        #expect(guardian.allowRegistration(from: a3, now: ms(0)) == false)
        #expect(guardian.allowRegistration(from: a4, now: ms(0)) == false)
        #expect(guardian.registrationsLimited == 3)
        // 250 ms later: one global token, a quarter of one for a1 (refused, and it does not
        // spend the global token), so a3 (which kept its third token) gets it.
        #expect(guardian.allowRegistration(from: a1, now: ms(250)) == false)
        #expect(guardian.allowRegistration(from: a3, now: ms(250)) == true)
        #expect(guardian.allowRegistration(from: a4, now: ms(250)) == false)
        #expect(guardian.registrationsLimited == 5)
        // Another 250 ms: the next global token goes to a4 (whose own bucket is full).
        #expect(guardian.allowRegistration(from: a4, now: ms(500)) == true)
        #expect(guardian.allowRegistration(from: a2, now: ms(500)) == false)
        // Over time the total rate holds: 4 per second however many addresses ask.
        var granted = 0
        for step in 1...4 {
            let now = ms(500 + Int64(step) * 250) // 1 s in 250 ms steps
            for index in 0..<20 {
                let source = Endpoint(address: IPv4Address(192, 0, 2, UInt8(index)), port: 7)
                if guardian.allowRegistration(from: source, now: now) { granted += 1 }
            }
        }
        #expect(granted == 4)
    }

    /// A generous per-address allowance does not lift the global cap.
    @Test func oneAddressCannotExceedTheTotal() {
        var configuration = SourceGuard.Configuration()
        configuration.registrationsPerSecond = 1_000
        configuration.registrationBurst = 1_000
        configuration.totalRegistrationsPerSecond = 4
        configuration.totalRegistrationBurst = 8
        var guardian = SourceGuard(configuration: configuration)
        let granted = (0..<100).filter { _ in guardian.allowRegistration(from: client, now: ms(0)) }.count
        #expect(granted == 8)
        #expect(guardian.registrationsLimited == 92)
        #expect(guardian.allowRegistration(from: client, now: ms(250)) == true)
        #expect(guardian.allowRegistration(from: client, now: ms(250)) == false)
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
