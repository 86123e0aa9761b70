import Addressing
import HolePunch
import Identity
import MonotonicTime
import Wire

/// What `@status` and `@ping` need from the router: each peer's path, its round trip and
/// when it was last heard, why a relayed peer is relayed, and user pings over the current
/// path (checks under the pair key, direct or through the relay), matched by transaction.
extension ExtendedRouter {
    /// How one peer is reached now, as `@status` shows it.
    public enum StatusRoute: Hashable, Sendable, CustomStringConvertible {
        /// A verified direct path to the peer's public (or peer-reflexive) endpoint.
        case direct(Endpoint)
        /// A verified direct path to one of the peer's private endpoints (the same NAT).
        case `private`(Endpoint)
        /// A verified direct path found by port probing (a hard and an easy NAT).
        case probed(Endpoint)
        /// A verified direct path to the external endpoint of the peer's port mapping.
        case portMapped(Endpoint)
        /// Through the server's relay.
        case relayed
        /// A classic peer: the seed's protocol, to its public endpoint, unauthenticated.
        case classic(Endpoint)

        public var description: String {
            switch self {
            case .direct(let endpoint): "direct \(endpoint)"
            case .private(let endpoint): "private \(endpoint)"
            case .probed(let endpoint): "direct (probed) \(endpoint)"
            case .portMapped(let endpoint): "direct (port map) \(endpoint)"
            case .relayed: "relayed"
            case .classic(let endpoint): "classic \(endpoint)"
            }
        }

        /// The route a path agent's path is (no path yet: the relay carries chat).
        public init(_ path: PathAgent.Path) {
            switch path {
            case .direct(let endpoint, .privateEndpoint): self = .private(endpoint)
            case .direct(let endpoint, .probed): self = .probed(endpoint)
            case .direct(let endpoint, .portMapped): self = .portMapped(endpoint)
            case .direct(let endpoint, _): self = .direct(endpoint)
            case .none, .relayed: self = .relayed
            }
        }
    }

    /// One peer's line of `@status`.
    public struct PeerStatus: Hashable, Sendable {
        public var id: ClientID
        /// How a chat to the peer goes now.
        public var route: StatusRoute
        /// The smoothed round trip on the route: a direct path's from its checks, the
        /// relay's from answered `@ping`s (`nil`: not measured).
        public var roundTrip: RoundTripEstimate?
        /// When an authenticated datagram from the peer last arrived (`nil`: never).
        public var lastHeard: Instant?
        /// Why the peer is relayed (`nil` on a direct path).
        public var relayReason: RelayReason?
    }

    /// Why `@ping` could not send.
    public enum PingError: Error, Hashable, Sendable {
        /// The roster does not hold the peer (not registered, as far as this client knows).
        case unknownPeer
        /// A classic peer has no key: nothing could authenticate its answer.
        case classicPeer
        /// The peer's keys are not held, or chat with it is held.
        case noKey
        /// Too many pings are waiting for their answers.
        case tooManyInFlight
    }

    /// A user ping waiting for its pong.
    struct UserPing: Hashable, Sendable {
        var peer: ClientID
        /// The path it went on.
        var path: PathAgent.Path
        var sentAt: Instant
        var deadline: Instant
    }

    /// Most user pings in flight at once.
    static let userPingLimit = 16

    /// The status of `id` (`nil`: the roster does not hold it).
    public func status(of id: ClientID) -> PeerStatus? {
        guard let held = roster.peer(id) else { return nil }
        if held.info.dialect == .classic {
            return PeerStatus(id: id, route: .classic(held.info.publicEndpoint), relayReason: .classicPeer)
        }
        guard let link = links[id] else {
            return PeerStatus(id: id, route: .relayed, relayReason: held.info.keys == nil ? .noKey : .notTriedYet)
        }
        let direct = link.agent.path.directEndpoint != nil
        return PeerStatus(id: id, route: StatusRoute(link.agent.path), roundTrip: direct ? link.agent.roundTrip : link.relayRoundTrip,
                          lastHeard: link.lastHeard, relayReason: link.agent.relayReason)
    }

