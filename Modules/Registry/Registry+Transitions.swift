import Addressing
import MonotonicTime
import Wire

// The transitions both dialects share: registering, leaving, eviction at sweeps, and what
// peers are told of them.

extension Registry {
    /// Evicts every client silent for more than the timeout at `now` and tells the rest.
    public mutating func sweep(now: Instant) -> [Output] {
        let lifetime = validator.cookieLifetime
        if !departedCookies.isEmpty {
            departedCookies = departedCookies.filter { now - $0.value <= lifetime }
        }
        let expired = liveness.handleTimeout(now: now)
        guard !expired.isEmpty else { return [] }
        var actions: [Output] = []
        var gone: [Entry] = []
        for id in expired {
            guard entries[id] != nil else { continue }
            forgetHelpers(id)
            guard let entry = entries.removeValue(forKey: id) else { continue }
            rememberDeparture(entry)
            gone.append(entry)
            actions.append(.report(.evicted(entry)))
        }
        let remaining = classicSubscribers
        for entry in gone { actions += departed(entry, reason: .offline, notifying: remaining, now: now) }
        updateRosterScope(now: now)
        return actions
    }

    /// Registers `candidate`; `answer` is the `registered` message for a natchat/2 client.
    mutating func register(_ candidate: Entry, answer: Output?, now: Instant) -> [Output] {
        let id = candidate.id
        let source = candidate.publicEndpoint
        if id.isReserved { return refuse(id, from: source, .reservedID, dialect: candidate.dialect) }
        var actions: [Output] = []
        if let holder = entries[id] {
            if holder.publicEndpoint == source, holder.dialect == candidate.dialect, holder.keys == candidate.keys {
                var refreshed = candidate
                refreshed.sequence = holder.sequence
                // Classic peers see only the public endpoint, which has not changed.
                let visible = !holder.hasSamePrivateEndpoints(as: refreshed) || holder.natKind != refreshed.natKind
                    || !holder.isLocal
                refreshed.version = visible ? roster.nextVersion() : holder.version
                store(refreshed)
                liveness.touch(id, now: now)
                // A client of another server registering here is new to this server's operator.
                actions.append(.report(holder.isLocal ? .refreshed(refreshed) : .registered(refreshed)))
                if refreshed.dialect == .extended {
                    if let answer { actions.append(answer) }
                    startFeed(refreshed, now: now)
                } else {
                    actions += classicList(for: refreshed, includingSelf: true)
                }
                if visible { actions += published(refreshed, publicEndpointChanged: false, now: now) }
                return actions
            }
            guard liveness.isExpired(id, now: now) else { return refuse(id, from: source, .idInUse, dialect: candidate.dialect) }
            // The holder is past its timeout but not yet swept: evict it now so the ID is free.
            forgetHelpers(id)
            entries.removeValue(forKey: id)
            liveness.remove(id)
            rememberDeparture(holder)
            actions.append(.report(.evicted(holder)))
            actions += departed(holder, reason: .offline, notifying: classicSubscribers, now: now)
        }
        guard entries.count < configuration.maxClients else {
            return actions + refuse(id, from: source, .full, dialect: candidate.dialect)
        }
        var newcomer = candidate
        newcomer.sequence = nextSequence
        nextSequence += 1
        newcomer.version = roster.nextVersion()
        if newcomer.dialect == .extended {
            if let answer { actions.append(answer) }
        } else {
            actions += classicList(for: newcomer, includingSelf: false)
        }
        store(newcomer)
        sortedIDs.insert(id)
        liveness.touch(id, now: now)
        actions.append(.report(.registered(newcomer)))
        // A classic newcomer gets its own line too, as the seed's server sends it.
        for recipient in classicSubscribers where !(recipient.id == id && newcomer.dialect == .extended) {
            actions += announceClassic(newcomer, to: recipient)
        }
        roster.changed(id, .present, size: Self.recordSize(newcomer), now: now)
        if cluster != nil { actions.append(.publish(presenceRecord(newcomer, now: now))) }
        if nextSweep == nil { nextSweep = now + configuration.sweepInterval }
        if newcomer.dialect == .extended { startFeed(newcomer, now: now) }
        updateRosterScope(now: now)
        return actions
    }

