import Addressing
import MonotonicTime
import Wire

/// The schedule of hard-to-easy punching by port probing (the "birthday" attack on a
/// port-randomising NAT, after Tailscale's arithmetic), as a sans-I/O state machine: start an
/// attempt, feed it ``handleTimeout(now:)`` at ``nextDeadline`` and the verdicts of the path
/// agent (``answered(socket:now:)``, ``fail(now:)``); each input returns what to do
/// (``Output``). It never sends anything itself: the ``PathAgent`` that drives it turns each
/// ``Output/check(socket:to:)`` into an authenticated ping with a fresh transaction, and
/// decides (by the usual two answered checks) which answer wins.
///
/// - The **hard** side (endpoint-dependent mapping: every destination gets a new random
///   public port) opens ``Configuration/socketCount`` extra UDP sockets and sends a check
///   from each towards the easy side's public endpoint, one every
///   ``Configuration/hardPacing``. Each opens a mapping on the hard side's NAT that lets
///   in datagrams from exactly that endpoint. The sweep repeats every
///   ``Configuration/hardRefresh`` (shorter than Linux's 30 s for unreplied UDP) while the
///   attempt lasts, so the mappings stay.
/// - The **easy** side (endpoint-independent mapping: one public endpoint for every
///   destination) sends checks from its chat socket to random ports (never one twice in an
///   attempt) of the hard side's public address, one every ``Configuration/probeInterval``,
///   at most ``Configuration/maxProbes`` per attempt. With 256 mappings open among 64 512
///   ports a probe hits with p ≈ 1/252: 174 probes find one with 50 %, 1 024 with 98 %.
/// - An attempt lasts ``Configuration/attemptDuration``; after a failed one the next waits
///   ``Configuration/backoffs`` (growing, the last repeats) and starts only when the server
///   coordinates another round.
public struct PortProbe: Sendable, SansIOCore {
    /// Which side of a hard-to-easy pair this client is.
    public enum Role: Hashable, Sendable, CustomStringConvertible {
        /// Our NAT maps per destination: we open many sockets towards the peer.
        case hard
        /// Our NAT keeps one mapping: we probe the peer's ports.
        case easy

        public var description: String {
            switch self {
            case .hard: "hard"
            case .easy: "easy"
            }
        }
    }

    /// Bounds of an attempt; the reasons are in docs/nat-traversal.md ("Port probing").
    public struct Configuration: Hashable, Sendable {
        /// Extra sockets the hard side opens (clamped by the owner to its file-descriptor
        /// headroom). 256: with 256 mappings a probe hits with p ≈ 1/252, so the easy side's
        /// 2 048 probes succeed with 1 − (1 − 1/252)²⁰⁴⁸ ≈ 99.97 % and half of all attempts
        /// within 174 probes; twice the sockets halve the time but double the descriptors and
        /// the mappings a home router must hold, half of them double the time.
        public var socketCount = 256
        /// Between two of the hard side's checks: a sweep of 256 sockets takes 1.28 s, not
        /// one burst that a small router's queue or a rate limiter would drop.
        public var hardPacing: Duration = .milliseconds(5)
        /// The hard side sweeps its sockets again this often, before its NAT forgets the
        /// mappings (Linux: 30 s for UDP that was never answered).
        public var hardRefresh: Duration = .seconds(20)
        /// Between two of the easy side's probes: 100 a second.
        public var probeInterval: Duration = .milliseconds(10)
        /// The easy side waits this long before its first probe, so that the hard side's first
        /// sweep has opened its mappings (a probe to a port not yet mapped is wasted).
        public var easyStartDelay: Duration = .milliseconds(1300)
        /// When the easy side's NAT remaps after unsolicited inbound
        /// (``Wire/NATKind/endpointIndependentRemappedByInbound``), the order turns round: the
        /// easy side probes at once, and the hard side's first sweep waits this long. Each
        /// sweep check that reaches such a router before the easy side has probed its port
        /// leaves a stray entry there that spoils that port for good; a check that arrives after
        /// the probe finds the easy side's flow and is let in. 10.24 s is 1 024 probes at 100
        /// a second: 256 mappings then fall on a probed port with 1 − (1 − 1 024/64 512)²⁵⁶
        /// ≈ 98 %.
        public var hardDelayWhenEasyRemaps: Duration = .milliseconds(10_240)
        /// Most probes per attempt.
        public var maxProbes = 2048
        /// How long an attempt lasts (the path agent's round deadline).
        public var attemptDuration: Duration = .seconds(25)
        /// Waits after failed attempts (the last repeats).
        public var backoffs: [Duration] = [.seconds(60), .seconds(120), .seconds(300)]
        /// The ports probed: not the privileged ones, which no NAT hands out.
        public var lowestPort: UInt16 = 1024

