import Addressing
import Identity
import MonotonicTime
import NATGrouping
import Wire

extension Registry {
    /// One registered client, held inline: the registry keeps entries densely in chunks
    /// (see ``ClientTable``), so a client costs its stride and no heap block of its own.
    /// The session key itself is not kept, only its HMAC midstates: tags are all the server
    /// checks with it.
    public struct Entry: Hashable, Sendable {
        public var id: ClientID
        public var publicEndpoint: Endpoint
        public var privateAddress: IPv4Address
        public var dialect: Dialect
        public var natKind: NATKind
        /// A port mapping's external endpoint the client reported (``Registry/acceptableMapping(_:publicAddress:)``).
        public var mappedEndpoint: Endpoint?
        /// Whether the roster and its changes are pushed to this client (always for classic
        /// clients; extended clients choose at registration).
        public var subscribed: Bool
        /// Registration order, for listing clients in the order they came.
        public var sequence: UInt64
        /// The roster version of the last change visible to peers.
        public var version: UInt64 = 0
        /// The highest counter accepted on this session.
        public var lastCounter: UInt64
        /// When the cookie that this session's registration echoed was issued: a registration
        /// is fresh only with a later cookie.
        public var cookieIssuedAt: Instant
        /// The keys the ID is bound to (extended clients).
        public var keys: PublicKeys?
        /// Since when these keys have claimed the ID (Unix seconds; 0: no claim). Peers are
        /// shown it (`claimed since DATE`). 32 bits, so the entry stays its size (until 2106).
        public var claimedSince: UInt32 = 0
        /// Where the client is registered: 0 here; otherwise the index of another server of
        /// the cluster (a remote entry: shown to this server's clients, never swept here, no
        /// session here; its home publishes its changes and its departure).
        public var home: UInt16 = 0
        /// The extended session key's HMAC midstates (`nil` for classic clients).
        public var sessionMAC: SessionMAC?
        // Nearly every client reports one private endpoint: kept inline, the rest (at most
        // ExtendedMessage.maxPrivateEndpoints - 1) in an array that is empty for most.
        private var firstPrivateEndpoint: Endpoint?
        private var otherPrivateEndpoints: [Endpoint]

        init(id: ClientID, publicEndpoint: Endpoint, privateAddress: IPv4Address, sequence: UInt64,
             dialect: Dialect = .classic, sessionKey: KeyBytes? = nil, keys: PublicKeys? = nil, lastCounter: UInt64 = 0,
             cookieIssuedAt: Instant = .zero, privateEndpoints: [Endpoint] = [], natKind: NATKind = .unknown,
             subscribed: Bool = true) {
            self.id = id
            self.publicEndpoint = publicEndpoint
            self.privateAddress = privateAddress
            self.dialect = dialect
            self.natKind = natKind
            self.subscribed = subscribed
            self.sequence = sequence
            self.lastCounter = lastCounter
            self.cookieIssuedAt = cookieIssuedAt
            self.keys = keys
            self.sessionMAC = sessionKey?.mac
            firstPrivateEndpoint = privateEndpoints.first
            otherPrivateEndpoints = Array(privateEndpoints.dropFirst())
        }

        /// Whether `other` reported the same private endpoints (without building either array).
        func hasSamePrivateEndpoints(as other: Entry) -> Bool {
            firstPrivateEndpoint == other.firstPrivateEndpoint && otherPrivateEndpoints == other.otherPrivateEndpoints
        }

        /// How many private endpoints it reported (without building the array).
        public var privateEndpointCount: Int { firstPrivateEndpoint == nil ? 0 : 1 + otherPrivateEndpoints.count }

        /// Private endpoints an extended client reported.
        public var privateEndpoints: [Endpoint] {
            get {
                guard let firstPrivateEndpoint else { return [] }
                return [firstPrivateEndpoint] + otherPrivateEndpoints
            }
            set {
                firstPrivateEndpoint = newValue.first
                otherPrivateEndpoints = Array(newValue.dropFirst())
            }
        }

        /// Whether the client is registered with this server (not a remote entry).
        public var isLocal: Bool { home == 0 }

        var position: NATPosition {
            NATPosition(publicAddress: publicEndpoint.address, privateAddress: privateAddress)
        }
    }
}
