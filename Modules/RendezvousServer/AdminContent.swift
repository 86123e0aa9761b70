import MonotonicTime
import NIOCore
import Synchronization

/// What the admin listener answers: it reads a ``ServerSnapshot`` through `snapshot` (which
/// hops onto the UDP service's event loop once), and makes `/metrics` (``ServerMetrics``),
/// `/healthz` and the status page (``StatusPage``, with ``RateWindow``'s last-minute rates)
/// from it.
///
/// Separate from the HTTP handler and from the sockets, so that tests drive it with a
/// snapshot function of their own.
public final class AdminContent: Sendable {
    /// Reads the server's figures now; throws when the service cannot be reached.
    public typealias SnapshotSource = @Sendable () async throws -> ServerSnapshot

    public let metrics: ServerMetrics
    private let snapshot: SnapshotSource
    private let clock: any InstantSource
    private let rates: Mutex<RateWindow>
    private let storeLocation: String?
    private let listening: String

    /// - Parameters:
    ///   - storeLocation: where the store is, for the page (`nil`: nothing is kept; the store
    ///     metrics are then left out).
    ///   - listening: the UDP address, for the page.
    ///   - clock: the time of rate samples.
    ///   - inCluster: whether the server shares a database with others (the link's metrics).
    public init(storeLocation: String?, inCluster: Bool = false, listening: String, clock: any InstantSource = SystemClock(),
                rateWindow: RateWindow = RateWindow(), snapshot: @escaping SnapshotSource) {
        metrics = ServerMetrics(hasStore: storeLocation != nil, inCluster: inCluster)
        self.snapshot = snapshot
        self.clock = clock
        rates = Mutex(rateWindow)
        self.storeLocation = storeLocation
        self.listening = listening
    }

    /// Takes a sample for the last-minute rates (every 5 s, from the server's sampler task).
    public func sample() async {
        guard let snapshot = try? await snapshot() else { return }
        record(snapshot)
    }

    /// The answer to `route`.
    public func response(for route: AdminRoute) async -> AdminResponse {
        let snapshot: ServerSnapshot
        do {
            snapshot = try await self.snapshot()
        } catch {
            return .text(route == .health ? .serviceUnavailable : .internalServerError, "the UDP service does not answer")
        }
        switch route {
        case .health:
            return snapshot.serving ? .text(.ok, "ok") : .text(.serviceUnavailable, "the UDP socket is closed")
        case .metrics:
            metrics.update(from: snapshot)
            return AdminResponse(status: .ok, contentType: ServerMetrics.contentType, body: metrics.exposition())
        case .status:
            let rates = record(snapshot)
            let page = StatusPage(snapshot: snapshot, rates: rates, storeLocation: storeLocation, listening: listening)
            return AdminResponse(status: .ok, contentType: StatusPage.contentType, body: Array(page.render().utf8))
        }
    }

    /// ``response(for:)`` as the HTTP handler asks for it.
    public func respond(_ route: AdminRoute, on eventLoop: any EventLoop) -> EventLoopFuture<AdminResponse> {
        eventLoop.makeFutureWithTask { await self.response(for: route) }
    }

    @discardableResult
    private func record(_ snapshot: ServerSnapshot) -> RateWindow.Rates? {
        let now = clock.now()
        return rates.withLock { window in
            window.record(RateWindow.Totals(snapshot), at: now)
            return window.rates
        }
    }
}
