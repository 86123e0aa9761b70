import Addressing
import MonotonicTime
import Roster
import Wire

/// Questions for the server: look-ups of IDs the roster does not hold (with the chats that
/// wait for their answers) and sorted list queries, resent with backoff until answered or
/// given up.
extension ExtendedRouter {
    /// Starts a look-up of `id` unless one is running.
    mutating func ask(about id: ClientID, now: Instant) {
        guard lookups[id] == nil, id != selfID else { return }
        lookups[id] = Lookup(query: takeQueryNumber(), nextSend: now, interval: queries.firstRetry, startedAt: now)
        sendDueQueries(now: now)
    }

    /// The server's answer to a look-up: the chats that waited go out, or, when the server
    /// says `peer` is not registered, go to the mailbox if `peer` is claimed (a claim
    /// look-up first; ``Event/noSuchPeer(_:text:)`` when nobody claims it).
    mutating func answerLookup(query: UInt32, epoch: UInt32, version: UInt64, peer: ClientID, found: RosterEntry?, now: Instant) {
        guard let lookup = lookups[peer], lookup.query == query else { return }
        lookups[peer] = nil
        apply(roster.applyLookup(epoch: epoch, version: version, peer: peer, found: found), now: now)
        guard let info = roster.peer(peer)?.info, found != nil else {
            for waiting in lookup.waiting {
                let deadline = waiting.mailboxTried ? waiting.deadline : max(waiting.deadline, now + queries.mailWindow)
                startMail(waiting.text, to: peer, typedAt: waiting.deadline - sender.configuration.deadline,
                          reason: .offline, deadline: deadline, now: now)
            }
            return
        }
        for waiting in lookup.waiting {
            if info.dialect == .classic {
                emit(.classicChatDue(info, text: waiting.text))
            } else {
                let typedAt = waiting.deadline - sender.configuration.deadline
                let latestStart = now + queries.leastDeliveryWindow - sender.configuration.deadline
                try? send(waiting.text, to: peer, firstSent: max(typedAt, latestStart), now: now)
            }
        }
    }

    mutating func takeQueryNumber() -> UInt32 {
        defer { nextQuery &+= 1 }
        return nextQuery
    }

    /// Sends (again) the look-ups and list queries that are due, gives up those past their
    /// deadline, and tells the user once when a look-up for a waiting chat is slow.
    mutating func sendDueQueries(now: Instant) {
        for id in Array(lookups.keys) {
            guard var lookup = lookups[id] else { continue }
            let (expired, kept) = (lookup.waiting.filter { now >= $0.deadline }, lookup.waiting.filter { now < $0.deadline })
            for waiting in expired { emit(.undelivered(to: id, text: waiting.text, reason: .serverSilent)) }
            lookup.waiting = kept
            if !expired.isEmpty, kept.isEmpty, now - lookup.startedAt >= sender.configuration.deadline {
                lookups[id] = nil
                continue
            }
            if !lookup.noticed, !lookup.waiting.isEmpty, now >= lookup.startedAt + queries.pendingNotice {
                lookup.noticed = true
                emit(.lookupPending(id))
            }
            if now >= lookup.nextSend {
                if lookup.waiting.isEmpty, now - lookup.startedAt >= sender.configuration.deadline {
                    // Nobody waits (a datagram from an unknown peer started it): give up quietly.
                    lookups[id] = nil
                    continue
                }
                outputs.append(.sendToServer(.lookup(id: selfID, query: lookup.query, peer: id)))
                lookup.nextSend = now + lookup.interval
                lookup.interval = min(lookup.interval * 2, queries.maxRetry)
            }
            lookups[id] = lookup
        }
        for query in Array(lists.keys) {
            guard var request = lists[query] else { continue }
            if now >= request.deadline {
                lists[query] = nil
                emit(.listUnanswered(query: query))
                continue
            }
            guard now >= request.nextSend else { continue }
            outputs.append(.sendToServer(.listQuery(id: selfID, query: query, prefix: request.prefix,
                                                    offset: UInt32(clamping: request.offset),
                                                    limit: UInt16(clamping: request.limit))))
            request.nextSend = now + request.interval
            request.interval = min(request.interval * 2, queries.maxRetry)
            lists[query] = request
        }
    }
}
