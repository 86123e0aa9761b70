import Testing
import HolePunch
import MonotonicTime
import Wire
import TestSupport

private func id(_ text: String) -> ClientID { try! ClientID(text) }
private func ms(_ milliseconds: Int64) -> Instant { Instant.zero + .milliseconds(milliseconds) }
private let alice = id("alice"), bob = id("bob"), carol = id("carol")

@Suite("PunchFeasibility")
struct PunchFeasibilityTests {
    /// All 16 ordered pairs: only an endpoint-dependent NAT facing a NAT that filters
    /// (cone or symmetric) is hopeless; unknown gets the benefit of the doubt.
    static let table: [(NATKind, NATKind, Bool)] = [
        (.unknown, .unknown, true), (.unknown, .none, true), (.unknown, .endpointIndependent, true), (.unknown, .endpointDependent, true),
        (.none, .unknown, true), (.none, .none, true), (.none, .endpointIndependent, true), (.none, .endpointDependent, true),
        (.endpointIndependent, .unknown, true), (.endpointIndependent, .none, true),
        (.endpointIndependent, .endpointIndependent, true), (.endpointIndependent, .endpointDependent, false),
        (.endpointDependent, .unknown, true), (.endpointDependent, .none, true),
        (.endpointDependent, .endpointIndependent, false), (.endpointDependent, .endpointDependent, false),
    ]

    @Test func allSixteenPairs() {
        #expect(Self.table.count == 16)
        #expect(Set(Self.table.map { "\($0.0)|\($0.1)" }).count == 16)
        for (a, b, expected) in Self.table {
            #expect(PunchFeasibility.canPunch(a, b) == expected, "\(a) / \(b)")
        }
    }

    @Test func symmetric() {
        for a in NATKind.allCases {
            for b in NATKind.allCases {
                #expect(PunchFeasibility.canPunch(a, b) == PunchFeasibility.canPunch(b, a), "\(a) / \(b)")
            }
        }
    }
}

@Suite("PunchCoordinator")
struct PunchCoordinatorTests {
    @Test func firstRoundBothAtOnce() {
        var coordinator = PunchCoordinator()
        var random = SplitMix64(seed: 1)
        let instructions = coordinator.connect(bob, to: alice, now: ms(0), random: &random)
        #expect(instructions.count == 2)
        #expect(instructions.map(\.recipient) == [bob, alice])
        #expect(instructions.map(\.peer) == [alice, bob])
        #expect(instructions.map(\.round) == [1, 1])
        #expect(instructions.map(\.delay) == [.zero, .zero])
        #expect(instructions[0].pairToken == instructions[1].pairToken)
        #expect(instructions[0].pairToken != .zero)
        #expect(coordinator.pairCount == 1)
    }

    @Test func sameTokenReusedPerPairAndRoundsAdvanceOnlyAfterTheWindow() {
        var coordinator = PunchCoordinator()
        var random = SplitMix64(seed: 2)
        let first = coordinator.connect(alice, to: bob, now: ms(0), random: &random)
        // Within the 2 s window (either side asking): the same round.
        let again = coordinator.connect(bob, to: alice, now: ms(1_999), random: &random)
        #expect(again.map(\.round) == [1, 1])
        #expect(again.map(\.recipient) == [bob, alice])
        #expect(again[0].pairToken == first[0].pairToken)
        // A request inside the window does not extend it.
        let second = coordinator.connect(alice, to: bob, now: ms(2_000), random: &random)
        #expect(second.map(\.round) == [2, 2])
        #expect(second[0].pairToken == first[0].pairToken)
        #expect(coordinator.connect(alice, to: bob, now: ms(3_999), random: &random).map(\.round) == [2, 2])
        #expect(coordinator.connect(alice, to: bob, now: ms(4_000), random: &random).map(\.round) == [3, 3])
        #expect(coordinator.connect(bob, to: alice, now: ms(60_000), random: &random).map(\.round) == [4, 4])
        #expect(coordinator.pairCount == 1)
    }

