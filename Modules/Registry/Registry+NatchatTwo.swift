import Addressing
import Identity
import MonotonicTime
import NATGrouping
import Wire

// The natchat/2 dialect: signed registration (fresh or not), session messages, punch
// requests, relay, roster acknowledgements, look-ups and list queries.

extension Registry {
    /// `id` registered with `keys`: its claim is made or refreshed (when claims are kept).
    mutating func claimed(_ id: ClientID, keys: PublicKeys, now: Instant) -> [Output] {
        let at = unixTime(now)
        guard let change = claimBook?.registered(id, keys: keys, at: at) else { return [] }
        // A new session of the owner: what waits for it in the mailbox goes now.
        mailbox?.recipientArrived(id, now: now)
        // Several servers: the database renewed the claim when it decided it.
        return cluster == nil ? [.persist(change)] : []
    }

    /// Handles one decoded natchat/2 datagram that arrived from `source` at `now`; `bytes`
    /// is the datagram as received (its tag or signature covers it).
    public mutating func receive<G: RandomNumberGenerator>(_ datagram: ExtendedDatagram, bytes: [UInt8], from source: Endpoint,
                                                           now: Instant, random: inout G) -> [Output] {
        // The decoder gives every session kind its counter and tag, a registration its signature.
        let counter = datagram.trailer.counter ?? 0
        let tag = datagram.trailer.tag ?? .zero
        switch datagram.message {
        case .register:
            return receiveRegistration(datagram, bytes: bytes, from: source, now: now, claimConfirmed: false, random: &random)
        case .keepAlive(let id, let natKind, let mapped):
            guard var entry = session(id, counter: counter, bytes: bytes) else {
                return sessionRefusal(id, tag: tag, bytes: bytes, source: source)
            }
            liveness.touch(id, now: now)
            var actions: [Output] = []
            let previous = entry.publicEndpoint
            let mappedEndpoint = Self.acceptableMapping(mapped, publicAddress: source.address)
            let changed = previous != source || entry.natKind != natKind || entry.mappedEndpoint != mappedEndpoint
            entry.publicEndpoint = source
            entry.natKind = natKind
            entry.mappedEndpoint = mappedEndpoint
            if changed { entry.version = roster.nextVersion() }
            store(entry)
            if previous != source {
                actions.append(.report(.moved(entry, from: previous)))
            }
            actions.append(.sendExtended(.keepAliveAck(publicEndpoint: source), to: source))
            if changed { actions += published(entry, publicEndpointChanged: previous != source, now: now) }
            return actions
        case .exit(let id):
            guard let entry = session(id, counter: counter, bytes: bytes) else {
                return [.report(.ignoredExtended(from: source, .badTag))]
            }
            return leave(entry, reason: .unregistered, now: now)
        case .connect(let id, let peerID):
            guard let entry = session(id, counter: counter, bytes: bytes) else {
                return sessionRefusal(id, tag: tag, bytes: bytes, source: source)
            }
            liveness.touch(id, now: now)
            guard let peer = entries[peerID], peer.dialect == .extended, peerID != id else {
                return [.report(.ignoredExtended(from: source, .peerUnavailable))]
            }
            // Both talk to each other now: each hears of the other's changes at any roster size.
            roster.noteInterest(of: id, in: peerID)
            roster.noteInterest(of: peerID, in: id)
            let instructions = punch.connect(id, to: peerID, natKinds: (entry.natKind, peer.natKind), now: now)
            var actions: [Output] = []
            for instruction in instructions {
                guard let recipient = entries[instruction.recipient], let other = entries[instruction.peer] else { continue }
                let delay = UInt32(clamping: instruction.delay.nanosecondsClamped / 1_000_000)
                guard recipient.isLocal else {
                    // The recipient's own server tells it, with what it may know of `other`.
                    actions += toHome(of: recipient, .serverPunch(target: recipient.id, peer: Self.fullInfo(other),
                                                                  round: instruction.round, delayMillis: delay), now: now)
                    continue
                }
                let message = ExtendedMessage.punch(peer: Self.peerInfo(other, for: recipient), round: instruction.round,
                                                    delayMillis: delay)
                actions.append(.sendExtended(message, to: recipient.publicEndpoint))
            }
            actions.append(.report(.punchRound(entry.id, peer.id, round: instructions.first?.round ?? 0)))
            return actions
        case .pathReport(let id, let peer, let outcome):
            guard session(id, counter: counter, bytes: bytes) != nil else {
                return sessionRefusal(id, tag: tag, bytes: bytes, source: source)
            }
            liveness.touch(id, now: now)
            guard peer != id, allowPathReport(id, now: now) else {
                return [.report(.ignoredExtended(from: source, .pathReportRateLimited))]
            }
            return [.report(.pathReport(id, peer: peer, outcome))]
        case .relay(let id, let to, let payload):
            guard session(id, counter: counter, bytes: bytes) != nil else {
                return sessionRefusal(id, tag: tag, bytes: bytes, source: source)
            }
            guard let peer = entries[to], peer.dialect == .extended else {
                return [.report(.ignoredExtended(from: source, .peerUnavailable))]
            }
            guard relayLimiter.allow(id, bytes: payload.count, now: now) else {
                return [.report(.ignoredExtended(from: source, .relayRateLimited))]
            }
            guard peer.isLocal else {
                // alice → her server → bob's server → bob, within alice's relay budget here.
                let forwarded = toHome(of: peer, .serverRelay(from: id, to: to, payload: payload), now: now)
                guard case .sendToServer = forwarded.first else { return forwarded }
                return forwarded + [.report(.relayed(from: id, to: to, bytes: payload.count))]
            }
            return [.sendExtended(.relayed(from: id, payload: payload), to: peer.publicEndpoint),
                    .report(.relayed(from: id, to: to, bytes: payload.count))]
        case .rosterAck(let id, let largest, let received):
            guard session(id, counter: counter, bytes: bytes) != nil else {
                return sessionRefusal(id, tag: tag, bytes: bytes, source: source)
            }
            liveness.touch(id, now: now)
            roster.acknowledge(id, largest: largest, received: received, now: now)
            return []
        case .lookup(let id, let query, let peerID):
            guard let entry = session(id, counter: counter, bytes: bytes) else {
                return sessionRefusal(id, tag: tag, bytes: bytes, source: source)
            }
            liveness.touch(id, now: now)
            guard allowQuery(id, now: now) else { return [.report(.ignoredExtended(from: source, .queryRateLimited))] }
            // Interest even in a client not registered (yet): when it comes, the asker hears.
            roster.noteInterest(of: id, in: peerID)
            let found = entries[peerID].map { RosterEntry(info: Self.peerInfo($0, for: entry), order: $0.sequence, version: $0.version) }
            return [.sendExtended(.lookupResult(query: query, epoch: roster.epoch, version: roster.version, peer: peerID, found: found),
                                  to: entry.publicEndpoint)]
        case .claimLookup(let id, let query, let peer):
            guard let entry = session(id, counter: counter, bytes: bytes) else {
                return sessionRefusal(id, tag: tag, bytes: bytes, source: source)
            }
            liveness.touch(id, now: now)
            guard allowQuery(id, now: now) else { return [.report(.ignoredExtended(from: source, .queryRateLimited))] }
            return answerClaimLookup(query: query, peer: peer, to: entry, now: now)
        case .deposit(let id, let query, let to, let sealed):
            guard let entry = session(id, counter: counter, bytes: bytes) else {
                return sessionRefusal(id, tag: tag, bytes: bytes, source: source)
            }
            liveness.touch(id, now: now)
            return takeDeposit(query: query, to: to, sealed: sealed, from: entry, now: now)
        case .mailAck(let id, let serial):
            guard session(id, counter: counter, bytes: bytes) != nil else {
                return sessionRefusal(id, tag: tag, bytes: bytes, source: source)
            }
            liveness.touch(id, now: now)
            return acknowledgeMail(serial, by: id)
        case .releaseClaim(let id):
            guard let entry = session(id, counter: counter, bytes: bytes) else {
                return sessionRefusal(id, tag: tag, bytes: bytes, source: source)
            }
            liveness.touch(id, now: now)
            return releaseClaim(of: entry)
        case .rotateKey(let id, let newKeys, let signature):
            guard let entry = session(id, counter: counter, bytes: bytes) else {
                return sessionRefusal(id, tag: tag, bytes: bytes, source: source)
            }
            liveness.touch(id, now: now)
            return rotateClaim(of: entry, to: newKeys, signature: signature, now: now)
        case .listQuery(let id, let query, let prefix, let offset, let limit):
            guard let entry = session(id, counter: counter, bytes: bytes) else {
                return sessionRefusal(id, tag: tag, bytes: bytes, source: source)
            }
            liveness.touch(id, now: now)
            guard allowQuery(id, now: now) else { return [.report(.ignoredExtended(from: source, .queryRateLimited))] }
            return [.sendExtended(listPage(query: query, prefix: prefix, offset: offset, limit: limit), to: entry.publicEndpoint)]
        case .serverPunch, .serverRelay:
            return receiveFromServer(datagram, bytes: bytes, from: source, now: now)
        case .challenge, .registered, .refused, .roster, .lookupResult, .listPage, .punch, .relayed, .keepAliveAck,
             .unknownSession, .ping, .pong, .chat, .chatAck, .claimResult, .depositResult, .mail, .mailDelivered,
             .claimChanged:
            return [.report(.ignoredExtended(from: source, .notForServer))]
        }
    }

