import Addressing
import MonotonicTime
import Store
import Wire

// Claim look-ups and the mailbox: what a natchat/2 client needs to leave a message for a
// claimed ID that is offline, and how the message reaches its recipient.

extension Registry {
    /// Answers a claim look-up: the keys that hold `peer`'s claim (the key mail is sealed to).
    func answerClaimLookup(query: UInt32, peer: ClientID, to entry: Entry, now: Instant) -> [Output] {
        let claim = claimBook?.claim(of: peer, at: unixTime(now))
        let answer = ExtendedMessage.claimResult(query: query, peer: peer, keys: claim?.keys,
                                                 claimedSince: UInt64(clamping: claim?.claimedAt ?? 0))
        return [.sendExtended(answer, to: entry.publicEndpoint)]
    }

    /// Takes a sealed message for an offline, claimed recipient.
    mutating func takeDeposit(query: UInt32, to recipient: ClientID, sealed: [UInt8], from sender: Entry,
                              now: Instant) -> [Output] {
        let outcome: DepositOutcome
        var actions: [Output] = []
        let at = unixTime(now)
        if let earlier = mailbox?.answered(query, from: sender.id) {
            // The same deposit again (its answer was lost): the same answer, nothing queued twice.
            return [.sendExtended(.depositResult(query: query, to: recipient, outcome: earlier), to: sender.publicEndpoint)]
        }
        if mailbox == nil {
            outcome = .refused(.noMailbox)
        } else if let online = entries[recipient], online.dialect == .extended {
            outcome = .recipientOnline
        } else if claimBook?.claim(of: recipient, at: at) == nil {
            outcome = .unknownRecipient
        } else if let result = mailbox?.deposit(from: sender.id, to: recipient, sealed: sealed, unixTime: at, now: now) {
            outcome = result.0
            if let change = result.1 {
                actions.append(.persist(change))
                actions.append(.report(.mailQueued(from: sender.id, to: recipient, bytes: sealed.count)))
            }
        } else {
            outcome = .refused(.noMailbox)
        }
        mailbox?.remember(outcome, for: query, from: sender.id, now: now)
        actions.append(.sendExtended(.depositResult(query: query, to: recipient, outcome: outcome), to: sender.publicEndpoint))
        return actions
    }

    /// `recipient` acknowledged mailbox message `serial`: deleted, and its sender, when
    /// online, gets a receipt.
    mutating func acknowledgeMail(_ serial: UInt64, by recipient: ClientID) -> [Output] {
        guard let (record, change) = mailbox?.acknowledge(serial, by: recipient) else { return [] }
        var actions: [Output] = [.persist(change), .report(.mailDelivered(from: record.sender, to: recipient))]
        if let sender = try? ClientID(record.sender), let entry = entries[sender], entry.dialect == .extended {
            actions.append(.sendExtended(.mailDelivered(to: recipient, serial: serial), to: entry.publicEndpoint))
        }
        return actions
    }

    /// The mailbox messages due at `now`, to their online recipients.
    mutating func deliverMail(now: Instant) -> [Output] {
        guard let due = mailbox?.handleTimeout(now: now) else { return [] }
        return due.compactMap { recipient, record in
            guard let entry = entries[recipient], entry.dialect == .extended, let from = try? ClientID(record.sender) else { return nil }
            return .sendExtended(.mail(serial: UInt64(record.serial), from: from, queuedAt: UInt64(clamping: record.queuedAt),
                                       sealed: record.sealed), to: entry.publicEndpoint)
        }
    }
}
