import Wire

/// Whether hole punching can work between two NATs, from their mapping behaviour.
///
/// An endpoint-dependent ("symmetric") NAT gives the peer a port it cannot predict, so a
/// direct path needs the other side to accept packets from anywhere: only a host without
/// NAT does. Unknown kinds are given the benefit of the doubt.
///
/// Where plain punching cannot work, one hard (endpoint-dependent) side and one easy
/// (endpoint-independent) side can still meet by port probing (``PortProbe``):
/// ``portProbeRole(ours:peers:)`` says which side this client is. Two hard sides cannot: the
/// easy side's single mapping is what the hard side's many sockets aim at, and without one
/// both sides would have to guess a port pair, 1 in 64 512² per probe (with 256 sockets on
/// each side, about 1 in 63 500 probes: an hour at 100 probes a second, per attempt).
public enum PunchFeasibility {
    public static func canPunch(_ a: NATKind, _ b: NATKind) -> Bool {
        switch (a, b) {
        case (.endpointDependent, .none), (.none, .endpointDependent): true
        case (.endpointDependent, .unknown), (.unknown, .endpointDependent): true
        case (.endpointDependent, _), (_, .endpointDependent): false
        default: true
        }
    }

    /// Our side in port probing between `ours` and `peers`: `.hard` when our NAT is
    /// endpoint-dependent and the peer's endpoint-independent, `.easy` the other way round,
    /// `nil` for every other pair (plain punching, or the relay).
    public static func portProbeRole(ours: NATKind, peers: NATKind) -> PortProbe.Role? {
        switch (ours, peers) {
        case (.endpointDependent, .endpointIndependent), (.endpointDependent, .endpointIndependentRemappedByInbound): .hard
        case (.endpointIndependent, .endpointDependent), (.endpointIndependentRemappedByInbound, .endpointDependent): .easy
        default: nil
        }
    }
}
