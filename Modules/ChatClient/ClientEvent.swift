import AddressDiscovery
import Addressing
import ChatRouter
import ClientSession
import HolePunch
import Wire

/// What the chat client has to tell its user, typed: the shell turns each into the lines
/// people read (``ShellFormatter``); another front end (a GUI, a bot, a test) reads the
/// values themselves.
public enum ClientEvent: Hashable, Sendable {
    /// The server confirmed the registration.
    case registered(ClientID, publicEndpoint: Endpoint, RegisteredDialect)
    /// A new natchat/2 session replaced one that was lost.
    case registeredAgain(ClientID, publicEndpoint: Endpoint)
    /// The session was lost; the client registers again (with the same server: a move to
    /// another one is told by ``serverChanged(from:to:publicEndpoint:)`` alone).
    case registeringAgain(ClientSession.Loss)
    /// Server `from` stopped answering; the client is registered with `to` now, under the same
    /// ID and key (the claim is in the servers' shared database: peers see it move). Replaces
    /// ``registeredAgain(_:publicEndpoint:)`` for that registration.
    case serverChanged(from: Endpoint, to: Endpoint, publicEndpoint: Endpoint)
    /// The server now sees us at another endpoint.
    case publicEndpointChanged(Endpoint)
    /// A notice from the server (a refusal, a warning).
    case serverNotice(String)
    /// The server refused the registration: the client cannot go on (the notice came first).
    case registrationRefused(String)
    /// Our ID's claim was released (`--release-id`): any key may register it now.
    case claimReleased
    /// Our ID's claim now belongs to the key with this fingerprint (`--rotate-identity`).
    case claimRotated(fingerprint: String)
    /// The server did not make the claim change asked (our key does not hold the claim).
    case claimChangeRefused
    /// The server did not answer the claim change asked.
    case claimChangeUnanswered
    /// The mapping probe classified our NAT.
    case natClassified(NATKind)

    /// A peer joined. `classicPeer`: it speaks the seed's dialect while we speak natchat/2.
    case joined(ClientID, publicEndpoint: Endpoint, classicPeer: Bool)
    /// A peer is behind our NAT, at this private address.
    case sameNAT(ClientID, privateAddress: IPv4Address)
    /// A peer's public endpoint changed (classic dialect).
    case moved(ClientID, Endpoint)
    case left(ClientID, LeaveReason, Endpoint)
    /// After a listing's first screenful of joins: how many more joined.
    case moreOnline(Int)
    /// The server follows another part of the roster for us (natchat/2, past its limit).
    case rosterScopeChanged(RosterScope, registered: Int)

    case chat(from: ClientID, text: String, origin: ChatOrigin)
    case delivered(to: ClientID)
    case undelivered(to: ClientID, text: String, reason: ExtendedRouter.UndeliveredReason)
    /// The server says no client of this ID is registered.
    case noSuchPeer(ClientID)
    /// A look-up for a waiting chat is slow; the client keeps asking.
    case lookupPending(ClientID)
    /// Too many chats are waiting for acknowledgement: this one was not sent.
    case tooManyInFlight(to: ClientID)
    case pathChanged(ClientID, PathAgent.Path)
    /// The server announced other keys for a peer than those pinned (ignored).
    case keyChanged(ClientID)
    /// A peer showed another key than the one known from earlier sessions (fingerprints):
    /// chat with it is held until `@trust`.
    case peerKeyChanged(ClientID, pinned: String, seen: String)
    /// A chat went to the server's mailbox: `to` is offline, or did not acknowledge it
    /// (`reason`); the server keeps it `keptSeconds` or until `to` has it.
    case queued(to: ClientID, keptSeconds: UInt32, reason: ExtendedRouter.MailReason)
    /// A message that waited in the server's mailbox, written at `sentAt` (Unix seconds, the
    /// sender's clock). Shown once.
    case mail(from: ClientID, text: String, sentAt: UInt64)
    /// A message from the mailbox was not shown: it could not be opened, or it is signed by
    /// another key than the sender's as this client knows it.
    case mailRejected(from: ClientID, ExtendedRouter.MailRejection)
    /// The recipient of a message queued at the server has it. `queuedEarlier`: queued by an
    /// earlier run of this client, not this one.
    case mailDelivered(to: ClientID, queuedEarlier: Bool)
    /// A chat for a held peer was not sent.
    case chatHeld(to: ClientID, text: String)
    /// A chat from a held peer was dropped (not shown, not acknowledged).
    case chatFromHeldPeer(ClientID)
    /// `@trust`: the key the peer showed replaced the pinned one; chat goes on.
    case trusted(ClientID, previous: String, now: String)
    /// `@trust` of a peer that is not held: its key is the pinned one.
    case trustNotNeeded(ClientID, fingerprint: String)
    /// `@trust` of a peer whose key is not known.
    case nothingPinned(ClientID)
    /// `@trust` while known peers are off (`--known-peers none`).
    case knownPeersOff
    /// `@whois`.
    case whois(WhoisReport)

