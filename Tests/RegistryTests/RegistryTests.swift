import Addressing
import Testing
import MonotonicTime
import NATGrouping
@testable import Registry
import Wire

// Fixtures: alice and bob share a NAT (same public IP, same /24); carol shares alice's
// private /24 but has another public IP; dave shares alice's public IP but not her /24.

private func id(_ text: String) -> ClientID { try! ClientID(text) }
private func ip(_ text: String) -> IPv4Address { try! IPv4Address(parsing: text) }
private func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }
private func at(_ seconds: Int64) -> Instant { Instant.zero + .seconds(seconds) }
private let nanosecond = Duration.nanoseconds(1)

private let alice = id("alice"), bob = id("bob"), carol = id("carol"), dave = id("dave")
private let A = ep("203.0.113.7:40001"), B = ep("203.0.113.7:40002")
private let C = ep("198.51.100.9:50000"), D = ep("203.0.113.7:40003")
private let X = ep("192.0.2.99:33333") // an impostor / a rebound client
private let alicePrivate = ip("10.0.0.5"), bobPrivate = ip("10.0.0.6")
private let carolPrivate = ip("10.0.0.7"), davePrivate = ip("10.0.1.5")

private func entry(_ id: ClientID, _ endpoint: Endpoint, _ privateAddress: IPv4Address, _ sequence: UInt64) -> Registry.Entry {
    Registry.Entry(id: id, publicEndpoint: endpoint, privateAddress: privateAddress, sequence: sequence)
}

private func send(_ message: ClassicMessage, _ to: Endpoint) -> Registry.Output { .send(message, to: to) }

private extension Registry {
    mutating func register(_ id: ClientID, _ privateAddress: IPv4Address, from source: Endpoint, at now: Instant) -> [Registry.Output] {
        receive(.register(id, privateAddress: privateAddress), from: source, now: now)
    }
}