    /// A signed registration: checked, then (several servers, before the database decided
    /// its claim) parked, or registered.
    mutating func receiveRegistration<G: RandomNumberGenerator>(_ datagram: ExtendedDatagram, bytes: [UInt8], from source: Endpoint,
                                                               now: Instant, claimConfirmed: Bool, random: inout G) -> [Output] {
        guard case .register(let id, let cookie, let privateEndpoints, let natKind, let keys, let subscribe) = datagram.message else {
            return []
        }
        guard case .signature(let signature) = datagram.trailer else {
            return [.report(.ignoredExtended(from: source, .badSignature))]
        }
        guard let issued = validator.issueTime(of: cookie, for: source, now: now) else {
            return [.report(.ignoredExtended(from: source, .badCookie))]
        }
        // A registration parked for its claim was verified before it was parked (the
        // signature costs more than the rest of a registration).
        guard claimConfirmed || SessionCrypto.verifyRegistration(bytes, keys: keys, signature: signature) else {
            return [.report(.ignoredExtended(from: source, .badSignature))]
        }
        switch freshness(ofRegistration: id, keys: keys, cookieIssuedAt: issued, from: source) {
        case .fresh:
            break
        case .repeated:
            // The registration this session began with, again (a duplicate, or captured
            // and replayed): nothing is touched and nothing answered. A client whose answer
            // was lost asks for a new challenge, whose cookie is fresh.
            return [.report(.ignoredExtended(from: source, .repeatedRegistration))]
        case .replayed:
            return [.report(.ignoredExtended(from: source, .replayed))]
        }
        if let cluster, !claimConfirmed {
            // Several servers: only the shared database can say whether the ID is free. While
            // it is known to be unreachable (the link checks every heartbeat), asking would
            // only wait out the deadline: an ID this server knows the registrant owns goes on
            // at once, and any other is refused at once.
            let owner = claimBook?.verdict(for: id, keys: keys, at: unixTime(now)) == .owner
            if cluster.databaseReachable {
                return parkForClaim(datagram, bytes: bytes, from: source, id: id, keys: keys, now: now)
            } else if !owner {
                return refuse(id, from: source, .claimUnavailable, dialect: .extended)
            }
        }
        if claimBook?.verdict(for: id, keys: keys, at: unixTime(now)) == .claimedByAnother {
            return refuse(id, from: source, .claimed, dialect: .extended)
        }
        let nonce = Token128.random(using: &random)
        guard let sessionKey = SessionCrypto.sessionKey(privateKey: serverKey, peerPublicKey: keys.agreement,
                                                        cookie: cookie, nonce: nonce, id: id)
        else { return [.report(.ignoredExtended(from: source, .badSignature))] }
        let privateAddress = privateEndpoints.first?.address ?? source.address
        var newcomer = Entry(id: id, publicEndpoint: source, privateAddress: privateAddress, sequence: 0, dialect: .extended,
                             sessionKey: sessionKey, keys: keys, cookieIssuedAt: issued,
                             privateEndpoints: privateEndpoints, natKind: natKind, subscribed: subscribe)
        if let claims = claimBook {
            // The owner's claim, or the one this registration makes (the verdict let it).
            let at = unixTime(now)
            newcomer.claimedSince = UInt32(clamping: claims.claim(of: id, at: at)?.claimedAt ?? at)
        }
        let answer = registeredMessage(to: source, nonce: nonce, cookie: cookie)
        if let holder = entries[id], holder.dialect == .extended, holder.keys == keys, holder.publicEndpoint != source {
            // The key holder itself, from a new address (restarted behind a new mapping): it
            // proves the key, so the registration moves rather than being refused.
            var moved = newcomer
            moved.sequence = holder.sequence
            moved.version = roster.nextVersion()
            store(moved)
            liveness.touch(id, now: now)
            startFeed(moved, now: now)
            // A client of another server registering here is new to this server's operator.
            let event: Event = holder.isLocal ? .moved(moved, from: holder.publicEndpoint) : .registered(moved)
            var actions: [Output] = [.report(event), answer]
            actions += published(moved, publicEndpointChanged: true, now: now)
            return actions + claimed(id, keys: keys, now: now)
        }
        let actions = register(newcomer, answer: answer, now: now)
        guard entries[id]?.keys == keys else { return actions }
        return actions + claimed(id, keys: keys, now: now)
    }

