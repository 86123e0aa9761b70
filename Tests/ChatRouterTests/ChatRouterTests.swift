import Addressing
import Testing
import ChatRouter
import Wire

private func id(_ text: String) -> ClientID { try! ClientID(text) }
private func ip(_ text: String) -> IPv4Address { try! IPv4Address(parsing: text) }
private func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }

private let alice = id("alice"), bob = id("bob"), carol = id("carol"), dave = id("dave")
private let S = ep("198.51.100.1:10080")
private let A = ep("203.0.113.7:40001"), B = ep("203.0.113.7:40002")
private let C = ep("198.51.100.9:50000"), D = ep("192.0.2.4:60000")
private let stranger = ep("192.0.2.66:6666")
private let bobPrivate = ip("10.0.0.6")

/// alice's router after the server listed bob (same NAT), carol, then alice herself.
private func registeredRouter(privatePort: UInt16 = 10081) -> ChatRouter {
    var router = ChatRouter(selfID: alice, server: S, privatePort: privatePort)
    _ = router.receive(.peer(bob, B), from: S)
    _ = router.receive(.peerPrivate(bob, bobPrivate), from: S)
    _ = router.receive(.peer(carol, C), from: S)
    _ = router.receive(.peer(alice, A), from: S)
    _ = router.receive(.peerPrivate(alice, ip("10.0.0.5")), from: S)
    return router
}

@Suite("ChatRouter registration")
struct ChatRouterRegistrationTests {
    @Test func initialState() {
        let router = ChatRouter(selfID: alice, server: S)
        #expect(router.selfID == alice)
        #expect(router.server == S)
        #expect(router.privatePort == 10081)
        #expect(router.isRegistered == false)
        #expect(router.publicEndpoint == nil)
        #expect(router.roster == [])
        #expect(router.peerIDs == [])
    }

    @Test func registrationEventWhenTheOwnLineArrives() {
        var router = ChatRouter(selfID: alice, server: S)
        #expect(router.receive(.peer(bob, B), from: S) == [])
        #expect(router.receive(.peerPrivate(bob, bobPrivate), from: S) == [])
        #expect(router.receive(.peer(carol, C), from: S) == [])
        #expect(router.isRegistered == false)
        #expect(router.receive(.peer(alice, A), from: S) == [
            .event(.registered(publicEndpoint: A, peers: [
                Peer(id: bob, publicEndpoint: B, sameNATPrivateAddress: bobPrivate),
                Peer(id: carol, publicEndpoint: C),
            ])),
        ])
        #expect(router.isRegistered)
        #expect(router.publicEndpoint == A)
        // the server's private line about ourselves changes nothing
        #expect(router.receive(.peerPrivate(alice, ip("10.0.0.5")), from: S) == [])
        #expect(router.peer(alice) == Peer(id: alice, publicEndpoint: A))
    }

    @Test func registrationAsFirstClient() {
        var router = ChatRouter(selfID: alice, server: S)
        #expect(router.receive(.peer(alice, A), from: S) == [.event(.registered(publicEndpoint: A, peers: []))])
        #expect(router.roster == [Peer(id: alice, publicEndpoint: A)])
        #expect(router.peerIDs == [])
    }

    @Test func repeatedOwnLineIsSilent() {
        var router = registeredRouter()
        #expect(router.receive(.peer(alice, A), from: S) == [])
        #expect(router.receive(.peer(bob, B), from: S) == [])
        #expect(router.receive(.peerPrivate(bob, bobPrivate), from: S) == [])
    }

    @Test func joinsAfterRegistration() {
        var router = registeredRouter()
        #expect(router.receive(.peer(dave, D), from: S) == [.event(.joined(Peer(id: dave, publicEndpoint: D)))])
        #expect(router.roster.map(\.id) == [bob, carol, alice, dave])
    }

    @Test func sameNATAfterRegistration() {
        var router = registeredRouter()
        _ = router.receive(.peer(dave, D), from: S)
        #expect(router.receive(.peerPrivate(dave, ip("10.0.0.9")), from: S) == [.event(.sameNAT(dave, ip("10.0.0.9")))])
        #expect(router.receive(.peerPrivate(dave, ip("10.0.0.9")), from: S) == [])
        #expect(router.receive(.peerPrivate(dave, ip("10.0.0.10")), from: S) == [.event(.sameNAT(dave, ip("10.0.0.10")))])
        #expect(router.peer(dave)?.sameNATPrivateAddress == ip("10.0.0.10"))
    }

    @Test func privateLineForUnknownPeerIsSilent() {
        var router = registeredRouter()
        #expect(router.receive(.peerPrivate(dave, ip("10.0.0.9")), from: S) == [])
        #expect(router.peer(dave) == nil)
    }

    @Test func reset() {
        var router = registeredRouter()
        router.reset()
        #expect(router.isRegistered == false)
        #expect(router.publicEndpoint == nil)
        #expect(router.roster == [])
        #expect(router.peerIDs == [])
        #expect(router.receive(.peer(alice, A), from: S) == [.event(.registered(publicEndpoint: A, peers: []))])
    }
}

