import CoreMetrics
import Prometheus
import Synchronization
import Wire

/// The server's Prometheus metrics: swift-metrics counters and meters backed by a
/// swift-prometheus registry this object owns (not the process-wide `MetricsSystem`, so that
/// two servers, or two tests, in one process keep their figures apart).
///
/// The datagram paths never touch it: they add to ``RendezvousService/Counters``, and at
/// scrape time ``update(from:)`` takes a ``ServerSnapshot`` and moves each counter by what
/// its source counted since the previous update (and sets each gauge). ``exposition()`` is
/// then the text format Prometheus scrapes. All names follow Prometheus's conventions:
/// `natchat_server_` prefix, `_total` counters, base units (bytes, seconds), labels with a
/// handful of values (docs/operations.md lists them).
public final class ServerMetrics: Sendable {
    /// The registry the metrics live in (tests read it; the admin listener emits it).
    public let registry: PrometheusCollectorRegistry
    private let counters: [CounterSeries]
    private let durationCounters: [DurationCounterSeries]
    private let gauges: [GaugeSeries]
    /// What each counter had been moved to, by position in ``counters`` (and in seconds for
    /// ``durationCounters``): the deltas are computed against these, under the lock, so
    /// concurrent scrapes never count a delta twice.
    private let exported: Mutex<(counts: [Int], seconds: [Double])>

    /// - Parameters:
    ///   - hasStore: whether the server has a durable store: its metrics exist only then.
    ///   - inCluster: whether it shares a database with other servers: the link's metrics
    ///     exist only then.
    public init(hasStore: Bool, inCluster: Bool = false, registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        var builder = Builder(registry: registry)
        builder.defineAll(hasStore: hasStore)
        if inCluster { builder.defineCluster() }
        counters = builder.counters
        durationCounters = builder.durationCounters
        gauges = builder.gauges
        exported = Mutex((Array(repeating: 0, count: builder.counters.count),
                          Array(repeating: 0, count: builder.durationCounters.count)))
    }

    /// Moves every counter to the snapshot's figure (by the increase since the last update;
    /// a figure that went down, which a server's counters never do, moves nothing) and sets
    /// every gauge.
    public func update(from snapshot: ServerSnapshot) {
        exported.withLock { exported in
            for (index, series) in counters.enumerated() {
                let value = series.value(snapshot)
                let delta = value - exported.counts[index]
                guard delta > 0 else { continue }
                series.counter.increment(by: delta)
                exported.counts[index] = value
            }
            for (index, series) in durationCounters.enumerated() {
                guard let value = series.seconds(snapshot) else { continue }
                let delta = value - exported.seconds[index]
                guard delta > 0 else { continue }
                series.counter.increment(by: delta)
                exported.seconds[index] = value
            }
            for series in gauges {
                if let value = series.value(snapshot) { series.meter.set(value) }
            }
        }
    }

    /// The registry in Prometheus's text exposition format (version 0.0.4).
    public func exposition() -> [UInt8] {
        registry.emitToBuffer()
    }

    /// The content type of ``exposition()``.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    // MARK: Definitions

    struct CounterSeries: Sendable {
        let counter: CoreMetrics.Counter
        let value: @Sendable (ServerSnapshot) -> Int
    }

    struct DurationCounterSeries: Sendable {
        let counter: CoreMetrics.FloatingPointCounter
        let seconds: @Sendable (ServerSnapshot) -> Double?
    }

    struct GaugeSeries: Sendable {
        let meter: CoreMetrics.Meter
        let value: @Sendable (ServerSnapshot) -> Double?
    }

    /// Builds the metric table: each metric once, with its help text and labels.
    struct Builder {
        let registry: PrometheusCollectorRegistry
        let factory: PrometheusMetricsFactory
        var counters: [CounterSeries] = []
        var durationCounters: [DurationCounterSeries] = []
        var gauges: [GaugeSeries] = []

        init(registry: PrometheusCollectorRegistry) {
            self.registry = registry
            factory = PrometheusMetricsFactory(registry: registry)
        }

        private func descriptor(_ name: String, unit: String, help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(namespace: "natchat", subsystem: "server", metricName: name, unitName: unit, helpText: help)
        }

        mutating func counter(_ name: String, unit: String = "total", help: String, labels: [(String, String)] = [],
                              _ value: @escaping @Sendable (ServerSnapshot) -> Int) {
            let descriptor = descriptor(name, unit: unit, help: help)
            let handler = registry.makeCounter(descriptor: descriptor, labels: labels)
            counters.append(CounterSeries(counter: CoreMetrics.Counter(label: descriptor.name, dimensions: labels, handler: handler,
                                                                       factory: factory),
                                          value: value))
        }

        mutating func secondsCounter(_ name: String, help: String, _ seconds: @escaping @Sendable (ServerSnapshot) -> Double?) {
            let descriptor = descriptor(name, unit: "seconds_total", help: help)
            let handler = registry.makeCounter(descriptor: descriptor, labels: [])
            durationCounters.append(DurationCounterSeries(
                counter: CoreMetrics.FloatingPointCounter(label: descriptor.name, dimensions: [], handler: handler, factory: factory),
                seconds: seconds))
        }