        public init() {}
    }

    /// What the owner should do.
    public enum Output: Hashable, Sendable {
        /// Open this many extra sockets (numbered `0..<count`).
        case openSockets(count: Int)
        /// Send a check from probe socket `socket` (`nil`: the chat socket) to `to`.
        case check(socket: Int?, to: Endpoint)
        /// Close every probe socket except `keeping` (`nil`: all of them).
        case closeSockets(keeping: Int?)
        /// Something to log.
        case report(Report)
    }

    /// What an attempt did, for the log (`probing bob: ...`).
    public enum Report: Hashable, Sendable, CustomStringConvertible {
        /// The hard side opened `sockets` sockets towards `target`.
        case openedSockets(Int, towards: Endpoint)
        /// The easy side started probing `address`.
        case probing(IPv4Address, perSecond: Int, atMost: Int)
        /// A check was answered after `probes` checks, `after` into the attempt.
        case answered(probes: Int, after: Duration, socket: Int?)
        /// The attempt ended without an answer; the next waits `nextAttemptIn`.
        case gaveUp(probes: Int, nextAttemptIn: Duration)

        public var description: String {
            switch self {
            case .openedSockets(let count, let target): "\(count) sockets towards \(target)"
            case .probing(let address, let rate, let most): "random ports of \(address), \(rate)/s, at most \(most)"
            case .answered(let probes, let after, let socket):
                "answered after \(probes) probes in \(Self.seconds(after))" + (socket.map { " (socket \($0))" } ?? "")
            case .gaveUp(let probes, let wait): "no answer after \(probes) probes; next attempt in \(Self.seconds(wait))"
            }
        }

        static func seconds(_ duration: Duration) -> String {
            let tenths = max(Int64(0), (duration.nanosecondsClamped + 50_000_000) / 100_000_000)
            return tenths % 10 == 0 ? "\(tenths / 10) s" : "\(tenths / 10).\(tenths % 10) s"
        }
    }

    enum Phase: Hashable, Sendable {
        case idle
        /// Hard side: sockets open, sweeping. `next` is the socket whose check is due at `due`.
        case sweeping(startedAt: Instant, sweepStart: Instant, next: Int, due: Instant)
        /// Easy side: probing, the next probe due at `due` (`nil`: the probes are spent).
        case probing(startedAt: Instant, due: Instant?)
        /// Settled on a socket (hard side) or an endpoint (easy side).
        case settled
    }

    public let configuration: Configuration
    public private(set) var role: Role?
    var phase: Phase = .idle
    /// The peer's public endpoint (hard side: where the checks go; easy side: whose address is probed).
    var target: Endpoint?
    /// Sockets open (hard side).
    public private(set) var openSockets = 0
    /// Checks sent in this attempt.
    public private(set) var probesSent = 0
    /// Ports probed in this attempt (easy side; never one twice).
    var probedPorts: Set<UInt16> = []
    /// Failed attempts in a row (for the back-off).
    public private(set) var failedAttempts = 0
    var random: ProbeRandom

    public init(configuration: Configuration = Configuration(), seed: UInt64) {
        self.configuration = configuration
        random = ProbeRandom(seed: seed)
    }

    /// Whether an attempt is running.
    public var isActive: Bool {
        switch phase {
        case .sweeping, .probing: true
        case .idle, .settled: false
        }
    }

    /// Starts an attempt as `role` towards the peer's public endpoint `peerPublic`, at `start`
    /// (the round's start; `now` ≤ `start`). `easyRemaps`: the easy side's NAT remaps after
    /// unsolicited inbound, so it probes first (``Configuration/hardDelayWhenEasyRemaps``).
    public mutating func start(role: Role, peerPublic: Endpoint, start: Instant, easyRemaps: Bool = false,
                               now: Instant) -> [Output] {
        var outputs = closeIfOpen()
        self.role = role
        target = peerPublic
        probesSent = 0
        probedPorts = []
        switch role {
        case .hard:
            let count = max(0, configuration.socketCount)
            openSockets = count
            outputs.append(.openSockets(count: count))
            outputs.append(.report(.openedSockets(count, towards: peerPublic)))
            let first = easyRemaps ? start + configuration.hardDelayWhenEasyRemaps : start
            phase = .sweeping(startedAt: start, sweepStart: first, next: 0, due: first)
        case .easy:
            let perSecond = Int(Duration.seconds(1) / max(configuration.probeInterval, .nanoseconds(1)))
            outputs.append(.report(.probing(peerPublic.address, perSecond: perSecond, atMost: configuration.maxProbes)))
            phase = .probing(startedAt: start, due: easyRemaps ? start : start + configuration.easyStartDelay)
        }
        outputs += handleTimeout(now: now)
        return outputs
    }

