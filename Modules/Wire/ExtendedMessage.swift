import Addressing

/// Every message of the extended dialect (natchat/2): binary datagrams that start with
/// the byte `0xFE`, which no UTF-8 text and no STUN message can start with, then a version
/// byte and a type byte.
///
/// A natchat client proposes the dialect inside its classic registration (an offer token
/// the seed's server ignores); only a server that answers with ``challenge(cookie:)`` gets
/// extended messages, and the server sends them only to clients that registered with
/// ``register(id:cookie:privateEndpoints:natKind:keys:subscribe:)``. A classic peer never
/// receives one.
///
/// A message is what a datagram says; how it is authenticated is its *trailer*, which
/// ``ExtendedDatagram`` adds and checks apart (one framing layer): a registration ends with
/// a signature, a client→server session message with a counter and a tag under the session
/// key, a peer message with a tag under the pair key (``Authentication``).
public enum ExtendedMessage: Hashable, Sendable {
    // Client → server
    /// Registration, echoing the cookie from ``challenge(cookie:)`` to prove the source
    /// address; signed (Ed25519) with the key in `keys`. `subscribe`: the client wants the
    /// roster and its changes pushed (a chat shell does; a headless client learns peers on
    /// demand, so its joins cost the server nothing per registered client).
    case register(id: ClientID, cookie: Token128, privateEndpoints: [Endpoint], natKind: NATKind, keys: PublicKeys,
                  subscribe: Bool = true)
    /// Keep-alive; from a new source address it moves the registration (the tag proves it).
    /// `mappedEndpoint`: the external endpoint of a port mapping the client's gateway granted
    /// (PCP, NAT-PMP or UPnP), which peers may try as a candidate.
    case keepAlive(id: ClientID, natKind: NATKind, mappedEndpoint: Endpoint? = nil)
    case exit(id: ClientID)
    /// Asks the server to have `peer` and the sender punch towards each other now.
    case connect(id: ClientID, peer: ClientID)
    /// Asks the server to forward `payload` (an encoded peer message) to `to`.
    case relay(id: ClientID, to: ClientID, payload: [UInt8])
    /// Acknowledges roster deltas by their feed sequence: `largest`, and `largest - 1 - i`
    /// for every bit `i` set in `received`.
    case rosterAck(id: ClientID, largest: UInt32, received: UInt64)
    /// Asks whether `peer` is registered (answered with ``lookupResult(query:epoch:version:peer:found:)``);
    /// the server then keeps the sender told of `peer`'s changes.
    case lookup(id: ClientID, query: UInt32, peer: ClientID)
    /// Asks for the registered IDs that start with `prefix` (all for ""), sorted, from the
    /// `offset`-th match on, at most `limit` (answered with ``listPage(query:total:offset:entries:)``).
    case listQuery(id: ClientID, query: UInt32, prefix: String, offset: UInt32, limit: UInt16)
    /// Asks for the keys that hold a claim on `peer`, online or not (answered with
    /// ``claimResult(query:peer:keys:claimedSince:)``): what mail to an offline peer is sealed to.
    case claimLookup(id: ClientID, query: UInt32, peer: ClientID)
    /// Hands the server a message for `to`, who is offline, sealed end to end to `to`'s
    /// long-term key and signed by the sender's (the server can neither read nor forge it);
    /// answered with ``depositResult(query:to:outcome:)``.
    case deposit(id: ClientID, query: UInt32, to: ClientID, sealed: [UInt8])
    /// The recipient has the mailbox message `serial` (shown it): the server deletes it.
    case mailAck(id: ClientID, serial: UInt64)
    /// The owner gives up its claim on its ID (answered with ``claimChanged(id:keys:)``, no keys).
    case releaseClaim(id: ClientID)
    /// The owner hands its claim to `newKeys`; `signature` is the new signing key's over
    /// ``rotationStatement(id:newKeys:)``, which proves the new key is held (the session
    /// proves the old). Answered with ``claimChanged(id:keys:)``.
    case rotateKey(id: ClientID, newKeys: PublicKeys, signature: [UInt8])
    /// How a punch attempt with `peer` settled, as the client saw it: the server counts
    /// outcomes (its metrics) and answers nothing. Sent once per attempt that settles, so the
    /// operator can tell how often punching works without asking clients.
    case pathReport(id: ClientID, peer: ClientID, outcome: PathOutcome)