    /// The peers `@status` lists: those talked to (a link), then, when the roster holds at
    /// most `rosterLimit` peers, the rest of it; sorted by ID. `others`: held peers left out.
    public func statuses(rosterLimit: Int) -> (peers: [PeerStatus], others: Int) {
        var ids = Set(links.keys)
        if roster.count <= rosterLimit { ids.formUnion(roster.listedIDs) }
        ids.remove(selfID)
        let peers = ids.sorted().compactMap { status(of: $0) }
        let selfHeld = roster.peer(selfID) == nil ? 0 : 1
        return (peers, max(0, roster.count - selfHeld - peers.count))
    }

    /// Measures the round trip to `id` over the current path: a check (a ping under the pair
    /// key) to the direct endpoint, or through the relay when there is none. The answer comes
    /// as ``Event/pingAnswered(_:path:roundTrip:)``, or ``Event/pingUnanswered(_:path:after:)``
    /// after `timeout`. Returns the ping's transaction and the outputs.
    public mutating func ping(_ id: ClientID, timeout: Duration = .seconds(3),
                              now: Instant) throws(PingError) -> (transaction: UInt64, outputs: [Output]) {
        guard let held = roster.peer(id), id != selfID else { throw .unknownPeer }
        guard held.info.dialect == .extended else { throw .classicPeer }
        guard !heldPeers.contains(id), let link = link(for: id) else { throw .noKey }
        guard userPings.count < Self.userPingLimit else { throw .tooManyInFlight }
        let transaction = nextUserPingTransaction
        nextUserPingTransaction &+= 1
        let path = link.agent.path
        let ping = SessionCrypto.sealed(.ping(from: selfID, to: id, transaction: transaction), key: link.pairKey)
        if case .direct(let endpoint, _) = path {
            sendDirect(ping, to: endpoint, peer: id)
            userPings[transaction] = UserPing(peer: id, path: path, sentAt: now, deadline: now + timeout)
        } else {
            outputs.append(.sendToServer(.relay(id: selfID, to: id, payload: ping)))
            userPings[transaction] = UserPing(peer: id, path: .relayed, sentAt: now, deadline: now + timeout)
        }
        return (transaction, takeOutputs())
    }

    /// A verified pong from `from` for one of our user pings (`via`: its direct source, or
    /// `nil` through the relay). `true` when it answered one (the path agent need not see it).
    mutating func answerUserPing(_ transaction: UInt64, from: ClientID, via source: Endpoint?, now: Instant) -> Bool {
        guard let ping = userPings[transaction], ping.peer == from, ping.path.directEndpoint == source else { return false }
        userPings[transaction] = nil
        if source == nil, var link = links[from] {
            link.relayRoundTrip = .adding(now - ping.sentAt, to: link.relayRoundTrip)
            links[from] = link
        }
        emit(.pingAnswered(from, path: ping.path, roundTrip: now - ping.sentAt))
        return true
    }

    /// Gives up the user pings past their deadline.
    mutating func expireUserPings(now: Instant) {
        guard !userPings.isEmpty else { return }
        for (transaction, ping) in userPings where now >= ping.deadline {
            userPings[transaction] = nil
            emit(.pingUnanswered(ping.peer, path: ping.path, after: ping.deadline - ping.sentAt))
        }
    }

    /// A ping from `from` that came through the relay: answered through the relay (the path
    /// agent does not see it: a relayed check says nothing about a direct path).
    mutating func answerRelayedPing(_ transaction: UInt64, from: ClientID) {
        guard let key = links[from]?.pairKey else { return }
        let pong = SessionCrypto.sealed(.pong(from: selfID, to: from, transaction: transaction, observed: Self.relayObserved),
                                        key: key)
        outputs.append(.sendToServer(.relay(id: selfID, to: from, payload: pong)))
    }

    /// The `observed` field of a pong through the relay: the peer's address is the server's
    /// business there, so it says nothing (0.0.0.0:0).
    static let relayObserved = Endpoint(address: IPv4Address(bits: 0), port: 0)
}
