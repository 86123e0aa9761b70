import Addressing
import Testing
import HolePunch
import MonotonicTime
import TestSupport
import Wire

private func id(_ text: String) -> ClientID { try! ClientID(text) }
private func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }
private func ip(_ text: String) -> IPv4Address { try! IPv4Address(parsing: text) }
/// Milliseconds since zero (fractions allowed: the check backoff grows by 3/2).
private func t(_ milliseconds: Double) -> Instant { Instant(nanoseconds: Int64((milliseconds * 1_000_000).rounded())) }

private let alice = id("alice"), bob = id("bob")
private let serverEndpoint = ep("198.51.100.1:10080")

/// A check an agent asked to send.
struct Transmit: Hashable {
    var check: PathAgent.Check
    var destination: Endpoint
}

extension Array where Element == PathAgent.Output {
    /// The checks to send, in order.
    var transmits: [Transmit] {
        compactMap { if case .transmit(let check, let destination) = $0 { Transmit(check: check, destination: destination) } else { nil } }
    }

    /// Path changes and failed rounds, in order.
    var events: [PathAgent.Output] {
        filter {
            switch $0 {
            case .pathChanged, .roundFailed: true
            case .transmit, .requestRound, .transmitFromProbeSocket, .openProbeSockets, .closeProbeSockets, .probeReport: false
            }
        }
    }

    /// How many punch rounds to ask the server for.
    var roundRequests: Int { filter { $0 == .requestRound }.count }
}

// MARK: - A simulated network

/// A NAT with endpoint-independent ("cone") or endpoint-dependent ("symmetric") mapping;
/// both filter by remote address and port (port-restricted): a datagram gets in only from
/// an endpoint the inside host has sent to from that mapping.
struct SimulatedNAT {
    enum Mapping { case endpointIndependent, endpointDependent }

    struct MappingKey: Hashable {
        var inside: Endpoint
        var destination: Endpoint?
    }

    struct Permission: Hashable {
        var port: UInt16
        var remote: Endpoint
    }

    let publicAddress: IPv4Address
    let mapping: Mapping
    var hairpin = false
    private var nextPort: UInt16 = 40_001
    private var mappings: [MappingKey: UInt16] = [:]
    private var insideOf: [UInt16: Endpoint] = [:]
    private var permissions: Set<Permission> = []

    init(publicAddress: IPv4Address, mapping: Mapping, hairpin: Bool = false, firstPort: UInt16 = 40_001) {
        self.publicAddress = publicAddress
        self.mapping = mapping
        self.hairpin = hairpin
        nextPort = firstPort
    }

    /// The public source of a datagram from `inside` to `destination` (creating the mapping).
    mutating func outbound(from inside: Endpoint, to destination: Endpoint) -> Endpoint {
        let key = MappingKey(inside: inside, destination: mapping == .endpointDependent ? destination : nil)
        let port: UInt16
        if let existing = mappings[key] {
            port = existing
        } else {
            port = nextPort
            nextPort += 1
            mappings[key] = port
            insideOf[port] = inside
        }
        permissions.insert(Permission(port: port, remote: destination))
        return Endpoint(address: publicAddress, port: port)
    }

    /// Where a datagram from `remote` to public `port` goes, or `nil` when filtered.
    func inbound(to port: UInt16, from remote: Endpoint) -> Endpoint? {
        guard let inside = insideOf[port], permissions.contains(Permission(port: port, remote: remote)) else { return nil }
        return inside
    }
}

/// Two hosts running a PathAgent each, optionally behind NATs, with the rendezvous server
/// outside. Delivery is instantaneous; `linkUp` cuts everything between the two hosts, and
/// `edgeLoss` drops datagrams at random on each host's edge (seeded by `random`).
struct SimulatedNetwork {
    struct Host {
        var agent: PathAgent
        let inside: Endpoint
        let nat: Int?
        let natKind: NATKind
        var observedByServer: Endpoint?
        /// Checks the agent returned that the network has not delivered yet, in order.
        var outbox: [Transmit] = []
        /// Path changes and failed rounds the agent returned, in order, not yet taken.
        var events: [PathAgent.Output] = []
        /// Round requests the agent returned, not yet taken.
        var roundRequests = 0
        /// Checks the agent asked to send from probe sockets, not delivered yet.
        var probeOutbox: [(Int, Transmit)] = []
        /// The probe sockets open: socket `i` is the host's address with port 50 000 + `i`.
        var probeSocketsOpen: Set<Int> = []
        /// Most probe sockets ever open at once.
        var mostProbeSockets = 0
    }

    struct Sent: Hashable {
        var from: Int
        var at: Instant
        var check: PathAgent.Check
        var destination: Endpoint
    }

    var nats: [SimulatedNAT]
    var hosts: [Host]
    var now = Instant.zero
    var linkUp = true
    /// The chance that a datagram is dropped on a host's edge (between the host and its
    /// NAT, as netem on the host's interface does). Every datagram between the hosts
    /// crosses two edges, the sender's and the receiver's.
    var edgeLoss = 0.0
    var random = SplitMix64(seed: 1)
    /// Answer connect requests with a punch to both hosts during ``run(until:)`` (the
    /// server's signalling is taken as reliable).
    var servesConnects = false
    var rounds: UInt32 = 0
    var sent: [Sent] = []
    var delivered: [Sent] = []