    // Server → client
    /// Proves that the registering address receives: echo the cookie to register.
    case challenge(cookie: Token128)
    /// Registration accepted; `serverKey` is the server's X25519 key and `nonce` its fresh
    /// randomness for this session: both go into the session key. `cookie` echoes the
    /// registration's cookie, so a client that registered twice knows which answer is which.
    case registered(serverKey: [UInt8], publicEndpoint: Endpoint, keepAliveMillis: UInt32, alternatePort: UInt16,
                    nonce: Token128 = .zero, cookie: Token128 = .zero)
    case refused(text: String)
    /// Changes to the roster, for a subscriber (acknowledged with ``rosterAck(id:largest:received:)``).
    case roster(RosterDelta)
    /// The answer to ``lookup(id:query:peer:)``: `found` is `nil` when `peer` is
    /// not registered; `version` is the roster version at the answer.
    // Indirect: the answer is rare and large; inline it would make every message (and every
    // server action) its size.
    indirect case lookupResult(query: UInt32, epoch: UInt32, version: UInt64, peer: ClientID, found: RosterEntry?)
    /// The answer to ``listQuery(id:query:prefix:offset:limit:)``: `total` IDs
    /// match; `entries` are the matches from `offset` on (fewer than asked for when they
    /// would not fit: ask again from where they end).
    case listPage(query: UInt32, total: UInt32, offset: UInt32, entries: [ListEntry])
    /// The answer to ``claimLookup(id:query:peer:)``: `keys` is `nil` when nobody claims `peer`;
    /// `claimedSince` is the claim's date (Unix seconds).
    case claimResult(query: UInt32, peer: ClientID, keys: PublicKeys?, claimedSince: UInt64)
    /// The answer to ``deposit(id:query:to:sealed:)``.
    case depositResult(query: UInt32, to: ClientID, outcome: DepositOutcome)
    /// A message that waited in the mailbox, oldest first; sent again until acknowledged with
    /// ``mailAck(id:serial:)``. `queuedAt`: when the server took it (Unix seconds).
    case mail(serial: UInt64, from: ClientID, queuedAt: UInt64, sealed: [UInt8])
    /// To the sender of mailbox message `serial`: its recipient has it.
    case mailDelivered(to: ClientID, serial: UInt64)
    /// The claim on `id` now belongs to `keys` (after ``rotateKey(id:newKeys:signature:)``),
    /// or to nobody (`nil`, after ``releaseClaim(id:)``).
    case claimChanged(id: ClientID, keys: PublicKeys?)
    /// Punch towards `peer` now (after `delayMillis`).
    case punch(peer: PeerInfo, round: UInt32, delayMillis: UInt32)
    /// A payload that `from` asked the server to forward (the server vouches for `from`).
    case relayed(from: ClientID, payload: [UInt8])
    /// Answer to a keep-alive: where the server sees the client now.
    case keepAliveAck(publicEndpoint: Endpoint)
    /// The server holds no session for that ID (it restarted): register again. `echo` is
    /// the tag of the refused message, so a client acts only on an answer to a message it
    /// really sent (a forged keep-alive, whose tag it never made, cannot make it re-register).
    case unknownSession(ClientID, echo: Token128 = .zero)

    // Peer ↔ peer (tags under the pair key; chat sealed with it)
    /// A connectivity check.
    case ping(from: ClientID, to: ClientID, transaction: UInt64)
    /// The answer to a check, with the source address the check came from.
    case pong(from: ClientID, to: ClientID, transaction: UInt64, observed: Endpoint)
    /// A chat, sealed (ChaCha20-Poly1305) under the pair key: its own authentication.
    case chat(from: ClientID, to: ClientID, messageID: UInt64, sealed: [UInt8])
    case chatAck(from: ClientID, to: ClientID, messageID: UInt64)