@Suite("ChatRouter routing")
struct ChatRouterRoutingTests {
    @Test func sameNATPeerGoesToPrivateAddressAndClassicPort() {
        let router = registeredRouter()
        #expect(router.route(to: bob) == .success(ep("10.0.0.6:10081")))
    }

    @Test func customPrivatePort() {
        let router = registeredRouter(privatePort: 12345)
        #expect(router.route(to: bob) == .success(ep("10.0.0.6:12345")))
        #expect(router.route(to: carol) == .success(C))
    }

    @Test func otherPeerGoesToPublicEndpoint() {
        let router = registeredRouter()
        #expect(router.route(to: carol) == .success(C))
    }

    @Test func selfGoesToOwnPublicEndpoint() {
        let router = registeredRouter()
        #expect(router.route(to: alice) == .success(A))
    }

    @Test func unknownPeer() {
        let router = registeredRouter()
        #expect(router.route(to: dave) == .failure(.unknownPeer(dave)))
        // Nothing is sent; the user hears that the server has not listed dave.
        #expect(router.chat(to: dave, text: "hi") == [.event(.noSuchPeer(dave))])
    }

    @Test func chatDatagramAndDestination() throws {
        let router = registeredRouter()
        let toBob = router.chat(to: bob, text: "I love Network!!")
        #expect(toBob == [.send(ClassicMessage.chat(from: alice, text: "I love Network!!").encode(), to: ep("10.0.0.6:10081"))])
        guard case .send(let bobBytes, _)? = toBob.first else { Issue.record("no datagram to bob"); return }
        #expect(try ClassicMessage.decode(bobBytes) == .chat(from: alice, text: "I love Network!!"))
        let toCarol = router.chat(to: carol, text: "hi")
        #expect(toCarol == [.send(ClassicMessage.chat(from: alice, text: "hi").encode(), to: C)])
        guard case .send(let carolBytes, _)? = toCarol.first else { Issue.record("no datagram to carol"); return }
        #expect(try ClassicMessage.decode(carolBytes) == .chat(from: alice, text: "hi"))
    }

    @Test func routeBeforeRegistrationUsesWhatIsKnown() {
        var router = ChatRouter(selfID: alice, server: S)
        _ = router.receive(.peer(bob, B), from: S)
        #expect(router.route(to: bob) == .success(B))
    }

    @Test func movedPeer() {
        var router = registeredRouter()
        let B2 = ep("203.0.113.7:40999")
        #expect(router.receive(.peer(bob, B2), from: S) == [.event(.moved(Peer(id: bob, publicEndpoint: B2)))])
        // its same-NAT private address is forgotten until the server repeats it
        #expect(router.route(to: bob) == .success(B2))
        #expect(router.receive(.peerPrivate(bob, bobPrivate), from: S) == [.event(.sameNAT(bob, bobPrivate))])
        #expect(router.route(to: bob) == .success(ep("10.0.0.6:10081")))
        #expect(router.roster.map(\.id) == [bob, carol, alice]) // position kept
    }

    @Test func ownPublicEndpointChanged() {
        var router = registeredRouter()
        let A2 = ep("203.0.113.7:41000")
        #expect(router.receive(.peer(alice, A2), from: S) == [.event(.publicEndpointChanged(A2))])
        #expect(router.publicEndpoint == A2)
        #expect(router.route(to: alice) == .success(A2))
    }
}

@Suite("ChatRouter departures and sources")
struct ChatRouterDepartureTests {
    @Test func unregisteredRemovesThePeer() {
        var router = registeredRouter()
        #expect(router.receive(.unregistered(bob, B), from: S) == [.event(.unregistered(bob, B))])
        #expect(router.peer(bob) == nil)
        #expect(router.route(to: bob) == .failure(.unknownPeer(bob)))
        #expect(router.roster.map(\.id) == [carol, alice])
        #expect(router.receive(.unregistered(bob, B), from: S) == [])
    }

    @Test func offlineRemovesThePeer() {
        var router = registeredRouter()
        #expect(router.receive(.offline(carol, C), from: S) == [.event(.offline(carol, C))])
        #expect(router.peerIDs == [bob])
        #expect(router.receive(.offline(carol, C), from: S) == [])
    }