    init(nats: [SimulatedNAT], hosts: [(id: ClientID, inside: Endpoint, nat: Int?, kind: NATKind)],
         configuration: PathAgent.Configuration = .init()) {
        self.nats = nats
        self.hosts = []
        for (index, host) in hosts.enumerated() {
            let peer = hosts[1 - index].id
            self.hosts.append(Host(agent: PathAgent(selfID: host.id, peerID: peer, transactionSeed: UInt64(index + 1) * 1_000,
                                                    configuration: configuration),
                                   inside: host.inside, nat: host.nat, natKind: host.kind))
        }
        for index in self.hosts.indices { register(index) }
    }

    /// The host registers with the server: the server sees its mapping towards the server.
    mutating func register(_ index: Int) {
        let host = hosts[index]
        hosts[index].observedByServer = host.nat.map { nats[$0].outbound(from: host.inside, to: serverEndpoint) } ?? host.inside
    }

    /// What the server would tell `recipient` about `subject` (private endpoints only as a
    /// same-public-address hint).
    func info(of subject: Int, for recipient: Int, privateEndpoints: [Endpoint]? = nil) -> PeerInfo {
        let s = hosts[subject], r = hosts[recipient]
        let sameAddress = s.observedByServer!.address == r.observedByServer!.address
        return PeerInfo(id: s.agent.selfID, publicEndpoint: s.observedByServer!,
                        privateEndpoints: privateEndpoints ?? (sameAddress ? [s.inside] : []), natKind: s.natKind,
                        dialect: .extended, keys: nil)
    }

    /// Gives host `index`'s agent an input (called with the agent and the current time) and
    /// keeps what it returns: checks go to the host's outbox (``pump(limit:)`` delivers
    /// them), path changes and failed rounds to its events, round requests are counted.
    mutating func input(_ index: Int, _ body: (inout PathAgent, Instant) -> [PathAgent.Output]) {
        let now = self.now
        let outputs = body(&hosts[index].agent, now)
        for output in outputs {
            switch output {
            case .transmit(let check, let destination): hosts[index].outbox.append(Transmit(check: check, destination: destination))
            case .requestRound: hosts[index].roundRequests += 1
            case .pathChanged, .roundFailed: hosts[index].events.append(output)
            case .transmitFromProbeSocket(let socket, let check, let destination):
                hosts[index].probeOutbox.append((socket, Transmit(check: check, destination: destination)))
            case .openProbeSockets(let count):
                hosts[index].probeSocketsOpen.formUnion(0..<count)
                hosts[index].mostProbeSockets = max(hosts[index].mostProbeSockets, hosts[index].probeSocketsOpen.count)
            case .closeProbeSockets(let keeping):
                hosts[index].probeSocketsOpen = hosts[index].probeSocketsOpen.filter { $0 == keeping }
            case .probeReport: break
            }
        }
    }

    /// The server's punch message to both hosts.
    mutating func punch(round: UInt32 = 1, delays: (Duration, Duration) = (.zero, .zero)) {
        rounds = max(rounds, round)
        let infos = [info(of: 1, for: 0), info(of: 0, for: 1)]
        let kinds = (hosts[0].natKind, hosts[1].natKind)
        input(0) { $0.handlePunch(peer: infos[0], round: round, delay: delays.0, selfNATKind: kinds.0, now: $1) }
        input(1) { $0.handlePunch(peer: infos[1], round: round, delay: delays.1, selfNATKind: kinds.1, now: $1) }
        pump()
    }

    private func sameLAN(_ a: Int, _ b: Int) -> Bool {
        hosts[a].nat != nil && hosts[a].nat == hosts[b].nat
    }

    /// The inside endpoint of host `index`'s socket (`nil`: the chat socket).
    func inside(_ index: Int, socket: Int?) -> Endpoint {
        guard let socket else { return hosts[index].inside }
        return Endpoint(address: hosts[index].inside.address, port: UInt16(50_000 + socket))
    }

    mutating func deliver(from index: Int, socket: Int? = nil, check: PathAgent.Check, to destination: Endpoint) {
        let record = Sent(from: index, at: now, check: check, destination: destination)
        sent.append(record)
        if let socket, !hosts[index].probeSocketsOpen.contains(socket) {
            Issue.record("host \(index) sent from probe socket \(socket), which is not open")
            return
        }
        guard linkUp, !lostOnEdge() else { return }
        let target = 1 - index
        let from = inside(index, socket: socket)
        var source: Endpoint?
        var arrivedOn: Int?
        if sameLAN(index, target), destination == hosts[target].inside {
            source = from
        } else {
            let publicSource = hosts[index].nat.map { nats[$0].outbound(from: from, to: destination) } ?? from
            if let natIndex = hosts[target].nat {
                let nat = nats[natIndex]
                guard destination.address == nat.publicAddress else { return }
                if hosts[index].nat == natIndex, !nat.hairpin { return }
                guard let reached = nat.inbound(to: destination.port, from: publicSource) else { return }
                if reached == hosts[target].inside {
                    arrivedOn = nil
                } else if let open = hosts[target].probeSocketsOpen.first(where: { inside(target, socket: $0) == reached }) {
                    arrivedOn = open
                } else {
                    return   // a closed socket: the datagram goes nowhere
                }
                source = publicSource
            } else if destination == hosts[target].inside {
                source = publicSource
            }
        }
        guard let source, !lostOnEdge() else { return }
        delivered.append(record)
        switch check {
        case .ping(let transaction): input(target) { $0.handlePing(transaction: transaction, from: source, socket: arrivedOn, now: $1) }
        case .pong(let transaction, let observed):
            #expect(observed == destination, "a pong reports where the ping came from")
            input(target) { $0.handlePong(transaction: transaction, from: source, socket: arrivedOn, now: $1) }
        }
    }

