import Addressing
import Testing
@testable import HolePunch
import MonotonicTime
import Wire

private func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }
private func ms(_ milliseconds: Int64) -> Instant { Instant(nanoseconds: milliseconds * 1_000_000) }

private let easyPublic = ep("198.51.100.9:10081")
private let hardPublic = ep("203.0.113.7:40001")

private extension Array where Element == PortProbe.Output {
    var checks: [(socket: Int?, to: Endpoint)] {
        compactMap { if case .check(let socket, let to) = $0 { (socket, to) } else { nil } }
    }
}

/// Runs `probe`'s timers from `start` until `end` (or until it has no deadline), collecting
/// the checks with their times.
private func drive(_ probe: inout PortProbe, until end: Instant) -> [(at: Instant, socket: Int?, to: Endpoint)] {
    var checks: [(at: Instant, socket: Int?, to: Endpoint)] = []
    var steps = 0
    while let deadline = probe.nextDeadline, deadline <= end, steps < 100_000 {
        steps += 1
        for check in probe.handleTimeout(now: deadline).checks { checks.append((deadline, check.socket, check.to)) }
    }
    return checks
}

@Suite struct PortProbeTests {
    @Test func easySideProbesRandomPortsOfTheHardAddressAtABoundedRateWithoutRepeats() {
        var probe = PortProbe(seed: 7)
        let first = probe.start(role: .easy, peerPublic: hardPublic, start: ms(0), now: ms(0))
        #expect(first.checks.isEmpty, "the first probe waits for the hard side's first sweep")
        #expect(probe.nextDeadline == ms(1300))
        let checks = drive(&probe, until: ms(60_000))
        let configuration = PortProbe.Configuration()
        #expect(checks.count == configuration.maxProbes)
        #expect(probe.probesSent == configuration.maxProbes)
        #expect(checks.allSatisfy { $0.socket == nil && $0.to.address == hardPublic.address })
        let ports = checks.map(\.to.port)
        #expect(Set(ports).count == ports.count, "no port twice in an attempt")
        #expect(ports.allSatisfy { $0 >= 1024 })
        // The rate: never two probes closer than 10 ms, and so at most 100 in any second.
        for (a, b) in zip(checks, checks.dropFirst()) { #expect(b.at - a.at >= .milliseconds(10)) }
        for start in stride(from: 1300, to: 20_000, by: 1000) {
            let inSecond = checks.filter { $0.at >= ms(Int64(start)) && $0.at < ms(Int64(start) + 1000) }.count
            #expect(inSecond <= 100)
        }
        // Spent: no more deadlines (the agent's round deadline ends the attempt).
        #expect(probe.nextDeadline == nil)
        #expect(checks.last.map { $0.at <= ms(1300 + 2048 * 10) } == true)
    }

    @Test func aLateTimerSendsOneProbeNotABurst() {
        var probe = PortProbe(seed: 1)
        _ = probe.start(role: .easy, peerPublic: hardPublic, start: ms(0), now: ms(0))
        #expect(probe.handleTimeout(now: ms(5_000)).checks.count == 1)
        #expect(probe.nextDeadline == ms(5_010))
    }

    @Test func hardSideOpensItsSocketsAndSweepsThemPacedAndAgainBeforeTheNATForgets() {
        var configuration = PortProbe.Configuration()
        configuration.socketCount = 16
        var probe = PortProbe(configuration: configuration, seed: 3)
        let started = probe.start(role: .hard, peerPublic: easyPublic, start: ms(0), now: ms(0))
        #expect(started.contains(.openSockets(count: 16)))
        #expect(started.contains(.report(.openedSockets(16, towards: easyPublic))))
        var checks = started.checks.map { (at: ms(0), socket: $0.socket, to: $0.to) }
        checks += drive(&probe, until: ms(25_000))
        #expect(checks.allSatisfy { $0.to == easyPublic })
        let firstSweep = checks.filter { $0.at < ms(1_000) }
        #expect(firstSweep.map(\.socket) == (0..<16).map { $0 }, "each socket once, in order")
        for (a, b) in zip(firstSweep, firstSweep.dropFirst()) { #expect(b.at - a.at == .milliseconds(5)) }
        let secondSweep = checks.filter { $0.at >= ms(1_000) }
        #expect(secondSweep.count == 16)
        #expect(secondSweep.first.map { $0.at == ms(20_000) } == true, "refreshed before Linux's 30 s UDP timeout")
    }

    @Test func theWinnerKeepsItsSocketAndEveryOtherCloses() {
        var configuration = PortProbe.Configuration()
        configuration.socketCount = 8
        var probe = PortProbe(configuration: configuration, seed: 3)
        _ = probe.start(role: .hard, peerPublic: easyPublic, start: ms(0), now: ms(0))
        _ = drive(&probe, until: ms(3_000))
        let answered = probe.answered(socket: 5, now: ms(4_400))
        #expect(answered.contains(.closeSockets(keeping: 5)))
        #expect(answered.contains(.report(.answered(probes: 8, after: .milliseconds(4_400), socket: 5))))
        #expect(probe.nextDeadline == nil)
        #expect(!probe.isActive)
        // The path is later lost: the last socket closes too.
        #expect(probe.stop() == [.closeSockets(keeping: nil)])
        #expect(probe.stop() == [])
    }

    @Test func failedAttemptsBackOffAndCloseTheSockets() {
        var configuration = PortProbe.Configuration()
        configuration.socketCount = 4
        var probe = PortProbe(configuration: configuration, seed: 3)
        var waits: [Duration] = []
        for attempt in 0..<5 {
            let now = ms(Int64(attempt) * 1_000_000)
            let started = probe.start(role: .hard, peerPublic: easyPublic, start: now, now: now)
            #expect(started.contains(.openSockets(count: 4)))
            let (wait, outputs) = probe.fail(now: now + .seconds(25))
            #expect(outputs.contains(.closeSockets(keeping: nil)))
            #expect(outputs.contains { if case .report(.gaveUp) = $0 { true } else { false } })
            waits.append(wait)
        }
        #expect(waits == [.seconds(60), .seconds(120), .seconds(300), .seconds(300), .seconds(300)])
        // A success resets the back-off.
        _ = probe.start(role: .easy, peerPublic: hardPublic, start: ms(0), now: ms(0))
        _ = probe.answered(socket: nil, now: ms(2_000))
        #expect(probe.fail(now: ms(3_000)).wait == .seconds(60))
    }

    @Test func reportsReadAsTheLogSaysThem() {
        #expect("\(PortProbe.Report.openedSockets(256, towards: easyPublic))" == "256 sockets towards 198.51.100.9:10081")
        #expect("\(PortProbe.Report.answered(probes: 431, after: .milliseconds(4_400), socket: nil))"
                == "answered after 431 probes in 4.4 s")
        #expect("\(PortProbe.Report.gaveUp(probes: 2048, nextAttemptIn: .seconds(60)))"
                == "no answer after 2048 probes; next attempt in 60 s")
    }