    /// What a signed registration with a valid cookie proves.
    enum RegistrationFreshness {
        /// A cookie issued after the one of the ID's current or last session: a new session.
        case fresh
        /// The very registration the holder's current session began with.
        case repeated
        /// An older cookie: captured and replayed, or overtaken by a newer session.
        case replayed
    }

    func freshness(ofRegistration id: ClientID, keys: PublicKeys, cookieIssuedAt issued: Instant,
                           from source: Endpoint) -> RegistrationFreshness {
        if let holder = entries[id] {
            // Another key (or a classic holder) is for the ID-binding rules to decide.
            guard holder.dialect == .extended, holder.keys == keys else { return .fresh }
            if issued > holder.cookieIssuedAt { return .fresh }
            // A cookie is bound to its address: the same issue time from the holder's
            // endpoint is the same cookie.
            if issued == holder.cookieIssuedAt, holder.publicEndpoint == source { return .repeated }
            return .replayed
        }
        if let departed = departedCookies[id], issued <= departed { return .replayed }
        return .fresh
    }

    /// Remembers the cookie time of a departing extended client's session (see ``departedCookies``).
    mutating func rememberDeparture(_ entry: Entry) {
        // Bounded like the table itself; past that, a replay could bring back a departed ID
        // until its cookie expires (a cookie lifetime at most).
        guard entry.dialect == .extended, departedCookies.count < configuration.maxClients else { return }
        departedCookies[entry.id] = max(entry.cookieIssuedAt, departedCookies[entry.id] ?? entry.cookieIssuedAt)
    }