    private mutating func lostOnEdge() -> Bool {
        edgeLoss > 0 && Double.random(in: 0..<1, using: &random) < edgeLoss
    }

    /// A host asked for a round: the server punches both (once for both requests).
    private mutating func serveConnects() {
        guard servesConnects else { return }
        var asked = false
        for index in hosts.indices where takeRoundRequests(index) > 0 { asked = true }
        if asked { punch(round: rounds + 1) }
    }

    /// Delivers every pending check until nothing moves; records an issue (and gives up)
    /// when the hosts keep each other busy for `limit` rounds.
    @discardableResult
    mutating func pump(limit: Int = 1_000) -> Bool {
        var moved = true
        var rounds = 0
        while moved {
            moved = false
            rounds += 1
            guard rounds <= limit else {
                Issue.record("checks never settle: \(sent.count) sent; last: \(sent.suffix(4).map { "\($0.from) \($0.check) → \($0.destination)" })")
                return false
            }
            for index in hosts.indices {
                while !hosts[index].outbox.isEmpty {
                    let transmit = hosts[index].outbox.removeFirst()
                    deliver(from: index, check: transmit.check, to: transmit.destination)
                    moved = true
                }
                while !hosts[index].probeOutbox.isEmpty {
                    let (socket, transmit) = hosts[index].probeOutbox.removeFirst()
                    deliver(from: index, socket: socket, check: transmit.check, to: transmit.destination)
                    moved = true
                }
            }
        }
        return true
    }

    /// Runs timers up to and including `end`.
    mutating func run(until end: Instant) {
        pump()
        serveConnects()
        var steps = 0
        while let next = hosts.compactMap(\.agent.nextDeadline).min(), next <= end {
            steps += 1
            guard steps < 100_000 else { Issue.record("timers do not settle"); return }
            now = max(now, next)
            for index in hosts.indices {
                if let deadline = hosts[index].agent.nextDeadline, deadline <= now {
                    input(index) { $0.handleTimeout(now: $1) }
                }
            }
            pump()
            serveConnects()
        }
        now = max(now, end)
    }

    /// Host `index`'s path changes and failed rounds since the last call.
    mutating func events(_ index: Int) -> [PathAgent.Output] {
        defer { hosts[index].events = [] }
        return hosts[index].events
    }

    /// How many rounds host `index` asked the server for since the last call (each input
    /// asks at most once).
    mutating func takeRoundRequests(_ index: Int) -> Int {
        defer { hosts[index].roundRequests = 0 }
        return hosts[index].roundRequests
    }

    /// Host `index`'s checks not delivered yet (for tests that deliver by hand).
    mutating func takeOutbox(_ index: Int) -> [Transmit] {
        defer { hosts[index].outbox = [] }
        return hosts[index].outbox
    }

    func pings(from index: Int, after start: Instant = .zero) -> [Sent] {
        sent.filter {
            guard $0.from == index, $0.at >= start, case .ping = $0.check else { return false }
            return true
        }
    }
}

// Addresses: NAT A 203.0.113.7, NAT B 198.51.100.9; a NAT-less host at 198.51.100.20.
private let natAddressA = ip("203.0.113.7"), natAddressB = ip("198.51.100.9")
private let aliceInside = ep("10.0.0.5:10081"), bobInside = ep("192.168.1.6:10081"), bobSameLAN = ep("10.0.0.6:10081")
private let publicHost = ep("198.51.100.20:10081")

@Suite("PathAgent over a simulated NAT")
struct PathAgentNATTests {
    @Test func coneToConeReachesThePublicEndpoints() {
        var net = SimulatedNetwork(
            nats: [SimulatedNAT(publicAddress: natAddressA, mapping: .endpointIndependent),
                   SimulatedNAT(publicAddress: natAddressB, mapping: .endpointIndependent, firstPort: 50_001)],
            hosts: [(alice, aliceInside, 0, .endpointIndependent), (bob, bobInside, 1, .endpointIndependent)])
        let publicA = net.hosts[0].observedByServer!, publicB = net.hosts[1].observedByServer!
        #expect(publicA == ep("203.0.113.7:40001"))
        #expect(publicB == ep("198.51.100.9:50001"))
        net.punch()
        #expect(net.hosts[0].agent.path == .direct(publicB, .publicEndpoint))
        #expect(net.hosts[1].agent.path == .direct(publicA, .publicEndpoint))
        #expect(net.events(0) == [.pathChanged(.relayed), .pathChanged(.direct(publicB, .publicEndpoint))])
        #expect(net.events(1) == [.pathChanged(.relayed), .pathChanged(.direct(publicA, .publicEndpoint))])
        // The first ping of the side that went first was filtered by the other NAT.
        #expect(net.delivered.count < net.sent.count)
        #expect(!net.hosts[0].agent.isPunching)
        #expect(net.hosts[0].agent.directEndpoint == publicB)
        // Connected: the next wake-up is the keep-alive.
        #expect(net.hosts[0].agent.nextDeadline == t(5_000))
        #expect(net.takeRoundRequests(0) == 0)
    }

