import AddressDiscovery
import Addressing
import MonotonicTime
import Wire

// What the client learns about its NAT beyond the mapping probe: whether a cone NAT remaps
// after unsolicited inbound (RemapProbe, run by the driver from a fresh socket), and the
// port mapping its gateway granted (PCP, NAT-PMP or UPnP, held by the driver).
extension ChatClientStateMachine {
    /// After the mapping probe: a cone NAT is checked for remapping after unsolicited
    /// inbound, when the server has an alternate port to ask for a change-port answer.
    mutating func requestRemapProbe(after outcome: MappingProbe.Outcome, now: Instant) {
        guard configuration.remapProbe, outcome.kind == .endpointIndependent, session.alternatePort != 0 else { return }
        let server = session.server
        outputs.append(.runRemapProbe(primary: server, alternate: Endpoint(address: server.address, port: session.alternatePort)))
    }

    /// The ``Output/runRemapProbe(primary:alternate:)`` the driver ran settled: a cone NAT that
    /// remaps after unsolicited inbound is reported as such (to the server, which then has
    /// this side move first in punch rounds, and to the user).
    public mutating func remapProbeFinished(_ outcome: RemapProbe.Outcome, now: Instant) -> [Output] {
        outputs.append(.diagnostic(.remapProbe(outcome)))
        guard case .remapsAfterUnsolicited = outcome, session.natKind == .endpointIndependent else { return takeOutputs() }
        let kind = NATKind.endpointIndependentRemappedByInbound
        _ = withNatchat2 { $0.router.natKind = kind }
        emit(.natClassified(kind))
        runSession(session.learnNATKind(kind, now: now), now: now)
        return takeOutputs()
    }

    /// The port mapping the driver holds changed (`nil`: none now): the server hears of it
    /// in a keep-alive at once, and passes it on to peers as a candidate.
    public mutating func portMappingChanged(_ mapped: Endpoint?, now: Instant) -> [Output] {
        _ = withNatchat2 { $0.router.hasPortMapping = mapped != nil }
        runSession(session.learnMappedEndpoint(mapped, now: now), now: now)
        return takeOutputs()
    }
}