    @Test func rolesFollowTheNATKinds() {
        #expect(PunchFeasibility.portProbeRole(ours: .endpointDependent, peers: .endpointIndependent) == .hard)
        #expect(PunchFeasibility.portProbeRole(ours: .endpointIndependent, peers: .endpointDependent) == .easy)
        for (a, b) in [(NATKind.endpointDependent, NATKind.endpointDependent), (.endpointIndependent, .endpointIndependent),
                       (.none, .endpointDependent), (.unknown, .endpointDependent), (.endpointDependent, .unknown),
                       (.endpointDependent, .none)] {
            #expect(PunchFeasibility.portProbeRole(ours: a, peers: b) == nil, "\(a) / \(b)")
        }
        // A cone that remaps after unsolicited inbound is still the easy side.
        #expect(PunchFeasibility.portProbeRole(ours: .endpointDependent, peers: .endpointIndependentRemappedByInbound) == .hard)
        #expect(PunchFeasibility.portProbeRole(ours: .endpointIndependentRemappedByInbound, peers: .endpointDependent) == .easy)
    }

    /// When the easy side's router remaps after unsolicited inbound, it probes first and the
    /// hard side's sweep waits until 1 024 ports have been probed.
    @Test func aRemappingEasySideProbesFirst() {
        let configuration = PortProbe.Configuration()
        var easy = PortProbe(seed: 7)
        let first = easy.start(role: .easy, peerPublic: hardPublic, start: ms(0), easyRemaps: true, now: ms(0))
        #expect(first.checks.count == 1, "the first probe goes at once")
        var hard = PortProbe(seed: 8)
        let opened = hard.start(role: .hard, peerPublic: easyPublic, start: ms(0), easyRemaps: true, now: ms(0))
        #expect(opened.contains(.openSockets(count: configuration.socketCount)))
        #expect(opened.checks.isEmpty)
        #expect(hard.nextDeadline == ms(10_240))
        let sweep = drive(&hard, until: ms(12_000))
        #expect(sweep.first?.at == ms(10_240))
        #expect(sweep.count == configuration.socketCount)
        // By then the easy side has probed 1 024 ports.
        let probes = drive(&easy, until: ms(10_230))
        #expect(probes.count + 1 == 1_024)
    }
}