    @Test func privateCandidatePreferredWhenItAnswers() {
        var net = SimulatedNetwork(
            nats: [SimulatedNAT(publicAddress: natAddressA, mapping: .endpointIndependent)],
            hosts: [(alice, aliceInside, 0, .endpointIndependent), (bob, bobSameLAN, 0, .endpointIndependent)])
        let publicB = net.hosts[1].observedByServer!
        #expect(publicB.address == natAddressA)
        #expect(net.info(of: 1, for: 0).privateEndpoints == [bobSameLAN])
        net.punch()
        net.run(until: t(1_000))
        #expect(net.hosts[0].agent.path == .direct(bobSameLAN, .privateEndpoint))
        #expect(net.hosts[1].agent.path == .direct(aliceInside, .privateEndpoint))
        // The public candidate was checked too (the NAT does not hairpin).
        #expect(net.pings(from: 0).contains { $0.destination == publicB })
        #expect(net.hosts[0].agent.path.description == "private 10.0.0.6:10081")
    }

    /// Same LAN behind a NAT that hairpins: both the private and the public path work.
    /// The private one must win, and the checks must stop once both sides are connected.
    /// Every ping that arrives from a source other than the chosen path makes the agent
    /// send a "triggered" ping back to that source, whose arrival on the other side
    /// (again not its chosen path) triggers another: an endless ping storm.
    /// A path needs two answered checks here, so each side follows up its first pong from
    /// each endpoint once, and no more.
    @Test func twoWorkingPathsSettleOnPrivateWithoutACheckStorm() {
        var net = SimulatedNetwork(
            nats: [SimulatedNAT(publicAddress: natAddressA, mapping: .endpointIndependent, hairpin: true)],
            hosts: [(alice, aliceInside, 0, .endpointIndependent), (bob, bobSameLAN, 0, .endpointIndependent)])
        let infos = [net.info(of: 1, for: 0), net.info(of: 0, for: 1)]
        net.input(0) { $0.handlePunch(peer: infos[0], round: 1, delay: .zero, selfNATKind: .endpointIndependent, now: $1) }
        net.input(1) { $0.handlePunch(peer: infos[1], round: 1, delay: .zero, selfNATKind: .endpointIndependent, now: $1) }
        let settled = net.pump(limit: 200)
        #expect(settled)
        // 13 before paths needed two answered checks; each side now also follows up the
        // first pong from each of the two working endpoints once (≤ 8 more datagrams).
        #expect(net.sent.count <= 24, "\(net.sent.count) checks sent at t=0")
        #expect(net.hosts[0].agent.path == .direct(bobSameLAN, .privateEndpoint))
        #expect(net.hosts[1].agent.path == .direct(aliceInside, .privateEndpoint))
    }

    @Test func symmetricToPublicHostViaPeerReflexive() {
        var net = SimulatedNetwork(
            nats: [SimulatedNAT(publicAddress: natAddressA, mapping: .endpointDependent)],
            hosts: [(alice, aliceInside, 0, .endpointDependent), (bob, publicHost, nil, .none)])
        let serverMapping = net.hosts[0].observedByServer!
        net.punch()
        net.run(until: t(1_000))
        // alice reaches bob's public endpoint; bob learns alice's per-destination mapping
        // from her ping (not the one the server saw) and verifies it.
        #expect(net.hosts[0].agent.path == .direct(publicHost, .publicEndpoint))
        guard case .direct(let reflexive, let kind) = net.hosts[1].agent.path else {
            Issue.record("bob has no direct path: \(net.hosts[1].agent.path)"); return
        }
        #expect(kind == .peerReflexive)
        #expect(reflexive.address == natAddressA)
        #expect(reflexive != serverMapping)
        // bob's checks towards the server-seen mapping never got through.
        let towardsServerMapping = net.sent.filter { $0.from == 1 && $0.destination == serverMapping }
        #expect(!towardsServerMapping.isEmpty)
        #expect(net.delivered.allSatisfy { !($0.from == 1 && $0.destination == serverMapping) })
    }

    @Test func symmetricToConeIsHopelessWithoutPortProbing() {
        var configuration = PathAgent.Configuration()
        configuration.portProbing = false
        var net = SimulatedNetwork(
            nats: [SimulatedNAT(publicAddress: natAddressA, mapping: .endpointDependent),
                   SimulatedNAT(publicAddress: natAddressB, mapping: .endpointIndependent)],
            hosts: [(alice, aliceInside, 0, .endpointDependent), (bob, bobInside, 1, .endpointIndependent)],
            configuration: configuration)
        net.punch()
        net.run(until: t(120_000))
        for index in 0..<2 {
            #expect(net.hosts[index].agent.path == .relayed)
            #expect(net.events(index) == [.pathChanged(.relayed)])
            #expect(net.hosts[index].agent.nextDeadline == nil)
            #expect(net.hosts[index].agent.isPunching == false)
            #expect(net.takeRoundRequests(index) == 0)
            net.input(index) { $0.noteInterest(now: $1) }
            #expect(net.takeRoundRequests(index) == 0)
        }
        #expect(net.sent.isEmpty)
    }

