/// What natchat keeps across restarts, and the one protocol every store implements.
///
/// The server's cores never wait on a store: they hold what they need in memory (loaded once
/// at start with ``DurableStore/load()``) and emit ``StoreChange``s, which a writer applies in
/// batches off the event loop (``DurableStore/apply(_:)``, one transaction per batch). A store
/// therefore needs only these two calls, which is what lets an SQLite file, a PostgreSQL
/// database or memory stand behind the same server.

/// An ID's claim: the natchat/2 key that registered it first, while the claim lives.
public struct ClaimRecord: Hashable, Sendable {
    /// The claimed ID (a `ClientID`'s raw value).
    public var id: String
    /// The owner's Ed25519 public key (32 bytes): registrations of `id` must prove it.
    public var signingKey: [UInt8]
    /// The owner's X25519 public key (32 bytes): what mail to the owner is sealed to.
    public var agreementKey: [UInt8]
    /// When the claim was made (Unix seconds).
    public var claimedAt: Int64
    /// The owner's latest registration (Unix seconds); the claim expires a TTL after it.
    public var lastSeen: Int64

    public init(id: String, signingKey: [UInt8], agreementKey: [UInt8], claimedAt: Int64, lastSeen: Int64) {
        self.id = id
        self.signingKey = signingKey
        self.agreementKey = agreementKey
        self.claimedAt = claimedAt
        self.lastSeen = lastSeen
    }
}

/// A message waiting in the mailbox for an offline recipient. The server stores it as it came:
/// sealed end to end, so the store never holds its text.
public struct MailRecord: Hashable, Sendable {
    /// Unique and increasing in the order messages were queued (assigned by the server).
    public var serial: Int64
    public var recipient: String
    public var sender: String
    /// When the server queued it (Unix seconds).
    public var queuedAt: Int64
    /// The sealed message, opaque to the server and the store.
    public var sealed: [UInt8]

    public init(serial: Int64, recipient: String, sender: String, queuedAt: Int64, sealed: [UInt8]) {
        self.serial = serial
        self.recipient = recipient
        self.sender = sender
        self.queuedAt = queuedAt
        self.sealed = sealed
    }
}

/// One durable change. Changes are applied in order; a batch is one transaction.
public enum StoreChange: Hashable, Sendable {
    /// Creates or replaces the claim of `record.id`.
    case putClaim(ClaimRecord)
    /// Deletes the claim of an ID (no-op when there is none).
    case removeClaim(id: String)
    /// Adds a message (replaces one with the same serial).
    case putMail(MailRecord)
    /// Deletes a message (no-op when there is none).
    case removeMail(serial: Int64)
}

/// Everything a store holds, as loaded at start.
public struct StoreSnapshot: Hashable, Sendable {
    public var claims: [ClaimRecord]
    /// Oldest first (by serial).
    public var mail: [MailRecord]

    public init(claims: [ClaimRecord] = [], mail: [MailRecord] = []) {
        self.claims = claims
        self.mail = mail
    }
}

/// Why a store could not be opened, read or written. Each case says what an operator needs
/// to fix it; none is ever answered by emptying the store.
public enum StoreError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The file or its folder cannot be created or opened (permissions, missing parent, ...).
    case cannotOpen(path: String, reason: String)
    /// The file exists but is not a natchat store in good order (not SQLite, damaged).
    case corrupt(path: String, reason: String)
    /// The store was written by a newer natchat (its schema version is unknown here).
    case schemaTooNew(path: String, found: Int, supported: Int)
    /// A read or a write failed.
    case failed(reason: String)

    public var description: String {
        switch self {
        case .cannotOpen(let path, let reason): "cannot open the store \(path): \(reason)"
        case .corrupt(let path, let reason): "the store \(path) is damaged or not a natchat store (\(reason)); it was left as it is"
        case .schemaTooNew(let path, let found, let supported):
            "the store \(path) has schema version \(found), newer than this natchat's \(supported); use a newer natchat-server"
        case .failed(let reason): "store operation failed: \(reason)"
        }
    }
}

/// A durable store: claims and mail. Implementations are thread-safe; ``apply(_:)`` is called
/// from one writer thread at a time, never from an event loop.
public protocol DurableStore: AnyObject, Sendable {
    /// What the server prints at start: `memory`, or the file or database it uses.
    var location: String { get }
    /// Everything stored (at start).
    func load() throws(StoreError) -> StoreSnapshot
    /// Applies `changes` in order, all or none.
    func apply(_ changes: [StoreChange]) throws(StoreError)
}