// MARK: - The path agent driving it

private let alice = try! ClientID("alice"), bob = try! ClientID("bob")

private func info(_ kind: NATKind, endpoint: Endpoint) -> PeerInfo {
    PeerInfo(id: bob, publicEndpoint: endpoint, privateEndpoints: [], natKind: kind, dialect: .extended)
}

private extension Array where Element == PathAgent.Output {
    var pings: [(transaction: UInt64, socket: Int?, to: Endpoint)] {
        compactMap {
            switch $0 {
            case .transmit(.ping(let transaction), let to): (transaction, nil, to)
            case .transmitFromProbeSocket(let socket, .ping(let transaction), let to): (transaction, socket, to)
            default: nil
            }
        }
    }
    var pathChanges: [PathAgent.Path] { compactMap { if case .pathChanged(let path) = $0 { path } else { nil } } }
}

@Suite struct PathAgentProbingTests {
    /// The easy side until it has sent `count` probes.
    private func easyAgent(probes count: Int) -> (PathAgent, [(transaction: UInt64, socket: Int?, to: Endpoint)], Instant) {
        var agent = PathAgent(selfID: alice, peerID: bob, transactionSeed: 100)
        var outputs = agent.handlePunch(peer: info(.endpointDependent, endpoint: hardPublic), round: 1, delay: .zero,
                                        selfNATKind: .endpointIndependent, now: ms(0))
        #expect(agent.relayReason == .probingPorts)
        var now = ms(0)
        while outputs.pings.count < count, let deadline = agent.nextDeadline {
            now = deadline
            outputs += agent.handleTimeout(now: deadline)
        }
        return (agent, outputs.pings, now)
    }

    @Test func easySideSelectsTheHardSidesPortAfterTwoAnswersFromIt() {
        var (agent, pings, now) = easyAgent(probes: 50)
        #expect(pings.count == 50)
        let hit = pings[37]
        var outputs = agent.handlePong(transaction: hit.transaction, from: hit.to, now: now + .milliseconds(3))
        #expect(outputs.pathChanges.isEmpty, "one answer is not enough")
        let followUp = try! #require(outputs.pings.first)
        #expect(followUp.to == hit.to && followUp.socket == nil)
        outputs = agent.handlePong(transaction: followUp.transaction, from: hit.to, now: now + .milliseconds(6))
        #expect(outputs.pathChanges == [.direct(hit.to, .probed)])
        #expect("\(agent.path)" == "direct (probed) \(hit.to)")
        #expect(outputs.contains { if case .probeReport(.answered(probes: 50, _, nil)) = $0 { true } else { false } })
        #expect(agent.relayReason == nil)
        // No more probes once selected; consent checks go to the probed port.
        let later = agent.handleTimeout(now: now + .seconds(5) + .milliseconds(6))
        #expect(later.pings.map(\.to) == [hit.to])
    }

