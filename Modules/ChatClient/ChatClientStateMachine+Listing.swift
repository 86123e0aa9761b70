import Addressing
import ChatRouter
import HolePunch
import MonotonicTime
import Roster
import Wire

/// `@show_list` pages and Tab completion: from the peer table held, or, past the server's
/// roster limit, asked of the server.
extension ChatClientStateMachine {
    /// Lists page `page` of the roster (of the IDs starting with `prefix`). In classic mode
    /// and in natchat/2 while the client holds the whole roster, from the copy held, in the
    /// order it has always been listed: in natchat/2 our own line, then the peers as
    /// announced; in classic mode the server's order. Past the server's roster limit the
    /// page is asked of the server, sorted by ID.
    mutating func showList(prefix: String?, page: Int, now: Instant) {
        let pageSize = configuration.listPageSize
        switch peers {
        case .classic(let router, let index):
            showClassicList(router: router, index: index, prefix: prefix, page: page, pageSize: pageSize)
        case .natchat2(let natchat2) where natchat2.router.roster.scope == .complete:
            showHeldList(natchat2.router, prefix: prefix, page: page, pageSize: pageSize)
        case .natchat2:
            let offset = max(0, (max(1, page) - 1).multipliedReportingOverflow(by: pageSize).partialValue)
            let asked = withNatchat2 { natchat2 in
                let (query, routerOutputs) = natchat2.router.listIDs(prefix: prefix ?? "", offset: offset, limit: pageSize, now: now)
                natchat2.listings[query] = PendingListing(prefix: prefix, page: page, pageSize: pageSize)
                return routerOutputs
            }
            runRouter(asked ?? [], now: now)
        case .modifying:
            break
        }
    }

    /// Peer IDs starting with `prefix` for Tab completion, sorted, answered as
    /// ``Output/completion(request:ids:)``: from the roster held, or, past the server's
    /// roster limit, from the server (when it does not answer in time, from the peers held).
    public mutating func completePeerIDs(prefix: String, request: Int, now: Instant) -> [Output] {
        let limit = Self.completionLimit
        switch peers {
        case .classic(_, let index) where session.dialect == .classic:
            outputs.append(.completion(request: request, ids: Array(index.completionNames.lazy.filter { $0.hasPrefix(prefix) }.prefix(limit))))
        case .classic, .modifying:
            outputs.append(.completion(request: request, ids: []))
        case .natchat2(let natchat2) where natchat2.router.roster.scope == .complete:
            outputs.append(.completion(request: request, ids: natchat2.router.roster.completions(of: prefix, limit: limit).map(\.rawValue)))
        case .natchat2:
            // Within the console's wait, so that a silent server still gives the peers held.
            let asked = withNatchat2 { natchat2 in
                let (query, routerOutputs) = natchat2.router.listIDs(prefix: prefix, offset: 0, limit: limit, within: .seconds(2), now: now)
                natchat2.completions[query] = (request, prefix)
                return routerOutputs
            }
            runRouter(asked ?? [], now: now)
        }
        return takeOutputs()
    }

    /// A page or completion the server answered (past its roster limit).
    mutating func listAnswered(query: UInt32, total: Int, offset: Int, entries: [ListEntry], now: Instant) {
        if let completion = withNatchat2({ $0.completions.removeValue(forKey: query) }) ?? nil {
            let ids = entries.map(\.id.rawValue).filter { $0 != configuration.id.rawValue && $0.hasPrefix(completion.prefix) }
            outputs.append(.completion(request: completion.request, ids: ids))
            return
        }
        showListed(query: query, total: total, entries: entries, now: now)
    }

    /// No answer in time: a completion falls back on the peers held; a page is reported.
    mutating func listUnanswered(query: UInt32) {
        let limit = Self.completionLimit
        let answer = withNatchat2 { natchat2 -> Output? in
            if let completion = natchat2.completions.removeValue(forKey: query) {
                return .completion(request: completion.request,
                                   ids: natchat2.router.roster.completions(of: completion.prefix, limit: limit).map(\.rawValue))
            }
            return natchat2.listings.removeValue(forKey: query) != nil ? .event(.listUnanswered) : nil
        }
        if let answer = answer ?? nil { outputs.append(answer) }
    }