        mutating func gauge(_ name: String, unit: String = "", help: String, labels: [(String, String)] = [],
                            _ value: @escaping @Sendable (ServerSnapshot) -> Double?) {
            let descriptor = descriptor(name, unit: unit, help: help)
            let handler = registry.makeGauge(descriptor: descriptor, labels: labels)
            gauges.append(GaugeSeries(meter: CoreMetrics.Meter(label: descriptor.name, dimensions: labels, handler: handler,
                                                               factory: factory),
                                      value: value))
        }

        mutating func defineAll(hasStore: Bool) {
            gauge("info", help: "Always 1; the version label says which natchat release serves.",
                  labels: [("version", NatchatVersion.current)]) { _ in 1 }
            gauge("uptime", unit: "seconds", help: "Seconds since the server started serving.") { $0.uptimeSeconds }
            gauge("clients", help: "Clients registered on this server, by dialect.", labels: [("dialect", "classic")]) {
                Double($0.classicClients)
            }
            gauge("clients", help: "Clients registered on this server, by dialect.", labels: [("dialect", "natchat2")]) {
                Double($0.extendedClients)
            }
            gauge("remote_clients", help: "Clients registered on the other servers of the cluster, as this one knows them.") {
                Double($0.remoteClients)
            }
            gauge("mail_waiting", help: "Messages waiting in the mailbox for offline recipients.") { Double($0.mailWaiting) }

            for dialect in [("classic", false), ("natchat2", true)] {
                counter("registrations", help: "Registrations accepted (new clients and re-registrations), by dialect.",
                        labels: [("dialect", dialect.0)]) { snapshot in
                    let extended = snapshot.counters.registrationsExtended
                    return dialect.1 ? extended : snapshot.counters.registrations - extended
                }
            }
            for reason in RendezvousService.RefusalReason.allCases {
                counter("registration_refusals", help: "Registrations refused, by reason.", labels: [("reason", reason.rawValue)]) {
                    $0.counters.refusals[reason]
                }
            }
            for kind in RendezvousService.TrafficKind.allCases {
                let labels = [("kind", kind.rawValue)]
                counter("received_datagrams", help: "Datagrams received, by kind.", labels: labels) {
                    $0.counters.received[kind].datagrams
                }
                counter("received_bytes", help: "UDP payload bytes received, by kind.", labels: labels) {
                    $0.counters.received[kind].bytes
                }
                counter("sent_datagrams", help: "Datagrams sent, by kind (before the socket's own drops).", labels: labels) {
                    $0.counters.sent[kind].datagrams
                }
                counter("sent_bytes", help: "UDP payload bytes sent, by kind (relay: the relayed bytes).", labels: labels) {
                    $0.counters.sent[kind].bytes
                }
            }
            for reason in ServerSnapshot.DropReason.allCases {
                counter("dropped_datagrams", help: "Datagrams dropped or withheld, by reason.", labels: [("reason", reason.rawValue)]) {
                    $0.dropped(reason)
                }
            }
            counter("relayed_datagrams", help: "Datagrams relayed between two clients.") { $0.counters.relayedDatagrams }
            counter("punch_rounds", help: "Hole-punch rounds the server started.") { $0.counters.punchRounds }
            for outcome in PathOutcome.allCases {
                counter("punch_outcomes", help: "Paths pairs of clients reported after punching, by outcome.",
                        labels: [("outcome", outcome.description)]) { $0.punchOutcomes(outcome) }
            }
            counter("evictions", help: "Clients evicted after missing their keep-alives.") { $0.counters.evictions }
            counter("mail_queued", help: "Messages queued in the mailbox.") { $0.counters.mailQueued }
            counter("mail_delivered", help: "Mailbox messages delivered (acknowledged by their recipient).") {
                $0.counters.mailDelivered
            }
            guard hasStore else { return }
            counter("store_batches", help: "Batches of changes the durable store applied.") { $0.store?.batchesWritten ?? 0 }
            counter("store_changes", help: "Changes the durable store applied (after coalescing).") { $0.store?.changesWritten ?? 0 }
            counter("store_failures", help: "Batches the durable store refused (each is retried).") { $0.store?.failures ?? 0 }
            counter("store_dropped_changes", help: "Changes dropped because too many were waiting for the store.") {
                $0.store?.dropped ?? 0
            }
            secondsCounter("store_batch", help: "Time the durable store spent applying batches (rate over store_batches_total: mean latency).") {
                $0.store.map { Self.seconds($0.totalBatchLatency) }
            }
            gauge("store_pending_changes", help: "Changes waiting to be written to the durable store.") {
                $0.store.map { Double($0.pending) }
            }
            gauge("store_last_batch", unit: "seconds", help: "How long the store took to apply the last batch.") {
                $0.store.map { $0.lastBatchLatency.map(Self.seconds) ?? 0 }
            }
        }

        mutating func defineCluster() {
            gauge("cluster_database_up", help: "1 while the cluster's shared database answers, 0 while it does not.") {
                $0.cluster.map { $0.databaseReachable ? 1 : 0 }
            }
            gauge("cluster_pending_presence", help: "Presence records waiting to be written to the shared database.") {
                $0.cluster.map { Double($0.pendingPresence) }
            }
            gauge("cluster_pending_claims", help: "Claims waiting for the shared database's decision.") {
                $0.cluster.map { Double($0.pendingClaims) }
            }
        }

        static func seconds(_ duration: Duration) -> Double {
            let components = duration.components
            return Double(components.seconds) + Double(components.attoseconds) / 1e18
        }
    }
}
