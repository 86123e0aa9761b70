import Benchmark
import Crypto
import Identity
import KeepAlive
import LineEditor
import MonotonicTime
import Registry
import STUN
import Wire

// Hot paths of natchat-server and the shell, each with its malloc count. Thresholds (p90
// malloc counts) live in ../../Thresholds and `bin/bench --micro` checks them.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        warmupIterations: 10,
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: .kilo(100),
        thresholds: [.mallocCountTotal: .init(relative: [.p90: 10.0], absolute: [.p90: 2])]
    )

    serverPathBenchmarks()

    let chat = Array("client2@chat I love Network!!".utf8)
    Benchmark("Classic decode (chat)") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try? ClassicMessage.decode(chat)) }
    }

    let key = KeyBytes(Array(repeating: 7, count: 32))
    let alice = try! ClientID("alice")
    let keepAlive = SessionCrypto.authenticated(.keepAlive(id: alice, natKind: .endpointIndependent, counter: 42, tag: .zero), key: key)
    Benchmark("Extended decode (keep-alive)") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try? ExtendedMessage.decode(keepAlive)) }
    }
    Benchmark("Session MAC verify (keep-alive)") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(SessionCrypto.verifyAuthenticated(keepAlive, key: key)) }
    }

    let request = STUN.bindingRequest(STUN.TransactionID(high: 1, low: 2))
    let mapped = Endpoint(address: IPv4Address(203, 0, 113, 7), port: 40001)
    Benchmark("STUN request parse + answer bytes") { benchmark in
        for _ in benchmark.scaledIterations {
            guard let transaction = STUN.bindingRequestTransaction(request) else { continue }
            var sum: UInt64 = 0
            STUN.writeBindingSuccess(transaction, mapped: mapped) { value, _ in sum &+= value }
            blackHole(sum)
        }
    }

    for size in [1_000, 10_000, 100_000] {
        Benchmark("Registry: authenticated keep-alive with \(size) registered", configuration: .init(scalingFactor: .kilo)) { benchmark in
            var world = RegisteredWorld(size: size)
            var registry = world.takeRegistry() // sole owner: no copy-on-write inside the measurement
            var random = SystemRandomNumberGenerator()
            var counters = [UInt64](repeating: 1, count: size)
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                let index = Int.random(in: 0..<size)
                counters[index] += 1
                let bytes = SessionCrypto.authenticated(.keepAlive(id: world.ids[index], natKind: .none, counter: counters[index],
                                                                   tag: .zero), key: world.keys[index])
                blackHole(registry.receive(try! ExtendedMessage.decode(bytes), bytes: bytes, from: world.source(index),
                                           now: Instant(nanoseconds: 1), random: &random))
            }
        }
        Benchmark("Registry: one more registration with \(size) registered", configuration: .init(scalingFactor: .kilo)) { benchmark in
            var world = RegisteredWorld(size: size)
            var registry = world.takeRegistry()
            var random = SystemRandomNumberGenerator()
            var next = size
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                let id = try! ClientID("n\(next)")
                let source = Endpoint(address: IPv4Address(bits: 0x0B00_0000 | UInt32(next)), port: 10081)
                next += 1
                let bytes = SessionCrypto.signedRegistration(id: id, cookie: .zero, privateEndpoints: [], natKind: .none,
                                                             identity: world.identity, subscribe: false)
                blackHole(registry.receive(try! ExtendedMessage.decode(bytes), bytes: bytes, from: source, now: .zero, random: &random))
            }
        }
    }

    for size in [1_000, 10_000, 100_000] {
        Benchmark("Liveness sweep of \(size) (all alive)", configuration: .init(scalingFactor: .one)) { benchmark in
            var table = LivenessTable<Int>(timeout: .seconds(30))
            for key in 0..<size { table.touch(key, now: .zero) }
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations { blackHole(table.expire(now: Instant.zero + .seconds(10))) }
        }
    }

    let peers = (0..<10_000).map { "peer\($0)" }
    Benchmark("Tab completion over 10 000 peer IDs", configuration: .init(scalingFactor: .one)) { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(Completion.candidates(line: "@chat peer12", start: 6, text: "peer12", commands: [], peers: peers))
        }
    }
}

/// Accepts the zero cookie: benchmarks measure the registry, not address validation.
struct AcceptingValidator: AddressValidator {
    func cookie(for source: Endpoint, now: Instant) -> Token128 { .zero }
    func isValid(_ cookie: Token128, for source: Endpoint, now: Instant) -> Bool { cookie == .zero }
}

/// A registry holding `size` extended clients that do not subscribe to the roster.
struct RegisteredWorld {
    let identity = IdentityKey()
    var registry: Registry?
    var ids: [ClientID] = []
    var keys: [KeyBytes] = []

    mutating func takeRegistry() -> Registry {
        defer { registry = nil }
        return registry!
    }

    func source(_ index: Int) -> Endpoint { Endpoint(address: IPv4Address(bits: 0x0A00_0000 | UInt32(index)), port: 10081) }

    init(size: Int) {
        let serverKey = Curve25519.KeyAgreement.PrivateKey()
        var registry = Registry(configuration: .init(keepAliveTimeout: .seconds(3600), maxClients: size * 2 + 1_000_000),
                                validator: AcceptingValidator(), serverKey: serverKey)
        var random = SystemRandomNumberGenerator()
        for index in 0..<size {
            let id = try! ClientID("c\(index)")
            let bytes = SessionCrypto.signedRegistration(id: id, cookie: .zero, privateEndpoints: [], natKind: .none,
                                                         identity: identity, subscribe: false)
            let actions = registry.receive(try! ExtendedMessage.decode(bytes), bytes: bytes, from: source(index), now: .zero,
                                           random: &random)
            for case .sendExtended(.registered(let server, _, _, _, let nonce), _) in actions {
                if let key = SessionCrypto.sessionKey(privateKey: identity.agreement, peerPublicKey: server, cookie: .zero,
                                                      nonce: nonce, id: id) {
                    ids.append(id)
                    keys.append(key)
                }
            }
        }
        precondition(ids.count == size, "every benchmark client registers")
        self.registry = registry
    }
}