    /// Shows a page the server sent, asking for the rest of it when one datagram did not
    /// hold it all.
    private mutating func showListed(query: UInt32, total: Int, entries: [ListEntry], now: Instant) {
        guard var pending = withNatchat2({ $0.listings.removeValue(forKey: query) }) ?? nil else { return }
        pending.entries += entries
        pending.total = total
        let first = max(0, (max(1, pending.page) - 1).multipliedReportingOverflow(by: pending.pageSize).partialValue)
        let wanted = max(0, min(pending.pageSize, total - first))
        if pending.entries.count < wanted, !entries.isEmpty {
            let rest = pending
            let asked = withNatchat2 { natchat2 in
                let (next, routerOutputs) = natchat2.router.listIDs(prefix: rest.prefix ?? "", offset: first + rest.entries.count,
                                                                    limit: wanted - rest.entries.count, now: now)
                natchat2.listings[next] = rest
                return routerOutputs
            }
            return runRouter(asked ?? [], now: now)
        }
        let router = natchat2Router
        for entry in pending.entries {
            if entry.id == configuration.id {
                emit(.listEntry(.own(entry.id, session.publicEndpoint, session.natKind)))
                continue
            }
            let path = entry.dialect == .classic ? nil : router?.path(to: entry.id) ?? PathAgent.Path.none
            emit(.listEntry(.peer(entry.id, entry.publicEndpoint, path, claimedSince: entry.claimedSince)))
        }
        if let footer = ListFooter(total: total, shown: pending.entries.count, first: first, prefix: pending.prefix,
                                   page: max(1, pending.page), pageSize: pending.pageSize) {
            emit(.listFooter(footer))
        }
    }

    private mutating func showHeldList(_ router: ExtendedRouter, prefix: String?, page: Int, pageSize: Int) {
        let selfID = configuration.id
        let roster = router.roster
        if let prefix {
            let ids = [selfID] + roster.listedIDs
            let listing = ListPage.make(count: ids.count, id: { ids[$0] }, prefix: prefix, page: page, pageSize: pageSize)
            for position in listing.positions { listLine(id: ids[position], router: router) }
            if let footer = listing.footer { emit(.listFooter(footer)) }
            return
        }
        // Without a prefix only the page's own entries are read from the roster: position
        // 0 is our own line, position p > 0 the roster's (p - 1)-th peer.
        let listing = ListPage.make(count: roster.count + 1, id: { _ in selfID }, prefix: nil, page: page, pageSize: pageSize)
        if let first = listing.positions.first {
            let listedPeers = roster.listed(from: max(0, first - 1), limit: listing.positions.count)
            for position in listing.positions {
                let peerIndex = position - 1 - max(0, first - 1)
                guard position == 0 || listedPeers.indices.contains(peerIndex) else { continue }
                listLine(id: position == 0 ? selfID : listedPeers[peerIndex], router: router)
            }
        }
        if let footer = listing.footer { emit(.listFooter(footer)) }
    }

    /// One `@show_list` line of the natchat/2 roster.
    private mutating func listLine(id: ClientID, router: ExtendedRouter) {
        if id == configuration.id {
            return emit(.listEntry(.own(id, session.publicEndpoint, session.natKind)))
        }
        guard let info = router.peer(id), let path = router.path(to: id) else {
            return outputs.append(.diagnostic(.rosterListsUnknownPeer(id)))
        }
        emit(.listEntry(.peer(info.id, info.publicEndpoint, info.dialect == .classic ? nil : path, claimedSince: info.claimedSince)))
    }

    private mutating func showClassicList(router: ChatRouter, index: RosterIndex, prefix: String?, page: Int, pageSize: Int) {
        if index.count == 0 { return emit(.listEmpty) }
        let listing = ListPage.make(count: index.count, id: { index[$0] }, prefix: prefix, page: page, pageSize: pageSize)
        for position in listing.positions {
            guard let peer = router.peer(index[position]) else {
                outputs.append(.diagnostic(.rosterListsUnknownPeer(index[position])))
                continue
            }
            emit(.listEntry(.classic(peer.id, peer.publicEndpoint)))
        }
        if let footer = listing.footer { emit(.listFooter(footer)) }
    }
}