    /// Call at ``nextDeadline``: the checks now due.
    public mutating func handleTimeout(now: Instant) -> [Output] {
        var outputs: [Output] = []
        switch phase {
        case .idle, .settled:
            break
        case .sweeping(let startedAt, var sweepStart, var next, var due):
            guard let target, openSockets > 0 else { break }
            // Bounded: at most one sweep's worth per call, however late the timer.
            var sent = 0
            while now >= due, sent < openSockets {
                outputs.append(.check(socket: next, to: target))
                probesSent += 1
                sent += 1
                next += 1
                if next >= openSockets {
                    next = 0
                    sweepStart = sweepStart + configuration.hardRefresh
                    due = max(sweepStart, now + configuration.hardPacing)
                } else {
                    due = due + configuration.hardPacing
                }
            }
            if now >= due { due = now + configuration.hardPacing }
            phase = .sweeping(startedAt: startedAt, sweepStart: sweepStart, next: next, due: due)
        case .probing(let startedAt, let due):
            guard let target, let due, now >= due else { break }
            // Never faster than the rate: a late timer sends one probe, not a burst to catch up.
            if probesSent < configuration.maxProbes, let port = nextPort() {
                outputs.append(.check(socket: nil, to: Endpoint(address: target.address, port: port)))
                probesSent += 1
            }
            // Spent (or no port left): wait for the round's end without a deadline of our own.
            let spent = probesSent >= configuration.maxProbes || probedPorts.count >= 65536 - Int(configuration.lowestPort)
            phase = .probing(startedAt: startedAt, due: spent ? nil : now + configuration.probeInterval)
        }
        return outputs
    }

    /// When the schedule next needs ``handleTimeout(now:)``.
    public var nextDeadline: Instant? {
        switch phase {
        case .idle, .settled: nil
        case .sweeping(_, _, _, let due): due
        case .probing(_, let due): due
        }
    }

    /// The path agent selected a path found by the attempt: on probe socket `socket` (hard
    /// side) or from the chat socket (easy side, `nil`). Every other probe socket closes.
    public mutating func answered(socket: Int?, now: Instant) -> [Output] {
        let startedAt: Instant
        switch phase {
        case .sweeping(let start, _, _, _), .probing(let start, _): startedAt = start
        case .idle, .settled: return []
        }
        var outputs: [Output] = [.report(.answered(probes: probesSent, after: max(.zero, now - startedAt), socket: socket))]
        if openSockets > 0 {
            outputs.append(.closeSockets(keeping: socket))
            openSockets = socket == nil ? 0 : 1
        }
        failedAttempts = 0
        phase = .settled
        return outputs
    }

    /// The attempt ended without an answer: every probe socket closes; returns the wait
    /// before the next attempt with the outputs.
    public mutating func fail(now: Instant) -> (wait: Duration, outputs: [Output]) {
        let backoffs = configuration.backoffs
        let wait = backoffs.isEmpty ? .seconds(60) : backoffs[min(failedAttempts, backoffs.count - 1)]
        failedAttempts += 1
        var outputs = closeIfOpen()
        outputs.append(.report(.gaveUp(probes: probesSent, nextAttemptIn: wait)))
        phase = .idle
        return (wait, outputs)
    }

    /// Stops whatever runs (the path was lost, the peer left): every probe socket closes.
    public mutating func stop() -> [Output] {
        phase = .idle
        return closeIfOpen()
    }

    private mutating func closeIfOpen() -> [Output] {
        guard openSockets > 0 else { return [] }
        openSockets = 0
        return [.closeSockets(keeping: nil)]
    }

    /// A random port not probed yet in this attempt (`nil` when none is left).
    mutating func nextPort() -> UInt16? {
        let lowest = Int(configuration.lowestPort)
        let span = 65536 - lowest
        guard span > 0, probedPorts.count < span else { return nil }
        // Rejection sampling, bounded; then the next free port after a random one.
        for _ in 0..<32 {
            let port = UInt16(lowest + Int(random.next() % UInt64(span)))
            if probedPorts.insert(port).inserted { return port }
        }
        var candidate = lowest + Int(random.next() % UInt64(span))
        for _ in 0..<span {
            let port = UInt16(candidate)
            if probedPorts.insert(port).inserted { return port }
            candidate = candidate + 1 >= 65536 ? lowest : candidate + 1
        }
        return nil
    }
}

/// A small, seedable generator (SplitMix64), so that a test can replay an attempt's ports.
struct ProbeRandom: Hashable, Sendable {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
