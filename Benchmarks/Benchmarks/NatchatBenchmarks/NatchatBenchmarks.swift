@preconcurrency import Benchmark // sanitizeNames() renames through Benchmark.benchmarks, a plain static var
import Addressing
import Crypto
import Foundation
import Identity
import KeepAlive
import LineEditor
import MonotonicTime
import Registry
import STUN
import Wire

// Hot paths of natchat-server and the shell, each with its malloc count.
//
// Gate: the p90 of `mallocCountTotal` of every benchmark is checked in under
// Benchmarks/Thresholds/ (the plugin's static thresholds, one NatchatBenchmarks.NAME.p90.json
// per benchmark). `bin/bench --micro` runs the benchmarks and fails when a count rises by
// half an allocation per operation or more; `bin/bench --update-thresholds` rewrites the
// files after an intended change. Wall-clock time is measured and shown, never gated.
//
// Names: benchmark 1.38.1 writes a threshold file with spaces and slashes of the name
// replaced by `_` but reads it back under the raw name, so such a benchmark would go
// unchecked. `sanitizeNames()` (run after every registration) turns every name of the
// target into a portable file name, so write and read agree; prefer such names
// (Area.operation.size) to begin with.
//
// Malloc counts are raw per measured iteration: a benchmark with `scalingFactor: .kilo`
// runs its body 1000 times per iteration, so 21 000 means 21 allocations per operation.
// Every iteration does exactly the same work from the same starting state (per-iteration
// state is prepared before `startMeasurement()`), so the counts are deterministic.
//
// NATCHAT_BENCH_SMOKE=1 (CI) shortens each benchmark to a few iterations; the malloc
// counts do not depend on the number of iterations.
let benchmarks: @Sendable () -> Void = {
    let smoke = ProcessInfo.processInfo.environment["NATCHAT_BENCH_SMOKE"].map { $0 != "" && $0 != "0" } ?? false
    Benchmark.defaultConfiguration = .init(
        metrics: [.mallocCountTotal, .wallClock],
        warmupIterations: smoke ? 2 : 10,
        scalingFactor: .kilo,
        maxDuration: smoke ? .milliseconds(250) : .seconds(2),
        maxIterations: smoke ? 25 : .kilo(100),
        // For benchmarks of 1000 operations per iteration; others pass mallocGate(theirScaling).
        thresholds: mallocGate(.kilo)
    )
    defer { sanitizeNames() }

    /// Registers a benchmark whose malloc count is gated (see `mallocGate`).
    func gated(_ name: String, scaling: BenchmarkScalingFactor = .kilo, closure: @escaping Benchmark.BenchmarkClosure) {
        Benchmark(name, configuration: .init(scalingFactor: scaling, thresholds: mallocGate(scaling)), closure: closure)
    }

    // The server's STUN, keep-alive and relay datagrams through RendezvousService
    // (ServerPathBenchmarks.swift): the per-datagram target is zero allocations.
    serverPathBenchmarks()

    // MARK: Datagram decoding and the STUN answer (no state)

    let chat = Array("client2@chat I love Network!!".utf8)
    gated("Classic.decodeChat") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try? ClassicMessage.decode(chat)) }
    }

    let key = KeyBytes(Array(repeating: 7, count: 32))
    let alice = try! ClientID("alice")
    let keepAlive = SessionCrypto.sealed(.keepAlive(id: alice, natKind: .endpointIndependent), counter: 42, key: key)
    gated("Extended.decodeKeepAlive") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try? ExtendedMessage.decode(keepAlive)) }
    }
    // The in-place keep-alive path: the frame read from the receive buffer, its tag checked there.
    gated("Extended.keepAliveFrame") { benchmark in
        keepAlive.withUnsafeBytes { datagram in
            for _ in benchmark.scaledIterations { blackHole(ExtendedMessage.KeepAliveFrame(datagram)?.counter) }
        }
    }
    gated("SessionMAC.verifyKeepAlive") { benchmark in
        keepAlive.withUnsafeBytes { datagram in
            for _ in benchmark.scaledIterations { blackHole(SessionCrypto.verifyAuthenticated(datagram, key: key)) }
        }
    }

    let request = STUN.bindingRequest(STUN.TransactionID(high: 1, low: 2))
    let mapped = Endpoint(address: IPv4Address(203, 0, 113, 7), port: 40001)
    gated("STUN.parseAndAnswer") { benchmark in
        for _ in benchmark.scaledIterations {
            guard let transaction = STUN.bindingRequestTransaction(request) else { continue }
            withUnsafeTemporaryAllocation(byteCount: STUN.bindingSuccessLength, alignment: 8) { response in
                blackHole(STUN.writeBindingSuccess(transaction, mapped: mapped, into: response))
            }
        }
    }

    // MARK: The registry at 1 000 / 10 000 / 100 000 registered clients (server side only)

    for size in [1_000, 10_000, 100_000] {
        // 1000 authenticated keep-alives from distinct clients, encoded by the clients
        // beforehand: the measurement is the server's in-place path (frame read in the
        // buffer, session looked up by address, tag checked, counter and liveness updated).
        Benchmark("Registry.keepAlive.\(size)", configuration: .init(thresholds: mallocGate(.kilo))) { benchmark, world in
            let acknowledged = world.replay(measuring: benchmark) { world.acknowledge($0, in: &$1) }
            precondition(acknowledged == world.datagrams.count + world.warmUps.count, "every keep-alive took the in-place path")
        } setup: {
            RegisteredWorld(size: size, traffic: .keepAlives)
        }
        // 1000 look-ups of registered IDs spread over the table (what a punch or a peer
        // query starts with).
        Benchmark("Registry.lookup.\(size)", configuration: .init(thresholds: mallocGate(.kilo))) { benchmark, world in
            var found = 0
            benchmark.startMeasurement()
            for id in world.lookups where world.registry.entry(for: id) != nil { found += 1 }
            benchmark.stopMeasurement()
            precondition(found == world.lookups.count, "every looked-up ID is registered")
        } setup: {
            RegisteredWorld(size: size, traffic: .keepAlives)
        }
        // 1000 relay requests between registered clients spread over the table, through the
        // in-place path: sender and peer looked up, tag checked, relay budget accounted.
        Benchmark("Registry.relay.\(size)", configuration: .init(thresholds: mallocGate(.kilo))) { benchmark, world in
            let forwarded = world.replay(measuring: benchmark) { world.forward($0, in: &$1) }
            precondition(forwarded == world.datagrams.count + world.warmUps.count, "every relay request took the in-place path")
        } setup: {
            RegisteredWorld(size: size, traffic: .relays)
        }
        // 1000 new (signed, non-subscribing) registrations, signed beforehand: the
        // measurement is the server's decode, signature check, key agreement and insert.
        Benchmark("Registry.register.\(size)", configuration: .init(thresholds: mallocGate(.kilo))) { benchmark, world in
            var registry = world.registry
            var random = SystemRandomNumberGenerator()
            for datagram in world.warmUps { world.deliver(datagram, to: &registry, random: &random) }
            benchmark.startMeasurement()
            for datagram in world.datagrams { world.deliver(datagram, to: &registry, random: &random) }
            benchmark.stopMeasurement()
        } setup: {
            RegisteredWorld(size: size, traffic: .registrations)
        }
    }

    // MARK: The sweep and the shell

    for size in [1_000, 10_000, 100_000] {
        // Everyone alive: the sweep looks at the oldest entry only.
        Benchmark("Liveness.sweep.\(size)", configuration: .init(scalingFactor: .one, thresholds: mallocGate(.one))) {
            (benchmark: Benchmark, table: LivenessTable<Int>) in
            var table = table
            for _ in benchmark.scaledIterations { blackHole(table.handleTimeout(now: Instant.zero + .seconds(10))) }
        } setup: {
            var table = LivenessTable<Int>(timeout: .seconds(30))
            for key in 0..<size { table.touch(key, now: .zero) }
            return table
        }
    }

    let peers = (0..<10_000).map { "peer\($0)" }
    gated("Completion.peers10000", scaling: .one) { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(Completion.candidates(line: "@chat peer12", start: 6, text: "peer12", commands: [], peers: peers))
        }
    }
    gated("Completion.showList.peers10000", scaling: .one) { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(Completion.candidates(line: "@show_list peer12", start: 11, text: "peer12", commands: [], peers: peers))
        }
    }
}