    mutating func leave(_ entry: Entry, reason: LeaveReason, now: Instant) -> [Output] {
        forgetHelpers(entry.id)
        entries.removeValue(forKey: entry.id)
        liveness.remove(entry.id)
        rememberDeparture(entry)
        var actions: [Output] = [.report(.unregistered(entry))]
        actions += departed(entry, reason: reason, notifying: classicSubscribers, now: now)
        updateRosterScope(now: now)
        return actions
    }

    /// Tells the roster that `entry` (already stored, its version taken) changed: its feeds,
    /// and the classic clients when its public endpoint is new to them.
    mutating func published(_ entry: Entry, publicEndpointChanged: Bool, now: Instant) -> [Output] {
        roster.changed(entry.id, .present, size: Self.recordSize(entry), now: now)
        var actions: [Output] = []
        if cluster != nil, entry.isLocal { actions.append(.publish(presenceRecord(entry, now: now))) }
        guard publicEndpointChanged else { return actions }
        for recipient in classicSubscribers where recipient.id != entry.id { actions += announceClassic(entry, to: recipient) }
        return actions
    }

    /// Tells the roster and `recipients` (classic) that `entry` (already removed) is gone.
    mutating func departed(_ entry: Entry, reason: LeaveReason, notifying recipients: [Entry], now: Instant) -> [Output] {
        let version = roster.nextVersion()
        roster.changed(entry.id, .absent(version: version, reason: reason, publicEndpoint: entry.publicEndpoint),
                       size: Self.absentRecordSize(entry.id), now: now)
        sortedIDs.remove(entry.id)
        var actions = recipients.compactMap { departureClassic(entry, reason: reason, to: $0) }
        if cluster != nil, entry.isLocal { actions.append(.publish(departureRecord(entry, reason: reason, now: now))) }
        return actions
    }

    mutating func store(_ entry: Entry) {
        if entry.dialect == .classic, entry.subscribed {
            classicSubscriberIDs.insert(entry.id)
        } else {
            classicSubscriberIDs.remove(entry.id)
        }
        if let old = entries[entry.id], old.publicEndpoint != entry.publicEndpoint, extendedByEndpoint[old.publicEndpoint] == entry.id {
            extendedByEndpoint[old.publicEndpoint] = nil
        }
        entries.store(entry)
        if entry.dialect == .extended, entry.isLocal { extendedByEndpoint[entry.publicEndpoint] = entry.id }
    }

    mutating func forgetHelpers(_ id: ClientID) {
        classicSubscriberIDs.remove(id)
        roster.unsubscribe(id)
        queryBuckets[id] = nil
        pathReportBuckets[id] = nil
        if let entry = entries[id], extendedByEndpoint[entry.publicEndpoint] == id { extendedByEndpoint[entry.publicEndpoint] = nil }
        punch.forget(id)
        relayLimiter.forget(id)
        mailbox?.recipientLeft(id)
    }

    func refuse(_ id: ClientID, from source: Endpoint, _ refusal: Refusal, dialect: Dialect) -> [Output] {
        // Kept short when classic is off: the notice goes to an unvalidated address, within 3x.
        let text = switch refusal {
        case .classicDisabled: "registration refused: natchat/2 only"
        case .claimed: "ID \(id) is claimed by another key"
        default: "registration refused: ID \(id) - \(refusal)"
        }
        let notice: Output = dialect == .classic
            ? .send(.serverNotice(text), to: source) : .sendExtended(.refused(text: text), to: source)
        return [.report(.refused(id, from: source, refusal)), notice]
    }
}
