import Addressing
import Admission
import MonotonicTime
import Store
import Wire

/// Limits of the server's mailbox (messages kept for offline, claimed IDs).
public struct MailboxConfiguration: Hashable, Sendable {
    /// How long a message waits for its recipient.
    public var ttl: Duration
    /// Most messages waiting for one recipient.
    public var perRecipient: Int
    /// Most messages one sender may deposit per minute (all recipients together).
    public var perSenderPerMinute: Double
    /// Most bytes of sealed messages the server keeps in all.
    public var totalBytes: Int
    /// How long an undelivered message waits before it is sent to its online recipient again.
    public var resendInterval: Duration
    /// Most messages sent to one recipient at a time (the rest follow as these are acknowledged).
    public var window: Int

    public init(ttl: Duration = .seconds(7 * 86_400), perRecipient: Int = 100, perSenderPerMinute: Double = 30,
                totalBytes: Int = 64 << 20, resendInterval: Duration = .seconds(2), window: Int = 8) {
        self.ttl = ttl
        self.perRecipient = max(1, perRecipient)
        self.perSenderPerMinute = max(1, perSenderPerMinute)
        self.totalBytes = max(1, totalBytes)
        self.resendInterval = resendInterval
        self.window = max(1, window)
    }
}

/// The mailbox, a sub-machine of ``Registry``: messages for claimed IDs that were offline,
/// kept sealed (the server holds no key to them) until their recipient acknowledges them or
/// the TTL passes. Held whole in memory (loaded from the store at start); every change is
/// returned as a ``StoreChange`` for the writer, so no datagram waits on the disk.
///
/// Delivery: when a recipient registers, its messages go to it oldest first, at most
/// ``MailboxConfiguration/window`` at a time, and go again every
/// ``MailboxConfiguration/resendInterval`` until acknowledged (`mailAck`), which deletes them.
struct Mailbox: Sendable {
    let configuration: MailboxConfiguration
    /// Per recipient, oldest first.
    private(set) var waiting: [ClientID: [MailRecord]] = [:]
    private(set) var totalBytes = 0
    private var nextSerial: Int64 = 1
    /// 1 alone; 256 in a cluster, where every serial ends in this server's ``serialTag``.
    private var serialStride: Int64 = 1
    private var serialTag: Int64 = 0
    /// Each recent sender's rate, and when it last deposited (pruned a minute later: by then
    /// its bucket is full again).
    private var senders: [ClientID: (bucket: TokenBucket, lastUsed: Instant)] = [:]
    /// Each recent sender's last deposits (query number and answer, at most
    /// ``recentDepositsPerSender``): a deposit sent again because its answer was lost gets
    /// the same answer and is not queued twice. Forgotten with the sender's rate.
    private var recentDeposits: [ClientID: [(query: UInt32, outcome: DepositOutcome)]] = [:]
    static let recentDepositsPerSender = 16
    /// Online recipients with mail, and when their next sending is due.
    private var deliveries: [ClientID: Instant] = [:]

    init(configuration: MailboxConfiguration) {
        self.configuration = configuration
    }

    var count: Int { waiting.values.reduce(0) { $0 + $1.count } }

    /// Takes in the messages the store holds (at start).
    mutating func restore(_ records: [MailRecord]) {
        for record in records.sorted(by: { $0.serial < $1.serial }) {
            guard let recipient = try? ClientID(record.recipient), (try? ClientID(record.sender)) != nil else { continue }
            waiting[recipient, default: []].append(record)
            totalBytes += record.sealed.count
            bumpSerial(past: record.serial)
        }
    }

    /// Several servers share the mailbox: serials are `(time and count) << 8 | tag`, so two
    /// servers with different tags never make the same one.
    mutating func useClusterSerials(tag: UInt8, atLeast: Int64) {
        serialStride = 256
        serialTag = Int64(tag)
        bumpSerial(past: max(nextSerial, atLeast))
    }

    private mutating func bumpSerial(past serial: Int64) {
        guard serialStride > 1 else {
            nextSerial = max(nextSerial, serial + 1)
            return
        }
        nextSerial = max(nextSerial, ((serial >> 8) + 1) << 8 | serialTag)
    }

    /// What waits for `recipient` is `records` (several servers: the shared database's
    /// list, fetched when the recipient registers here, replaces this server's copy).
    mutating func replaceMail(for recipient: ClientID, with records: [MailRecord]) {
        let old = waiting.removeValue(forKey: recipient) ?? []
        totalBytes -= old.reduce(0) { $0 + $1.sealed.count }
        let kept = records.filter { $0.recipient == recipient.rawValue }.sorted { $0.serial < $1.serial }
        guard !kept.isEmpty else { return }
        waiting[recipient] = kept
        totalBytes += kept.reduce(0) { $0 + $1.sealed.count }
        for record in kept { bumpSerial(past: record.serial) }
    }