/// Gives every registered benchmark a name that is also a portable file name: each run of
/// characters other than ASCII letters, digits, `.`, `-` and `_` becomes one `_`
/// ("Server path: relay" becomes "Server_path_relay"). Benchmark 1.38.1 then writes and
/// reads the threshold file under the same name.
func sanitizeNames() {
    func portable(_ name: String) -> String {
        var result = ""
        for character in name {
            let keep = character.isASCII && (character.isLetter || character.isNumber || ".-_".contains(character))
            if keep {
                result.append(character)
            } else if !result.hasSuffix("_") {
                result.append("_")
            }
        }
        return result
    }
    for benchmark in Benchmark.benchmarks where portable(benchmark.name) != benchmark.name {
        benchmark.name = portable(benchmark.name)
    }
}

/// The malloc gate: p90 of `mallocCountTotal` may rise by less than half an allocation per
/// operation (500 per iteration of 1000 operations; 0 for benchmarks of one operation).
/// Only `mallocCountTotal` is listed, and the threshold files hold only that metric.
func mallocGate(_ scaling: BenchmarkScalingFactor) -> [BenchmarkMetric: BenchmarkThresholds] {
    [.mallocCountTotal: .init(absolute: [.p90: (scaling.rawValue - 1) / 2])]
}

/// Accepts the zero cookie (issued "now", so every registration of a new ID is fresh):
/// benchmarks measure the registry, not address validation.
struct AcceptingValidator: AddressValidator {
    func cookie(for source: Endpoint, now: Instant) -> Token128 { .zero }
    func issueTime(of cookie: Token128, for source: Endpoint, now: Instant) -> Instant? { cookie == .zero ? now : nil }
    var cookieLifetime: Duration { .seconds(60) }
}

