import KeepAlive
import MonotonicTime
import NATGrouping
import Wire

/// The rendezvous server's registration state machine (classic dialect).
///
/// Feed it decoded datagrams with ``receive(_:from:now:)`` and clock ticks with
/// ``sweep(now:)``; it returns the ``Action``s to perform — datagrams to send and events
/// to report — and performs none itself.
///
/// Rules:
/// - A new ID registers; the newcomer gets the list of everyone already registered
///   (each `ID PUBLIC:PORT`, followed by `ID@private:IP` when the two are judged to be
///   behind the same NAT), then every client, the newcomer included, gets the newcomer's line.
/// - The same ID from the same endpoint is a refresh: it counts as a keep-alive and the
///   client gets the list again; nobody else is told.
/// - The same ID from another endpoint while the holder is alive is refused and the
///   newcomer is told why with a ``ClassicMessage/serverNotice(_:)``. If the holder has
///   been silent past the timeout it is evicted first and the newcomer takes the ID.
/// - Keep-alives and `@exit` count only from the endpoint that registered the ID.
/// - A client silent for strictly more than the keep-alive timeout is evicted at the next
///   sweep; everyone left is told it is off-line.
public struct Registry: Sendable {
    /// Limits and rules.
    public struct Configuration: Sendable {
        /// How long a client may stay silent before eviction (30 s classic).
        public var keepAliveTimeout: Duration
        /// The same-NAT rule used to decide who gets whose private address.
        public var sameNATRule: SameNATRule
        /// The most clients registered at once; more are refused.
        public var maxClients: Int

        public init(keepAliveTimeout: Duration = .seconds(30), sameNATRule: SameNATRule = .classic,
                    maxClients: Int = 100_000) {
            self.keepAliveTimeout = keepAliveTimeout
            self.sameNATRule = sameNATRule
            self.maxClients = maxClients
        }
    }

    /// One registered client.
    public struct Entry: Hashable, Sendable {
        public var id: ClientID
        public var publicEndpoint: Endpoint
        public var privateAddress: IPv4Address
        /// Registration order, for listing clients in the order they came.
        public var sequence: UInt64

        var position: NATPosition {
            NATPosition(publicAddress: publicEndpoint.address, privateAddress: privateAddress)
        }
    }

    /// Why a datagram changed nothing.
    public enum Ignored: Hashable, Sendable {
        case unknownID
        case wrongEndpoint
        case notForServer
    }

    /// Why a registration was refused.
    public enum Refusal: Hashable, Sendable, CustomStringConvertible {
        case idInUse
        case reservedID
        case full

        public var description: String {
            switch self {
            case .idInUse: "the ID is in use from another address"
            case .reservedID: "the ID is reserved"
            case .full: "the server is full"
            }
        }
    }

    /// Something that happened, for the operator's screen and logs.
    public enum Event: Hashable, Sendable {
        case registered(Entry)
        case refreshed(Entry)
        case unregistered(Entry)
        case evicted(Entry)
        case refused(ClientID, from: Endpoint, Refusal)
        case ignored(ClassicMessage, from: Endpoint, Ignored)
    }

    /// What the caller must do.
    public enum Action: Hashable, Sendable {
        case send(ClassicMessage, to: Endpoint)
        case report(Event)
    }