    // Server ↔ server (several servers sharing one database: a counter and a tag under the
    // cluster key, the session trailer's layout)
    /// To `target`'s home: have `target` punch towards `peer` (a client of the sender) now,
    /// after `delayMillis`. `peer` carries its private endpoints; the home shows them to
    /// `target` only when both are behind the same NAT, as for its own clients. (Indirect: a
    /// message, and every output that carries one, stays the size of the common ones.)
    indirect case serverPunch(target: ClientID, peer: PeerInfo, round: UInt32, delayMillis: UInt32)
    /// To `to`'s home: forward `payload`, which `from` (a client of the sender, whose session
    /// the sender checked) asked to relay.
    case serverRelay(from: ClientID, to: ClientID, payload: [UInt8])

    /// The first byte of every extended datagram.
    public static let magic: UInt8 = 0xFE
    public static let version: UInt8 = 1
    /// The offer token a natchat client appends to its classic registration.
    public static let offer = "natchat/2"
    /// Limits on every input: the decoder refuses anything larger.
    public static let maxDatagramLength = 1500
    public static let maxPrivateEndpoints = 4
    /// Set in a NAT kind byte (keep-alive, peer info) when a port mapping's endpoint follows.
    static let mappedEndpointFlag: UInt8 = 0x80
    public static let maxTextBytes = 1200
    public static let maxRelayPayload = 1400
    /// Most bytes of a sealed mailbox message: a chat's text with its seal and signature.
    public static let maxMailBytes = 1400

    /// What the new key signs in ``rotateKey(id:newKeys:signature:)``: a fixed context, the
    /// ID and both new keys (so a rotation statement is good for that ID and those keys only).
    public static func rotationStatement(id: ClientID, newKeys: PublicKeys) -> [UInt8] {
        let idBytes = Array(id.rawValue.utf8)
        return Array("natchat rotate key v1".utf8) + [UInt8(idBytes.count)] + idBytes + newKeys.signing + newKeys.agreement
    }

    /// Whether `bytes` starts like an extended datagram.
    public static func looksExtended(_ bytes: some Collection<UInt8>) -> Bool {
        bytes.first == magic
    }

    enum Kind: UInt8 {
        case register = 0x01, keepAlive, exit, connect, relay, rosterAck, lookup, listQuery, claimLookup, deposit, mailAck,
             releaseClaim, rotateKey, pathReport
        // 0x44 and 0x45 were the per-peer roster notices that `roster` replaced.
        case challenge = 0x41, registered, refused
        case punch = 0x46, relayed, keepAliveAck, unknownSession, roster, lookupResult, listPage, claimResult, depositResult, mail,
             mailDelivered, claimChanged
        case ping = 0x81, pong, chat, chatAck
        case serverPunch = 0xC1, serverRelay
    }

    /// How a datagram of this kind is authenticated: the trailer ``ExtendedDatagram`` adds.
    public enum Authentication: Hashable, Sendable {
        /// Nothing: server messages, and `chat` (sealed, so it authenticates itself).
        case none
        /// An Ed25519 signature (64 bytes) over every byte before it: `register`.
        case signature
        /// A counter (8 bytes) and a tag (16 bytes) under the session key, over every byte
        /// before the tag: client→server messages after registering (and server→server
        /// messages, under the cluster key).
        case session
        /// A tag (16 bytes) under the pair key, over every byte before it: peer checks and acks.
        case pair
    }

    public var authentication: Authentication { kind.authentication }

