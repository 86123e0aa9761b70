import MonotonicTime

/// The status page's "last minute" rates, from cumulative counters sampled every few
/// seconds: the rate of a figure is its increase between the oldest sample still in the
/// window and the newest, over the time between them.
///
/// A sans-I/O value: the admin listener records a sample every 5 s (and one at each page
/// view); tests record samples at instants of their choosing. It keeps at most
/// `2 × window / interval + 2` samples, so its memory is fixed however long the server runs.
public struct RateWindow: Sendable {
    /// The figures the page shows a rate of, all cumulative.
    public struct Totals: Sendable, Hashable {
        public var datagramsIn = 0
        public var datagramsOut = 0
        public var bytesIn = 0
        public var bytesOut = 0
        public var registrations = 0
        public var refusals = 0
        public var relayedBytes = 0
        public var dropped = 0

        public init(datagramsIn: Int = 0, datagramsOut: Int = 0, bytesIn: Int = 0, bytesOut: Int = 0, registrations: Int = 0,
                    refusals: Int = 0, relayedBytes: Int = 0, dropped: Int = 0) {
            self.datagramsIn = datagramsIn
            self.datagramsOut = datagramsOut
            self.bytesIn = bytesIn
            self.bytesOut = bytesOut
            self.registrations = registrations
            self.refusals = refusals
            self.relayedBytes = relayedBytes
            self.dropped = dropped
        }

        /// The totals of a snapshot.
        public init(_ snapshot: ServerSnapshot) {
            let received = snapshot.counters.received.total
            let sent = snapshot.counters.sent.total
            self.init(datagramsIn: received.datagrams, datagramsOut: sent.datagrams, bytesIn: received.bytes, bytesOut: sent.bytes,
                      registrations: snapshot.counters.registrations, refusals: snapshot.counters.refused,
                      relayedBytes: snapshot.counters.sent.relay.bytes,
                      dropped: ServerSnapshot.DropReason.allCases.reduce(0) { $0 + snapshot.dropped($1) })
        }
    }

    /// Rates per second over ``span``.
    public struct Rates: Sendable, Hashable {
        public var datagramsIn: Double
        public var datagramsOut: Double
        public var bytesIn: Double
        public var bytesOut: Double
        public var registrations: Double
        public var refusals: Double
        public var relayedBytes: Double
        public var dropped: Double
        /// The time the rates were measured over (up to the window; less just after start).
        public var span: Duration
    }

    /// How far back the rates look.
    public let window: Duration
    /// Samples closer together than this (half the interval) are not kept: page views, which
    /// also record, cannot crowd the minute out of the bounded buffer.
    private let minimumSpacing: Duration
    private let capacity: Int
    private var samples: [(at: Instant, totals: Totals)] = []

    /// - Parameters:
    ///   - window: how far back the rates look (one minute on the page).
    ///   - interval: how often samples are recorded; it sizes the buffer.
    public init(window: Duration = .seconds(60), interval: Duration = .seconds(5)) {
        self.window = window
        minimumSpacing = interval > .zero ? interval / 2 : .zero
        // Samples kept at least half an interval apart: at most twice the window's intervals.
        let perWindow = minimumSpacing > .zero ? Int((window / minimumSpacing).rounded(.up)) : 24
        capacity = max(2, perWindow + 2)
        samples.reserveCapacity(capacity)
    }

    /// Records the totals at `instant`. An instant earlier than the last sample's, or within
    /// half an interval of it, is ignored.
    /// Samples older than the window are dropped, but the newest of them is kept, so that the
    /// rates span the whole window once the server has run that long.
    public mutating func record(_ totals: Totals, at instant: Instant) {
        if let last = samples.last, instant < last.at + minimumSpacing || instant < last.at { return }
        samples.append((instant, totals))
        let start = instant - window
        while samples.count > 2, samples[1].at <= start { samples.removeFirst() }
        if samples.count > capacity { samples.removeFirst(samples.count - capacity) }
    }

    /// The rates between the oldest sample in the window and the newest; `nil` until two
    /// samples at different instants exist.
    public var rates: Rates? {
        guard let first = samples.first, let last = samples.last, last.at > first.at else { return nil }
        let span = last.at - first.at
        let seconds = Double(span.components.seconds) + Double(span.components.attoseconds) / 1e18
        func rate(_ figure: KeyPath<Totals, Int>) -> Double {
            Double(max(0, last.totals[keyPath: figure] - first.totals[keyPath: figure])) / seconds
        }
        return Rates(datagramsIn: rate(\.datagramsIn), datagramsOut: rate(\.datagramsOut), bytesIn: rate(\.bytesIn),
                     bytesOut: rate(\.bytesOut), registrations: rate(\.registrations), refusals: rate(\.refusals),
                     relayedBytes: rate(\.relayedBytes), dropped: rate(\.dropped), span: span)
    }

    /// How many samples are held (tests check the bound).
    public var sampleCount: Int { samples.count }
}