    @Test func laterRoundsAlternateWhoWaits() {
        var coordinator = PunchCoordinator()
        var random = SplitMix64(seed: 3)
        var delays: [[ClientID: Duration]] = []
        for round in 0..<5 {
            let requester = round % 2 == 0 ? bob : alice
            let peer = requester == bob ? alice : bob
            let instructions = coordinator.connect(requester, to: peer, now: ms(Int64(round) * 2_000), random: &random)
            #expect(instructions.map(\.round) == [UInt32(round + 1), UInt32(round + 1)])
            delays.append(Dictionary(uniqueKeysWithValues: instructions.map { ($0.recipient, $0.delay) }))
        }
        let wait = Duration.milliseconds(800)
        #expect(delays == [
            [alice: .zero, bob: .zero], // round 1: both at once
            [alice: .zero, bob: wait],  // round 2: alice (first in sort order) leads
            [alice: wait, bob: .zero],  // round 3: bob leads
            [alice: .zero, bob: wait],
            [alice: wait, bob: .zero],
        ])
    }

    @Test func configurableWindowAndDelay() {
        var configuration = PunchCoordinator.Configuration()
        configuration.sameRoundWindow = .seconds(10)
        configuration.secondMoverDelay = .milliseconds(250)
        var coordinator = PunchCoordinator(configuration: configuration)
        var random = SplitMix64(seed: 4)
        _ = coordinator.connect(alice, to: bob, now: ms(0), random: &random)
        #expect(coordinator.connect(alice, to: bob, now: ms(9_999), random: &random).map(\.round) == [1, 1])
        let second = coordinator.connect(alice, to: bob, now: ms(10_000), random: &random)
        #expect(second.map(\.round) == [2, 2])
        #expect(second.map(\.delay) == [.zero, .milliseconds(250)])
    }

    @Test func pairsAreIndependent() {
        var coordinator = PunchCoordinator()
        var random = SplitMix64(seed: 5)
        let ab = coordinator.connect(alice, to: bob, now: ms(0), random: &random)
        let ac = coordinator.connect(alice, to: carol, now: ms(0), random: &random)
        #expect(ab[0].pairToken != ac[0].pairToken)
        #expect(ac.map(\.round) == [1, 1])
        #expect(coordinator.connect(carol, to: alice, now: ms(5_000), random: &random).map(\.round) == [2, 2])
        #expect(coordinator.connect(bob, to: alice, now: ms(5_000), random: &random).map(\.round) == [2, 2])
        #expect(coordinator.pairCount == 2)
    }

    @Test func forgetDropsEveryPairOfTheClient() {
        var coordinator = PunchCoordinator()
        var random = SplitMix64(seed: 6)
        let ab = coordinator.connect(alice, to: bob, now: ms(0), random: &random)
        _ = coordinator.connect(alice, to: carol, now: ms(0), random: &random)
        let bc = coordinator.connect(bob, to: carol, now: ms(0), random: &random)
        _ = coordinator.connect(alice, to: bob, now: ms(3_000), random: &random) // round 2
        #expect(coordinator.pairCount == 3)
        coordinator.forget(alice)
        #expect(coordinator.pairCount == 1)
        // alice comes back: a fresh pair, round 1, a new token.
        let fresh = coordinator.connect(alice, to: bob, now: ms(3_500), random: &random)
        #expect(fresh.map(\.round) == [1, 1])
        #expect(fresh[0].pairToken != ab[0].pairToken)
        // bob–carol kept its state.
        let kept = coordinator.connect(carol, to: bob, now: ms(3_500), random: &random)
        #expect(kept[0].pairToken == bc[0].pairToken)
        #expect(kept.map(\.round) == [2, 2])
        coordinator.forget(id("nobody"))
        #expect(coordinator.pairCount == 2)
    }

    @Test func leastRecentlyUsedPairForgottenBeyondTheLimit() {
        var configuration = PunchCoordinator.Configuration()
        configuration.maxPairs = 2
        var coordinator = PunchCoordinator(configuration: configuration)
        var random = SplitMix64(seed: 7)
        let ab = coordinator.connect(alice, to: bob, now: ms(0), random: &random)
        let ac = coordinator.connect(alice, to: carol, now: ms(1_000), random: &random)
        _ = coordinator.connect(bob, to: carol, now: ms(2_000), random: &random)
        #expect(coordinator.pairCount == 2)
        // alice–bob was the oldest: forgotten (new token, round 1); alice–carol kept.
        let acAgain = coordinator.connect(alice, to: carol, now: ms(2_500), random: &random)
        #expect(acAgain[0].pairToken == ac[0].pairToken)
        let abAgain = coordinator.connect(alice, to: bob, now: ms(2_600), random: &random)
        #expect(abAgain[0].pairToken != ab[0].pairToken)
        #expect(abAgain.map(\.round) == [1, 1])
    }
}