    @Test func aPongFromAnotherEndpointOrAnUnknownTransactionNeverSelects() {
        var (agent, pings, now) = easyAgent(probes: 300)
        // Every probe "answered" from the wrong port of the right address, and from the
        // right port of another address, twice each: nothing is selected.
        for ping in pings {
            let wrongPort = Endpoint(address: ping.to.address, port: ping.to.port == 65535 ? 1024 : ping.to.port + 1)
            let wrongHost = Endpoint(address: try! IPv4Address(parsing: "203.0.113.66"), port: ping.to.port)
            for source in [wrongPort, wrongHost, wrongPort, wrongHost] {
                let outputs = agent.handlePong(transaction: ping.transaction, from: source, now: now)
                #expect(outputs.pathChanges.isEmpty)
                #expect(outputs.pings.isEmpty, "no follow-up check for a pong that answers nothing")
            }
        }
        // Transactions never sent, from the probed endpoints.
        for (offset, ping) in pings.enumerated() {
            let outputs = agent.handlePong(transaction: ping.transaction &+ 1_000_000 &+ UInt64(offset), from: ping.to, now: now)
            #expect(outputs.pathChanges.isEmpty && outputs.pings.isEmpty)
        }
        // The probes' own transactions were consumed by the wrong answers: the right
        // endpoint's late replay of them selects nothing either.
        for ping in pings.prefix(10) {
            #expect(agent.handlePong(transaction: ping.transaction, from: ping.to, now: now).pathChanges.isEmpty)
        }
        #expect(agent.directEndpoint == nil)
    }

    @Test func hardSideTakesThePathOnTheSocketThatWasAnsweredAndClosesTheRest() {
        var configuration = PathAgent.Configuration()
        configuration.portProbe.socketCount = 32
        var agent = PathAgent(selfID: alice, peerID: bob, transactionSeed: 5, configuration: configuration)
        var outputs = agent.handlePunch(peer: info(.endpointIndependent, endpoint: easyPublic), round: 1, delay: .zero,
                                        selfNATKind: .endpointDependent, now: ms(0))
        #expect(outputs.contains(.openProbeSockets(count: 32)))
        while let deadline = agent.nextDeadline, deadline < ms(500) { outputs += agent.handleTimeout(now: deadline) }
        #expect(Set(outputs.pings.compactMap(\.socket)) == Set(0..<32))
        // The easy side's probe reaches socket 11: answered there, and checked back there.
        outputs = agent.handlePing(transaction: 9_000, from: easyPublic, socket: 11, now: ms(600))
        #expect(outputs.contains(.transmitFromProbeSocket(11, .pong(transaction: 9_000, observed: easyPublic), to: easyPublic)))
        let check = try! #require(outputs.pings.first)
        #expect(check.socket == 11 && check.to == easyPublic)
        // Its pong arriving on another socket (or the chat socket) counts for nothing.
        #expect(agent.handlePong(transaction: check.transaction, from: easyPublic, socket: 12, now: ms(601)).pings.isEmpty)
        outputs = agent.handlePing(transaction: 9_001, from: easyPublic, socket: 11, now: ms(700))
        let retry = try! #require(outputs.pings.first)
        #expect(agent.handlePong(transaction: retry.transaction, from: easyPublic, socket: nil, now: ms(701)).pings.isEmpty)
        outputs = agent.handlePing(transaction: 9_002, from: easyPublic, socket: 11, now: ms(800))
        let third = try! #require(outputs.pings.first)
        outputs = agent.handlePong(transaction: third.transaction, from: easyPublic, socket: 11, now: ms(801))
        let followUp = try! #require(outputs.pings.first)
        #expect(followUp.socket == 11)
        outputs = agent.handlePong(transaction: followUp.transaction, from: easyPublic, socket: 11, now: ms(802))
        #expect(outputs.pathChanges == [.direct(easyPublic, .probed)])
        #expect(outputs.contains(.closeProbeSockets(keeping: 11)))
        #expect(agent.pathSocket == 11)
        // Consent checks leave from socket 11.
        let consent = agent.handleTimeout(now: ms(802) + .seconds(5))
        #expect(consent.pings.map(\.socket) == [11])
        // The path is lost: socket 11 closes too.
        var lost: [PathAgent.Output] = []
        var now = ms(802) + .seconds(5)
        while agent.directEndpoint != nil, let deadline = agent.nextDeadline, deadline < now + .seconds(60) {
            now = deadline
            lost += agent.handleTimeout(now: deadline)
        }
        #expect(lost.contains(.closeProbeSockets(keeping: nil)))
        #expect(agent.pathSocket == nil)
    }

