import Addressing
import Identity
import MonotonicTime
import Wire

/// The server's mailbox, client side: a chat for a peer that is offline (or that did not
/// acknowledge it) is sealed end to end to the keys of the peer's ID claim
/// (``MailSeal``) and handed to the server, which keeps it until the peer registers; mail
/// that waited for us is opened, shown once and acknowledged.
///
/// - **Sending.** A claim look-up (``ExtendedMessage/claimLookup(id:query:peer:)``) gives the
///   keys; the sealed message goes in a deposit (``ExtendedMessage/deposit(id:query:to:sealed:)``).
///   Both are resent with the look-ups' backoff, a deposit with the same query number (the
///   server answers a repeated one as it did the first), until answered or until the
///   message's deadline: the chat's own for an offline peer, but at least
///   ``QueryConfiguration/mailWindow`` after it went to the mailbox.
/// - **Receiving.** Every copy of a message is acknowledged (acknowledgements can be lost);
///   each serial is reported once. A message from a held peer is neither acknowledged nor
///   shown (the server resends it, so it is shown once the peer is released), as chats are.
///   One that cannot be opened, or that is signed by another key than the one the roster
///   holds for its sender, is acknowledged (so that the server does not resend it for ever)
///   and reported as ``Event/mailRejected(from:_:)``, never shown.
extension ExtendedRouter {
    /// Why a chat went to the server's mailbox.
    public enum MailReason: Hashable, Sendable {
        /// The server said the peer is not registered, and its ID is claimed.
        case offline
        /// The peer did not acknowledge the chat before its deadline, and its ID is claimed.
        case notAcknowledged
        /// The peer left before it acknowledged the chat, and its ID is claimed.
        case peerLeft
    }

    /// Why a message from the mailbox was not shown.
    public enum MailRejection: Hashable, Sendable {
        /// It could not be opened: malformed, a bad signature, or not sealed to our key.
        case unreadable(MailSeal.OpenError)
        /// It is signed by key `seen`, not by `known`, the sender's key as this client knows
        /// it (fingerprints).
        case otherKey(seen: String, known: String)
    }

    /// The wall-clock time of one instant of the clock the router is given: the owner sets it
    /// once, and the router counts from there (to the second). A mailbox message carries the
    /// Unix time it was typed at.
    public struct WallClock: Hashable, Sendable {
        public var instant: Instant
        public var unixSeconds: Int64

        /// `instant` was at `unixSeconds` (Unix time).
        public init(instant: Instant = .zero, unixSeconds: Int64 = 0) {
            self.instant = instant
            self.unixSeconds = unixSeconds
        }

        /// The Unix time (seconds) at `now`.
        public func unixSeconds(at now: Instant) -> Int64 {
            unixSeconds + (now - instant).components.seconds
        }
    }

    /// A chat on its way to the mailbox: first its recipient's claim is looked up, then the
    /// sealed message is deposited.
    struct MailSend: Sendable {
        enum Phase: Sendable {
            case claimLookup
            case deposit(sealed: [UInt8])
        }

        var to: ClientID
        var text: String
        /// When the chat was typed (its sealed `sentAt`).
        var typedAt: Instant
        var reason: MailReason
        var phase: Phase
        var nextSend: Instant
        var interval: Duration
        var deadline: Instant
    }

    // MARK: - Sending

    /// Hands `text` for `id` to the mailbox: looks up `id`'s claim first.
    mutating func startMail(_ text: String, to id: ClientID, typedAt: Instant, reason: MailReason, deadline: Instant,
                            now: Instant) {
        guard !heldPeers.contains(id) else { return emit(.chatHeld(to: id, text: text)) }
        mailSends[takeQueryNumber()] = MailSend(to: id, text: text, typedAt: typedAt, reason: reason, phase: .claimLookup,
                                                nextSend: now, interval: queries.firstRetry, deadline: deadline)
        sendDueMail(now: now)
    }

    /// The server's answer to a claim look-up: the message is sealed to the claim's keys and
    /// deposited, or, when nobody claims `peer`, given up as the chat would have been.
    mutating func answerClaim(query: UInt32, peer: ClientID, keys: PublicKeys?, now: Instant) {
        guard var mail = mailSends[query], mail.to == peer, case .claimLookup = mail.phase else { return }
        mailSends[query] = nil
        guard let keys else { return giveUpUnclaimed(mail) }
        guard !heldPeers.contains(peer) else { return emit(.chatHeld(to: peer, text: mail.text)) }
        if let pinned = roster.peer(peer)?.info.keys, pinned != keys {
            // The claim is not the key this session talks to: someone lies; seal to neither.
            emit(.keyChanged(peer))
            return emit(.undelivered(to: peer, text: mail.text, reason: .unsealable))
        }
        let sentAt = UInt64(clamping: wallClock.unixSeconds(at: mail.typedAt))
        guard let sealed = try? MailSeal.seal(mail.text, sentAt: sentAt, from: selfID, identity: identity, to: peer, keys: keys)
        else { return emit(.undelivered(to: peer, text: mail.text, reason: .unsealable)) }
        guard sealed.count <= ExtendedMessage.maxMailBytes else {
            return emit(.undelivered(to: peer, text: mail.text, reason: .mailboxRefused(.tooLarge)))
        }
        mail.phase = .deposit(sealed: sealed)
        mail.nextSend = now
        mail.interval = queries.firstRetry
        mailSends[takeQueryNumber()] = mail
        sendDueMail(now: now)
    }