    @Test func hopelessPairChecksOnlyPrivateCandidates() {
        var configuration = PathAgent.Configuration()
        configuration.portProbing = false
        var agent = PathAgent(selfID: alice, peerID: bob, transactionSeed: 1, configuration: configuration)
        let peerPublic = ep("203.0.113.7:40002")
        let info = PeerInfo(id: bob, publicEndpoint: peerPublic, privateEndpoints: [bobSameLAN],
                            natKind: .endpointIndependent, dialect: .extended)
        var outputs = agent.handlePunch(peer: info, round: 1, delay: .zero, selfNATKind: .endpointDependent, now: t(0))
        var time = 0.0
        while let deadline = agent.nextDeadline {
            time = Double(deadline.nanoseconds) / 1e6
            outputs += agent.handleTimeout(now: deadline)
            guard time < 100_000 else { break }
        }
        let destinations = outputs.transmits.map(\.destination)
        #expect(!destinations.isEmpty)
        #expect(destinations.allSatisfy { $0 == bobSameLAN })
        #expect(time == 6_000)
        #expect(outputs.events == [.pathChanged(.relayed), .roundFailed(round: 1)])
        // Relay only: no cool-down, no new round.
        #expect(agent.nextDeadline == nil)
        #expect(outputs.roundRequests == 0)
    }

    @Test func keepAlivePingsEveryIntervalOnADirectPath() {
        var net = SimulatedNetwork(
            nats: [SimulatedNAT(publicAddress: natAddressA, mapping: .endpointIndependent),
                   SimulatedNAT(publicAddress: natAddressB, mapping: .endpointIndependent)],
            hosts: [(alice, aliceInside, 0, .endpointIndependent), (bob, bobInside, 1, .endpointIndependent)])
        let publicB = net.hosts[1].observedByServer!
        net.punch()
        _ = net.events(0)
        let connectedAt = net.sent.count
        net.run(until: t(21_000))
        let keepAlives = net.sent[connectedAt...].filter { $0.from == 0 }
        #expect(keepAlives.filter { if case .ping = $0.check { true } else { false } }.map(\.at)
                == [t(5_000), t(10_000), t(15_000), t(20_000)])
        #expect(keepAlives.allSatisfy { $0.destination == publicB })
        #expect(net.hosts[0].agent.path == .direct(publicB, .publicEndpoint))
        #expect(net.events(0) == [])
        #expect(net.hosts[0].agent.nextDeadline == t(25_000))
    }

    /// The keep-alive at 5 s is the last answer; the link dies after it. The next check (10 s)
    /// goes unanswered, so from 11.5 s the path is checked every 500 ms; it is lost at
    /// 20 s, the consent timeout after the last answer, and not a moment before.
    @Test func aDeadPathIsLostAtTheConsentTimeout() {
        var net = SimulatedNetwork(
            nats: [SimulatedNAT(publicAddress: natAddressA, mapping: .endpointIndependent),
                   SimulatedNAT(publicAddress: natAddressB, mapping: .endpointIndependent)],
            hosts: [(alice, aliceInside, 0, .endpointIndependent), (bob, bobInside, 1, .endpointIndependent)])
        net.punch()
        _ = net.events(0)
        net.run(until: t(5_000))
        #expect(net.pings(from: 0, after: t(1)).map(\.at) == [t(5_000)])
        net.linkUp = false
        net.run(until: t(19_999))
        #expect(net.pings(from: 0, after: t(5_001)).map(\.at)
                == [t(10_000)] + Array(stride(from: 11_500.0, through: 19_500, by: 500)).map(t))
        #expect(net.hosts[0].agent.path.directEndpoint != nil)
        #expect(net.events(0) == [])
        #expect(net.takeRoundRequests(0) == 0)
        #expect(net.hosts[0].agent.nextDeadline == t(20_000))
        net.run(until: t(20_000))
        #expect(net.hosts[0].agent.path == .relayed)
        #expect(net.events(0) == [.pathChanged(.relayed)])
        #expect(net.takeRoundRequests(0) == 1)
        #expect(net.takeRoundRequests(0) == 0)
    }

    /// Unacknowledged chat makes the agent check at once and then every 500 ms, but does
    /// not shorten the consent timeout: the path is lost 15 s after the last answer (0 s),
    /// as without the suspicion.
    @Test func suspectPathChecksAtOnceButKeepsTheBounds() {
        var net = SimulatedNetwork(
            nats: [SimulatedNAT(publicAddress: natAddressA, mapping: .endpointIndependent),
                   SimulatedNAT(publicAddress: natAddressB, mapping: .endpointIndependent)],
            hosts: [(alice, aliceInside, 0, .endpointIndependent), (bob, bobInside, 1, .endpointIndependent)])
        net.punch()
        _ = net.events(0)
        net.run(until: t(1_000))
        net.linkUp = false
        net.run(until: t(2_000))
        net.input(0) { $0.suspectPath(now: $1) }
        net.input(0) { $0.suspectPath(now: $1) } // once suspect, more suspicion changes nothing
        net.run(until: t(4_999))
        #expect(net.pings(from: 0, after: t(1_000)).map(\.at) == [2_000, 2_500, 3_000, 3_500, 4_000, 4_500].map(t))
        net.run(until: t(14_999))
        #expect(net.hosts[0].agent.path.directEndpoint != nil)
        #expect(net.events(0) == [])
        net.run(until: t(15_000))
        #expect(net.hosts[0].agent.path == .relayed)
        #expect(net.events(0) == [.pathChanged(.relayed)])
        #expect(net.takeRoundRequests(0) == 1)
    }

    @Test func answeredSuspicionKeepsThePath() {
        var net = SimulatedNetwork(
            nats: [SimulatedNAT(publicAddress: natAddressA, mapping: .endpointIndependent),
                   SimulatedNAT(publicAddress: natAddressB, mapping: .endpointIndependent)],
            hosts: [(alice, aliceInside, 0, .endpointIndependent), (bob, bobInside, 1, .endpointIndependent)])
        let publicB = net.hosts[1].observedByServer!
        net.punch()
        _ = net.events(0)
        net.run(until: t(2_000))
        net.input(0) { $0.suspectPath(now: $1) }
        net.pump()
        #expect(net.pings(from: 0, after: t(2_000)).map(\.at) == [t(2_000)])
        // The pong came back: the next keep-alive is one interval after the suspicion check.
        #expect(net.hosts[0].agent.nextDeadline == t(7_000))
        net.run(until: t(30_000))
        #expect(net.hosts[0].agent.path == .direct(publicB, .publicEndpoint))
        #expect(net.events(0) == [])
    }
}