    /// The answer already given to `sender`'s deposit `query`, if it is recent.
    func answered(_ query: UInt32, from sender: ClientID) -> DepositOutcome? {
        recentDeposits[sender]?.last(where: { $0.query == query })?.outcome
    }

    /// Remembers the answer to `sender`'s deposit `query` (see ``answered(_:from:)``).
    mutating func remember(_ outcome: DepositOutcome, for query: UInt32, from sender: ClientID, now: Instant) {
        var list = recentDeposits[sender] ?? []
        list.append((query, outcome))
        if list.count > Self.recentDepositsPerSender { list.removeFirst(list.count - Self.recentDepositsPerSender) }
        recentDeposits[sender] = list
        if senders[sender] == nil {
            let perMinute = configuration.perSenderPerMinute
            senders[sender] = (TokenBucket(rate: perMinute / 60, burst: perMinute, now: now), now)
        } else {
            senders[sender]?.lastUsed = now
        }
    }

    /// `sender` hands a sealed message for offline `recipient` (whose claim the caller checked).
    mutating func deposit(from sender: ClientID, to recipient: ClientID, sealed: [UInt8], unixTime: Int64,
                          now: Instant) -> (DepositOutcome, StoreChange?) {
        guard sealed.count <= ExtendedMessage.maxMailBytes else { return (.refused(.tooLarge), nil) }
        guard (waiting[recipient]?.count ?? 0) < configuration.perRecipient else { return (.refused(.recipientFull), nil) }
        guard totalBytes + sealed.count <= configuration.totalBytes else { return (.refused(.storeFull), nil) }
        let perMinute = configuration.perSenderPerMinute
        var bucket = senders[sender]?.bucket ?? TokenBucket(rate: perMinute / 60, burst: perMinute, now: now)
        let allowed = bucket.take(now: now)
        senders[sender] = (bucket, now)
        guard allowed else { return (.refused(.rateLimited), nil) }
        let record = MailRecord(serial: nextSerial, recipient: recipient.rawValue, sender: sender.rawValue, queuedAt: unixTime,
                                sealed: sealed)
        nextSerial += serialStride
        waiting[recipient, default: []].append(record)
        totalBytes += sealed.count
        let kept = UInt32(clamping: configuration.ttl.components.seconds)
        return (.queued(serial: UInt64(record.serial), keptSeconds: kept), .putMail(record))
    }

    /// `recipient` is online (a new session): its mail goes now.
    mutating func recipientArrived(_ recipient: ClientID, now: Instant) {
        guard waiting[recipient]?.isEmpty == false else { return }
        deliveries[recipient] = now
    }

    /// `recipient` left: nothing more is sent to it until it comes back.
    mutating func recipientLeft(_ recipient: ClientID) {
        deliveries[recipient] = nil
    }

    /// `recipient` has message `serial`: it is deleted. Returns it (for its sender's receipt)
    /// and the change to store; `nil` for a serial it does not hold.
    mutating func acknowledge(_ serial: UInt64, by recipient: ClientID) -> (MailRecord, StoreChange)? {
        guard var list = waiting[recipient], let index = list.firstIndex(where: { $0.serial == Int64(clamping: serial) }) else { return nil }
        let record = list.remove(at: index)
        waiting[recipient] = list.isEmpty ? nil : list
        totalBytes -= record.sealed.count
        if list.isEmpty { deliveries[recipient] = nil }
        return (record, .removeMail(serial: record.serial))
    }

    /// When the next sending is due.
    var nextDeadline: Instant? { deliveries.values.min() }

    /// The messages due at `now`, as (recipient, message) pairs: each due recipient's oldest,
    /// up to the window; sent again after the resend interval while unacknowledged.
    mutating func handleTimeout(now: Instant) -> [(ClientID, MailRecord)] {
        var due: [(ClientID, MailRecord)] = []
        for (recipient, at) in deliveries where at <= now {
            guard let list = waiting[recipient], !list.isEmpty else {
                deliveries[recipient] = nil
                continue
            }
            for record in list.prefix(configuration.window) { due.append((recipient, record)) }
            deliveries[recipient] = now + configuration.resendInterval
        }
        return due
    }

    /// Deletes the messages older than the TTL, and forgets senders idle for a minute (at sweeps).
    mutating func expire(unixTime: Int64, now: Instant) -> [StoreChange] {
        senders = senders.filter { now - $0.value.lastUsed < .seconds(60) }
        recentDeposits = recentDeposits.filter { senders[$0.key] != nil }
        let oldest = unixTime - configuration.ttl.components.seconds
        var changes: [StoreChange] = []
        for (recipient, list) in waiting {
            let kept = list.filter { $0.queuedAt > oldest }
            guard kept.count != list.count else { continue }
            for record in list where record.queuedAt <= oldest {
                changes.append(.removeMail(serial: record.serial))
                totalBytes -= record.sealed.count
            }
            waiting[recipient] = kept.isEmpty ? nil : kept
            if kept.isEmpty { deliveries[recipient] = nil }
        }
        return changes
    }
}
