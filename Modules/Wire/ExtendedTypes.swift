import Addressing

/// 128 random bits: session tokens, pair tokens and cookies of the extended dialect.
public struct Token128: Hashable, Sendable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// A fresh random token.
    public static func random<G: RandomNumberGenerator>(using generator: inout G) -> Token128 {
        Token128(high: generator.next(), low: generator.next())
    }

    public static let zero = Token128(high: 0, low: 0)

    /// Comparison in constant time (no early exit on the first differing bit).
    public func constantTimeEquals(_ other: Token128) -> Bool {
        ((high ^ other.high) | (low ^ other.low)) == 0
    }

    public var description: String {
        let hex = String(high, radix: 16)
        let padded = String(repeating: "0", count: 16 - hex.count) + hex
        return "token:" + padded.prefix(4) + "…"
    }
}

/// How a client's NAT maps its socket, as a RFC 5780-style probe found it.
public enum NATKind: UInt8, Hashable, Sendable, CaseIterable, CustomStringConvertible {
    /// Not probed, or the probe got no answer.
    case unknown = 0
    /// No NAT: the server sees the client's own address and port.
    case none = 1
    /// One public mapping whatever the destination ("cone"): hole punching can work.
    case endpointIndependent = 2
    /// A new public port for each destination ("symmetric"): punching towards it only
    /// works from a peer that accepts unsolicited packets.
    case endpointDependent = 3
    /// Endpoint-independent mapping, but an unsolicited inbound packet (one from an endpoint
    /// the client never sent to) leaves a conntrack entry on the router that pushes the
    /// client's next flow to that endpoint onto another port: a router without a WAN firewall
    /// (``RemapProbe`` finds it). Punching towards such a client works only if its own first
    /// packet leaves before the peer's arrives, so it moves first (``PunchCoordinator``).
    case endpointIndependentRemappedByInbound = 4

    /// Whether the mapping is the same for every destination (the two cone kinds).
    public var isEndpointIndependent: Bool {
        self == .endpointIndependent || self == .endpointIndependentRemappedByInbound
    }

    public var description: String {
        switch self {
        case .unknown: "unknown"
        case .none: "no NAT"
        case .endpointIndependent: "endpoint-independent mapping (cone)"
        case .endpointDependent: "endpoint-dependent mapping (symmetric)"
        case .endpointIndependentRemappedByInbound: "endpoint-independent mapping (cone), remapped by unsolicited inbound"
        }
    }
}

/// Which dialect a registered client speaks.
public enum Dialect: UInt8, Hashable, Sendable {
    case classic = 0
    case extended = 1
}

/// A client's public keys: Ed25519 for signing, X25519 for key agreement (32 bytes each).
public struct PublicKeys: Hashable, Sendable {
    // Held inline: the server keeps one pair per registered client, and two arrays would
    // cost two heap blocks each.
    private var signingKey: Bytes32
    private var agreementKey: Bytes32

    /// Keys are 32 bytes; shorter input is zero-padded, longer is cut.
    public init(signing: some Collection<UInt8>, agreement: some Collection<UInt8>) {
        signingKey = Bytes32(signing)
        agreementKey = Bytes32(agreement)
    }

    /// The Ed25519 public key that signs registrations.
    public var signing: [UInt8] {
        get { signingKey.array }
        set { signingKey = Bytes32(newValue) }
    }

    /// The X25519 public key for session and pair keys.
    public var agreement: [UInt8] {
        get { agreementKey.array }
        set { agreementKey = Bytes32(newValue) }
    }

    public static let keyLength = 32
}

/// What the server tells clients about one registered client.
public struct PeerInfo: Hashable, Sendable {
    public var id: ClientID
    public var publicEndpoint: Endpoint
    /// Private endpoints worth probing: sent only as a same-NAT *hint* (same public address).
    public var privateEndpoints: [Endpoint]
    public var natKind: NATKind
    public var dialect: Dialect
    /// The keys it registered with (extended clients only).
    public var keys: PublicKeys?
    /// Since when these keys have claimed the ID on the server (Unix seconds, to 2106; 0: no
    /// claim). 32 bits: a message carrying peer info stays within a server action's size.
    public var claimedSince: UInt32
    /// The external endpoint of a port mapping the peer's gateway granted (PCP, NAT-PMP or
    /// UPnP): reachable from any endpoint while the mapping lasts, so a candidate for every
    /// peer (one in a carrier NAT's shared address space only for peers behind the same
    /// public address).
    public var mappedEndpoint: Endpoint?

    public init(id: ClientID, publicEndpoint: Endpoint, privateEndpoints: [Endpoint] = [],
                natKind: NATKind = .unknown, dialect: Dialect = .extended, keys: PublicKeys? = nil, claimedSince: UInt32 = 0,
                mappedEndpoint: Endpoint? = nil) {
        self.mappedEndpoint = mappedEndpoint
        self.claimedSince = keys == nil ? 0 : claimedSince
        self.id = id
        self.publicEndpoint = publicEndpoint
        self.privateEndpoints = privateEndpoints
        self.natKind = natKind
        self.dialect = dialect
        self.keys = keys
    }
}

/// Why a client left the roster.
public enum LeaveReason: UInt8, Hashable, Sendable {
    case unregistered = 1
    case offline = 2
}