    @Test func aFailedAttemptBacksOffAndSaysWhy() {
        var configuration = PathAgent.Configuration()
        configuration.portProbe.socketCount = 4
        var agent = PathAgent(selfID: alice, peerID: bob, transactionSeed: 5, configuration: configuration)
        _ = agent.noteInterest(now: ms(0))
        var outputs = agent.handlePunch(peer: info(.endpointIndependent, endpoint: easyPublic), round: 1, delay: .zero,
                                        selfNATKind: .endpointDependent, now: ms(0))
        while let deadline = agent.nextDeadline, deadline <= ms(25_000) { outputs += agent.handleTimeout(now: deadline) }
        #expect(outputs.contains(.closeProbeSockets(keeping: nil)))
        #expect(outputs.contains(.probeReport(.gaveUp(probes: 8, nextAttemptIn: .seconds(60)))))
        #expect(agent.relayReason == .portProbingFailed)
        #expect(agent.nextDeadline == ms(85_000))
    }

    @Test func symmetricOnBothSidesStaysRelayedAndSaysSo() {
        var agent = PathAgent(selfID: alice, peerID: bob, transactionSeed: 5)
        let outputs = agent.handlePunch(peer: info(.endpointDependent, endpoint: hardPublic), round: 1, delay: .zero,
                                        selfNATKind: .endpointDependent, now: ms(0))
        #expect(outputs.pings.isEmpty)
        #expect(!outputs.contains { if case .openProbeSockets = $0 { true } else { false } })
        #expect(agent.relayReason == .hopeless(ours: .endpointDependent, peers: .endpointDependent))
        #expect("\(agent.relayReason!)" == "symmetric NAT on both sides")
        #expect(agent.nextDeadline == nil)
    }
}

/// A peer's port mapping: a candidate of its own, and a side with one counts as no NAT.
@Suite struct PathAgentPortMappingTests {
    private let mapped = ep("203.0.113.7:10081")

    private func mappedPeer(_ kind: NATKind) -> PeerInfo {
        PeerInfo(id: bob, publicEndpoint: hardPublic, privateEndpoints: [], natKind: kind, dialect: .extended, mappedEndpoint: mapped)
    }

