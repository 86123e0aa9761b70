import Addressing
import ChatRouter
import MonotonicTime
import Wire

/// `@status` and `@ping`: what the client knows of its session and paths, and a round trip
/// measured on demand over a peer's current path.
extension ChatClientStateMachine {
    /// Past this many peers held, `@status` lists only the peers talked to (a roster of
    /// thousands would bury them).
    public static let statusRosterLimit = 50
    /// How long `@ping` waits for its answer.
    public static let pingTimeout: Duration = .seconds(3)

    /// The status at `now`: the session, then the peers (see ``StatusReport``). Pure: asking
    /// changes nothing, so a status socket may ask as often as it likes.
    public func statusReport(now: Instant) -> StatusReport {
        let sessionState: StatusReport.Session = if session.hasLeft {
            .left
        } else {
            switch session.dialect {
            case .negotiating: .registering
            case .classic: .classic
            case .natchat2: session.isRegistered ? .natchat2 : .registering
            }
        }
        var peers: [StatusReport.Peer] = []
        var others = 0
        if let router = natchat2Router {
            let listed = router.statuses(rosterLimit: Self.statusRosterLimit)
            others = listed.others
            peers = listed.peers.map { status in
                StatusReport.Peer(id: status.id, route: status.route, roundTrip: status.roundTrip?.smoothed,
                                  lastHeard: status.lastHeard.map { now - $0 }, relayReason: status.relayReason)
            }
        }
        return StatusReport(id: configuration.id, keyFingerprint: configuration.identity.fingerprint, session: sessionState,
                            server: session.server, publicEndpoint: session.publicEndpoint, natKind: session.natKind,
                            serverRoundTrip: session.serverRoundTrip?.smoothed, peers: peers, otherPeers: others)
    }

    /// The text `@status` prints (and the status socket serves), one string of lines.
    public func statusText(now: Instant) -> String {
        ShellFormatter.lines(for: statusReport(now: now)).joined(separator: "\n")
    }

    /// `@ping ID`: a check over the current path; the answer (or the timeout) comes as an event.
    mutating func ping(_ id: ClientID, now: Instant) {
        guard id != configuration.id else { return emit(.pingNotSent(id, .yourself)) }
        guard natchat2Router != nil else {
            return emit(.pingNotSent(id, session.dialect == .classic ? .classicPeer : .notRegistered))
        }
        do {
            let routerOutputs = try withNatchat2 { natchat2 throws(ExtendedRouter.PingError) in
                try natchat2.router.ping(id, timeout: Self.pingTimeout, now: now).outputs
            }
            runRouter(routerOutputs ?? [], now: now)
        } catch {
            let problem: PingProblem = switch error {
            case .unknownPeer: .unknownPeer
            case .classicPeer: .classicPeer
            case .noKey: .noKey
            case .tooManyInFlight: .tooManyInFlight
            }
            emit(.pingNotSent(id, problem))
        }
    }
}
