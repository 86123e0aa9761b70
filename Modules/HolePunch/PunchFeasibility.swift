import Wire

/// Whether hole punching can work between two NATs, from their mapping behaviour.
///
/// An endpoint-dependent ("symmetric") NAT gives the peer a port it cannot predict, so a
/// direct path needs the other side to accept packets from anywhere: only a host without
/// NAT does. Unknown kinds are given the benefit of the doubt.
public enum PunchFeasibility {
    public static func canPunch(_ a: NATKind, _ b: NATKind) -> Bool {
        switch (a, b) {
        case (.endpointDependent, .none), (.none, .endpointDependent): true
        case (.endpointDependent, .unknown), (.unknown, .endpointDependent): true
        case (.endpointDependent, _), (_, .endpointDependent): false
        default: true
        }
    }
}
