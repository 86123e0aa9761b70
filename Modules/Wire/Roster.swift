import Addressing

/// Which part of the roster the server pushes to a subscriber.
public enum RosterScope: UInt8, Hashable, Sendable, CustomStringConvertible {
    /// Every registered client and every change (while the roster is small enough to read).
    case complete = 0
    /// Only the clients this subscriber talked to or asked about: past the server's roster
    /// limit, listing and completion ask the server instead.
    case interest = 1

    public var description: String {
        switch self {
        case .complete: "complete"
        case .interest: "interest"
        }
    }
}

/// One registered client as the roster carries it: what the server tells about it, its
/// place in registration order, and the roster version of its last change (a receiver
/// applies a record only when its version is higher than the one it holds, so a late or
/// repeated datagram never undoes a newer change).
public struct RosterEntry: Hashable, Sendable {
    public var info: PeerInfo
    /// Registration order on the server (a client keeps its place when it moves).
    public var order: UInt64
    public var version: UInt64

    public init(info: PeerInfo, order: UInt64, version: UInt64) {
        self.info = info
        self.order = order
        self.version = version
    }
}

/// The state of one client in a roster delta: registered (with what is known of it) or gone.
public enum RosterRecord: Hashable, Sendable {
    case present(RosterEntry)
    case absent(ClientID, version: UInt64, reason: LeaveReason, publicEndpoint: Endpoint)

    public var id: ClientID {
        switch self {
        case .present(let entry): entry.info.id
        case .absent(let id, _, _, _): id
        }
    }

    public var version: UInt64 {
        switch self {
        case .present(let entry): entry.version
        case .absent(_, let version, _, _): version
        }
    }
}

/// One datagram of a subscriber's roster feed: the current state of the clients that
/// changed, many per datagram. Each is numbered per feed (``sequence``) and acknowledged
/// with ``ExtendedMessage/rosterAck(id:largest:received:counter:tag:)``; what is not
/// acknowledged is sent again, rebuilt from the state of the moment.
public struct RosterDelta: Hashable, Sendable {
    /// The server process's roster epoch: versions compare only within one epoch.
    public var epoch: UInt32
    /// This datagram's number in the subscriber's feed (from 1 in each session).
    public var sequence: UInt32
    /// The roster version when the datagram was built.
    public var version: UInt64
    /// How many clients are registered.
    public var registered: UInt32
    public var scope: RosterScope
    /// Every change in the subscriber's scope up to ``version`` is in this datagram or in
    /// earlier ones the subscriber acknowledged: its copy is whole.
    public var synced: Bool
    public var records: [RosterRecord]

    public init(epoch: UInt32, sequence: UInt32, version: UInt64, registered: UInt32, scope: RosterScope, synced: Bool,
                records: [RosterRecord]) {
        self.epoch = epoch
        self.sequence = sequence
        self.version = version
        self.registered = registered
        self.scope = scope
        self.synced = synced
        self.records = records
    }

    /// Most records in one datagram.
    public static let maxRecords = 64
}

/// One line of a server-side listing (`@show_list` past the roster limit): no keys, so that
/// a page of a terminal's height fits a datagram or two.
public struct ListEntry: Hashable, Sendable {
    public var id: ClientID
    public var publicEndpoint: Endpoint
    public var natKind: NATKind
    public var dialect: Dialect
    /// Since when its key has claimed the ID (Unix seconds; 0: no claim).
    public var claimedSince: UInt32

    public init(id: ClientID, publicEndpoint: Endpoint, natKind: NATKind, dialect: Dialect, claimedSince: UInt32 = 0) {
        self.claimedSince = claimedSince
        self.id = id
        self.publicEndpoint = publicEndpoint
        self.natKind = natKind
        self.dialect = dialect
    }

    /// Most entries in one listing datagram.
    public static let maxPerDatagram = 100
}
