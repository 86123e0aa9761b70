import Addressing
import ArgumentParser
import ChatRouter
import Crypto
import Identity
import MonotonicTime
import Registry
import Roster
import Wire

/// `roster-sim`: how long until every subscriber's roster is complete after a burst of
/// joins, under loss. A deterministic, in-process simulation in virtual time: a real
/// `Registry` (the server's state machine, with its roster feeds, their coalescing and
/// retransmission timers) and K real `ExtendedRouter`s (the chat client's roster replica,
/// which acknowledges every delta with a session-authenticated `rosterAck`), wired through
/// a simulated network: every datagram between the server and a subscriber, both ways, is
/// lost with probability `--loss` (each link has its own seeded generator) and otherwise
/// arrives after `--latency-ms`. No sockets, no clock: the timers are the registry's
/// `rosterDeadline` (handled with `flushRoster(now:)`) and the routers' `nextDeadline`.
///
/// Scenario: K subscribers register (one millisecond apart, their handshake not lost), the
/// network settles, then B headless clients (not subscribing) register within
/// `--burst-seconds`, evenly spread. Measured: the virtual time from the burst's last join
/// until every subscriber's replica holds exactly the registered clients (every other
/// subscriber and every joiner, nothing else).
@main
struct RosterSim: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "roster-sim",
        abstract: "Time until every roster is complete after a burst of joins, under loss (virtual time, real Registry and ExtendedRouters).")

    @Option(help: "Subscribers (chat shells watching the roster).") var subscribers: Int = 10
    @Option(help: "Joins in the burst (headless clients).") var burst: Int = 500
    @Option(help: "The burst's length in seconds (joins evenly spread).") var burstSeconds: Double = 1
    @Option(help: "One-way latency between the server and each subscriber, milliseconds.") var latencyMs: Double = 10
    @Option(help: "Loss rates to run, in percent, comma-separated (each way, per datagram).") var loss: String = "0,20,40"
    @Option(help: "Seeds per loss rate.") var seeds: Int = 10
    @Option(help: "The server's roster limit (the scenario is meant to stay below it: complete scope).") var rosterLimit: Int = 1000
    @Option(help: "Give up on a run after this many virtual seconds past the burst.") var giveUp: Double = 120
    @Option(help: "Roster feed: least time between two partial datagrams, ms (server default 50).") var flushMs: Double?
    @Option(help: "Roster feed: first retransmission timeout, ms (default 300).") var rtoMs: Double?
    @Option(help: "Roster feed: largest retransmission timeout, ms (default 3000).") var maxRtoMs: Double?
    @Option(help: "Roster feed: most datagrams in flight (default 16).") var window: Int?
    @Flag(help: "One line per run as well.") var verbose = false

    func validate() throws {
        guard (1...1000).contains(subscribers) else { throw ValidationError("--subscribers must be 1...1000") }
        guard (1...100_000).contains(burst) else { throw ValidationError("--burst must be 1...100000") }
        guard burstSeconds >= 0, latencyMs >= 0, seeds >= 1, giveUp > 0 else { throw ValidationError("bad timing options") }
        guard !lossRates.isEmpty, lossRates.allSatisfy({ (0..<100).contains($0) }) else {
            throw ValidationError("--loss must list percentages in [0, 100)")
        }
    }

    var lossRates: [Double] { loss.split(separator: ",").compactMap { Double($0.filter { $0 != " " }) } }

    func run() throws {
        let setup = Setup(subscribers: subscribers, burst: burst, burstSeconds: burstSeconds)
        var feed = RosterFeedConfiguration()
        if let flushMs { feed.flushInterval = .nanoseconds(Int64(flushMs * 1e6)) }
        if let rtoMs { feed.initialRetransmitTimeout = .nanoseconds(Int64(rtoMs * 1e6)) }
        if let maxRtoMs { feed.maxRetransmitTimeout = .nanoseconds(Int64(maxRtoMs * 1e6)) }
        if let window { feed.window = max(1, window) }
        print("roster-sim: \(subscribers) subscribers, a burst of \(burst) joins in \(burstSeconds) s, "
              + "\(latencyMs) ms one way, roster limit \(rosterLimit), \(seeds) seeds per loss rate")
        print("roster feed: flush \(seconds(feed.flushInterval) * 1000) ms, RTO \(seconds(feed.initialRetransmitTimeout) * 1000) ms "
              + "doubling to \(seconds(feed.maxRetransmitTimeout) * 1000) ms, window \(feed.window)")
        print("time from the burst's last join until every subscriber's roster is complete (virtual time):")
        print(pad("loss each way", 14) + pad("median", 10) + pad("max", 10) + pad("min", 10) + pad("subscriber p50", 16)
              + pad("datagrams/subscriber", 22) + pad("records sent/needed", 21) + "converged")
        for lossRate in lossRates {
            var times: [Double] = [], perSubscriber: [Double] = [], datagrams: [Double] = [], overhead: [Double] = []
            var failed = 0
            for seed in 0..<seeds {
                var world = SimWorld(setup: setup, loss: lossRate / 100, latency: .nanoseconds(Int64(latencyMs * 1e6)),
                                     seed: UInt64(seed), rosterLimit: rosterLimit, feed: feed)
                let outcome = world.run(giveUpAfter: giveUp)
                if verbose {
                    print("  loss \(lossRate)% seed \(seed): "
                          + (outcome.complete.map { "complete after \(ms($0))" } ?? "NOT complete after \(giveUp) s")
                          + ", \(outcome.serverDatagrams) roster datagrams (\(outcome.dropped) lost, \(outcome.records) records), "
                          + "\(outcome.acks) acks reached the server")
                }
                guard let complete = outcome.complete else {
                    failed += 1
                    continue
                }
                times.append(complete)
                perSubscriber.append(median(outcome.perSubscriber))
                datagrams.append(Double(outcome.serverDatagrams) / Double(subscribers))
                overhead.append(Double(outcome.records) / Double(subscribers * (subscribers - 1 + burst)))
            }
            let converged = "\(seeds - failed)/\(seeds)"
            guard !times.isEmpty else {
                print(pad("\(Int(lossRate)) %", 14) + "never (within \(giveUp) s)  " + converged)
                continue
            }
            print(pad("\(Int(lossRate)) %", 14) + pad(ms(median(times)), 10) + pad(ms(times.max()!), 10) + pad(ms(times.min()!), 10)
                  + pad(ms(median(perSubscriber)), 16) + pad(String(format1: median(datagrams)), 22)
                  + pad(String(format2: median(overhead)), 21) + converged)
            // One machine-readable line per loss rate, for bin/bench.
            print("SIM loss_pct=\(Int(lossRate)) median_ms=\(String(format1: median(times) * 1000)) max_ms=\(String(format1: times.max()! * 1000)) "
                  + "converged=\(seeds - failed) seeds=\(seeds)")
        }
    }
}

