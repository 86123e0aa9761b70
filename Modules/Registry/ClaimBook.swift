import Addressing
import Store
import Wire

/// Who owns which ID beyond a session: the registry's claims, a sub-machine of ``Registry``
/// kept whole in memory (loaded from the store at start) so that a registration never waits
/// on the disk. Every change it makes is returned as a ``StoreChange`` for the store's writer.
///
/// - The first natchat/2 key that registers an ID claims it; while the claim lives, another
///   key cannot register the ID, online or not, nor can a classic client (who proves no key).
/// - A claim lives ``ttl`` seconds after its owner's latest registration; an expired claim is
///   as good as none (and is deleted when next met, or at the hourly scan).
/// - Times are Unix seconds, given by the caller (the registry maps its monotonic instants).
struct ClaimBook: Sendable {
    struct Claim: Hashable, Sendable {
        var keys: PublicKeys
        var claimedAt: Int64
        var lastSeen: Int64
    }

    enum Verdict: Hashable, Sendable {
        /// Nobody's claim (or an expired one): the registrant may take it.
        case open
        /// The registrant's own key.
        case owner
        /// A live claim of another key (or of a key at all, for a classic registrant).
        case claimedByAnother
    }

    /// Seconds a claim lives after its owner's latest registration.
    let ttl: Int64
    private(set) var claims: [ClientID: Claim] = [:]
    /// When ``expire(at:)`` next scans the whole book (Unix seconds).
    private var nextScan: Int64 = .min

    init(ttl: Int64) {
        self.ttl = max(1, ttl)
    }

    var count: Int { claims.count }

    /// Loads the claims the store holds (at start). Records with keys of the wrong size are
    /// skipped: they cannot have been written by this server.
    mutating func restore(_ records: [ClaimRecord]) {
        for record in records { learn(record) }
    }

    /// Takes in a claim another server made or the database decided (several servers).
    mutating func learn(_ record: ClaimRecord) {
        guard let id = try? ClientID(record.id), record.signingKey.count == 32, record.agreementKey.count == 32 else { return }
        claims[id] = Claim(keys: PublicKeys(signing: record.signingKey, agreement: record.agreementKey),
                           claimedAt: record.claimedAt, lastSeen: record.lastSeen)
    }

    func isLive(_ claim: Claim, at now: Int64) -> Bool { now < claim.lastSeen.addingReportingOverflow(ttl).partialValue }

    /// Whether a registration of `id` with `keys` (`nil`: a classic registrant) may go on.
    func verdict(for id: ClientID, keys: PublicKeys?, at now: Int64) -> Verdict {
        guard let claim = claims[id], isLive(claim, at: now) else { return .open }
        return claim.keys == keys ? .owner : .claimedByAnother
    }

    /// The live claim of `id`, if any.
    func claim(of id: ClientID, at now: Int64) -> Claim? {
        guard let claim = claims[id], isLive(claim, at: now) else { return nil }
        return claim
    }

    /// `id` registered with `keys` (after ``verdict(for:keys:at:)`` let it): a new claim, or the
    /// owner's last-seen time moves on. Returns the change to store.
    mutating func registered(_ id: ClientID, keys: PublicKeys, at now: Int64) -> StoreChange {
        var claim = claims[id].flatMap { $0.keys == keys && isLive($0, at: now) ? $0 : nil }
            ?? Claim(keys: keys, claimedAt: now, lastSeen: now)
        claim.lastSeen = max(claim.lastSeen, now)
        claims[id] = claim
        return .putClaim(Self.record(id, claim))
    }

    /// Hands `id`'s live claim held by `keys` to `newKeys` (its date stays); `nil` when `keys`
    /// do not hold a live claim on `id`.
    mutating func rotate(_ id: ClientID, from keys: PublicKeys, to newKeys: PublicKeys, at now: Int64) -> StoreChange? {
        guard var claim = claims[id], claim.keys == keys, isLive(claim, at: now) else { return nil }
        claim.keys = newKeys
        claim.lastSeen = max(claim.lastSeen, now)
        claims[id] = claim
        return .putClaim(Self.record(id, claim))
    }

    /// Drops `id`'s claim (released by its owner or the operator); `nil` when there was none.
    mutating func release(_ id: ClientID) -> StoreChange? {
        guard claims.removeValue(forKey: id) != nil else { return nil }
        return .removeClaim(id: id.rawValue)
    }

    /// Deletes the expired claims, at most once an hour (a scan costs the whole book).
    mutating func expire(at now: Int64) -> [StoreChange] {
        guard now >= nextScan else { return [] }
        nextScan = now + 3600
        var changes: [StoreChange] = []
        for (id, claim) in claims where !isLive(claim, at: now) {
            claims[id] = nil
            changes.append(.removeClaim(id: id.rawValue))
        }
        return changes
    }

    static func record(_ id: ClientID, _ claim: Claim) -> ClaimRecord {
        ClaimRecord(id: id.rawValue, signingKey: claim.keys.signing, agreementKey: claim.keys.agreement,
                    claimedAt: claim.claimedAt, lastSeen: claim.lastSeen)
    }
}