@Suite("Registry registration")
struct RegistryRegistrationTests {
    @Test func firstRegistrationGetsOnlyItsOwnLines() {
        var registry = Registry()
        let actions = registry.register(alice, alicePrivate, from: A, at: at(0))
        #expect(versionless(actions) == [
            .report(.registered(entry(alice, A, alicePrivate, 0))),
            send(.peer(alice, A), A),
            // every client is "behind the same NAT" as itself
            send(.peerPrivate(alice, alicePrivate), A),
        ])
        #expect(registry.count == 1)
        #expect(versionless(registry.entry(for: alice)) == entry(alice, A, alicePrivate, 0))
        #expect(versionless(registry.clients) == [entry(alice, A, alicePrivate, 0)])
    }

    @Test func secondRegistrationSameNAT() {
        var registry = Registry()
        _ = registry.register(alice, alicePrivate, from: A, at: at(0))
        let actions = registry.register(bob, bobPrivate, from: B, at: at(1))
        #expect(versionless(actions) == [
            // the newcomer gets the existing list first
            send(.peer(alice, A), B),
            send(.peerPrivate(alice, alicePrivate), B),
            .report(.registered(entry(bob, B, bobPrivate, 1))),
            // then everyone, the newcomer included, gets the newcomer's line
            send(.peer(bob, B), A),
            send(.peerPrivate(bob, bobPrivate), A),
            send(.peer(bob, B), B),
            send(.peerPrivate(bob, bobPrivate), B),
        ])
        #expect(registry.clients.map(\.id) == [alice, bob])
    }

    @Test func secondRegistrationOtherPublicAddressSamePrivatePrefix() {
        var registry = Registry()
        _ = registry.register(alice, alicePrivate, from: A, at: at(0))
        let actions = registry.register(carol, carolPrivate, from: C, at: at(1))
        #expect(versionless(actions) == [
            send(.peer(alice, A), C),
            .report(.registered(entry(carol, C, carolPrivate, 1))),
            send(.peer(carol, C), A),
            send(.peer(carol, C), C),
            send(.peerPrivate(carol, carolPrivate), C),
        ])
    }

    @Test func secondRegistrationSamePublicAddressOtherPrivatePrefix() {
        var registry = Registry()
        _ = registry.register(alice, alicePrivate, from: A, at: at(0))
        let actions = registry.register(dave, davePrivate, from: D, at: at(1))
        #expect(versionless(actions) == [
            send(.peer(alice, A), D),
            .report(.registered(entry(dave, D, davePrivate, 1))),
            send(.peer(dave, D), A),
            send(.peer(dave, D), D),
            send(.peerPrivate(dave, davePrivate), D),
        ])
    }

    @Test func fourthRegistrationListsEveryoneInOrder() {
        var registry = Registry()
        _ = registry.register(alice, alicePrivate, from: A, at: at(0))
        _ = registry.register(carol, carolPrivate, from: C, at: at(1))
        _ = registry.register(dave, davePrivate, from: D, at: at(2))
        let actions = registry.register(bob, bobPrivate, from: B, at: at(3))
        #expect(versionless(actions) == [
            send(.peer(alice, A), B),
            send(.peerPrivate(alice, alicePrivate), B),
            send(.peer(carol, C), B),
            send(.peer(dave, D), B),
            .report(.registered(entry(bob, B, bobPrivate, 3))),
            send(.peer(bob, B), A),
            send(.peerPrivate(bob, bobPrivate), A),
            send(.peer(bob, B), C),
            send(.peer(bob, B), D),
            send(.peer(bob, B), B),
            send(.peerPrivate(bob, bobPrivate), B),
        ])
        #expect(registry.clients.map(\.id) == [alice, carol, dave, bob])
        #expect(registry.clients.map(\.sequence) == [0, 1, 2, 3])
    }

    @Test func offersAreIgnored() {
        var registry = Registry()
        let actions = registry.receive(.register(alice, privateAddress: alicePrivate, offers: ["x"]), from: A, now: at(0))
        #expect(versionless(actions.first) == .report(.registered(entry(alice, A, alicePrivate, 0))))
        #expect(versionless(registry.entry(for: alice)) == entry(alice, A, alicePrivate, 0))
    }

    @Test func sameNATRuleIsConfigurable() {
        var registry = Registry(configuration: .init(sameNATRule: SameNATRuleFixture.slash16))
        _ = registry.register(alice, alicePrivate, from: A, at: at(0))
        let actions = registry.register(dave, davePrivate, from: D, at: at(1))
        #expect(versionless(actions) == [
            send(.peer(alice, A), D),
            send(.peerPrivate(alice, alicePrivate), D),
            .report(.registered(entry(dave, D, davePrivate, 1))),
            send(.peer(dave, D), A),
            send(.peerPrivate(dave, davePrivate), A),
            send(.peer(dave, D), D),
            send(.peerPrivate(dave, davePrivate), D),
        ])
    }

    @Test func refreshFromTheSameEndpoint() {
        var registry = Registry()
        _ = registry.register(alice, alicePrivate, from: A, at: at(0))
        _ = registry.register(bob, bobPrivate, from: B, at: at(1))
        _ = registry.register(carol, carolPrivate, from: C, at: at(2))
        let newPrivate = ip("10.0.0.9")
        let actions = registry.register(alice, newPrivate, from: A, at: at(5))
        #expect(versionless(actions) == [
            .report(.refreshed(entry(alice, A, newPrivate, 0))),
            // the list again, herself included; nobody else is told
            send(.peer(alice, A), A),
            send(.peerPrivate(alice, newPrivate), A),
            send(.peer(bob, B), A),
            send(.peerPrivate(bob, bobPrivate), A),
            send(.peer(carol, C), A),
        ])
        #expect(versionless(registry.entry(for: alice)) == entry(alice, A, newPrivate, 0))
        #expect(registry.clients.map(\.id) == [alice, bob, carol])
        #expect(registry.count == 3)
    }

    @Test func refreshCountsAsKeepAlive() {
        var registry = Registry()
        _ = registry.register(alice, alicePrivate, from: A, at: at(0))
        _ = registry.register(alice, alicePrivate, from: A, at: at(20))
        #expect(versionless(registry.sweep(now: at(31))) == [])
        #expect(versionless(registry.sweep(now: at(50))) == [])
        #expect(versionless(registry.sweep(now: at(50) + nanosecond)) == [.report(.evicted(entry(alice, A, alicePrivate, 0)))])
    }

    @Test func refreshWithPrivateAddressMovingToAnotherPrefix() {
        var registry = Registry()
        _ = registry.register(alice, alicePrivate, from: A, at: at(0))
        _ = registry.register(bob, bobPrivate, from: B, at: at(1))
        let moved = ip("10.0.9.5")
        #expect(versionless(registry.register(alice, moved, from: A, at: at(2))) == [
            .report(.refreshed(entry(alice, A, moved, 0))),
            send(.peer(alice, A), A),
            send(.peerPrivate(alice, moved), A),
            send(.peer(bob, B), A), // no longer the same /24: no private line
        ])
    }

    @Test func sameIDFromAnotherEndpointWhileAliveIsRefused() {
        var registry = Registry()
        _ = registry.register(alice, alicePrivate, from: A, at: at(0))
        _ = registry.register(bob, bobPrivate, from: B, at: at(1))
        let before = registry.clients
        // exactly 30 s of silence: still alive
        let actions = registry.register(alice, ip("10.9.9.9"), from: X, at: at(30))
        #expect(versionless(actions) == [
            .report(.refused(alice, from: X, .idInUse)),
            send(.serverNotice("registration refused: ID alice - the ID is in use from another address"), X),
        ])
        #expect(registry.clients == before)
        // alice's liveness was not refreshed by the refused attempt
        #expect(versionless(registry.sweep(now: at(30) + nanosecond)) == [
            .report(.evicted(entry(alice, A, alicePrivate, 0))),
            send(.offline(alice, A), B),
        ])
    }

    @Test func sameIDFromAnotherEndpointAfterTheHolderTimedOutTakesOver() {
        var registry = Registry()
        _ = registry.register(alice, alicePrivate, from: A, at: at(0))
        _ = registry.register(bob, bobPrivate, from: B, at: at(1))
        _ = registry.receive(.keepAlive(bob), from: B, now: at(25))
        // 30 s + 1 ns after alice was last heard, before any sweep
        let newPrivate = ip("10.0.0.50")
        let actions = registry.register(alice, newPrivate, from: X, at: at(30) + nanosecond)
        #expect(versionless(actions) == [
            .report(.evicted(entry(alice, A, alicePrivate, 0))),
            send(.offline(alice, A), B),
            send(.peer(bob, B), X),
            .report(.registered(entry(alice, X, newPrivate, 2))),
            send(.peer(alice, X), B),
            send(.peer(alice, X), X),
            send(.peerPrivate(alice, newPrivate), X),
        ])
        #expect(versionless(registry.clients) == [entry(bob, B, bobPrivate, 1), entry(alice, X, newPrivate, 2)])
        // The new holder is timed from its own registration, not the old one's.
        #expect(versionless(registry.sweep(now: at(56))) == [.report(.evicted(entry(bob, B, bobPrivate, 1)))]
                + [send(.offline(bob, B), X)])
        #expect(versionless(registry.sweep(now: at(60) + nanosecond)) == [])
        #expect(versionless(registry.sweep(now: at(60) + nanosecond + nanosecond)) == [.report(.evicted(entry(alice, X, newPrivate, 2)))])
        #expect(registry.count == 0)
    }

    @Test func reservedIDIsRefused() {
        var registry = Registry()
        _ = registry.register(alice, alicePrivate, from: A, at: at(0))
        let actions = registry.register(id("server"), ip("10.0.0.8"), from: X, at: at(1))
        #expect(versionless(actions) == [
            .report(.refused(id("server"), from: X, .reservedID)),
            send(.serverNotice("registration refused: ID server - the ID is reserved"), X),
        ])
        #expect(registry.count == 1)
        #expect(versionless(registry.entry(for: id("server"))) == nil)
    }

    @Test func fullServerRefuses() {
        var registry = Registry(configuration: .init(maxClients: 2))
        _ = registry.register(alice, alicePrivate, from: A, at: at(0))
        _ = registry.register(bob, bobPrivate, from: B, at: at(1))
        let actions = registry.register(carol, carolPrivate, from: C, at: at(2))
        #expect(versionless(actions) == [
            .report(.refused(carol, from: C, .full)),
            send(.serverNotice("registration refused: ID carol - the server is full"), C),
        ])
        #expect(registry.clients.map(\.id) == [alice, bob])
        // a refresh of a registered client still works when full
        #expect(versionless(registry.register(bob, bobPrivate, from: B, at: at(3)).first) == .report(.refreshed(entry(bob, B, bobPrivate, 1))))
        // after someone leaves there is room again, and sequence numbers were not used up
        _ = registry.receive(.unregister(alice), from: A, now: at(4))
        #expect(versionless(registry.register(carol, carolPrivate, from: C, at: at(5))).contains(.report(.registered(entry(carol, C, carolPrivate, 2)))))
    }

    @Test func refusalDescriptions() {
        #expect(Registry.Refusal.idInUse.description == "the ID is in use from another address")
        #expect(Registry.Refusal.reservedID.description == "the ID is reserved")
        #expect(Registry.Refusal.full.description == "the server is full")
    }

    @Test func defaultConfiguration() {
        let configuration = Registry.Configuration()
        #expect(configuration.keepAliveTimeout == .seconds(30))
        #expect(configuration.sameNATRule.privatePrefixLength == 24)
        #expect(configuration.maxClients == 100_000)
    }
}

