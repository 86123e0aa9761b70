import Addressing
import MonotonicTime
import NATGrouping
import Wire

// The classic (seed) dialect: registration, keep-alives, `@exit`, and the lines classic
// clients are pushed.

extension Registry {
    /// Handles one decoded classic datagram that arrived from `source` at `now`.
    public mutating func receive(_ message: ClassicMessage, from source: Endpoint, now: Instant) -> [Output] {
        switch message {
        case .register(let id, let privateAddress, let offers):
            if offers.contains(ExtendedMessage.offer) {
                // A natchat/2 client: prove its address first; the registration follows in
                // the extended dialect. The challenge is smaller than the request.
                return [.sendExtended(.challenge(cookie: validator.cookie(for: source, now: now)), to: source)]
            }
            if let holder = entries[id], holder.dialect == .extended {
                // From the holder's own address this can only be a forgery: tell nobody.
                if holder.publicEndpoint == source { return [.report(.ignored(message, from: source, .heldByExtendedClient))] }
                return refuse(id, from: source, .idInUse, dialect: .classic)
            }
            guard configuration.acceptClassic else { return refuse(id, from: source, .classicDisabled, dialect: .classic) }
            // A classic client proves no key, so it cannot have the ID a key claimed.
            if claimBook?.verdict(for: id, keys: nil, at: unixTime(now)) == .claimedByAnother {
                return refuse(id, from: source, .claimed, dialect: .classic)
            }
            let newcomer = Entry(id: id, publicEndpoint: source, privateAddress: privateAddress, sequence: 0)
            return register(newcomer, answer: nil, now: now)
        case .keepAlive(let id):
            guard let entry = entries[id] else { return [.report(.ignored(message, from: source, .unknownID))] }
            guard entry.dialect == .classic else { return [.report(.ignored(message, from: source, .heldByExtendedClient))] }
            guard entry.publicEndpoint == source else { return [.report(.ignored(message, from: source, .wrongEndpoint))] }
            liveness.touch(id, now: now)
            return []
        case .unregister(let id):
            guard let entry = entries[id] else { return [.report(.ignored(message, from: source, .unknownID))] }
            guard entry.dialect == .classic else { return [.report(.ignored(message, from: source, .heldByExtendedClient))] }
            guard entry.publicEndpoint == source else { return [.report(.ignored(message, from: source, .wrongEndpoint))] }
            return leave(entry, reason: .unregistered, now: now)
        case .peer, .peerPrivate, .unregistered, .offline, .chat, .serverNotice:
            return [.report(.ignored(message, from: source, .notForServer))]
        }
    }

    /// The list a classic `recipient` gets: everyone registered (itself too when `includingSelf`).
    func classicList(for recipient: Entry, includingSelf: Bool) -> [Output] {
        guard recipient.subscribed else { return [] }
        var actions: [Output] = []
        for entry in clients where includingSelf || entry.id != recipient.id {
            actions += announceClassic(entry, to: recipient)
        }
        return actions
    }

    /// Tells classic `recipient` about `entry`: its line, and its private address when the
    /// seed's rule puts the two behind one NAT.
    func announceClassic(_ entry: Entry, to recipient: Entry) -> [Output] {
        guard recipient.subscribed, recipient.dialect == .classic else { return [] }
        var actions: [Output] = [.send(.peer(entry.id, entry.publicEndpoint), to: recipient.publicEndpoint)]
        if configuration.sameNATRule.isSameNAT(recipient.position, entry.position) {
            actions.append(.send(.peerPrivate(entry.id, entry.privateAddress), to: recipient.publicEndpoint))
        }
        return actions
    }

    func departureClassic(_ entry: Entry, reason: LeaveReason, to recipient: Entry) -> Output? {
        guard recipient.subscribed, recipient.dialect == .classic else { return nil }
        let message: ClassicMessage = reason == .offline
            ? .offline(entry.id, entry.publicEndpoint) : .unregistered(entry.id, entry.publicEndpoint)
        return .send(message, to: recipient.publicEndpoint)
    }
}