    @Test func aSymmetricPeerWithAMappingIsReachedAtItAndNotProbed() {
        var agent = PathAgent(selfID: alice, peerID: bob, transactionSeed: 100)
        // Both symmetric: hopeless without the mapping; with it, a plain round to the mapped endpoint.
        var outputs = agent.handlePunch(peer: mappedPeer(.endpointDependent), round: 1, delay: .zero,
                                        selfNATKind: .endpointDependent, now: ms(0))
        #expect(agent.relayReason == .punchingInProgress)
        #expect(!outputs.contains(where: { if case .openProbeSockets = $0 { true } else { false } }))
        let first = outputs.pings.filter { $0.to == mapped }
        #expect(first.count == 1)
        #expect(first.first?.socket == nil)
        outputs = agent.handlePong(transaction: first[0].transaction, from: mapped, now: ms(2))
        let followUp = outputs.pings.filter { $0.to == mapped }
        #expect(followUp.count == 1, "the follow-up check")
        outputs = agent.handlePong(transaction: followUp[0].transaction, from: mapped, now: ms(4))
        #expect(outputs.pathChanges == [.direct(mapped, .portMapped)])
        #expect("\(agent.path)" == "direct (port map) 203.0.113.7:10081")
    }

    @Test func ourOwnMappingMakesAHopelessPairPunchable() {
        var agent = PathAgent(selfID: alice, peerID: bob, transactionSeed: 100)
        let peer = PeerInfo(id: bob, publicEndpoint: hardPublic, natKind: .endpointDependent, dialect: .extended)
        _ = agent.handlePunch(peer: peer, round: 1, delay: .zero, selfNATKind: .endpointDependent, selfHasPortMapping: true, now: ms(0))
        #expect(agent.relayReason == .punchingInProgress)
        // Without it: symmetric on both sides.
        var plain = PathAgent(selfID: alice, peerID: bob, transactionSeed: 100)
        _ = plain.handlePunch(peer: peer, round: 1, delay: .zero, selfNATKind: .endpointDependent, now: ms(0))
        #expect(plain.relayReason == .hopeless(ours: .endpointDependent, peers: .endpointDependent))
    }

    @Test func theMappingRanksBetweenPrivateAndPublic() {
        typealias Kind = PathAgent.CandidateKind
        #expect(Kind.privateEndpoint > Kind.portMapped)
        #expect(Kind.portMapped > Kind.publicEndpoint)
        #expect(Kind.publicEndpoint > Kind.peerReflexive)
        #expect(Kind.peerReflexive > Kind.probed)
    }
}

/// A relay-only pair tries again when the peer gains a port mapping (within the interest window).
@Suite struct PathAgentLateMappingTests {
    @Test func aRelayOnlyPairAsksForARoundWhenThePeerGainsAMapping() {
        var agent = PathAgent(selfID: alice, peerID: bob, transactionSeed: 100)
        _ = agent.noteInterest(now: ms(0))
        let peer = PeerInfo(id: bob, publicEndpoint: hardPublic, natKind: .endpointDependent, dialect: .extended)
        _ = agent.handlePunch(peer: peer, round: 1, delay: .zero, selfNATKind: .endpointDependent, now: ms(10))
        #expect(agent.relayReason == .hopeless(ours: .endpointDependent, peers: .endpointDependent))
        #expect(agent.peerGainedPortMapping(now: ms(1_000)) == [.requestRound])
        #expect(agent.relayReason == .punchingInProgress)
        // The next punch carries the mapping: a plain round towards it.
        let mapped = ep("203.0.113.7:10081")
        var withMapping = peer
        withMapping.mappedEndpoint = mapped
        let outputs = agent.handlePunch(peer: withMapping, round: 2, delay: .zero, selfNATKind: .endpointDependent, now: ms(1_010))
        #expect(outputs.pings.contains { $0.to == mapped })
    }

    @Test func withoutRecentInterestNothingIsAsked() {
        var agent = PathAgent(selfID: alice, peerID: bob, transactionSeed: 100)
        _ = agent.noteInterest(now: ms(0))
        let peer = PeerInfo(id: bob, publicEndpoint: hardPublic, natKind: .endpointDependent, dialect: .extended)
        _ = agent.handlePunch(peer: peer, round: 1, delay: .zero, selfNATKind: .endpointDependent, now: ms(10))
        #expect(agent.peerGainedPortMapping(now: ms(200_000)).isEmpty)
        #expect(agent.relayReason == .hopeless(ours: .endpointDependent, peers: .endpointDependent))
    }
}
