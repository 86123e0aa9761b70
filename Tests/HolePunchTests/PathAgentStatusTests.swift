import Addressing
import Testing
import HolePunch
import MonotonicTime
import Wire

// What `@status` reads from a path agent: why a peer is relayed, and the round trip on the
// direct path (from the pongs answering the agent's own checks), driven by hand with a fake clock.

private func id(_ text: String) -> ClientID { try! ClientID(text) }
private func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }
private func ms(_ milliseconds: Int64) -> Instant { Instant(nanoseconds: milliseconds * 1_000_000) }

private let alice = id("alice"), bob = id("bob")
private let bobPublic = ep("198.51.100.9:50001"), bobPrivate = ep("10.0.0.6:10081")

private func bobInfo(_ kind: NATKind, privateEndpoints: [Endpoint] = []) -> PeerInfo {
    PeerInfo(id: bob, publicEndpoint: bobPublic, privateEndpoints: privateEndpoints, natKind: kind, dialect: .extended)
}

/// The pings in `outputs` to `destination`, by transaction.
private func pings(_ outputs: [PathAgent.Output], to destination: Endpoint) -> [UInt64] {
    outputs.compactMap {
        if case .transmit(.ping(let transaction), destination) = $0 { transaction } else { nil }
    }
}

@Suite("PathAgent status: relay reasons and round trips")
struct PathAgentStatusTests {
    @Test func relayReasonFollowsTheRounds() {
        var configuration = PathAgent.Configuration()
        configuration.retryCooldowns = [.seconds(5)]
        configuration.interestWindow = .seconds(10)
        var agent = PathAgent(selfID: alice, peerID: bob, transactionSeed: 7, configuration: configuration)
        #expect(agent.relayReason == .notTriedYet)
        _ = agent.noteInterest(now: ms(0))
        #expect(agent.relayReason == .punchingInProgress)
        _ = agent.handlePunch(peer: bobInfo(.endpointIndependent), round: 1, delay: .zero, selfNATKind: .endpointIndependent,
                              now: ms(0))
        #expect(agent.relayReason == .punchingInProgress)
        // Nobody answers: the round fails at 6 s, and the peer waits out a cool-down.
        var outputs: [PathAgent.Output] = []
        while let deadline = agent.nextDeadline, deadline <= ms(6_000) { outputs += agent.handleTimeout(now: deadline) }
        #expect(outputs.contains(.roundFailed(round: 1)))
        #expect(agent.path == .relayed)
        #expect(agent.relayReason == .noAnswerFromCandidates)
        #expect(agent.relayReason?.description == "no answer from peer's candidates")
        // The cool-down ends with the interest stale: idle, still for want of an answer.
        _ = agent.handleTimeout(now: ms(11_000))
        #expect(agent.nextDeadline == nil)
        #expect(agent.relayReason == .noAnswerFromCandidates)
        #expect(agent.roundTrip == nil)
    }

    @Test func symmetricOnBothSidesIsSaidSo() {
        var agent = PathAgent(selfID: alice, peerID: bob, transactionSeed: 7)
        _ = agent.handlePunch(peer: bobInfo(.endpointDependent), round: 1, delay: .zero, selfNATKind: .endpointDependent, now: ms(0))
        #expect(agent.path == .relayed)
        #expect(agent.relayReason == .hopeless(ours: .endpointDependent, peers: .endpointDependent))
        #expect(agent.relayReason?.description == "symmetric NAT on both sides")
        // One side symmetric, the other a cone: port probing while an attempt runs; without
        // port probing, hopeless, and worded for which side.
        var probing = PathAgent(selfID: alice, peerID: bob, transactionSeed: 7)
        _ = probing.handlePunch(peer: bobInfo(.endpointIndependent), round: 1, delay: .zero, selfNATKind: .endpointDependent, now: ms(0))
        #expect(probing.relayReason == .probingPorts)
        #expect(probing.relayReason?.description == "probing ports")
        var configuration = PathAgent.Configuration()
        configuration.portProbing = false
        var other = PathAgent(selfID: alice, peerID: bob, transactionSeed: 7, configuration: configuration)
        _ = other.handlePunch(peer: bobInfo(.endpointIndependent), round: 1, delay: .zero, selfNATKind: .endpointDependent, now: ms(0))
        #expect(other.relayReason?.description == "symmetric NAT on our side, endpoint-independent mapping (cone) on the peer's")
    }

    @Test func hopelessPairWithAnAnsweringPrivateCandidateGoesPrivate() {
        var agent = PathAgent(selfID: alice, peerID: bob, transactionSeed: 7)
        let first = agent.handlePunch(peer: bobInfo(.endpointDependent, privateEndpoints: [bobPrivate]), round: 1, delay: .zero,
                                      selfNATKind: .endpointDependent, now: ms(0))
        let sent = pings(first, to: bobPrivate)
        #expect(sent.count == 1)
        let followUp = agent.handlePong(transaction: sent[0], from: bobPrivate, now: ms(2))
        let second = pings(followUp, to: bobPrivate)
        #expect(second.count == 1)
        _ = agent.handlePong(transaction: second[0], from: bobPrivate, now: ms(3))
        #expect(agent.path == .direct(bobPrivate, .privateEndpoint))
        #expect(agent.relayReason == nil)
        #expect(agent.roundTrip?.smoothed == .milliseconds(1))
    }

    /// The selecting pong's round trip starts the estimate; consent checks' pongs smooth it
    /// (RFC 6298: 7/8 of the old, 1/8 of the sample); losing the path forgets it.
    @Test func roundTripComesFromTheChecksOnThePath() {
        var agent = PathAgent(selfID: alice, peerID: bob, transactionSeed: 7)
        let first = agent.handlePunch(peer: bobInfo(.endpointIndependent), round: 1, delay: .zero,
                                      selfNATKind: .endpointIndependent, now: ms(0))
        let sent = pings(first, to: bobPublic)
        #expect(sent.count == 1)
        // A pong to a transaction never sent does nothing (no sample either).
        #expect(agent.handlePong(transaction: 999, from: bobPublic, now: ms(5)) == [])
        let followUp = pings(agent.handlePong(transaction: sent[0], from: bobPublic, now: ms(12)), to: bobPublic)
        #expect(agent.roundTrip == nil, "not a path yet after one answer")
        #expect(followUp.count == 1)
        _ = agent.handlePong(transaction: followUp[0], from: bobPublic, now: ms(20))
        #expect(agent.path == .direct(bobPublic, .publicEndpoint))
        #expect(agent.roundTrip?.smoothed == .milliseconds(8))
        #expect(agent.roundTrip?.samples == 1)
        // The consent check at 5.02 s, answered 16 ms later.
        let check = pings(agent.handleTimeout(now: ms(5_020)), to: bobPublic)
        #expect(check.count == 1)
        _ = agent.handlePong(transaction: check[0], from: bobPublic, now: ms(5_036))
        #expect(agent.roundTrip?.smoothed == .milliseconds(9))
        #expect(agent.roundTrip?.latest == .milliseconds(16))
        #expect(agent.roundTrip?.samples == 2)
        // The peer left: no path, no round trip.
        _ = agent.reset()
        #expect(agent.roundTrip == nil)
        #expect(agent.relayReason == .notTriedYet)
    }
}