    /// The server's answer to a deposit.
    mutating func answerDeposit(query: UInt32, to peer: ClientID, outcome: DepositOutcome, now: Instant) {
        guard var mail = mailSends[query], mail.to == peer, case .deposit = mail.phase else { return }
        mailSends[query] = nil
        switch outcome {
        case .queued(let serial, let keptSeconds):
            mailQueued.insert(serial)
            emit(.queued(to: peer, text: mail.text, serial: serial, keptSeconds: keptSeconds, reason: mail.reason))
        case .unknownRecipient:
            giveUpUnclaimed(mail)
        case .refused(let refusal):
            emit(.undelivered(to: peer, text: mail.text, reason: .mailboxRefused(refusal)))
        case .recipientOnline where mail.reason == .offline:
            // It registered meanwhile: chat as usual (looked up again unless the roster has it).
            chatAgain(mail, now: now)
        case .recipientOnline:
            // It did not acknowledge the chat, yet the server still sees it: ask again a little
            // later (the server may notice it is gone), until the deadline.
            mail.nextSend = now + queries.maxRetry
            mail.interval = queries.maxRetry
            mailSends[takeQueryNumber()] = mail
        }
    }

    /// Nobody claims the peer: an offline one is not registered, and a chat it did not
    /// acknowledge is undelivered.
    private mutating func giveUpUnclaimed(_ mail: MailSend) {
        switch mail.reason {
        case .offline: emit(.noSuchPeer(mail.to, text: mail.text))
        case .notAcknowledged: emit(.undelivered(to: mail.to, text: mail.text, reason: .notAcknowledged))
        case .peerLeft: emit(.undelivered(to: mail.to, text: mail.text, reason: .peerLeft))
        }
    }

    /// The peer the mailbox was asked to keep a message for is online: the chat goes to it.
    private mutating func chatAgain(_ mail: MailSend, now: Instant) {
        let deliverBy = max(mail.deadline, now + queries.leastDeliveryWindow)
        if let held = roster.peer(mail.to) {
            if held.info.dialect == .classic {
                emit(.classicChatDue(held.info, text: mail.text))
            } else {
                try? send(mail.text, to: mail.to, firstSent: deliverBy - sender.configuration.deadline, now: now)
            }
        } else {
            ask(about: mail.to, now: now)
            lookups[mail.to]?.waiting.append(WaitingChat(text: mail.text, deadline: deliverBy, mailboxTried: true))
        }
    }

    /// Sends (again) the claim look-ups and deposits that are due, and gives up those past
    /// their deadline.
    mutating func sendDueMail(now: Instant) {
        for query in mailSends.keys.sorted() {
            guard var mail = mailSends[query] else { continue }
            if now >= mail.deadline {
                mailSends[query] = nil
                let reason: UndeliveredReason = switch mail.reason {
                case .notAcknowledged: .notAcknowledged
                case .peerLeft: .peerLeft
                case .offline: .mailboxSilent
                }
                emit(.undelivered(to: mail.to, text: mail.text, reason: reason))
                continue
            }
            guard now >= mail.nextSend else { continue }
            switch mail.phase {
            case .claimLookup:
                outputs.append(.sendToServer(.claimLookup(id: selfID, query: query, peer: mail.to)))
            case .deposit(let sealed):
                outputs.append(.sendToServer(.deposit(id: selfID, query: query, to: mail.to, sealed: sealed)))
            }
            mail.nextSend = now + mail.interval
            mail.interval = min(mail.interval * 2, queries.maxRetry)
            mailSends[query] = mail
        }
    }

    // MARK: - Receiving

    /// Mailbox message `serial` from `from`: acknowledged (every copy) and reported once,
    /// unless `from` is held.
    mutating func receiveMail(serial: UInt64, from: ClientID, queuedAt: UInt64, sealed: [UInt8]) {
        guard !heldPeers.contains(from) else {
            if heldMailReported.count < Self.heldChatsReportedLimit,
               heldMailReported.insert(HeldChat(from: from, messageID: serial)).inserted {
                emit(.chatFromHeldPeer(from))
            }
            return
        }
        outputs.append(.sendToServer(.mailAck(id: selfID, serial: serial)))
        guard mailSeen.insert(serial).inserted else { return }
        mailSeenOrder.append(serial)
        if mailSeenOrder.count > Self.mailSeenLimit { mailSeen.remove(mailSeenOrder.removeFirst()) }
        let contents: MailSeal.Contents
        do {
            contents = try MailSeal.open(sealed, identity: identity, recipientID: selfID, from: from)
        } catch {
            return emit(.mailRejected(from: from, .unreadable(error)))
        }
        guard !contents.text.unicodeScalars.contains(where: ClassicMessage.isForbiddenInText) else {
            return emit(.mailRejected(from: from, .unreadable(.malformed)))
        }
        let signedBy = Self.fingerprint(ofSigningKey: contents.senderSigningKey)
        if let known = roster.peer(from)?.info.keys, known.signing != contents.senderSigningKey {
            return emit(.mailRejected(from: from, .otherKey(seen: signedBy, known: IdentityKey.fingerprint(of: known))))
        }
        emit(.mail(from: from, text: contents.text, sentAt: contents.sentAt, queuedAt: queuedAt, signedBy: signedBy))
    }

    /// The fingerprint of a signing key (fingerprints are made from the signing key alone).
    static func fingerprint(ofSigningKey key: [UInt8]) -> String {
        IdentityKey.fingerprint(of: PublicKeys(signing: key, agreement: []))
    }
}
