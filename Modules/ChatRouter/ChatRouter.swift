import Addressing
import NATGrouping
import Wire

/// A registered client as the chat client knows it from the server's notices.
public struct Peer: Hashable, Sendable {
    public var id: ClientID
    /// Where the server sees it.
    public var publicEndpoint: Endpoint
    /// Its private address, when the server said it is behind our NAT.
    public var sameNATPrivateAddress: IPv4Address?

    public init(id: ClientID, publicEndpoint: Endpoint, sameNATPrivateAddress: IPv4Address? = nil) {
        self.id = id
        self.publicEndpoint = publicEndpoint
        self.sameNATPrivateAddress = sameNATPrivateAddress
    }
}

/// The chat client's peer table and its choice of where to send `@chat` (classic dialect).
///
/// A sans-I/O core without timers: feed it every decoded datagram with ``receive(_:from:)``
/// and typed chats with ``chat(to:text:)``; each answers with ``Output``s (datagrams to send,
/// events for the user). Control messages (lists, notices) count only when they come from
/// the server's endpoint.
public struct ChatRouter: Sendable {
    /// What the owner should do.
    public enum Output: Hashable, Sendable {
        /// Send this datagram.
        case send([UInt8], to: Endpoint)
        /// Tell the user.
        case event(Event)
    }

    /// What the user should hear about.
    public enum Event: Hashable, Sendable {
        /// The server listed us: we are registered and it sees us at this endpoint.
        case registered(publicEndpoint: Endpoint, peers: [Peer])
        /// The server now sees us at another endpoint (a NAT rebinding).
        case publicEndpointChanged(Endpoint)
        case joined(Peer)
        case moved(Peer)
        case sameNAT(ClientID, IPv4Address)
        case unregistered(ClientID, Endpoint)
        case offline(ClientID, Endpoint)
        case chat(from: ClientID, text: String, source: Endpoint)
        case serverNotice(String)
        /// A datagram that changed nothing (from a stranger, or a message meant for the server).
        case ignored(ClassicMessage, from: Endpoint)
        /// A chat was typed for an ID the server has not listed.
        case noSuchPeer(ClientID)
    }

    /// Why a chat cannot be sent.
    public enum RouteError: Error, Hashable, Sendable {
        case unknownPeer(ClientID)
    }

    public let selfID: ClientID
    public var server: Endpoint
    /// The port a same-NAT peer listens on (the classic dialect gives only its IP).
    public var privatePort: UInt16
    /// Our public endpoint as the server reports it, once registered.
    public private(set) var publicEndpoint: Endpoint?
    private var peersByID: [ClientID: Peer] = [:]
    private var order: [ClientID] = []

    public init(selfID: ClientID, server: Endpoint, privatePort: UInt16 = CandidateOrder.classicClientPort) {
        self.selfID = selfID
        self.server = server
        self.privatePort = privatePort
    }

    /// Whether the server has confirmed our registration.
    public var isRegistered: Bool { publicEndpoint != nil }

    /// Registered clients (ourselves included once registered), in the order the server listed them.
    public var roster: [Peer] { order.compactMap { peersByID[$0] } }

    /// Other registered clients' IDs, sorted (for tab completion).
    public var peerIDs: [ClientID] { peersByID.keys.filter { $0 != selfID }.sorted() }

    /// The peer named `id`, if registered.
    public func peer(_ id: ClientID) -> Peer? { peersByID[id] }

    /// Handles one decoded datagram from `source`.
    public mutating func receive(_ message: ClassicMessage, from source: Endpoint) -> [Output] {
        switch message {
        case .chat(let from, let text):
            return [.event(.chat(from: from, text: text, source: source))]
        case .peer, .peerPrivate, .unregistered, .offline, .serverNotice:
            guard source == server else { return [.event(.ignored(message, from: source))] }
            return controlMessage(message).map(Output.event)
        case .register, .keepAlive, .unregister:
            return [.event(.ignored(message, from: source))]
        }
    }

    /// Forgets every peer (before registering again with a restarted server).
    public mutating func reset() {
        peersByID.removeAll()
        order.removeAll()
        publicEndpoint = nil
    }

    /// Where a chat to `id` goes: the peer's private address when it is behind our NAT,
    /// else its public endpoint.
    public func route(to id: ClientID) -> Result<Endpoint, RouteError> {
        guard let peer = peersByID[id] else { return .failure(.unknownPeer(id)) }
        let candidates = CandidateOrder.candidates(publicEndpoint: peer.publicEndpoint,
                                                   sameNATPrivateAddress: id == selfID ? nil : peer.sameNATPrivateAddress,
                                                   privatePort: privatePort)
        return .success(candidates.first ?? peer.publicEndpoint)
    }

    /// Sends a chat to `id` where ``route(to:)`` says; ``Event/noSuchPeer(_:)`` when the
    /// server has not listed it.
    public func chat(to id: ClientID, text: String) -> [Output] {
        switch route(to: id) {
        case .success(let destination): [.send(ClassicMessage.chat(from: selfID, text: text).encode(), to: destination)]
        case .failure(.unknownPeer(let id)): [.event(.noSuchPeer(id))]
        }
    }

    private mutating func controlMessage(_ message: ClassicMessage) -> [Event] {
        switch message {
        case .peer(let id, let endpoint):
            if var known = peersByID[id] {
                guard known.publicEndpoint != endpoint else { return [] }
                known.publicEndpoint = endpoint
                known.sameNATPrivateAddress = nil
                peersByID[id] = known
                if id == selfID {
                    publicEndpoint = endpoint
                    return [.publicEndpointChanged(endpoint)]
                }
                return [.moved(known)]
            }
            let peer = Peer(id: id, publicEndpoint: endpoint)
            peersByID[id] = peer
            order.append(id)
            if id == selfID {
                publicEndpoint = endpoint
                return [.registered(publicEndpoint: endpoint, peers: roster.filter { $0.id != selfID })]
            }
            return isRegistered ? [.joined(peer)] : []
        case .peerPrivate(let id, let address):
            guard id != selfID, var known = peersByID[id] else { return [] }
            guard known.sameNATPrivateAddress != address else { return [] }
            known.sameNATPrivateAddress = address
            peersByID[id] = known
            return isRegistered ? [.sameNAT(id, address)] : []
        case .unregistered(let id, let endpoint), .offline(let id, let endpoint):
            guard id != selfID, peersByID.removeValue(forKey: id) != nil else { return [] }
            order.removeAll { $0 == id }
            if case .offline = message { return [.offline(id, endpoint)] }
            return [.unregistered(id, endpoint)]
        case .serverNotice(let text):
            return [.serverNotice(text)]
        default:
            return []
        }
    }
}
