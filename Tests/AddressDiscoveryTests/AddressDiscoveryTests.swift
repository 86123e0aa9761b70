import Addressing
import Testing
import AddressDiscovery

private let loopback = IPv4Address(127, 0, 0, 1)

@Suite("PrivateAddress")
struct PrivateAddressTests {
    @Test func routedSourceTowardsLoopbackIsLoopback() throws {
        let address = try PrivateAddress.routedSourceAddress(towards: Endpoint(address: loopback, port: 10080))
        #expect(address == loopback)
    }

    @Test func discoverTowardsLoopbackIsLoopback() throws {
        #expect(try PrivateAddress.discover(towards: Endpoint(address: loopback, port: 9)) == loopback)
    }

    @Test func interfaceEnumerationIncludesLoopback() {
        let addresses = PrivateAddress.interfaceAddresses()
        #expect(addresses.contains { $0.address == loopback && $0.isLoopback })
        #expect(addresses.allSatisfy { !$0.interface.isEmpty })
        // loopback entries are 127/8 and 127/8 entries are loopback
        for entry in addresses where entry.isLoopback {
            #expect(entry.address.octets.0 == 127, "\(entry.interface) \(entry.address)")
        }
    }

    @Test func interfaceEnumerationListsNonLoopbackFirst() {
        let flags = PrivateAddress.interfaceAddresses().map(\.isLoopback)
        let firstLoopback = flags.firstIndex(of: true) ?? flags.endIndex
        #expect(flags[firstLoopback...].allSatisfy { $0 }, "\(flags)")
    }
}

@Suite("PublicEndpointObserver")
struct PublicEndpointObserverTests {
    private let first = Endpoint(address: IPv4Address(203, 0, 113, 7), port: 40001)
    private let second = Endpoint(address: IPv4Address(203, 0, 113, 7), port: 40999)

    @Test func learnThenUnchangedThenMoved() {
        var observer = PublicEndpointObserver()
        #expect(observer.current == nil)
        #expect(observer.observe(first) == .learned(first))
        #expect(observer.current == first)
        #expect(observer.observe(first) == .unchanged)
        #expect(observer.observe(second) == .moved(from: first, to: second))
        #expect(observer.current == second)
        #expect(observer.observe(first) == .moved(from: second, to: first))
        #expect(observer.current == first)
    }

    @Test func behindNAT() {
        var observer = PublicEndpointObserver()
        #expect(observer.isBehindNAT(privateAddress: IPv4Address(10, 0, 0, 5)) == nil)
        _ = observer.observe(first)
        #expect(observer.isBehindNAT(privateAddress: IPv4Address(10, 0, 0, 5)) == true)
        #expect(observer.isBehindNAT(privateAddress: IPv4Address(203, 0, 113, 7)) == false)
    }
}

@Suite("HostResolver")
struct HostResolverTests {
    @Test("dotted quads resolve without a lookup", arguments: ["10.1.2.3", "127.0.0.1", "0.0.0.0", "255.255.255.255"])
    func literal(_ text: String) throws {
        #expect(HostResolver.resolveIPv4(text) == (try IPv4Address(parsing: text)))
    }
}
