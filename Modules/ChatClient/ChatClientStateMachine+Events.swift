import Addressing
import ChatRouter
import MonotonicTime
import NATGrouping
import Wire

/// The peer tables' events, as the user and the log should hear them.
extension ChatClientStateMachine {
    mutating func handle(_ event: ExtendedRouter.Event, now: Instant) {
        switch event {
        case .joined(let info, let arrival):
            vet(info, now: now)
            switch arrival {
            case .registered:
                break
            case .listed:
                // A listing (the roster on registering, or again after a gap) is shown in part:
                // past a screenful the rest is summed up when it is whole.
                let shown = withNatchat2 { natchat2 in
                    guard natchat2.joinsShown < Self.joinLinesPerListing else {
                        natchat2.joinsHidden += 1
                        return false
                    }
                    natchat2.joinsShown += 1
                    return true
                }
                guard shown == true else { return }
            case .answered:
                // The user asked (a chat to it), or it contacted us: no news to announce.
                return
            }
            emit(.joined(info.id, publicEndpoint: info.publicEndpoint, classicPeer: info.dialect == .classic))
            if info.dialect == .classic, let address = classicSameNATAddress(of: info) {
                emit(.sameNAT(info.id, privateAddress: address))
            }
        case .updated(let info):
            vet(info, now: now)
            outputs.append(.diagnostic(.peerUpdated(info.id, publicEndpoint: info.publicEndpoint)))
        case .left(let id, let reason, let endpoint):
            emit(.left(id, reason, endpoint))
        case .rosterScopeChanged(let scope, let registered):
            emit(.rosterScopeChanged(scope, registered: registered))
        case .rosterSynced:
            let hidden = withNatchat2 { natchat2 in
                defer { (natchat2.joinsShown, natchat2.joinsHidden) = (0, 0) }
                return natchat2.joinsHidden
            } ?? 0
            if hidden > 0 { emit(.moreOnline(hidden)) }
        case .chat(let from, let text, let route):
            emit(.chat(from: from, text: text, origin: .authenticated(route)))
            chatted(with: from, now: now)
        case .delivered(let to, _, _):
            emit(.delivered(to: to))
            chatted(with: to, now: now)
        case .undelivered(let to, let text, let reason):
            emit(.undelivered(to: to, text: text, reason: reason))
        case .noSuchPeer(let id, _):
            emit(.noSuchPeer(id))
        case .lookupPending(let id):
            emit(.lookupPending(id))
        case .classicChatDue(let info, let text):
            sendClassicChat(to: info, text: text)
        case .listAnswered(let query, let total, let offset, let entries):
            listAnswered(query: query, total: total, offset: offset, entries: entries, now: now)
        case .listUnanswered(let query):
            listUnanswered(query: query)
        case .pathChanged(let id, let path):
            emit(.pathChanged(id, path))
        case .pingAnswered(let id, let path, let roundTrip):
            emit(.pingAnswered(id, route: ExtendedRouter.StatusRoute(path), roundTrip: roundTrip))
        case .pingUnanswered(let id, let path, let after):
            emit(.pingUnanswered(id, route: ExtendedRouter.StatusRoute(path), after: after))
        case .keyChanged(let id):
            emit(.keyChanged(id))
        case .forged(let id):
            outputs.append(.diagnostic(.forged(claimedFrom: id)))
        case .probing(let id, let report):
            outputs.append(.diagnostic(.probing(id, report)))
        case .chatHeld(let id, let text):
            emit(.chatHeld(to: id, text: text))
        case .chatFromHeldPeer(let id):
            emit(.chatFromHeldPeer(id))
        case .queued(let to, _, _, let keptSeconds, let reason):
            emit(.queued(to: to, keptSeconds: keptSeconds, reason: reason))
        case .mail(let from, let text, let sentAt, _, let signedBy):
            receivedMail(from: from, text: text, sentAt: sentAt, signedBy: signedBy, now: now)
        case .mailRejected(let from, let rejection):
            emit(.mailRejected(from: from, rejection))
        case .mailDelivered(let to, _, let queuedThisSession):
            emit(.mailDelivered(to: to, queuedEarlier: !queuedThisSession))
            chatted(with: to, now: now)
        }
    }

    mutating func handle(_ event: ChatRouter.Event, now: Instant) {
        switch event {
        case .registered(let endpoint, let peers):
            emit(.registered(configuration.id, publicEndpoint: endpoint, .classic(online: peers.map(\.id))))
        case .publicEndpointChanged(let endpoint):
            emit(.publicEndpointChanged(endpoint))
        case .joined(let peer):
            emit(.joined(peer.id, publicEndpoint: peer.publicEndpoint, classicPeer: false))
        case .moved(let peer):
            emit(.moved(peer.id, peer.publicEndpoint))
        case .sameNAT(let id, let address):
            emit(.sameNAT(id, privateAddress: address))
        case .unregistered(let id, let endpoint):
            emit(.left(id, .unregistered, endpoint))
        case .offline(let id, let endpoint):
            emit(.left(id, .offline, endpoint))
        case .chat(let from, let text, _):
            emit(.chat(from: from, text: text, origin: .classicSession))
        case .serverNotice(let text):
            emit(.serverNotice(text))
            // Before registration, a notice from the server is its refusal.
            runSession(session.handleClassicNotice(text, now: now), now: now)
        case .ignored(let message, let source):
            outputs.append(.diagnostic(.ignored(from: source, what: String(message.text.prefix(80)))))
        case .noSuchPeer(let id):
            emit(.noSuchPeer(id))
        }
    }

    /// Sends a chat to a classic peer the natchat/2 roster holds: classic peers cannot answer
    /// checks, so the seed's same-NAT rule picks the address, as it did.
    private mutating func sendClassicChat(to info: PeerInfo, text: String) {
        let destination = classicSameNATAddress(of: info).map { Endpoint(address: $0, port: configuration.peerPrivatePort) }
            ?? info.publicEndpoint
        outputs.append(.send(ClassicMessage.chat(from: configuration.id, text: text).encode(), to: destination))
    }

    /// The private address of a classic peer that the classic rule puts behind our NAT.
    func classicSameNATAddress(of info: PeerInfo) -> IPv4Address? {
        guard let ours = session.publicEndpoint, let theirs = info.privateEndpoints.first else { return nil }
        let me = NATPosition(publicAddress: ours.address, privateAddress: configuration.privateAddress)
        let peer = NATPosition(publicAddress: info.publicEndpoint.address, privateAddress: theirs.address)
        return SameNATRule.classic.isSameNAT(me, peer) ? theirs.address : nil
    }
}