    public private(set) var configuration: Configuration
    private var entries: [ClientID: Entry] = [:]
    private var liveness: LivenessTable<ClientID>
    private var nextSequence: UInt64 = 0

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
        liveness = LivenessTable(timeout: configuration.keepAliveTimeout)
    }

    /// Number of registered clients.
    public var count: Int { entries.count }

    /// The registered clients in registration order.
    public var clients: [Entry] { entries.values.sorted { $0.sequence < $1.sequence } }

    /// The entry for `id`, if registered.
    public func entry(for id: ClientID) -> Entry? { entries[id] }

    /// Handles one decoded datagram that arrived from `source` at `now`.
    public mutating func receive(_ message: ClassicMessage, from source: Endpoint, now: Instant) -> [Action] {
        switch message {
        case .register(let id, let privateAddress, _):
            return register(id, privateAddress: privateAddress, from: source, now: now)
        case .keepAlive(let id):
            guard let entry = entries[id] else { return [.report(.ignored(message, from: source, .unknownID))] }
            guard entry.publicEndpoint == source else { return [.report(.ignored(message, from: source, .wrongEndpoint))] }
            liveness.touch(id, now: now)
            return []
        case .unregister(let id):
            guard let entry = entries[id] else { return [.report(.ignored(message, from: source, .unknownID))] }
            guard entry.publicEndpoint == source else { return [.report(.ignored(message, from: source, .wrongEndpoint))] }
            remove(id)
            var actions: [Action] = [.report(.unregistered(entry))]
            for other in clients {
                actions.append(.send(.unregistered(id, entry.publicEndpoint), to: other.publicEndpoint))
            }
            return actions
        case .peer, .peerPrivate, .unregistered, .offline, .chat, .serverNotice:
            return [.report(.ignored(message, from: source, .notForServer))]
        }
    }

    /// Evicts every client silent for more than the timeout at `now` and tells the rest.
    public mutating func sweep(now: Instant) -> [Action] {
        let expired = liveness.expire(now: now)
        guard !expired.isEmpty else { return [] }
        var actions: [Action] = []
        var gone: [Entry] = []
        for id in expired {
            guard let entry = entries.removeValue(forKey: id) else { continue }
            gone.append(entry)
            actions.append(.report(.evicted(entry)))
        }
        let remaining = clients
        for entry in gone {
            for other in remaining {
                actions.append(.send(.offline(entry.id, entry.publicEndpoint), to: other.publicEndpoint))
            }
        }
        return actions
    }

    private mutating func register(_ id: ClientID, privateAddress: IPv4Address, from source: Endpoint,
                                   now: Instant) -> [Action] {
        if id.isReserved { return refuse(id, from: source, .reservedID) }
        var actions: [Action] = []
        if let holder = entries[id] {
            if holder.publicEndpoint == source {
                var refreshed = holder
                refreshed.privateAddress = privateAddress
                entries[id] = refreshed
                liveness.touch(id, now: now)
                actions.append(.report(.refreshed(refreshed)))
                actions += listMessages(for: refreshed, including: true)
                return actions
            }
            guard liveness.isExpired(id, now: now) else { return refuse(id, from: source, .idInUse) }
            // The holder is past its timeout but not yet swept: evict it now so the ID is free.
            remove(id)
            actions.append(.report(.evicted(holder)))
            for other in clients {
                actions.append(.send(.offline(id, holder.publicEndpoint), to: other.publicEndpoint))
            }
        }
        guard entries.count < configuration.maxClients else { return actions + refuse(id, from: source, .full) }
        let newcomer = Entry(id: id, publicEndpoint: source, privateAddress: privateAddress, sequence: nextSequence)
        nextSequence += 1
        actions += listMessages(for: newcomer, including: false)
        entries[id] = newcomer
        liveness.touch(id, now: now)
        actions.append(.report(.registered(newcomer)))
        for recipient in clients {
            actions.append(.send(.peer(id, source), to: recipient.publicEndpoint))
            if configuration.sameNATRule.isSameNAT(recipient.position, newcomer.position) {
                actions.append(.send(.peerPrivate(id, privateAddress), to: recipient.publicEndpoint))
            }
        }
        return actions
    }

    /// The list lines `recipient` should get: everyone registered (itself too when
    /// `including`), each followed by its private address when behind the same NAT.
    private func listMessages(for recipient: Entry, including: Bool) -> [Action] {
        var actions: [Action] = []
        for entry in clients where including || entry.id != recipient.id {
            actions.append(.send(.peer(entry.id, entry.publicEndpoint), to: recipient.publicEndpoint))
            if configuration.sameNATRule.isSameNAT(entry.position, recipient.position) {
                actions.append(.send(.peerPrivate(entry.id, entry.privateAddress), to: recipient.publicEndpoint))
            }
        }
        return actions
    }

    private func refuse(_ id: ClientID, from source: Endpoint, _ refusal: Refusal) -> [Action] {
        [.report(.refused(id, from: source, refusal)),
         .send(.serverNotice("registration refused: ID \(id) - \(refusal)"), to: source)]
    }

    private mutating func remove(_ id: ClientID) {
        entries[id] = nil
        liveness.remove(id)
    }
}
