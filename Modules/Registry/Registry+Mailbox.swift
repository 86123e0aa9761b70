import Addressing
import Crypto
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

    /// The owner (its session proves the key) gives up its claim. Answered with the claim's
    /// new state (none) even when there was none, so a repeat gets the same answer.
    mutating func releaseClaim(of entry: Entry) -> [Output] {
        var actions: [Output] = []
        if let change = claimBook?.release(entry.id) { actions.append(.persist(change)) }
        actions.append(.sendExtended(.claimChanged(id: entry.id, keys: nil), to: entry.publicEndpoint))
        return actions
    }

    /// The owner hands its claim to `newKeys`, whose signature proves they are held. Nothing
    /// changes for a bad signature, or when the session's keys do not hold the claim.
    mutating func rotateClaim(of entry: Entry, to newKeys: PublicKeys, signature: [UInt8], now: Instant) -> [Output] {
        guard let verifier = try? Curve25519.Signing.PublicKey(rawRepresentation: newKeys.signing),
              verifier.isValidSignature(signature, for: ExtendedMessage.rotationStatement(id: entry.id, newKeys: newKeys))
        else { return [.report(.ignoredExtended(from: entry.publicEndpoint, .badSignature))] }
        let at = unixTime(now)
        guard let keys = entry.keys, let change = claimBook?.rotate(entry.id, from: keys, to: newKeys, at: at) else {
            return [.sendExtended(.claimChanged(id: entry.id, keys: claimBook?.claim(of: entry.id, at: at)?.keys), to: entry.publicEndpoint)]
        }
        return [.persist(change), .sendExtended(.claimChanged(id: entry.id, keys: newKeys), to: entry.publicEndpoint)]
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
