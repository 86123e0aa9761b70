import Addressing
import ChatRouter
import HolePunch
import Wire

/// What `@status` (and `natchat --status`) reports, as values: the client's own ID, key,
/// public endpoint, NAT kind and server round trip, then each peer's path, round trip, when
/// it was last heard and why a relayed peer is relayed. ``ShellFormatter`` writes the words;
/// a test or another front end reads the fields.
public struct StatusReport: Hashable, Sendable {
    /// One peer's line.
    public struct Peer: Hashable, Sendable {
        public var id: ClientID
        /// How the peer is reached now: what a chat to it would take.
        public var route: ExtendedRouter.StatusRoute
        /// The smoothed round trip on the route (a relayed one's from `@ping`; `nil`: not measured).
        public var roundTrip: Duration?
        /// How long ago an authenticated datagram from the peer arrived (`nil`: never).
        public var lastHeard: Duration?
        /// Why the peer is relayed (`nil` on a direct path).
        public var relayReason: RelayReason?

        public init(id: ClientID, route: ExtendedRouter.StatusRoute, roundTrip: Duration? = nil, lastHeard: Duration? = nil,
                    relayReason: RelayReason? = nil) {
            self.id = id
            self.route = route
            self.roundTrip = roundTrip
            self.lastHeard = lastHeard
            self.relayReason = relayReason
        }
    }

    /// Where the session with the server is.
    public enum Session: Hashable, Sendable, CustomStringConvertible {
        /// No answer from the server yet (or registering again).
        case registering
        /// A natchat/2 session: keys, paths and the relay.
        case natchat2
        /// The seed's protocol: no keys, no paths to show.
        case classic
        /// The shell unregistered.
        case left

        public var description: String {
            switch self {
            case .registering: "registering"
            case .natchat2: "natchat/2"
            case .classic: "classic"
            case .left: "left"
            }
        }
    }

    /// Our ID and identity key's fingerprint (what peers pin), so a user can read it out.
    public var id: ClientID
    public var keyFingerprint: String
    public var session: Session
    /// The server talked to now (it changes on failover).
    public var server: Endpoint
    /// The endpoint the server sees us at (`nil` until it said).
    public var publicEndpoint: Endpoint?
    public var natKind: NATKind
    /// The smoothed round trip to the server (keep-alive to acknowledgement; `nil`: none yet).
    public var serverRoundTrip: Duration?
    /// The peers talked to, and the rest of a small roster, sorted by ID.
    public var peers: [Peer]
    /// Peers the server lists that are not shown (a large roster shows only those talked to).
    public var otherPeers: Int
}