/// A registry holding `size` extended clients that do not subscribe to the roster, built
/// once per benchmark (setup), plus the datagrams one iteration feeds it.
struct RegisteredWorld {
    enum Traffic { case keepAlives, registrations, relays }

    struct Datagram {
        let bytes: [UInt8]
        let source: Endpoint
    }

    /// Never mutated: each iteration mutates its own copy.
    let registry: Registry
    /// Delivered before the measurement, to make the copy's storage unique: for keep-alives
    /// and relays one from every 256th client, so that each chunk of the registry's client
    /// table (1 024 entries, copied on its first write after the copy) is written before the
    /// clock starts; a registration appends to the last chunk only.
    let warmUps: [Datagram]
    /// The 1000 datagrams of one measured iteration.
    let datagrams: [Datagram]
    /// 1000 registered IDs spread over the table.
    let lookups: [ClientID]

    static func source(_ index: Int) -> Endpoint { Endpoint(address: IPv4Address(bits: 0x0A00_0000 | UInt32(index)), port: 10081) }

    /// On a copy of the registry: the warm-up datagrams (they make the copy's storage unique,
    /// so nothing below copies on write; the server itself never copies its registry), then,
    /// measured, the 1000 datagrams through `take`. Returns how many `take` accepted, the
    /// warm-ups included.
    func replay(measuring benchmark: Benchmark, _ take: (Datagram, inout Registry) -> Bool) -> Int {
        var registry = self.registry // a copy sharing storage with the pristine registry
        var taken = 0
        for datagram in warmUps where take(datagram, &registry) { taken += 1 }
        benchmark.startMeasurement()
        for datagram in datagrams where take(datagram, &registry) { taken += 1 }
        benchmark.stopMeasurement()
        return taken
    }

    func acknowledge(_ datagram: Datagram, in registry: inout Registry) -> Bool {
        datagram.bytes.withUnsafeBytes { registry.acknowledgeKeepAlive($0, from: datagram.source, now: Instant(nanoseconds: 1)) }
    }

