import Addressing
import Delivery
import Identity
import MonotonicTime
import Wire

/// Chat between peers: sending reliably (direct or relayed), opening and acknowledging
/// what arrives, and checking that every peer datagram is what it claims to be.
extension ExtendedRouter {
    /// Queues `text` for `id` and sends attempt 1. `firstSent` starts the message's
    /// deadline (a chat that waited for a look-up keeps its own).
    mutating func send(_ text: String, to id: ClientID, firstSent: Instant, now: Instant) throws(SendError) {
        guard !heldPeers.contains(id) else { return emit(.chatHeld(to: id, text: text)) }
        guard link(for: id) != nil else { return }
        let sent: [ReliableSender.Output]
        do {
            sent = try sender.send(text, to: id, firstSent: firstSent, now: now)
        } catch {
            throw .tooManyInFlight
        }
        runAgent(id) { $0.noteInterest(now: now) }
        runSender(sent, now: now)
    }

    /// Carries out what the reliable sender answered.
    mutating func runSender(_ senderOutputs: [ReliableSender.Output], now: Instant) {
        for output in senderOutputs {
            switch output {
            case .send(let message):
                transmit(message, now: now)
            case .delivered(let message):
                emit(.delivered(to: message.peer, messageID: message.id, attempts: message.attempts))
            case .expired(let message):
                // Not acknowledged in time: the server's mailbox keeps it if the peer's ID is
                // claimed (else, or when the mailbox cannot take it, it is undelivered).
                startMail(message.text, to: message.peer, typedAt: message.firstSent, reason: .notAcknowledged,
                          deadline: now + queries.mailWindow, now: now)
            case .abandoned(let message):
                // The peer left with the chat unacknowledged: the mailbox keeps it if the
                // peer's ID is claimed (else it is undelivered, as before).
                startMail(message.text, to: message.peer, typedAt: message.firstSent, reason: .peerLeft,
                          deadline: now + queries.mailWindow, now: now)
            }
        }
    }

    /// Attempt 1 takes the direct path when there is one; retries alternate with the relay,
    /// so a path that broke silently costs one retransmission timeout, not the message.
    private mutating func transmit(_ message: ReliableSender.Message, now: Instant) {
        guard let link = links[message.peer],
              let sealed = SessionCrypto.seal(message.text, from: selfID, to: message.peer, messageID: message.id, key: link.pairKey)
        else { return }
        let chat = ExtendedMessage.chat(from: selfID, to: message.peer, messageID: message.id, sealed: sealed).encode()
        if let direct = link.agent.directEndpoint, message.attempts % 2 == 1 {
            sendDirect(chat, to: direct, peer: message.peer)
        } else {
            sendViaRelay(chat, to: message.peer)
        }
        if message.attempts > 1 { runAgent(message.peer) { $0.suspectPath(now: now) } }
    }

    private mutating func sendViaRelay(_ payload: [UInt8], to peer: ClientID) {
        outputs.append(.sendToServer(.relay(id: selfID, to: peer, payload: payload)))
    }

    mutating func acknowledge(_ messageID: UInt64, from peer: ClientID, now: Instant) {
        runSender(sender.acknowledge(messageID, from: peer), now: now)
    }

    mutating func receiveChat(from: ClientID, messageID: UInt64, text: String, route: Route, now: Instant) {
        guard let key = links[from]?.pairKey else { return }
        guard !heldPeers.contains(from) else {
            if heldChatsReported.count < Self.heldChatsReportedLimit, heldChatsReported.insert(HeldChat(from: from, messageID: messageID)).inserted { emit(.chatFromHeldPeer(from)) }
            return
        }
        let ack = SessionCrypto.sealed(.chatAck(from: selfID, to: from, messageID: messageID), key: key)
        switch route {
        case .direct(let source): sendDirect(ack, to: source, peer: from)
        case .relayed: sendViaRelay(ack, to: from)
        }
        if duplicates.firstSighting(of: messageID, from: from) {
            emit(.chat(from: from, text: text, route: route))
        }
    }

    /// The server vouches for `from`; the inner message must agree, name us, and
    /// authenticate under the pair key (end to end: the relay cannot forge it).
    mutating func handleRelayed(_ inner: ExtendedMessage, bytes: [UInt8], from: ClientID, now: Instant) {
        switch inner {
        case .chat(let innerFrom, let to, let messageID, let sealed) where innerFrom == from:
            guard let text = openChat(sealed, from: from, to: to, messageID: messageID, now: now) else { return }
            receiveChat(from: from, messageID: messageID, text: text, route: .relayed, now: now)
        case .chatAck(let innerFrom, let to, let messageID) where innerFrom == from:
            guard verifyTag(bytes, from: from, to: to, now: now) else { return }
            acknowledge(messageID, from: from, now: now)
        case .ping(let innerFrom, let to, let transaction) where innerFrom == from:
            // A user's `@ping` over the relay: answered over the relay, never by the path agent.
            guard verifyTag(bytes, from: from, to: to, now: now) else { return }
            answerRelayedPing(transaction, from: from)
        case .pong(let innerFrom, let to, let transaction, _) where innerFrom == from:
            guard verifyTag(bytes, from: from, to: to, now: now) else { return }
            _ = answerUserPing(transaction, from: from, via: nil, now: now)
        default:
            return
        }
    }

    /// Checks a pair tag; a datagram from a peer the roster does not hold makes the client
    /// ask the server about it (the next retransmission can then be checked).
    mutating func verifyTag(_ bytes: [UInt8], from: ClientID, to: ClientID, now: Instant) -> Bool {
        guard to == selfID else { return false }
        guard let key = link(for: from)?.pairKey else {
            if roster.peer(from) == nil { ask(about: from, now: now) }
            return false
        }
        guard SessionCrypto.verifyAuthenticated(bytes, key: key) else {
            emit(.forged(claimedFrom: from))
            return false
        }
        links[from]?.lastHeard = now
        return true
    }

    mutating func openChat(_ sealed: [UInt8], from: ClientID, to: ClientID, messageID: UInt64, now: Instant) -> String? {
        guard to == selfID else { return nil }
        guard let key = link(for: from)?.pairKey else {
            if roster.peer(from) == nil { ask(about: from, now: now) }
            return nil
        }
        guard let text = SessionCrypto.open(sealed, from: from, to: to, messageID: messageID, key: key) else {
            emit(.forged(claimedFrom: from))
            return nil
        }
        links[from]?.lastHeard = now
        guard !text.unicodeScalars.contains(where: ClassicMessage.isForbiddenInText) else { return nil }
        return text
    }
}