    /// The answer to a session message that did not pass: a valid tag with a stale counter
    /// is a replay and gets nothing; anything else (no such session, a tag that does not
    /// verify: the server restarted) gets ``ExtendedMessage/unknownSession(_:echo:)``
    /// echoing the tag, which only the real sender recognises.
    func sessionRefusal(_ id: ClientID, tag: Token128, bytes: [UInt8], source: Endpoint) -> [Output] {
        if let entry = entries[id], let mac = entry.sessionMAC, SessionCrypto.verifyAuthenticated(bytes, mac: mac) {
            return [.report(.ignoredExtended(from: source, .replayed))]
        }
        return [.sendExtended(.unknownSession(id, echo: tag), to: source)]
    }

    /// The extended entry for `id` when `bytes` carry a valid tag under its session key and
    /// a fresh counter (which is then recorded).
    mutating func session(_ id: ClientID, counter: UInt64, bytes: [UInt8]) -> Entry? {
        guard var entry = entries[id], entry.dialect == .extended, let mac = entry.sessionMAC,
              SessionCrypto.verifyAuthenticated(bytes, mac: mac), counter > entry.lastCounter
        else { return nil }
        entry.lastCounter = counter
        store(entry)
        return entry
    }

    func registeredMessage(to endpoint: Endpoint, nonce: Token128, cookie: Token128) -> Output {
        let millis = UInt32(clamping: configuration.keepAliveInterval.nanosecondsClamped / 1_000_000)
        return .sendExtended(.registered(serverKey: Array(serverKey.publicKey.rawRepresentation), publicEndpoint: endpoint,
                                         keepAliveMillis: millis, alternatePort: configuration.alternatePort, nonce: nonce,
                                         cookie: cookie),
                             to: endpoint)
    }

    /// A port mapping's external endpoint as a client reported it, if peers may be sent to
    /// it: on the address the server sees the client at (a router's own mapping), or in a
    /// carrier NAT's shared or a private range (a mapping on a home router behind a carrier
    /// NAT, which only peers behind the same public address can reach). Anything else could
    /// turn peers' checks on a third party, so it is dropped.
    static func acceptableMapping(_ mapped: Endpoint?, publicAddress: IPv4Address) -> Endpoint? {
        guard let mapped, mapped.port != 0 else { return nil }
        return mapped.address == publicAddress || mapped.address.isPrivateOrLoopback ? mapped : nil
    }

    /// What `recipient` may know of `entry`: private endpoints only as a same-NAT hint
    /// (the same public address), since they are probed, not trusted; a port mapping in a
    /// private or shared range likewise.
    static func peerInfo(_ entry: Entry, for recipient: Entry) -> PeerInfo {
        // The array is built only for the hint (a roster for 100 000 clients would otherwise
        // build one per peer).
        var privates: [Endpoint] = []
        if entry.publicEndpoint.address == recipient.publicEndpoint.address {
            privates = entry.privateEndpoints
            if privates.isEmpty, entry.dialect == .classic {
                privates = [Endpoint(address: entry.privateAddress, port: CandidateOrder.classicClientPort)]
            }
        }
        var mapped = entry.mappedEndpoint
        if let shown = mapped, shown.address != entry.publicEndpoint.address,
           entry.publicEndpoint.address != recipient.publicEndpoint.address {
            mapped = nil
        }
        return PeerInfo(id: entry.id, publicEndpoint: entry.publicEndpoint, privateEndpoints: privates,
                        natKind: entry.natKind, dialect: entry.dialect, keys: entry.keys, claimedSince: entry.claimedSince,
                        mappedEndpoint: mapped)
    }
}