    @Test func departureOfUnknownPeerIsSilent() {
        var router = registeredRouter()
        #expect(router.receive(.offline(dave, D), from: S) == [])
        #expect(router.receive(.unregistered(dave, D), from: S) == [])
    }

    @Test func departureOfSelfIsIgnored() {
        var router = registeredRouter()
        #expect(router.receive(.offline(alice, A), from: S) == [])
        #expect(router.receive(.unregistered(alice, A), from: S) == [])
        #expect(router.isRegistered)
        #expect(router.roster.map(\.id) == [bob, carol, alice])
    }

    @Test func rejoinGoesToTheEnd() {
        var router = registeredRouter()
        _ = router.receive(.unregistered(bob, B), from: S)
        #expect(router.receive(.peer(bob, B), from: S) == [.event(.joined(Peer(id: bob, publicEndpoint: B)))])
        #expect(router.roster.map(\.id) == [carol, alice, bob])
    }

    @Test("control messages from a non-server source are ignored", arguments: [
        ClassicMessage.peer(dave, D),
        .peer(bob, D),
        .peerPrivate(carol, ip("10.0.0.99")),
        .unregistered(bob, B),
        .offline(carol, C),
        .serverNotice("you are banned"),
    ])
    func controlFromStranger(_ message: ClassicMessage) {
        var router = registeredRouter()
        let roster = router.roster
        #expect(router.receive(message, from: stranger) == [.event(.ignored(message, from: stranger))])
        // even from a registered peer's endpoint
        #expect(router.receive(message, from: B) == [.event(.ignored(message, from: B))])
        #expect(router.roster == roster)
        #expect(router.route(to: bob) == .success(ep("10.0.0.6:10081")))
    }

    @Test func controlFromServerAddressOnAnotherPortIsIgnored() {
        var router = ChatRouter(selfID: alice, server: S)
        let sameHostOtherPort = ep("198.51.100.1:10081")
        #expect(router.receive(.peer(alice, A), from: sameHostOtherPort) == [.event(.ignored(.peer(alice, A), from: sameHostOtherPort))])
        #expect(router.isRegistered == false)
    }

    @Test func serverNoticeFromServer() {
        var router = registeredRouter()
        #expect(router.receive(.serverNotice("maintenance at noon"), from: S) == [.event(.serverNotice("maintenance at noon"))])
    }

    @Test func chatFromAnyoneIsDelivered() {
        var router = registeredRouter()
        #expect(router.receive(.chat(from: bob, text: "hi"), from: ep("10.0.0.6:10081"))
                == [.event(.chat(from: bob, text: "hi", source: ep("10.0.0.6:10081")))])
        #expect(router.receive(.chat(from: dave, text: "who am I"), from: stranger)
                == [.event(.chat(from: dave, text: "who am I", source: stranger))])
        #expect(router.receive(.chat(from: carol, text: "via server?"), from: S)
                == [.event(.chat(from: carol, text: "via server?", source: S))])
        // chats change no state
        #expect(router.peer(dave) == nil)
    }

    @Test("messages meant for the server are ignored", arguments: [
        ClassicMessage.register(dave, privateAddress: ip("10.0.0.1")),
        .keepAlive(bob),
        .unregister(bob),
    ])
    func serverBound(_ message: ClassicMessage) {
        var router = registeredRouter()
        #expect(router.receive(message, from: S) == [.event(.ignored(message, from: S))])
        #expect(router.receive(message, from: stranger) == [.event(.ignored(message, from: stranger))])
        #expect(router.roster.map(\.id) == [bob, carol, alice])
    }
}

@Suite("ChatRouter listings")
struct ChatRouterListingTests {
    @Test func peerIDsAreSortedWithoutSelf() {
        var router = ChatRouter(selfID: id("mallory"), server: S)
        for (name, port) in [("zed", 1), ("bob", 2), ("mallory", 3), ("Alice", 4), ("carol", 5)] as [(String, UInt16)] {
            _ = router.receive(.peer(id(name), Endpoint(address: ip("192.0.2.1"), port: port)), from: S)
        }
        #expect(router.peerIDs.map(\.rawValue) == ["Alice", "bob", "carol", "zed"])
    }

    @Test func rosterIsInServerOrderWithSelf() {
        var router = ChatRouter(selfID: id("mallory"), server: S)
        for (name, port) in [("zed", 1), ("bob", 2), ("mallory", 3), ("Alice", 4)] as [(String, UInt16)] {
            _ = router.receive(.peer(id(name), Endpoint(address: ip("192.0.2.1"), port: port)), from: S)
        }
        #expect(router.roster.map(\.id.rawValue) == ["zed", "bob", "mallory", "Alice"])
        #expect(router.roster.map(\.publicEndpoint.port) == [1, 2, 3, 4])
    }
}
