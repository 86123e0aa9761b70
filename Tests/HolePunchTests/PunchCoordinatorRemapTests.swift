import Addressing
import Testing
import HolePunch
import MonotonicTime
import Wire

private func id(_ text: String) -> ClientID { try! ClientID(text) }
private func ms(_ milliseconds: Int64) -> Instant { Instant.zero + .milliseconds(milliseconds) }

private let alice = id("alice")
private let bob = id("bob")
private let wait = Duration.milliseconds(800)

/// The side whose NAT remaps after unsolicited inbound moves first (docs/nat-traversal.md).
struct PunchCoordinatorRemapTests {
    private func delays(_ kinds: [ClientID: NATKind], rounds: Int) -> [[ClientID: Duration]] {
        var coordinator = PunchCoordinator()
        var delays: [[ClientID: Duration]] = []
        for round in 0..<rounds {
            let requester = round % 2 == 0 ? bob : alice
            let peer = requester == bob ? alice : bob
            let instructions = coordinator.connect(requester, to: peer, natKinds: (kinds[requester] ?? .unknown, kinds[peer] ?? .unknown),
                                                   now: ms(Int64(round) * 2_000))
            delays.append(Dictionary(uniqueKeysWithValues: instructions.map { ($0.recipient, $0.delay) }))
        }
        return delays
    }

    @Test func theRemappingSideLeadsInEveryRound() {
        // bob sorts second: he leads in round 1 and in every later round, whoever asks.
        let bobRemaps = delays([alice: .endpointIndependent, bob: .endpointIndependentRemappedByInbound], rounds: 4)
        #expect(bobRemaps == Array(repeating: [alice: wait, bob: .zero], count: 4))
        let aliceRemaps = delays([alice: .endpointIndependentRemappedByInbound, bob: .endpointDependent], rounds: 3)
        #expect(aliceRemaps == Array(repeating: [alice: .zero, bob: wait], count: 3))
    }

    @Test func bothRemappingStartTogetherEveryRound() {
        let both = delays([alice: .endpointIndependentRemappedByInbound, bob: .endpointIndependentRemappedByInbound], rounds: 3)
        #expect(both == Array(repeating: [alice: .zero, bob: .zero], count: 3))
    }

    @Test func plainConesKeepTheAlternation() {
        let cones = delays([alice: .endpointIndependent, bob: .endpointIndependent], rounds: 3)
        #expect(cones == [[alice: .zero, bob: .zero], [alice: .zero, bob: wait], [alice: wait, bob: .zero]])
    }

    @Test func kindsOfTheRemappingCase() {
        #expect(NATKind.endpointIndependentRemappedByInbound.isEndpointIndependent)
        #expect(NATKind.endpointIndependent.isEndpointIndependent)
        #expect(!NATKind.endpointDependent.isEndpointIndependent)
        #expect(!NATKind.none.isEndpointIndependent)
        // Feasibility treats it as the cone it is.
        #expect(PunchFeasibility.canPunch(.endpointIndependentRemappedByInbound, .endpointIndependent))
        #expect(PunchFeasibility.canPunch(.endpointIndependentRemappedByInbound, .none))
    }
}
