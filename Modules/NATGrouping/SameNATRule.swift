import Addressing

/// What the rendezvous server knows of where a client sits: the address its datagrams
/// came from (after any NAT) and the private address the client reported.
public struct NATPosition: Hashable, Sendable {
    public var publicAddress: IPv4Address
    public var privateAddress: IPv4Address

    public init(publicAddress: IPv4Address, privateAddress: IPv4Address) {
        self.publicAddress = publicAddress
        self.privateAddress = privateAddress
    }
}

/// The rule that guesses whether two clients sit behind the same NAT.
///
/// The classic rule (the seed's): the same public address, and private addresses that
/// share their first ``privatePrefixLength`` bits (24 by default: the first three octets).
/// It is a guess. Two LANs behind one carrier-grade NAT that use the same private range
/// look like one, so a natchat client treats "same NAT" as a hint and verifies a private
/// path before trusting it (see ``CandidateOrder``).
public struct SameNATRule: Hashable, Sendable {
    /// How many leading bits of the private addresses must match.
    public var privatePrefixLength: Int

    public init(privatePrefixLength: Int = 24) {
        self.privatePrefixLength = max(0, min(32, privatePrefixLength))
    }

    /// The seed document's rule: same public IP, same /24 private prefix.
    public static let classic = SameNATRule(privatePrefixLength: 24)

    /// Whether `a` and `b` are judged to be behind the same NAT.
    public func isSameNAT(_ a: NATPosition, _ b: NATPosition) -> Bool {
        a.publicAddress == b.publicAddress
            && a.privateAddress.prefix(privatePrefixLength) == b.privateAddress.prefix(privatePrefixLength)
    }
}

/// The ordered list of addresses to try when sending to a peer.
public enum CandidateOrder {
    /// The UDP port classic clients listen on; the classic dialect carries a private IP
    /// without a port, so this is the port a private address is reached at.
    public static let classicClientPort: UInt16 = 10081

    /// Where to send to a peer: its private endpoint first when the server said it is
    /// behind our NAT, then its public endpoint.
    public static func candidates(publicEndpoint: Endpoint, sameNATPrivateAddress: IPv4Address?,
                                  privatePort: UInt16 = classicClientPort) -> [Endpoint] {
        var result: [Endpoint] = []
        if let privateAddress = sameNATPrivateAddress {
            result.append(Endpoint(address: privateAddress, port: privatePort))
        }
        if !result.contains(publicEndpoint) { result.append(publicEndpoint) }
        return result
    }
}
