import Addressing
import Testing
import HolePunch
import MonotonicTime
import Wire

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
        let instructions = coordinator.connect(bob, to: alice, now: ms(0))
        #expect(instructions.count == 2)
        #expect(instructions.map(\.recipient) == [bob, alice])
        #expect(instructions.map(\.peer) == [alice, bob])
        #expect(instructions.map(\.round) == [1, 1])
        #expect(instructions.map(\.delay) == [.zero, .zero])
        #expect(coordinator.pairCount == 1)
    }

    @Test func roundsAdvanceOnlyAfterTheWindow() {
        var coordinator = PunchCoordinator()
        _ = coordinator.connect(alice, to: bob, now: ms(0))
        // Within the 2 s window (either side asking): the same round.
        let again = coordinator.connect(bob, to: alice, now: ms(1_999))
        #expect(again.map(\.round) == [1, 1])
        #expect(again.map(\.recipient) == [bob, alice])
        // A request inside the window does not extend it.
        let second = coordinator.connect(alice, to: bob, now: ms(2_000))
        #expect(second.map(\.round) == [2, 2])
        #expect(coordinator.connect(alice, to: bob, now: ms(3_999)).map(\.round) == [2, 2])
        #expect(coordinator.connect(alice, to: bob, now: ms(4_000)).map(\.round) == [3, 3])
        #expect(coordinator.connect(bob, to: alice, now: ms(60_000)).map(\.round) == [4, 4])
        #expect(coordinator.pairCount == 1)
    }

    @Test func laterRoundsAlternateWhoWaits() {
        var coordinator = PunchCoordinator()
        var delays: [[ClientID: Duration]] = []
        for round in 0..<5 {
            let requester = round % 2 == 0 ? bob : alice
            let peer = requester == bob ? alice : bob
            let instructions = coordinator.connect(requester, to: peer, now: ms(Int64(round) * 2_000))
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
        _ = coordinator.connect(alice, to: bob, now: ms(0))
        #expect(coordinator.connect(alice, to: bob, now: ms(9_999)).map(\.round) == [1, 1])
        let second = coordinator.connect(alice, to: bob, now: ms(10_000))
        #expect(second.map(\.round) == [2, 2])
        #expect(second.map(\.delay) == [.zero, .milliseconds(250)])
    }

    @Test func pairsAreIndependent() {
        var coordinator = PunchCoordinator()
        _ = coordinator.connect(alice, to: bob, now: ms(0))
        let ac = coordinator.connect(alice, to: carol, now: ms(0))
        #expect(ac.map(\.round) == [1, 1])
        #expect(coordinator.connect(carol, to: alice, now: ms(5_000)).map(\.round) == [2, 2])
        #expect(coordinator.connect(bob, to: alice, now: ms(5_000)).map(\.round) == [2, 2])
        #expect(coordinator.pairCount == 2)
    }

    @Test func forgetDropsEveryPairOfTheClient() {
        var coordinator = PunchCoordinator()
        _ = coordinator.connect(alice, to: bob, now: ms(0))
        _ = coordinator.connect(alice, to: carol, now: ms(0))
        _ = coordinator.connect(bob, to: carol, now: ms(0))
        _ = coordinator.connect(alice, to: bob, now: ms(3_000)) // round 2
        #expect(coordinator.pairCount == 3)
        coordinator.forget(alice)
        #expect(coordinator.pairCount == 1)
        // alice comes back: a fresh pair, round 1.
        let fresh = coordinator.connect(alice, to: bob, now: ms(3_500))
        #expect(fresh.map(\.round) == [1, 1])
        // bob–carol kept its state.
        let kept = coordinator.connect(carol, to: bob, now: ms(3_500))
        #expect(kept.map(\.round) == [2, 2])
        coordinator.forget(id("nobody"))
        #expect(coordinator.pairCount == 2)
    }

    @Test func leastRecentlyUsedPairForgottenBeyondTheLimit() {
        var configuration = PunchCoordinator.Configuration()
        configuration.maxPairs = 2
        var coordinator = PunchCoordinator(configuration: configuration)
        _ = coordinator.connect(alice, to: bob, now: ms(0))
        _ = coordinator.connect(alice, to: carol, now: ms(1_000))
        _ = coordinator.connect(bob, to: carol, now: ms(2_000))
        #expect(coordinator.pairCount == 2)
        // alice–bob was the oldest: forgotten (round 1 again); alice–carol kept (round 2).
        let acAgain = coordinator.connect(alice, to: carol, now: ms(3_000))
        #expect(acAgain.map(\.round) == [2, 2])
        let abAgain = coordinator.connect(alice, to: bob, now: ms(3_100))
        #expect(abAgain.map(\.round) == [1, 1])
    }
}