    var kind: Kind {
        switch self {
        case .register: .register
        case .keepAlive: .keepAlive
        case .exit: .exit
        case .connect: .connect
        case .relay: .relay
        case .rosterAck: .rosterAck
        case .lookup: .lookup
        case .listQuery: .listQuery
        case .claimLookup: .claimLookup
        case .deposit: .deposit
        case .mailAck: .mailAck
        case .releaseClaim: .releaseClaim
        case .rotateKey: .rotateKey
        case .pathReport: .pathReport
        case .claimChanged: .claimChanged
        case .claimResult: .claimResult
        case .depositResult: .depositResult
        case .mail: .mail
        case .mailDelivered: .mailDelivered
        case .challenge: .challenge
        case .registered: .registered
        case .refused: .refused
        case .roster: .roster
        case .lookupResult: .lookupResult
        case .listPage: .listPage
        case .punch: .punch
        case .relayed: .relayed
        case .keepAliveAck: .keepAliveAck
        case .unknownSession: .unknownSession
        case .ping: .ping
        case .pong: .pong
        case .chat: .chat
        case .chatAck: .chatAck
        case .serverPunch: .serverPunch
        case .serverRelay: .serverRelay
        }
    }
}

extension ExtendedMessage.Kind {
    var authentication: ExtendedMessage.Authentication {
        switch self {
        case .register: .signature
        case .keepAlive, .exit, .connect, .relay, .rosterAck, .lookup, .listQuery, .claimLookup, .deposit, .mailAck, .releaseClaim,
             .rotateKey, .pathReport, .serverPunch, .serverRelay: .session
        case .ping, .pong, .chatAck: .pair
        case .challenge, .registered, .refused, .roster, .lookupResult, .listPage, .punch, .relayed, .keepAliveAck,
             .unknownSession, .chat, .claimResult, .depositResult, .mail, .mailDelivered, .claimChanged: .none
        }
    }
}

extension ExtendedMessage.Authentication {
    /// The trailer's length in bytes.
    public var trailerLength: Int {
        switch self {
        case .none: 0
        case .signature: 64
        case .session: 24
        case .pair: 16
        }
    }

    /// How many bytes at the end are the tag or signature (what authenticates the rest).
    public var proofLength: Int {
        switch self {
        case .none: 0
        case .signature: 64
        case .session, .pair: 16
        }
    }
}

/// How a punch attempt settled, as a client reports it (``ExtendedMessage/pathReport(id:peer:outcome:)``).
public enum PathOutcome: UInt8, Hashable, Sendable, CaseIterable, CustomStringConvertible {
    /// A direct path to the peer's public (or peer-reflexive) endpoint.
    case direct = 1
    /// A direct path to one of the peer's private endpoints (the same NAT).
    case `private` = 2
    /// The round ended without a path: the peer stays on the relay.
    case relayed = 3
    /// A direct path found by port probing (one side behind an endpoint-dependent NAT).
    case probed = 4
    /// A direct path to the external endpoint of a port mapping (PCP, NAT-PMP, UPnP).
    case portMapped = 5

    public var description: String {
        switch self {
        case .direct: "direct"
        case .private: "private"
        case .relayed: "relayed"
        case .probed: "probed"
        case .portMapped: "port_map"
        }
    }
}

/// What the server did with a ``ExtendedMessage/deposit(id:query:to:sealed:)``.
public enum DepositOutcome: Hashable, Sendable {
    /// Stored as `serial`; kept `keptSeconds` (the mailbox TTL) or until delivered.
    case queued(serial: UInt64, keptSeconds: UInt32)
    /// Nobody claims the recipient: there is no one to keep mail for.
    case unknownRecipient
    /// The recipient is online: chat with it directly.
    case recipientOnline
    /// Refused; the reason says which limit.
    case refused(DepositRefusal)
}

/// Why the mailbox refused a message.
public enum DepositRefusal: UInt8, Hashable, Sendable, CustomStringConvertible {
    /// The recipient already has as many waiting messages as the server keeps per addressee.
    case recipientFull = 1
    /// Larger than a chat may be.
    case tooLarge
    /// The sender deposited too many messages in the last minute.
    case rateLimited
    /// The store is at its size limit.
    case storeFull
    /// This server keeps no mailbox (`--store memory`).
    case noMailbox

    public var description: String {
        switch self {
        case .recipientFull: "the recipient's mailbox is full"
        case .tooLarge: "the message is too long"
        case .rateLimited: "too many queued messages; wait a minute"
        case .storeFull: "the server's mailbox is full"
        case .noMailbox: "this server keeps no mailbox"
        }
    }
}