@Suite("PathAgent rounds")
struct PathAgentRoundTests {
    private let peerPublic = ep("198.51.100.9:50001")
    private var info: PeerInfo {
        PeerInfo(id: bob, publicEndpoint: peerPublic, natKind: .endpointIndependent, dialect: .extended)
    }

    @Test func interestAsksForOneRound() {
        var agent = PathAgent(selfID: alice, peerID: bob, transactionSeed: 1)
        #expect(agent.path == .none)
        #expect(agent.nextDeadline == nil)
        #expect(agent.handleTimeout(now: t(0)) == []) // no request without interest
        // One request (and the relay until there is a path), however much interest follows.
        #expect(agent.noteInterest(now: t(0)) == [.requestRound, .pathChanged(.relayed)])
        #expect(agent.path == .relayed)
        #expect(agent.noteInterest(now: t(500)) == [])
        // No answer from the server: ask again after 3 s.
        #expect(agent.nextDeadline == t(3_000))
        #expect(agent.handleTimeout(now: t(3_000)) == [.requestRound])
        #expect(agent.isArmed == false)
    }

    @Test func checkBackoffAndRoundFailure() {
        var agent = PathAgent(selfID: alice, peerID: bob, transactionSeed: 100, configuration: .shortCooldowns)
        let interest = agent.noteInterest(now: t(0))
        #expect(interest.roundRequests == 1)
        var outputs = agent.handlePunch(peer: info, round: 1, delay: .zero, selfNATKind: .endpointIndependent, now: t(0))
        #expect(agent.isArmed)
        #expect(agent.isPunching)
        var events = interest.events
        var requests = 0
        var pingTimes: [Instant] = []
        var transactions: [UInt64] = []
        var now = t(0)
        while true {
            for transmit in outputs.transmits {
                guard case .ping(let transaction) = transmit.check else { Issue.record("\(transmit)"); continue }
                #expect(transmit.destination == peerPublic)
                pingTimes.append(now)
                transactions.append(transaction)
            }
            events += outputs.events
            requests += outputs.roundRequests
            guard let deadline = agent.nextDeadline, deadline <= t(6_000) else { break }
            now = deadline
            outputs = agent.handleTimeout(now: now)
        }
        // 100 ms, then ×1.5 up to 800 ms, until the 6 s round deadline.
        #expect(pingTimes == [0, 100, 250, 475, 812.5, 1_318.75, 2_078.125, 2_878.125, 3_678.125, 4_478.125, 5_278.125].map(t))
        #expect(transactions == Array(100..<111))
        #expect(events == [.pathChanged(.relayed), .roundFailed(round: 1)])
        #expect(agent.path == .relayed)
        #expect(agent.isPunching == false)
        // Cooling down for 5 s, then a new request (interest is recent).
        #expect(agent.nextDeadline == t(11_000))
        #expect(requests == 0)
        #expect(agent.handleTimeout(now: t(10_999)) == [])
        #expect(agent.handleTimeout(now: t(11_000)) == [.requestRound])
        // A late pong of the failed round is ignored.
        #expect(agent.handlePong(transaction: 100, from: peerPublic, now: t(11_001)) == [])
        #expect(agent.path == .relayed)
    }

    /// Answers every connect request at once and never any check: rounds fail, cool-downs
    /// grow (5, 15, 35 s), and requests stop once interest is older than 120 s.
    @Test func coolDownsGrowAndStopWithoutInterest() {
        var agent = PathAgent(selfID: alice, peerID: bob, transactionSeed: 1, configuration: .shortCooldowns)
        var outputs = agent.noteInterest(now: t(0))
        var events = outputs.events
        var requests: [Instant] = []
        var now = t(0)
        var round: UInt32 = 0
        while now <= t(400_000) {
            if outputs.roundRequests > 0 {
                requests.append(now)
                round += 1
                let punched = agent.handlePunch(peer: info, round: round, delay: .zero, selfNATKind: .none, now: now)
                #expect(punched.roundRequests == 0)
                events += punched.events
            }
            guard let deadline = agent.nextDeadline else { break }
            now = deadline
            outputs = agent.handleTimeout(now: now)
            events += outputs.events
        }
        #expect(requests == [t(0), t(11_000), t(32_000), t(73_000)])
        #expect(events.filter { if case .roundFailed = $0 { true } else { false } }.count == 4)
        #expect(agent.nextDeadline == nil) // idle
        #expect(agent.path == .relayed)
        // New interest starts again.
        #expect(agent.noteInterest(now: t(500_000)) == [.requestRound])
    }

