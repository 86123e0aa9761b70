/// A smoothed round-trip time in the manner of RFC 6298 (SRTT and RTTVAR, gains 1/8 and
/// 1/4): what `@status` shows for the server and for each direct path. One sample is noisy
/// (a busy host, a queued datagram); the smoothed value follows the path without jumping.
public struct RoundTripEstimate: Hashable, Sendable {
    /// The smoothed round trip (SRTT).
    public private(set) var smoothed: Duration
    /// The smoothed mean deviation (RTTVAR).
    public private(set) var variation: Duration
    /// The latest sample as measured.
    public private(set) var latest: Duration
    /// Samples taken.
    public private(set) var samples: Int

    /// Starts from a first sample (RFC 6298 2.2: SRTT = R, RTTVAR = R/2).
    public init(firstSample sample: Duration) {
        let sample = max(sample, .zero)
        smoothed = sample
        variation = sample / 2
        latest = sample
        samples = 1
    }

    /// Takes one more sample (RFC 6298 2.3, α = 1/8, β = 1/4).
    public mutating func add(_ sample: Duration) {
        let sample = max(sample, .zero)
        let deviation = smoothed > sample ? smoothed - sample : sample - smoothed
        variation = variation * 3 / 4 + deviation / 4
        smoothed = smoothed * 7 / 8 + sample / 8
        latest = sample
        samples += 1
    }

    /// `estimate` with `sample` added, or a new estimate when there was none.
    public static func adding(_ sample: Duration, to estimate: RoundTripEstimate?) -> RoundTripEstimate {
        guard var estimate else { return RoundTripEstimate(firstSample: sample) }
        estimate.add(sample)
        return estimate
    }
}