func pad(_ text: String, _ width: Int) -> String { text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count) }
func ms(_ seconds: Double) -> String { "\(String(format1: seconds * 1000)) ms" }
func median(_ values: [Double]) -> Double {
    guard !values.isEmpty else { return 0 }
    let sorted = values.sorted()
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

extension String {
    init(format1 value: Double) { self = "\((value * 10).rounded() / 10)" }
    init(format2 value: Double) { self = "\((value * 100).rounded() / 100)" }
}

/// SplitMix64: a tiny seeded generator (the tests' `TestSupport` has the same).
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Dated cookies, like the server's (the high word is the issue time, the low one names the
/// source), so that registrations can be signed once for every run.
struct SimValidator: AddressValidator {
    func cookie(for source: Endpoint, now: Instant) -> Token128 {
        Token128(high: UInt64(now.nanoseconds), low: UInt64(source.address.bits) << 16 | UInt64(source.port))
    }

    func issueTime(of cookie: Token128, for source: Endpoint, now: Instant) -> Instant? {
        guard cookie.low == UInt64(source.address.bits) << 16 | UInt64(source.port), cookie.high <= UInt64(Int64.max) else { return nil }
        let issued = Instant(nanoseconds: Int64(cookie.high))
        return issued <= now && now - issued <= cookieLifetime ? issued : nil
    }

    var cookieLifetime: Duration { .seconds(60) }
}

/// What every run shares: the clients, their addresses, times and signed registrations.
struct Setup {
    struct Client {
        var id: ClientID
        var endpoint: Endpoint
        var at: Instant
        var registration: [UInt8]
        var subscribe: Bool
    }

    static let server = Endpoint(address: IPv4Address(198, 51, 100, 1), port: 10080)
    let identity: IdentityKey
    let subscribers: [Client]
    let joiners: [Client]
    let burstStart: Instant
    let burstEnd: Instant

    init(subscribers count: Int, burst: Int, burstSeconds: Double) {
        let identity = IdentityKey(signing: try! Curve25519.Signing.PrivateKey(rawRepresentation: Array(repeating: 1, count: 32)),
                                   agreement: try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: Array(repeating: 2, count: 32)))
        self.identity = identity
        func client(_ id: String, _ index: Int, at: Instant, subscribe: Bool) -> Client {
            let endpoint = Endpoint(address: IPv4Address(bits: (subscribe ? 0x0A00_0000 : 0x0B00_0000) | UInt32(index)), port: 40000)
            let cookie = SimValidator().cookie(for: endpoint, now: at)
            let registration = SessionCrypto.signedRegistration(id: try! ClientID(id), cookie: cookie, privateEndpoints: [],
                                                                natKind: .none, identity: identity, subscribe: subscribe)
            return Client(id: try! ClientID(id), endpoint: endpoint, at: at, registration: registration, subscribe: subscribe)
        }
        subscribers = (0..<count).map { client("sub\($0)", $0, at: .zero + .milliseconds(Int64($0)), subscribe: true) }
        // The burst starts once the subscribers' first rosters have long settled.
        let start = Instant.zero + .milliseconds(Int64(count)) + .seconds(5)
        let step = burst > 1 ? burstSeconds / Double(burst - 1) : 0
        let joiners = (0..<burst).map {
            client("join\($0)", $0, at: start + .nanoseconds(Int64(Double($0) * step * 1e9)), subscribe: false)
        }
        burstStart = start
        self.joiners = joiners
        burstEnd = joiners.last?.at ?? start
    }
}

