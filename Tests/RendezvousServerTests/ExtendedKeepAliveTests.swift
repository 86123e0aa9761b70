import Addressing
import Crypto
import Identity
import Logging
import MonotonicTime
import NIOCore
import Registry
@testable import RendezvousServer
import Testing
import Transport
import Wire

/// An extended client registered with a real ``RendezvousService`` (challenge, signed
/// registration, session key), then keeping alive through the service's in-place path.
@Suite("RendezvousService extended keep-alive")
struct ExtendedKeepAliveServiceTests {
    static let client = try! Endpoint(parsing: "203.0.113.7:40001")
    static let alice = try! ClientID("alice")

    struct Session {
        let service: RendezvousService
        let key: KeyBytes
    }

    /// Sends `bytes` from `source`; returns every datagram the service queued, as bytes.
    static func send(_ service: RendezvousService, _ bytes: [UInt8], from source: Endpoint = client,
                     at now: Instant) -> [(Endpoint, [UInt8])] {
        var output = DatagramOutput()
        service.receive(ByteBuffer(bytes: bytes), from: source, now: now, output: &output)
        return output.pending.map { ($0.destination, Array($0.payload.readableBytesView)) }
    }

    static func registered() throws -> Session {
        let service = RendezvousService(configuration: .init(), logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }),
                                        now: .zero, printLine: { _ in })
        let identity = IdentityKey()
        let offer = ClassicMessage.register(alice, privateAddress: client.address, offers: [ExtendedMessage.offer]).encode()
        let challenge = try #require(send(service, offer, at: .zero).first)
        guard case .challenge(let cookie) = try ExtendedMessage.decode(challenge.1) else { throw WireError.malformed("no challenge") }
        let registration = SessionCrypto.signedRegistration(id: alice, cookie: cookie, privateEndpoints: [], natKind: .endpointIndependent,
                                                            identity: identity, subscribe: false)
        let answer = try #require(send(service, registration, at: .zero).first)
        guard case .registered(let serverKey, _, _, _, let nonce, _) = try ExtendedMessage.decode(answer.1),
              let key = SessionCrypto.sessionKey(privateKey: identity.agreement, peerPublicKey: serverKey, cookie: cookie,
                                                 nonce: nonce, id: alice)
        else { throw WireError.malformed("not registered") }
        return Session(service: service, key: key)
    }

    static func keepAlive(_ counter: UInt64, natKind: NATKind = .endpointIndependent, key: KeyBytes) -> [UInt8] {
        SessionCrypto.sealed(.keepAlive(id: alice, natKind: natKind), counter: counter, key: key)
    }

    @Test func aKeepAliveIsAcknowledgedInPlaceWithTheEncodersBytes() throws {
        let session = try Self.registered()
        for counter in UInt64(1)...3 {
            let sent = Self.send(session.service, Self.keepAlive(counter, key: session.key), at: .zero + .seconds(Int64(counter)))
            #expect(sent.count == 1)
            #expect(sent.first?.0 == Self.client)
            #expect(sent.first?.1 == ExtendedMessage.keepAliveAck(publicEndpoint: Self.client).encode())
        }
        #expect(session.service.counters.keepAlives == 3)
        #expect(session.service.registry.entry(for: Self.alice)?.lastCounter == 3)
    }

    @Test func keepAlivesTheInPlacePathLeavesAloneStillGetTheGeneralAnswers() throws {
        let session = try Self.registered()
        // A replay gets nothing.
        _ = Self.send(session.service, Self.keepAlive(5, key: session.key), at: .zero + .seconds(1))
        #expect(Self.send(session.service, Self.keepAlive(5, key: session.key), at: .zero + .seconds(2)).isEmpty)
        // A changed NAT kind is handled by the registry (acknowledged, not in place).
        let changed = Self.send(session.service, Self.keepAlive(6, natKind: .endpointDependent, key: session.key), at: .zero + .seconds(3))
        #expect(changed.map(\.1) == [ExtendedMessage.keepAliveAck(publicEndpoint: Self.client).encode()])
        #expect(session.service.registry.entry(for: Self.alice)?.natKind == .endpointDependent)
        // A wrong key: the server does not know the session (it echoes the tag).
        let forged = Self.keepAlive(7, key: KeyBytes(Array(repeating: 9, count: 32)))
        let refused = Self.send(session.service, forged, at: .zero + .seconds(4))
        #expect(refused.map(\.1) == [ExtendedMessage.unknownSession(Self.alice, echo: Token128(bytes: forged.suffix(16))).encode()])
        #expect(session.service.counters.keepAlives == 1)
        #expect(session.service.registry.entry(for: Self.alice)?.lastCounter == 6)
    }
}
