import Wire

/// Why chat with a peer goes through the server's relay rather than a direct path: what
/// `@status` says next to a relayed peer, so that a user (or an operator reading a bug
/// report) can tell "wait" from "never" without reading logs.
public enum RelayReason: Hashable, Sendable, CustomStringConvertible {
    /// Nobody asked for a path yet (no chat, or the interest lapsed before a round).
    case notTriedYet
    /// A punch round was asked for or is running.
    case punchingInProgress
    /// A port-probing attempt (hard to easy NAT, ``PortProbe``) is running.
    case probingPorts
    /// The last port-probing attempt found no path; the next one waits out a back-off.
    case portProbingFailed
    /// Rounds ended without an answered check from any of the peer's candidates; the next
    /// round waits out a cool-down (or until someone talks to the peer again).
    case noAnswerFromCandidates
    /// Punching cannot work between these NATs (``PunchFeasibility``): only private
    /// candidates were tried, and none answered.
    case hopeless(ours: NATKind, peers: NATKind)
    /// A classic (seed-dialect) peer: it has no key, so it has no pair key, no checks and no
    /// relay; its chats go to its public endpoint as the seed's protocol does.
    case classicPeer
    /// A natchat/2 peer whose keys this client does not hold (nothing can be authenticated).
    case noKey

    public var description: String {
        switch self {
        case .notTriedYet: "not tried yet"
        case .punchingInProgress: "punching in progress"
        case .probingPorts: "probing ports"
        case .portProbingFailed: "port probing found no path yet"
        case .noAnswerFromCandidates: "no answer from peer's candidates"
        case .hopeless(let ours, let peers):
            switch (ours == .endpointDependent, peers == .endpointDependent) {
            case (true, true): "symmetric NAT on both sides"
            case (true, false): "symmetric NAT on our side, \(peers) on the peer's"
            case (false, true): "symmetric NAT on the peer's side, \(ours) on ours"
            case (false, false): "punching cannot work between these NATs"
            }
        case .classicPeer: "classic peer (no key)"
        case .noKey: "no key for the peer"
        }
    }
}
