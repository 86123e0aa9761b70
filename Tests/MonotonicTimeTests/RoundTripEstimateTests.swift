import MonotonicTime
import Testing

@Suite("RoundTripEstimate (RFC 6298)")
struct RoundTripEstimateTests {
    @Test func firstSampleThenSmoothing() {
        var estimate = RoundTripEstimate(firstSample: .milliseconds(80))
        #expect(estimate.smoothed == .milliseconds(80))
        #expect(estimate.variation == .milliseconds(40))
        #expect(estimate.samples == 1)
        // RTTVAR = 3/4 · 40 + 1/4 · |80 − 160| = 50; SRTT = 7/8 · 80 + 1/8 · 160 = 90.
        estimate.add(.milliseconds(160))
        #expect(estimate.variation == .milliseconds(50))
        #expect(estimate.smoothed == .milliseconds(90))
        #expect(estimate.latest == .milliseconds(160))
        #expect(estimate.samples == 2)
    }

    @Test func addingStartsOrExtends() {
        let started = RoundTripEstimate.adding(.milliseconds(8), to: nil)
        #expect(started == RoundTripEstimate(firstSample: .milliseconds(8)))
        #expect(RoundTripEstimate.adding(.milliseconds(16), to: started).smoothed == .milliseconds(9))
        // A negative sample (a clock that went back) counts as zero.
        #expect(RoundTripEstimate(firstSample: .milliseconds(-5)).smoothed == .zero)
    }
}