    @Test func renewedInterestKeepsRoundsGoing() {
        var agent = PathAgent(selfID: alice, peerID: bob, transactionSeed: 1, configuration: .shortCooldowns)
        #expect(agent.noteInterest(now: t(0)).roundRequests == 1)
        _ = agent.handlePunch(peer: info, round: 1, delay: .zero, selfNATKind: .none, now: t(115_000))
        // The round fails at 121 s, cool-down until 126 s.
        #expect(agent.handleTimeout(now: t(121_000)) == [.roundFailed(round: 1)])
        #expect(agent.nextDeadline == t(126_000))
        var stale = agent
        #expect(stale.handleTimeout(now: t(126_000)).roundRequests == 0) // interest from t=0 is 126 s old
        #expect(stale.nextDeadline == nil)
        #expect(agent.noteInterest(now: t(122_000)).roundRequests == 0) // someone typed at 122 s; still cooling down
        #expect(agent.handleTimeout(now: t(126_000)).roundRequests == 1)
    }

    /// The connect request (or the server's answer) is lost for good, e.g. the server
    /// drops connects for that peer. The agent asks again every 3 s; it should stop once
    /// nobody has been talking to the peer for the interest window (120 s), like the
    /// cool-down retries do.
    @Test func unansweredConnectRequestsStopWhenInterestIsStale() {
        var agent = PathAgent(selfID: alice, peerID: bob, transactionSeed: 1)
        var outputs = agent.noteInterest(now: t(0))
        var requests: [Instant] = []
        var now = t(0)
        while now <= t(300_000) {
            if outputs.roundRequests > 0 { requests.append(now) }
            guard let deadline = agent.nextDeadline else { break }
            now = deadline
            outputs = agent.handleTimeout(now: now)
        }
        #expect(requests.first == t(0))
        #expect(requests.contains(t(120_000)))
        #expect(requests.allSatisfy { $0 <= t(123_000) }, "last request at \(requests.last!), \(requests.count) requests")
    }

    @Test func delayedStartAndTriggeredChecks() {
        var agent = PathAgent(selfID: alice, peerID: bob, transactionSeed: 1)
        #expect(agent.handlePunch(peer: info, round: 2, delay: .milliseconds(800), selfNATKind: .none, now: t(0)).transmits.isEmpty)
        #expect(agent.nextDeadline == t(800))
        // The peer's ping arrives before we start: answered at once, source checked back.
        let source = ep("198.51.100.9:50002")
        let sent = agent.handlePing(transaction: 77, from: source, now: t(100)).transmits
        #expect(sent.count == 2)
        #expect(sent.first?.check == .pong(transaction: 77, observed: source))
        #expect(sent.first?.destination == source)
        guard case .ping(let triggered)? = sent.last?.check else { Issue.record("no triggered check"); return }
        #expect(sent.last?.destination == source)
        // From 800 ms both candidates are checked: the public one and the learned one.
        #expect(Set(agent.handleTimeout(now: t(800)).transmits.map(\.destination)) == [peerPublic, source])
        // The first pong is not enough: a follow-up check goes to the same endpoint at once,
        // and its pong selects the path.
        let followUp = agent.handlePong(transaction: triggered, from: source, now: t(850)).transmits
        #expect(agent.path == .relayed)
        #expect(followUp.map(\.destination) == [source])
        guard case .ping(let second)? = followUp.first?.check else { Issue.record("no follow-up check"); return }
        #expect(agent.handlePong(transaction: second, from: source, now: t(860)) == [.pathChanged(.direct(source, .peerReflexive))])
        #expect(agent.path == .direct(source, .peerReflexive))
    }