    /// One line of `@show_list`.
    case listEntry(ListLine)
    /// The line under a `@show_list` page.
    case listFooter(ListFooter)
    /// `@show_list` before any client is listed.
    case listEmpty
    /// The server did not answer a `@show_list` page in time.
    case listUnanswered
    /// `@help`.
    case help
    /// `@status`.
    case status(StatusReport)
    /// `@ping`: `id` answered on `route` after `roundTrip`.
    case pingAnswered(ClientID, route: ExtendedRouter.StatusRoute, roundTrip: Duration)
    /// `@ping`: no answer from `id` on `route` within `after`.
    case pingUnanswered(ClientID, route: ExtendedRouter.StatusRoute, after: Duration)
    /// `@ping` could not be sent to `id`.
    case pingNotSent(ClientID, PingProblem)
}

/// Why `@ping` sent nothing.
public enum PingProblem: Hashable, Sendable {
    /// The roster does not hold the peer.
    case unknownPeer
    /// A classic peer (or a classic session): nothing authenticates an answer.
    case classicPeer
    /// The peer's keys are not held, or chat with it is held (its key changed).
    case noKey
    /// Too many pings are waiting for their answers.
    case tooManyInFlight
    /// `@ping` of our own ID.
    case yourself
    /// Not registered with a natchat/2 server (yet).
    case notRegistered
}

/// How the server confirmed the registration.
public enum RegisteredDialect: Hashable, Sendable {
    /// natchat/2, with our identity key's fingerprint.
    case natchat2(keyFingerprint: String)
    /// The seed's protocol, and the other clients it listed.
    case classic(online: [ClientID])
}

/// What vouches for a chat's sender.
public enum ChatOrigin: Hashable, Sendable {
    /// Authenticated under the pair key (natchat/2), and how it travelled.
    case authenticated(ExtendedRouter.Route)
    /// A classic peer's chat while we speak natchat/2: nothing proves who sent it.
    case unverifiedClassicPeer
    /// A chat in a classic session (the seed's protocol proves nothing, as it always did).
    case classicSession
}

/// One `@show_list` entry.
public enum ListLine: Hashable, Sendable {
    /// A client the seed's server listed.
    case classic(ClientID, Endpoint)
    /// Our own line (natchat/2): the endpoint the server sees, our NAT's kind.
    case own(ClientID, Endpoint?, NATKind)
    /// A natchat/2 roster entry and the path to it (`nil`: a classic peer); `claimedSince`:
    /// since when its key has claimed the ID on the server (Unix seconds; 0: no claim).
    case peer(ClientID, Endpoint, PathAgent.Path?, claimedSince: UInt32 = 0)
}

/// The line under a `@show_list` page: where the page is among the entries (of those
/// starting with `prefix`), and how to get the next one.
public struct ListFooter: Hashable, Sendable {
    public var total: Int
    public var shown: Int
    /// The index of the page's first entry among `total`.
    public var first: Int
    public var prefix: String?
    public var page: Int
    public var pageSize: Int

    /// `nil` when the whole list fits one page and no prefix was given: such a list prints
    /// as it always did, without a footer.
    public init?(total: Int, shown: Int, first: Int, prefix: String?, page: Int, pageSize: Int) {
        self.total = total
        self.shown = shown
        self.first = first
        self.prefix = prefix
        self.page = page
        self.pageSize = max(1, pageSize)
        if prefix == nil, shown > 0, pages == 1 { return nil }
    }

    /// Pages of `pageSize` the entries fill (at least one).
    public var pages: Int { max(1, total / pageSize + (total % pageSize == 0 ? 0 : 1)) }
}

/// What the client noticed that is for the log, not the user.
public enum Diagnostic: Hashable, Sendable {
    /// A datagram decoded to nothing.
    case malformed(from: Endpoint, reason: String)
    /// A datagram that changed nothing.
    case ignored(from: Endpoint, what: String)
    /// A datagram claiming to be from a peer failed authentication.
    case forged(claimedFrom: ClientID)
    /// A peer's record changed (natchat/2).
    case peerUpdated(ClientID, publicEndpoint: Endpoint)
    /// The roster listed a peer it does not hold (a bug if it ever happens).
    case rosterListsUnknownPeer(ClientID)
    /// What the ``RemapProbe`` found about our NAT.
    case remapProbe(RemapProbe.Outcome)
    /// What a port-probing attempt with a peer did (logged at info: `probing bob: ...`).
    case probing(ClientID, PortProbe.Report)
}