/// One run: the registry, the subscribers' routers, the datagrams in flight.
struct SimWorld {
    struct Outcome {
        /// Seconds from the burst's end until every roster was complete (nil: not within the limit).
        var complete: Double?
        var perSubscriber: [Double]
        var serverDatagrams = 0
        /// Records in them (lost ones included).
        var records = 0
        var dropped = 0
        var acks = 0
    }

    enum Event {
        case toSubscriber(Int, [UInt8])
        case toServer(Int, [UInt8])
        case join(Int)
    }

    let setup: Setup
    let loss: Double
    let latency: Duration
    var registry: Registry
    var registryRandom: SplitMix64
    var routers: [ExtendedRouter?]
    /// Per subscriber, what the chat client's `ClientSession` keeps to seal `.sendToServer`
    /// messages: the session key and the last counter used.
    var sessions: [(key: KeyBytes, counter: UInt64)?]
    var subscriberAt: [Endpoint: Int] = [:]
    /// Per subscriber, the links' own generators: server → subscriber, subscriber → server.
    var downLinks: [SplitMix64]
    var upLinks: [SplitMix64]
    var queue = EventQueue<Event>()
    var now = Instant.zero
    var registered: Set<ClientID> = []
    var joined = 0
    var completeAt: [Instant?]
    var outcome = Outcome(perSubscriber: [])

