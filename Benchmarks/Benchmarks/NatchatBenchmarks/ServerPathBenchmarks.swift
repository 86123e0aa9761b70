import Addressing
import Admission
import Benchmark
import Identity
import Logging
import MonotonicTime
import NIOCore
import RendezvousServer
import STUN
import Transport
import Wire

/// The server's three hot datagrams through `RendezvousService` exactly as the transport
/// drives it (the sender's socket address reused, replies written into the batch buffer,
/// the buffer cleared after each "flush"), so the malloc counts are those of one datagram
/// on the real path: the target is zero.
func serverPathBenchmarks() {
    let source = Endpoint(address: IPv4Address(203, 0, 113, 7), port: 40001)
    let address = source.socketAddress

    Benchmark("Server path: STUN Binding request answered", configuration: .init(scalingFactor: .kilo)) { benchmark in
        let world = ServerWorld()
        let request = ByteBuffer(bytes: STUN.bindingRequest(STUN.TransactionID(high: 1, low: 2)))
        var output = DatagramOutput()
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            output.handling(datagramFrom: source, address: address) { world.service.receive(request, from: source, now: .zero, output: &$0) }
            precondition(output.count == 1)
            output.removeAll()
        }
    }

    Benchmark("Server path: authenticated keep-alive acknowledged", configuration: .init(scalingFactor: .kilo)) { benchmark in
        let world = ServerWorld()
        guard let client = world.register(ClientID.benchmark("alice"), from: source) else { fatalError("registration failed") }
        var datagram = ByteBuffer(bytes: SessionCrypto.sealed(.keepAlive(id: client.id, natKind: .none), counter: 1, key: client.key))
        let sent = world.replay(&datagram, of: client, from: source, address: address, benchmark: benchmark)
        precondition(world.service.counters.keepAlives == sent, "every keep-alive took the in-place path")
    }

    Benchmark("Server path: relay between two registered clients", configuration: .init(scalingFactor: .kilo)) { benchmark in
        let world = ServerWorld()
        let peerSource = Endpoint(address: IPv4Address(198, 51, 100, 9), port: 50000)
        guard let client = world.register(ClientID.benchmark("alice"), from: source),
              world.register(ClientID.benchmark("carol"), from: peerSource) != nil
        else { fatalError("registration failed") }
        var datagram = ByteBuffer(bytes: SessionCrypto.sealed(.relay(id: client.id, to: ClientID.benchmark("carol"), payload: Array(repeating: 0x5A, count: 100)), counter: 1, key: client.key))
        let sent = world.replay(&datagram, of: client, from: source, address: address, benchmark: benchmark)
        precondition(world.service.counters.relayedDatagrams == sent, "every relay took the in-place path")
    }
}

extension ClientID {
    static func benchmark(_ text: String) -> ClientID {
        guard let id = try? ClientID(text) else { fatalError("bad benchmark ID") }
        return id
    }
}

/// A rendezvous service with generous limits (benchmarks measure the path, not the limits).
final class ServerWorld {
    let service: RendezvousService

    struct Client {
        let id: ClientID
        let key: KeyBytes

        /// Writes a new counter and its tag into a session datagram in place (no allocation).
        func restamp(_ datagram: inout ByteBuffer, counter: UInt64) {
            let tagOffset = datagram.readableBytes - 16
            datagram.setInteger(counter, at: datagram.readerIndex + tagOffset - 8)
            let tag = datagram.withUnsafeReadableBytes { key.mac.tag(UnsafeRawBufferPointer(rebasing: $0[..<tagOffset])) }
            datagram.setInteger(tag.high, at: datagram.readerIndex + tagOffset)
            datagram.setInteger(tag.low, at: datagram.readerIndex + tagOffset + 8)
        }
    }

    init() {
        var relay = RelayLimiter<ClientID>.Configuration()
        relay.packetsPerSecond = 1e15
        relay.bytesPerSecond = 1e15
        relay.globalBytesPerSecond = 1e15
        service = RendezvousService(configuration: .init(registry: .init(relay: relay)),
                                    logger: Logger(label: "bench", factory: { _ in SwiftLogNoOpLogHandler() }), now: .zero,
                                    printLine: { _ in })
    }

    /// The measured loop of the session benchmarks: `datagram` again and again with a fresh
    /// counter and tag, handled as the transport handles it, one datagram out each time.
    /// Returns how many were sent.
    func replay(_ datagram: inout ByteBuffer, of client: Client, from source: Endpoint, address: SocketAddress,
                benchmark: Benchmark) -> Int {
        var counter: UInt64 = 1
        var output = DatagramOutput()
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            counter += 1
            client.restamp(&datagram, counter: counter)
            output.handling(datagramFrom: source, address: address) { service.receive(datagram, from: source, now: .zero, output: &$0) }
            precondition(output.count == 1)
            output.removeAll()
        }
        return Int(counter - 1)
    }

    /// The whole extended registration through the service: offer, challenge, signed registration.
    func register(_ id: ClientID, from source: Endpoint) -> Client? {
        let identity = IdentityKey()
        var output = DatagramOutput()
        let offer = ClassicMessage.register(id, privateAddress: source.address, offers: [ExtendedMessage.offer]).encode()
        service.receive(ByteBuffer(bytes: offer), from: source, now: .zero, output: &output)
        guard let challenge = output.pending.first,
              case .challenge(let cookie) = try? ExtendedMessage.decode(Array(challenge.payload.readableBytesView)) else { return nil }
        output.removeAll()
        let registration = SessionCrypto.signedRegistration(id: id, cookie: cookie, privateEndpoints: [], natKind: .none,
                                                            identity: identity, subscribe: false)
        service.receive(ByteBuffer(bytes: registration), from: source, now: .zero, output: &output)
        for (_, payload) in output.pending {
            if case .registered(let serverKey, _, _, _, let nonce, _) = try? ExtendedMessage.decode(Array(payload.readableBytesView)),
               let key = SessionCrypto.sessionKey(privateKey: identity.agreement, peerPublicKey: serverKey, cookie: cookie,
                                                  nonce: nonce, id: id) {
                return Client(id: id, key: key)
            }
        }
        return nil
    }
}