@Suite("Registry keep-alive, unregister, sweep")
struct RegistryLifecycleTests {
    private func threeClients() -> Registry {
        var registry = Registry()
        _ = registry.register(alice, alicePrivate, from: A, at: at(0))
        _ = registry.register(bob, bobPrivate, from: B, at: at(1))
        _ = registry.register(carol, carolPrivate, from: C, at: at(2))
        return registry
    }

    @Test func keepAliveFromTheRegisteredEndpoint() {
        var registry = threeClients()
        #expect(versionless(registry.receive(.keepAlive(alice), from: A, now: at(20))) == [])
        #expect(versionless(registry.sweep(now: at(35))) == [
            .report(.evicted(entry(bob, B, bobPrivate, 1))),
            .report(.evicted(entry(carol, C, carolPrivate, 2))),
            send(.offline(bob, B), A),
            send(.offline(carol, C), A),
        ])
        #expect(registry.clients.map(\.id) == [alice])
    }

    @Test func keepAliveFromAnotherEndpointIsIgnored() {
        var registry = threeClients()
        #expect(versionless(registry.receive(.keepAlive(alice), from: X, now: at(20))) == [
            .report(.ignored(.keepAlive(alice), from: X, .wrongEndpoint)),
        ])
        // it did not keep alice alive
        #expect(versionless(registry.sweep(now: at(30) + nanosecond)) == [
            .report(.evicted(entry(alice, A, alicePrivate, 0))),
            send(.offline(alice, A), B),
            send(.offline(alice, A), C),
        ])
    }

    @Test func keepAliveForUnknownID() {
        var registry = threeClients()
        #expect(versionless(registry.receive(.keepAlive(dave), from: D, now: at(3))) == [
            .report(.ignored(.keepAlive(dave), from: D, .unknownID)),
        ])
        #expect(registry.count == 3)
    }

    @Test func unregisterNotifiesEveryoneRemaining() {
        var registry = threeClients()
        #expect(versionless(registry.receive(.unregister(bob), from: B, now: at(5))) == [
            .report(.unregistered(entry(bob, B, bobPrivate, 1))),
            send(.unregistered(bob, B), A),
            send(.unregistered(bob, B), C),
        ])
        #expect(registry.clients.map(\.id) == [alice, carol])
        #expect(versionless(registry.entry(for: bob)) == nil)
        // bob's old liveness record does not produce an eviction later
        #expect(versionless(registry.sweep(now: at(31) + nanosecond)) == [
            .report(.evicted(entry(alice, A, alicePrivate, 0))),
            send(.offline(alice, A), C),
        ])
    }

    @Test func unregisterOfTheLastClient() {
        var registry = Registry()
        _ = registry.register(alice, alicePrivate, from: A, at: at(0))
        #expect(versionless(registry.receive(.unregister(alice), from: A, now: at(1))) == [
            .report(.unregistered(entry(alice, A, alicePrivate, 0))),
        ])
        #expect(registry.count == 0)
        #expect(versionless(registry.sweep(now: at(100))) == [])
    }

    @Test func unregisterFromAnotherEndpointIsIgnored() {
        var registry = threeClients()
        let before = registry.clients
        #expect(versionless(registry.receive(.unregister(bob), from: X, now: at(5))) == [
            .report(.ignored(.unregister(bob), from: X, .wrongEndpoint)),
        ])
        #expect(registry.clients == before)
    }

    @Test func unregisterForUnknownID() {
        var registry = threeClients()
        #expect(versionless(registry.receive(.unregister(dave), from: D, now: at(5))) == [
            .report(.ignored(.unregister(dave), from: D, .unknownID)),
        ])
    }

    @Test func reRegistrationAfterUnregister() {
        var registry = threeClients()
        _ = registry.receive(.unregister(alice), from: A, now: at(5))
        let actions = registry.register(alice, alicePrivate, from: X, at: at(6))
        #expect(versionless(actions) == [
            send(.peer(bob, B), X),
            send(.peer(carol, C), X),
            .report(.registered(entry(alice, X, alicePrivate, 3))),
            send(.peer(alice, X), B),
            send(.peer(alice, X), C),
            send(.peer(alice, X), X),
            send(.peerPrivate(alice, alicePrivate), X),
        ])
    }

    @Test func sweepAtExactlyTheTimeoutEvictsNobody() {
        var registry = Registry()
        _ = registry.register(alice, alicePrivate, from: A, at: at(0))
        _ = registry.register(bob, bobPrivate, from: B, at: at(0))
        #expect(versionless(registry.sweep(now: at(10))) == [])
        #expect(versionless(registry.sweep(now: at(30))) == [])
        #expect(registry.count == 2)
        #expect(versionless(registry.sweep(now: at(30) + nanosecond)) == [
            .report(.evicted(entry(alice, A, alicePrivate, 0))),
            .report(.evicted(entry(bob, B, bobPrivate, 1))),
        ])
        #expect(registry.count == 0)
    }

    @Test func sweepTellsRemainingClientsOffline() {
        var registry = threeClients()
        _ = registry.receive(.keepAlive(bob), from: B, now: at(15))
        _ = registry.receive(.keepAlive(carol), from: C, now: at(15))
        #expect(versionless(registry.sweep(now: at(30))) == [])
        #expect(versionless(registry.sweep(now: at(30) + nanosecond)) == [
            .report(.evicted(entry(alice, A, alicePrivate, 0))),
            send(.offline(alice, A), B),
            send(.offline(alice, A), C),
        ])
        #expect(versionless(registry.sweep(now: at(40))) == [])
        #expect(registry.clients.map(\.id) == [bob, carol])
    }

    @Test func customTimeout() {
        var registry = Registry(configuration: .init(keepAliveTimeout: .seconds(5)))
        _ = registry.register(alice, alicePrivate, from: A, at: at(0))
        #expect(versionless(registry.sweep(now: at(5))) == [])
        #expect(versionless(registry.sweep(now: at(5) + nanosecond)) == [.report(.evicted(entry(alice, A, alicePrivate, 0)))])
    }

    @Test("messages not meant for the server are ignored", arguments: [
        ClassicMessage.peer(alice, A),
        .peerPrivate(alice, alicePrivate),
        .unregistered(alice, A),
        .offline(alice, A),
        .chat(from: alice, text: "hi"),
        .serverNotice("hello"),
    ])
    func notForServer(_ message: ClassicMessage) {
        var registry = threeClients()
        let before = registry.clients
        #expect(versionless(registry.receive(message, from: A, now: at(3))) == [.report(.ignored(message, from: A, .notForServer))])
        #expect(registry.clients == before)
        // and they do not count as keep-alives
        #expect(versionless(registry.sweep(now: at(30) + nanosecond).first) == .report(.evicted(entry(alice, A, alicePrivate, 0))))
    }
}

private enum SameNATRuleFixture {
    static let slash16 = SameNATRule(privatePrefixLength: 16)
}