    init(setup: Setup, loss: Double, latency: Duration, seed: UInt64, rosterLimit: Int, feed: RosterFeedConfiguration) {
        self.setup = setup
        self.loss = loss
        self.latency = latency
        registry = Registry(configuration: .init(rosterLimit: rosterLimit, rosterFeed: feed), validator: SimValidator(),
                            serverKey: try! .init(rawRepresentation: Array(repeating: 0x77, count: 32)))
        registryRandom = SplitMix64(state: seed &* 0x2545_F491_4F6C_DD1D)
        routers = Array(repeating: nil, count: setup.subscribers.count)
        sessions = Array(repeating: nil, count: setup.subscribers.count)
        downLinks = setup.subscribers.indices.map { SplitMix64(state: seed << 32 ^ UInt64($0) << 1) }
        upLinks = setup.subscribers.indices.map { SplitMix64(state: seed << 32 ^ UInt64($0) << 1 | 1) }
        completeAt = Array(repeating: nil, count: setup.subscribers.count)
        for (index, subscriber) in setup.subscribers.enumerated() { subscriberAt[subscriber.endpoint] = index }
        for index in setup.joiners.indices { queue.push(setup.joiners[index].at, .join(index)) }
    }

    /// Offer, challenge and the signed registration, at the client's time; returns the
    /// registry's answer to the registration.
    mutating func register(_ client: Setup.Client) -> [Registry.Output] {
        _ = registry.receive(.register(client.id, privateAddress: client.endpoint.address, offers: [ExtendedMessage.offer]),
                             from: client.endpoint, now: now)
        let datagram = try! ExtendedDatagram.decode(client.registration)
        let actions = registry.receive(datagram, bytes: client.registration, from: client.endpoint, now: now, random: &registryRandom)
        registered.insert(client.id)
        return actions
    }

    mutating func run(giveUpAfter limit: Double) -> Outcome {
        // The subscribers, their handshakes not lost.
        for (index, subscriber) in setup.subscribers.enumerated() {
            now = subscriber.at
            step()
            let actions = register(subscriber)
            guard case .sendExtended(.registered(let serverKey, _, _, _, let nonce, let cookie), _)? =
                    actions.first(where: { if case .sendExtended(.registered, _) = $0 { true } else { false } }),
                  let key = SessionCrypto.sessionKey(privateKey: setup.identity.agreement, peerPublicKey: serverKey, cookie: cookie,
                                                     nonce: nonce, id: subscriber.id)
            else { fatalError("subscriber \(subscriber.id) did not register") }
            var router = ExtendedRouter(selfID: subscriber.id, identity: setup.identity,
                                        firstMessageID: UInt64(index + 1) << 32, transactionSeed: UInt64(index + 1))
            router.beginSession()
            routers[index] = router
            sessions[index] = (key, 0)
        }
        let end = setup.burstEnd + .nanoseconds(Int64(limit * 1e9))
        var sameInstant = 0
        while true {
            var next = queue.peekTime
            if let deadline = registry.rosterDeadline { next = min(next ?? deadline, deadline) }
            for router in routers { if let deadline = router?.nextDeadline { next = min(next ?? deadline, deadline) } }
            guard let time = next, time <= end else { break }
            if time <= now {
                sameInstant += 1
                precondition(sameInstant < 100_000, "timers never settle at \(now)")
            } else {
                sameInstant = 0
            }
            now = max(now, time)
            step()
            if joined == setup.joiners.count, completeAt.allSatisfy({ $0 != nil }) { break }
        }
        let times = completeAt.compactMap { $0.map { seconds($0 - setup.burstEnd) } }
        outcome.perSubscriber = times
        outcome.complete = times.count == completeAt.count ? times.max() : nil
        return outcome
    }