    func forward(_ datagram: Datagram, in registry: inout Registry) -> Bool {
        datagram.bytes.withUnsafeBytes { raw in
            guard let frame = ExtendedMessage.RelayFrame(raw) else { return false }
            if case .forward = registry.forwardRelay(frame, from: datagram.source, now: Instant(nanoseconds: 1)) { return true }
            return false
        }
    }

    func deliver<G: RandomNumberGenerator>(_ datagram: Datagram, to registry: inout Registry, random: inout G) {
        blackHole(registry.receive(try! ExtendedDatagram.decode(datagram.bytes), bytes: datagram.bytes, from: datagram.source, now: Instant(nanoseconds: 1), random: &random))
    }

    init(size: Int, traffic: Traffic) {
        let identity = IdentityKey()
        let serverKey = Curve25519.KeyAgreement.PrivateKey()
        var registry = Registry(configuration: .init(keepAliveTimeout: .seconds(3600), maxClients: size * 2 + 1_000_000),
                                validator: AcceptingValidator(), serverKey: serverKey)
        var random = SystemRandomNumberGenerator()
        var ids: [ClientID] = []
        var keys: [KeyBytes] = []
        func registration(_ id: ClientID) -> [UInt8] {
            SessionCrypto.signedRegistration(id: id, cookie: .zero, privateEndpoints: [], natKind: .none, identity: identity,
                                             subscribe: false)
        }
        for index in 0..<size {
            let id = try! ClientID("c\(index)")
            let bytes = registration(id)
            let actions = registry.receive(try! ExtendedDatagram.decode(bytes), bytes: bytes, from: Self.source(index), now: .zero,
                                           random: &random)
            for case .sendExtended(.registered(let server, _, _, _, let nonce, _), _) in actions {
                if let key = SessionCrypto.sessionKey(privateKey: identity.agreement, peerPublicKey: server, cookie: .zero,
                                                      nonce: nonce, id: id) {
                    ids.append(id)
                    keys.append(key)
                }
            }
        }
        precondition(ids.count == size, "every benchmark client registers")
        self.registry = registry

        func datagram(_ bytes: [UInt8], from source: Endpoint) -> Datagram { Datagram(bytes: bytes, source: source) }
        lookups = (0..<1_000).map { ids[($0 * 7919) % size] }
        switch traffic {
        case .keepAlives:
            func keepAlive(_ index: Int, counter: UInt64) -> Datagram {
                datagram(SessionCrypto.sealed(.keepAlive(id: ids[index], natKind: .none), counter: counter, key: keys[index]), from: Self.source(index))
            }
            warmUps = stride(from: 0, to: size, by: 256).map { keepAlive($0, counter: 1) }
            // A fixed spread over the table (7919 is prime, so for 1000 clients each is hit once).
            datagrams = (0..<1_000).map { keepAlive(($0 * 7919) % size, counter: UInt64(2 + $0)) }
        case .relays:
            let payload = [UInt8](repeating: 0xAB, count: 64)
            func relay(_ index: Int, to peer: Int, counter: UInt64) -> Datagram {
                datagram(SessionCrypto.sealed(.relay(id: ids[index], to: ids[peer], payload: payload), counter: counter, key: keys[index]), from: Self.source(index))
            }
            warmUps = stride(from: 0, to: size, by: 256).map { relay($0, to: ($0 + 1) % size, counter: 1) }
            datagrams = (0..<1_000).map { relay(($0 * 7919) % size, to: ($0 * 7919 + 1) % size, counter: UInt64(2 + $0)) }
        case .registrations:
            func newcomer(_ n: Int) -> Datagram {
                datagram(registration(try! ClientID("n\(n)")), from: Endpoint(address: IPv4Address(bits: 0x0B00_0000 | UInt32(n)), port: 10081))
            }
            warmUps = [newcomer(size)]
            datagrams = (1...1_000).map { newcomer(size + $0) }
        }
    }
}
