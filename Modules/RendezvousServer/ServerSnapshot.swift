import Store
import Transport
import Wire

/// Everything the admin listener shows, read at one moment: the service's counters (on its
/// event loop), the transport's, the registry's client counts and the store writer's.
///
/// A plain value, so that the metrics (``ServerMetrics``), the status page
/// (``StatusPage``) and the last-minute rates (``RateWindow``) are computed from the same
/// figures, and tests build one by hand.
public struct ServerSnapshot: Sendable, Hashable {
    /// The service's counters since it started.
    public var counters: RendezvousService.Counters
    /// The transport's counters (datagrams dropped because the socket could not take them).
    public var transport: TransportStatistics
    /// This server's own registered clients, by dialect.
    public var classicClients: Int
    public var extendedClients: Int
    /// Entries of clients registered on other servers of a cluster.
    public var remoteClients: Int
    /// Messages waiting in the mailbox.
    public var mailWaiting: Int
    /// The store writer's counters; `nil` when nothing is stored (`--store memory`).
    public var store: StoreWriter.Statistics?
    /// The cluster link's status; `nil` when the server serves alone.
    public var cluster: ClusterLink.Status?
    /// Seconds since the server started serving.
    public var uptimeSeconds: Double
    /// Whether the UDP socket is open and its event loop answered.
    public var serving: Bool

    public init(counters: RendezvousService.Counters = .init(), transport: TransportStatistics = .init(), classicClients: Int = 0,
                extendedClients: Int = 0, remoteClients: Int = 0, mailWaiting: Int = 0, store: StoreWriter.Statistics? = nil,
                cluster: ClusterLink.Status? = nil, uptimeSeconds: Double = 0, serving: Bool = true) {
        self.counters = counters
        self.transport = transport
        self.classicClients = classicClients
        self.extendedClients = extendedClients
        self.remoteClients = remoteClients
        self.mailWaiting = mailWaiting
        self.store = store
        self.cluster = cluster
        self.uptimeSeconds = uptimeSeconds
        self.serving = serving
    }

    /// Why datagrams were dropped, as the metrics label them.
    public enum DropReason: String, CaseIterable, Sendable {
        /// Per-address registration limit and per-client relay limit.
        case rateLimit = "rate_limit"
        /// Answers withheld from unvalidated addresses by the anti-amplification bound.
        case amplification
        /// Datagrams that decoded to no message.
        case malformed
        /// Datagrams the socket's send buffer could not take.
        case unwritable
    }

    /// Datagrams dropped for `reason`.
    public func dropped(_ reason: DropReason) -> Int {
        switch reason {
        case .rateLimit: counters.registrationsRateLimited + counters.relayRefused
        case .amplification: counters.amplificationWithheld
        case .malformed: counters.malformed
        case .unwritable: transport.droppedUnwritable
        }
    }

    /// Path reports clients sent with `outcome` (the wire's own ``PathOutcome``; its
    /// description is the metric's label).
    public func punchOutcomes(_ outcome: PathOutcome) -> Int {
        switch outcome {
        case .direct: counters.pathReportsDirect
        case .private: counters.pathReportsPrivate
        case .relayed: counters.pathReportsRelayed
        case .probed: counters.pathReportsProbed
        case .portMapped: counters.pathReportsPortMapped
        }
    }
}