    /// Everything due at `now`: arrivals and joins, the routers' timers, the roster's.
    mutating func step() {
        while let event = queue.pop(dueBy: now) {
            switch event {
            case .join(let index):
                _ = register(setup.joiners[index])
                joined += 1
            case .toSubscriber(let index, let bytes):
                guard let datagram = try? ExtendedDatagram.decode(bytes) else { fatalError("undecodable roster datagram") }
                transmit(routers[index]!.handleServerMessage(datagram.message, now: now), from: index)
                checkComplete(index)
            case .toServer(let index, let bytes):
                guard let datagram = try? ExtendedDatagram.decode(bytes) else { fatalError("undecodable datagram to the server") }
                if case .rosterAck = datagram.message { outcome.acks += 1 }
                send(registry.receive(datagram, bytes: bytes, from: setup.subscribers[index].endpoint, now: now, random: &registryRandom))
            }
        }
        for index in routers.indices {
            if let deadline = routers[index]?.nextDeadline, deadline <= now {
                transmit(routers[index]!.handleTimeout(now: now), from: index)
            }
        }
        if let deadline = registry.rosterDeadline, deadline <= now { send(registry.flushRoster(now: now)) }
    }

    /// Puts the server's datagrams to subscribers on their links.
    mutating func send(_ actions: [Registry.Output]) {
        for case .sendExtended(let message, let destination) in actions {
            guard let index = subscriberAt[destination] else { continue }
            if case .roster(let delta) = message {
                outcome.serverDatagrams += 1
                outcome.records += delta.records.count
            }
            if Double(downLinks[index].next() >> 11) / Double(1 << 53) < loss {
                outcome.dropped += 1
                continue
            }
            queue.push(now + latency, .toSubscriber(index, message.encode()))
        }
    }

    /// The subscriber's messages to the server (acknowledgements), sealed under its session
    /// as its `ClientSession` would, onto its link; events and peer datagrams go nowhere.
    mutating func transmit(_ outputs: [ExtendedRouter.Output], from index: Int) {
        for case .sendToServer(let message) in outputs {
            guard var session = sessions[index] else { fatalError("subscriber \(index) has no session") }
            session.counter += 1
            sessions[index] = session
            let bytes = SessionCrypto.sealed(message, counter: session.counter, key: session.key)
            if Double(upLinks[index].next() >> 11) / Double(1 << 53) < loss { continue }
            queue.push(now + latency, .toServer(index, bytes))
        }
    }

    /// Whether subscriber `index` holds every registered client but itself, and nothing else.
    mutating func checkComplete(_ index: Int) {
        guard completeAt[index] == nil, joined == setup.joiners.count, let roster = routers[index]?.roster,
              roster.count == registered.count - 1 else { return }
        let selfID = setup.subscribers[index].id
        guard roster.listedIDs.allSatisfy({ registered.contains($0) && $0 != selfID }) else { return }
        completeAt[index] = now
    }
}

func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}

/// A min-heap of timed events; events at the same time come out in the order they went in.
struct EventQueue<Element> {
    private var heap: [(time: Instant, order: UInt64, element: Element)] = []
    private var pushed: UInt64 = 0

    var peekTime: Instant? { heap.first?.time }

    mutating func push(_ time: Instant, _ element: Element) {
        pushed += 1
        heap.append((time, pushed, element))
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard earlier(child, parent) else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop(dueBy now: Instant) -> Element? {
        guard let first = heap.first, first.time <= now else { return nil }
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            var parent = 0
            while true {
                let left = 2 * parent + 1, right = left + 1
                var smallest = parent
                if left < heap.count, earlier(left, smallest) { smallest = left }
                if right < heap.count, earlier(right, smallest) { smallest = right }
                guard smallest != parent else { break }
                heap.swapAt(parent, smallest)
                parent = smallest
            }
        }
        return first.element
    }

    private func earlier(_ a: Int, _ b: Int) -> Bool { (heap[a].time, heap[a].order) < (heap[b].time, heap[b].order) }
}