    @Test func pongsAreMatchedByTransactionAndSource() {
        var agent = PathAgent(selfID: alice, peerID: bob, transactionSeed: 500)
        #expect(agent.handlePunch(peer: info, round: 1, delay: .zero, selfNATKind: .none, now: t(0)).transmits.map(\.check)
                == [.ping(transaction: 500)])
        var ignored = agent.handlePong(transaction: 501, from: peerPublic, now: t(10))   // never sent
        ignored += agent.handlePong(transaction: 500, from: ep("192.0.2.66:1"), now: t(10)) // wrong source
        #expect(ignored == [])
        #expect(agent.path == .relayed)
        // The wrong-source pong consumed the transaction: the next check uses a new one.
        #expect(agent.handleTimeout(now: t(100)).transmits.map(\.check) == [.ping(transaction: 501)])
        let followUp = agent.handlePong(transaction: 501, from: peerPublic, now: t(110))
        #expect(agent.path == .relayed)
        #expect(followUp.transmits.map(\.check) == [.ping(transaction: 502)]) // the follow-up check
        _ = agent.handlePong(transaction: 502, from: peerPublic, now: t(120))
        #expect(agent.path == .direct(peerPublic, .publicEndpoint))
    }

    @Test func privateReplacesPublicButNotTheOtherWayRound() {
        let privateEndpoint = ep("10.0.0.6:10081")
        let withPrivate = PeerInfo(id: bob, publicEndpoint: peerPublic, privateEndpoints: [privateEndpoint],
                                   natKind: .endpointIndependent, dialect: .extended)
        // Public answers first, private later: the private one takes over once confirmed.
        var agent = PathAgent(selfID: alice, peerID: bob, transactionSeed: 10)
        var all = agent.handlePunch(peer: withPrivate, round: 1, delay: .zero, selfNATKind: .endpointIndependent, now: t(0))
        #expect(all.transmits.map(\.destination) == [privateEndpoint, peerPublic])
        var outputs = agent.handlePong(transaction: 11, from: peerPublic, now: t(20))
        all += outputs
        #expect(outputs.transmits.map(\.check) == [.ping(transaction: 12)])
        outputs = agent.handlePong(transaction: 12, from: peerPublic, now: t(25))
        #expect(agent.path == .direct(peerPublic, .publicEndpoint))
        outputs += agent.handlePong(transaction: 10, from: privateEndpoint, now: t(30))
        all += outputs
        #expect(agent.path == .direct(peerPublic, .publicEndpoint))
        #expect(outputs.transmits.map(\.destination) == [privateEndpoint])
        all += agent.handlePong(transaction: 13, from: privateEndpoint, now: t(35))
        #expect(agent.path == .direct(privateEndpoint, .privateEndpoint))
        #expect(all.events == [.pathChanged(.relayed), .pathChanged(.direct(peerPublic, .publicEndpoint)),
                               .pathChanged(.direct(privateEndpoint, .privateEndpoint))])
        // Private first, public later: stays private.
        var other = PathAgent(selfID: alice, peerID: bob, transactionSeed: 10)
        _ = other.handlePunch(peer: withPrivate, round: 1, delay: .zero, selfNATKind: .endpointIndependent, now: t(0))
        #expect(other.handlePong(transaction: 10, from: privateEndpoint, now: t(20)).transmits.map(\.check) == [.ping(transaction: 12)])
        _ = other.handlePong(transaction: 12, from: privateEndpoint, now: t(25))
        #expect(other.path == .direct(privateEndpoint, .privateEndpoint))
        #expect(other.handlePong(transaction: 11, from: peerPublic, now: t(30)).transmits.isEmpty) // a worse candidate is not followed up
        #expect(other.path == .direct(privateEndpoint, .privateEndpoint))
    }

    @Test func resetForgetsEverything() {
        var agent = PathAgent(selfID: alice, peerID: bob, transactionSeed: 1)
        _ = agent.handlePunch(peer: info, round: 1, delay: .zero, selfNATKind: .none, now: t(0))
        _ = agent.handlePong(transaction: 1, from: peerPublic, now: t(5))
        _ = agent.handlePong(transaction: 2, from: peerPublic, now: t(6))
        #expect(agent.directEndpoint == peerPublic)
        #expect(agent.reset() == [.pathChanged(.none)])
        #expect(agent.path == .none)
        #expect(agent.isArmed == false)
        #expect(agent.nextDeadline == nil)
    }
}

extension PathAgent.Configuration {
    /// The mechanism tests use short cool-downs; the defaults are checked on their own.
    static var shortCooldowns: PathAgent.Configuration {
        var configuration = PathAgent.Configuration()
        configuration.retryCooldowns = [.seconds(5), .seconds(15), .seconds(35), .seconds(60)]
        return configuration
    }
}

@Suite("PathAgent defaults")
struct PathAgentDefaultTests {
    @Test func firstRetryWaitsOutALinuxConntrackEntry() {
        // A stray entry on a NAT without a WAN firewall lives 30 s (nf_conntrack_udp_timeout):
        // the first retry must come later, and so must the one after it (other first mover).
        let cooldowns = PathAgent.Configuration().retryCooldowns
        #expect(cooldowns.count >= 2)
        #expect(cooldowns[0] > .seconds(30))
        #expect(cooldowns[1] > .seconds(30))
    }
}

// MARK: - Port probing in the simulated network

@Suite struct PathAgentPortProbingNetworkTests {
    /// A symmetric NAT (alice) and a port-restricted cone (bob): plain punching cannot work,
    /// port probing finds the port alice's NAT gave one of her probe sockets.
    @Test func symmetricToConeGetsADirectPathByProbing() {
        var configuration = PathAgent.Configuration()
        configuration.portProbe.socketCount = 256
        var net = SimulatedNetwork(
            nats: [SimulatedNAT(publicAddress: natAddressA, mapping: .endpointDependent, firstPort: 1024),
                   SimulatedNAT(publicAddress: natAddressB, mapping: .endpointIndependent)],
            hosts: [(alice, aliceInside, 0, .endpointDependent), (bob, bobInside, 1, .endpointIndependent)],
            configuration: configuration)
        net.punch()
        net.run(until: t(25_000))
        guard case .direct(let toBob, .probed) = net.hosts[0].agent.path,
              case .direct(let toAlice, .probed) = net.hosts[1].agent.path else {
            Issue.record("no probed path: \(net.hosts[0].agent.path) / \(net.hosts[1].agent.path)"); return
        }
        #expect(toBob == net.hosts[1].observedByServer)
        #expect(toAlice.address == natAddressA)
        let socket = try! #require(net.hosts[0].agent.pathSocket)
        #expect(net.hosts[0].probeSocketsOpen == [socket], "every other probe socket closed")
        #expect(net.hosts[0].mostProbeSockets == 256)
        #expect(net.hosts[1].probeSocketsOpen.isEmpty)
        // The path holds: consent checks on it are answered for a minute.
        net.run(until: t(85_000))
        #expect(net.hosts[0].agent.path == .direct(toBob, .probed))
        #expect(net.hosts[1].agent.path == .direct(toAlice, .probed))
    }
}
