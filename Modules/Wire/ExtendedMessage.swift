/// Every message of the extended dialect (natchat/2): binary datagrams that start with
/// the byte `0xFE`, which no UTF-8 text and no STUN message can start with, then a version
/// byte and a type byte.
///
/// A natchat client proposes the dialect inside its classic registration (an offer token
/// the seed's server ignores); only a server that answers with ``challenge(cookie:)`` gets
/// extended messages, and the server sends them only to clients that registered with
/// ``register(id:cookie:privateEndpoints:natKind:)``. A classic peer never receives one.
public enum ExtendedMessage: Hashable, Sendable {
    // Client → server
    /// Registration, echoing the cookie from ``challenge(cookie:)`` to prove the source
    /// address, signed (Ed25519, 64 bytes, last) with the key in `keys`. `subscribe`: the
    /// client wants the roster and its changes pushed (a chat shell does; a headless client
    /// learns peers on demand, so its joins cost the server nothing per registered client).
    case register(id: ClientID, cookie: Token128, privateEndpoints: [Endpoint], natKind: NATKind, keys: PublicKeys,
                  signature: [UInt8], subscribe: Bool = true)
    /// Keep-alive; from a new source address it moves the registration (the tag proves it).
    case keepAlive(id: ClientID, natKind: NATKind, counter: UInt64, tag: Token128)
    case exit(id: ClientID, counter: UInt64, tag: Token128)
    /// Asks the server to have `peer` and the sender punch towards each other now.
    case connect(id: ClientID, peer: ClientID, counter: UInt64, tag: Token128)
    /// Asks the server to forward `payload` (an encoded peer message) to `to`.
    case relay(id: ClientID, to: ClientID, payload: [UInt8], counter: UInt64, tag: Token128)
    /// Acknowledges roster deltas by their feed sequence: `largest`, and `largest - 1 - i`
    /// for every bit `i` set in `received`.
    case rosterAck(id: ClientID, largest: UInt32, received: UInt64, counter: UInt64, tag: Token128)
    /// Asks whether `peer` is registered (answered with ``lookupResult(query:epoch:version:peer:found:)``);
    /// the server then keeps the sender told of `peer`'s changes.
    case lookup(id: ClientID, query: UInt32, peer: ClientID, counter: UInt64, tag: Token128)
    /// Asks for the registered IDs that start with `prefix` (all for ""), sorted, from the
    /// `offset`-th match on, at most `limit` (answered with ``listPage(query:total:offset:entries:)``).
    case listQuery(id: ClientID, query: UInt32, prefix: String, offset: UInt32, limit: UInt16, counter: UInt64, tag: Token128)

    // Server → client
    /// Proves that the registering address receives: echo the cookie to register.
    case challenge(cookie: Token128)
    /// Registration accepted; `serverKey` is the server's X25519 key and `nonce` its fresh
    /// randomness for this session: both go into the session key. `cookie` echoes the
    /// registration's cookie, so a client that registered twice knows which answer is which.
    case registered(serverKey: [UInt8], publicEndpoint: Endpoint, keepAliveMillis: UInt32, alternatePort: UInt16,
                    nonce: Token128 = .zero, cookie: Token128 = .zero)
    case refused(text: String)
    /// Changes to the roster, for a subscriber (acknowledged with ``rosterAck(id:largest:received:counter:tag:)``).
    case roster(RosterDelta)
    /// The answer to ``lookup(id:query:peer:counter:tag:)``: `found` is `nil` when `peer` is
    /// not registered; `version` is the roster version at the answer.
    // Indirect: the answer is rare and large; inline it would make every message (and every
    // server action) its size.
    indirect case lookupResult(query: UInt32, epoch: UInt32, version: UInt64, peer: ClientID, found: RosterEntry?)
    /// The answer to ``listQuery(id:query:prefix:offset:limit:counter:tag:)``: `total` IDs
    /// match; `entries` are the matches from `offset` on (fewer than asked for when they
    /// would not fit: ask again from where they end).
    case listPage(query: UInt32, total: UInt32, offset: UInt32, entries: [ListEntry])
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
    case ping(from: ClientID, to: ClientID, transaction: UInt64, tag: Token128)
    /// The answer to a check, with the source address the check came from.
    case pong(from: ClientID, to: ClientID, transaction: UInt64, observed: Endpoint, tag: Token128)
    case chat(from: ClientID, to: ClientID, messageID: UInt64, sealed: [UInt8])
    case chatAck(from: ClientID, to: ClientID, messageID: UInt64, tag: Token128)

    /// The first byte of every extended datagram.
    public static let magic: UInt8 = 0xFE
    public static let version: UInt8 = 1
    /// The offer token a natchat client appends to its classic registration.
    public static let offer = "natchat/2"
    /// Limits on every input: the decoder refuses anything larger.
    public static let maxDatagramLength = 1500
    public static let maxPrivateEndpoints = 4
    public static let maxTextBytes = 1200
    public static let maxRelayPayload = 1400

    /// Whether `bytes` starts like an extended datagram.
    public static func looksExtended(_ bytes: some Collection<UInt8>) -> Bool {
        bytes.first == magic
    }

    enum Kind: UInt8 {
        case register = 0x01, keepAlive, exit, connect, relay, rosterAck, lookup, listQuery
        // 0x44 and 0x45 were the per-peer roster notices that `roster` replaced.
        case challenge = 0x41, registered, refused
        case punch = 0x46, relayed, keepAliveAck, unknownSession, roster, lookupResult, listPage
        case ping = 0x81, pong, chat, chatAck
    }
}

extension ExtendedMessage {
    /// How many trailing bytes of an encoded datagram authenticate the rest: 64 (a
    /// signature) for registrations, 16 (a tag) for session and pair messages, `nil` otherwise.
    public static func trailerLength(ofEncoded bytes: some Collection<UInt8>) -> Int? {
        guard bytes.count >= 3 else { return nil }
        return trailerLength(ofKind: bytes[bytes.index(bytes.startIndex, offsetBy: 2)])
    }

    /// ``trailerLength(ofEncoded:)`` from the kind byte (the third) alone: not generic, so a
    /// caller in another module holding raw bytes pays no generic dispatch or allocation.
    public static func trailerLength(ofKind kindByte: UInt8) -> Int? {
        guard let kind = Kind(rawValue: kindByte) else { return nil }
        switch kind {
        case .register: return 64
        case .keepAlive, .exit, .connect, .relay, .rosterAck, .lookup, .listQuery, .ping, .pong, .chatAck: return 16
        default: return nil
        }
    }

    public func encode() -> [UInt8] {
        var w = WireWriter(capacity: 96)
        w.u8(Self.magic)
        w.u8(Self.version)
        switch self {
        case .register(let id, let cookie, let endpoints, let natKind, let keys, let signature, let subscribe):
            w.u8(Kind.register.rawValue); w.clientID(id); w.token(cookie); w.endpoints(endpoints); w.u8(natKind.rawValue)
            w.u8(subscribe ? 1 : 0); w.keys(keys); w.fixed(signature, 64)
        case .keepAlive(let id, let natKind, let counter, let tag):
            w.u8(Kind.keepAlive.rawValue); w.clientID(id); w.u8(natKind.rawValue); w.u64(counter); w.token(tag)
        case .exit(let id, let counter, let tag):
            w.u8(Kind.exit.rawValue); w.clientID(id); w.u64(counter); w.token(tag)
        case .connect(let id, let peer, let counter, let tag):
            w.u8(Kind.connect.rawValue); w.clientID(id); w.clientID(peer); w.u64(counter); w.token(tag)
        case .relay(let id, let to, let payload, let counter, let tag):
            w.u8(Kind.relay.rawValue); w.clientID(id); w.clientID(to); w.longBytes(payload); w.u64(counter); w.token(tag)
        case .rosterAck(let id, let largest, let received, let counter, let tag):
            w.u8(Kind.rosterAck.rawValue); w.clientID(id); w.u32(largest); w.u64(received); w.u64(counter); w.token(tag)
        case .lookup(let id, let query, let peer, let counter, let tag):
            w.u8(Kind.lookup.rawValue); w.clientID(id); w.u32(query); w.clientID(peer); w.u64(counter); w.token(tag)
        case .listQuery(let id, let query, let prefix, let offset, let limit, let counter, let tag):
            w.u8(Kind.listQuery.rawValue); w.clientID(id); w.u32(query); w.shortBytes(Self.utf8Prefix(prefix, maxBytes: ClientID.maxUTF8Length))
            w.u32(offset); w.u16(limit); w.u64(counter); w.token(tag)
        case .challenge(let cookie):
            w.u8(Kind.challenge.rawValue); w.token(cookie)
        case .registered(let serverKey, let endpoint, let keepAlive, let alternatePort, let nonce, let cookie):
            w.u8(Kind.registered.rawValue); w.fixed(serverKey, 32); w.endpoint(endpoint); w.u32(keepAlive); w.u16(alternatePort)
            w.token(nonce); w.token(cookie)
        case .refused(let text):
            w.u8(Kind.refused.rawValue); w.longBytes(Self.utf8Prefix(text, maxBytes: Self.maxTextBytes))
        case .roster(let delta):
            w.u8(Kind.roster.rawValue); w.rosterDelta(delta)
        case .lookupResult(let query, let epoch, let version, let peer, let found):
            w.u8(Kind.lookupResult.rawValue); w.u32(query); w.u32(epoch); w.u64(version); w.clientID(peer)
            if let found {
                w.u8(1); w.rosterEntry(found)
            } else {
                w.u8(0)
            }
        case .listPage(let query, let total, let offset, let entries):
            w.u8(Kind.listPage.rawValue); w.u32(query); w.u32(total); w.u32(offset)
            let kept = entries.prefix(ListEntry.maxPerDatagram)
            w.u8(UInt8(kept.count))
            for entry in kept { w.listEntry(entry) }
        case .punch(let peer, let round, let delay):
            w.u8(Kind.punch.rawValue); w.peerInfo(peer); w.u32(round); w.u32(delay)
        case .relayed(let from, let payload):
            w.u8(Kind.relayed.rawValue); w.clientID(from); w.longBytes(payload)
        case .keepAliveAck(let endpoint):
            w.u8(Kind.keepAliveAck.rawValue); w.endpoint(endpoint)
        case .unknownSession(let id, let echo):
            w.u8(Kind.unknownSession.rawValue); w.clientID(id); w.token(echo)
        case .ping(let from, let to, let transaction, let tag):
            w.u8(Kind.ping.rawValue); w.clientID(from); w.clientID(to); w.u64(transaction); w.token(tag)
        case .pong(let from, let to, let transaction, let observed, let tag):
            w.u8(Kind.pong.rawValue); w.clientID(from); w.clientID(to); w.u64(transaction); w.endpoint(observed); w.token(tag)
        case .chat(let from, let to, let messageID, let sealed):
            w.u8(Kind.chat.rawValue); w.clientID(from); w.clientID(to); w.u64(messageID); w.longBytes(sealed)
        case .chatAck(let from, let to, let messageID, let tag):
            w.u8(Kind.chatAck.rawValue); w.clientID(from); w.clientID(to); w.u64(messageID); w.token(tag)
        }
        return w.bytes
    }

    /// The longest prefix of `text` that fits `maxBytes` of UTF-8 without splitting a scalar.
    static func utf8Prefix(_ text: String, maxBytes: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        for scalar in text.unicodeScalars {
            let encoded = Array(String(scalar).utf8)
            guard bytes.count + encoded.count <= maxBytes else { break }
            bytes += encoded
        }
        return bytes
    }

    public static func decode<Bytes: Collection<UInt8>>(_ input: Bytes) throws(WireError) -> ExtendedMessage {
        if input.isEmpty { throw .empty }
        if input.count > maxDatagramLength { throw .datagramTooLong(length: input.count, limit: maxDatagramLength) }
        var r = WireReader(input as? [UInt8] ?? Array(input))
        guard try r.u8("magic") == magic else { throw .malformed("not an extended datagram") }
        guard try r.u8("version") == version else { throw .malformed("unsupported version") }
        guard let kind = Kind(rawValue: try r.u8("type")) else { throw .malformed("unknown message type") }
        let message: ExtendedMessage
        switch kind {
        case .register:
            let id = try r.clientID(), cookie = try r.token(), endpoints = try r.endpoints(), natKind = try r.natKind()
            let flags = try r.u8("flags")
            guard flags <= 1 else { throw .malformed("unknown registration flags") }
            message = .register(id: id, cookie: cookie, privateEndpoints: endpoints, natKind: natKind, keys: try r.keys(),
                                signature: try r.raw(64, "signature"), subscribe: flags == 1)
        case .keepAlive:
            message = .keepAlive(id: try r.clientID(), natKind: try r.natKind(), counter: try r.u64(), tag: try r.token())
        case .exit:
            message = .exit(id: try r.clientID(), counter: try r.u64(), tag: try r.token())
        case .connect:
            message = .connect(id: try r.clientID(), peer: try r.clientID(), counter: try r.u64(), tag: try r.token())
        case .relay:
            let id = try r.clientID(), to = try r.clientID()
            let payload = try r.longBytes("payload")
            guard payload.count <= maxRelayPayload else { throw .malformed("relay payload too long") }
            message = .relay(id: id, to: to, payload: payload, counter: try r.u64(), tag: try r.token())
        case .rosterAck:
            message = .rosterAck(id: try r.clientID(), largest: try r.u32(), received: try r.u64(), counter: try r.u64(), tag: try r.token())
        case .lookup:
            message = .lookup(id: try r.clientID(), query: try r.u32(), peer: try r.clientID(), counter: try r.u64(), tag: try r.token())
        case .listQuery:
            let id = try r.clientID(), query = try r.u32(), prefix = try r.idPrefix()
            message = .listQuery(id: id, query: query, prefix: prefix, offset: try r.u32(), limit: try r.u16(), counter: try r.u64(),
                                 tag: try r.token())
        case .challenge:
            message = .challenge(cookie: try r.token())
        case .registered:
            message = .registered(serverKey: try r.raw(32, "server key"), publicEndpoint: try r.endpoint(),
                                  keepAliveMillis: try r.u32(), alternatePort: try r.u16(), nonce: try r.token(), cookie: try r.token())
        case .refused:
            message = .refused(text: try r.text())
        case .roster:
            message = .roster(try r.rosterDelta())
        case .lookupResult:
            let query = try r.u32(), epoch = try r.u32(), version = try r.u64(), peer = try r.clientID()
            let found: RosterEntry?
            switch try r.u8("found flag") {
            case 0: found = nil
            case 1: found = try r.rosterEntry()
            default: throw .malformed("bad found flag")
            }
            if let found, found.info.id != peer { throw .malformed("look-up answer names another client") }
            message = .lookupResult(query: query, epoch: epoch, version: version, peer: peer, found: found)
        case .listPage:
            let query = try r.u32(), total = try r.u32(), offset = try r.u32()
            let count = Int(try r.u8("entry count"))
            guard count <= ListEntry.maxPerDatagram else { throw .malformed("too many list entries") }
            var entries: [ListEntry] = []
            for _ in 0..<count { entries.append(try r.listEntry()) }
            message = .listPage(query: query, total: total, offset: offset, entries: entries)
        case .punch:
            message = .punch(peer: try r.peerInfo(), round: try r.u32(), delayMillis: try r.u32())
        case .relayed:
            let from = try r.clientID()
            let payload = try r.longBytes("payload")
            guard payload.count <= maxRelayPayload else { throw .malformed("relay payload too long") }
            message = .relayed(from: from, payload: payload)
        case .keepAliveAck:
            message = .keepAliveAck(publicEndpoint: try r.endpoint())
        case .unknownSession:
            message = .unknownSession(try r.clientID(), echo: try r.token())
        case .ping:
            message = .ping(from: try r.clientID(), to: try r.clientID(), transaction: try r.u64(), tag: try r.token())
        case .pong:
            message = .pong(from: try r.clientID(), to: try r.clientID(), transaction: try r.u64(), observed: try r.endpoint(),
                            tag: try r.token())
        case .chat:
            let from = try r.clientID(), to = try r.clientID(), messageID = try r.u64()
            let sealed = try r.longBytes("sealed text")
            guard sealed.count <= maxTextBytes + 16 else { throw .malformed("chat too long") }
            message = .chat(from: from, to: to, messageID: messageID, sealed: sealed)
        case .chatAck:
            message = .chatAck(from: try r.clientID(), to: try r.clientID(), messageID: try r.u64(), tag: try r.token())
        }
        try r.expectEnd()
        return message
    }
}

extension WireWriter {
    mutating func token(_ token: Token128) { u64(token.high); u64(token.low) }

    mutating func endpoints(_ list: [Endpoint]) {
        let kept = list.prefix(ExtendedMessage.maxPrivateEndpoints)
        u8(UInt8(kept.count))
        for endpoint in kept { self.endpoint(endpoint) }
    }

    mutating func peerInfo(_ info: PeerInfo) {
        clientID(info.id)
        endpoint(info.publicEndpoint)
        endpoints(info.privateEndpoints)
        u8(info.natKind.rawValue)
        u8(info.dialect.rawValue)
        if let keys = info.keys {
            u8(1)
            self.keys(keys)
        } else {
            u8(0)
        }
    }

    mutating func keys(_ keys: PublicKeys) {
        fixed(keys.signing, PublicKeys.keyLength)
        fixed(keys.agreement, PublicKeys.keyLength)
    }

    mutating func rosterEntry(_ entry: RosterEntry) {
        peerInfo(entry.info)
        u64(entry.order)
        u64(entry.version)
    }

    mutating func rosterDelta(_ delta: RosterDelta) {
        u32(delta.epoch); u32(delta.sequence); u64(delta.version); u32(delta.registered); u8(delta.scope.rawValue)
        u8(delta.synced ? 1 : 0)
        let kept = delta.records.prefix(RosterDelta.maxRecords)
        u8(UInt8(kept.count))
        for record in kept {
            switch record {
            case .present(let entry):
                u8(1); rosterEntry(entry)
            case .absent(let id, let version, let reason, let endpoint):
                u8(0); clientID(id); u64(version); u8(reason.rawValue); self.endpoint(endpoint)
            }
        }
    }

    mutating func listEntry(_ entry: ListEntry) {
        clientID(entry.id); endpoint(entry.publicEndpoint); u8(entry.natKind.rawValue); u8(entry.dialect.rawValue)
    }

    /// Exactly `count` bytes: cut or zero-padded.
    mutating func fixed(_ data: [UInt8], _ count: Int) {
        raw(data.prefix(count))
        if data.count < count { raw(Array(repeating: 0, count: count - data.count)) }
    }
}

extension WireReader {
    mutating func token() throws(WireError) -> Token128 {
        Token128(high: try u64("token"), low: try u64("token"))
    }

    mutating func endpoints() throws(WireError) -> [Endpoint] {
        let count = Int(try u8("endpoint count"))
        guard count <= ExtendedMessage.maxPrivateEndpoints else { throw .malformed("too many endpoints") }
        var list: [Endpoint] = []
        for _ in 0..<count { list.append(try endpoint()) }
        return list
    }

    mutating func natKind() throws(WireError) -> NATKind {
        guard let kind = NATKind(rawValue: try u8("NAT kind")) else { throw .malformed("unknown NAT kind") }
        return kind
    }

    mutating func text() throws(WireError) -> String {
        let raw = try longBytes("text")
        guard raw.count <= ExtendedMessage.maxTextBytes else { throw .malformed("text too long") }
        guard let text = String(validating: raw, as: UTF8.self) else { throw .invalidUTF8 }
        guard !text.unicodeScalars.contains(where: ClassicMessage.isForbiddenInText) else { throw .controlCharacterInText }
        return text
    }

    mutating func peerInfo() throws(WireError) -> PeerInfo {
        let id = try clientID()
        let publicEndpoint = try endpoint()
        let privateEndpoints = try endpoints()
        let natKind = try natKind()
        guard let dialect = Dialect(rawValue: try u8("dialect")) else { throw .malformed("unknown dialect") }
        let keys: PublicKeys?
        switch try u8("key flag") {
        case 0: keys = nil
        case 1: keys = try self.keys()
        default: throw .malformed("bad key flag")
        }
        return PeerInfo(id: id, publicEndpoint: publicEndpoint, privateEndpoints: privateEndpoints, natKind: natKind,
                        dialect: dialect, keys: keys)
    }

    mutating func keys() throws(WireError) -> PublicKeys {
        PublicKeys(signing: try raw(PublicKeys.keyLength, "signing key"), agreement: try raw(PublicKeys.keyLength, "agreement key"))
    }

    mutating func rosterEntry() throws(WireError) -> RosterEntry {
        RosterEntry(info: try peerInfo(), order: try u64(), version: try u64())
    }

    mutating func rosterDelta() throws(WireError) -> RosterDelta {
        let epoch = try u32(), sequence = try u32(), version = try u64(), registered = try u32()
        guard let scope = RosterScope(rawValue: try u8("scope")) else { throw .malformed("unknown roster scope") }
        let synced = try u8("synced flag")
        guard synced <= 1 else { throw .malformed("bad synced flag") }
        let count = Int(try u8("record count"))
        guard count <= RosterDelta.maxRecords else { throw .malformed("too many roster records") }
        var records: [RosterRecord] = []
        for _ in 0..<count {
            switch try u8("record kind") {
            case 1:
                records.append(.present(try rosterEntry()))
            case 0:
                let id = try clientID(), version = try u64()
                guard let reason = LeaveReason(rawValue: try u8("reason")) else { throw .malformed("unknown leave reason") }
                records.append(.absent(id, version: version, reason: reason, publicEndpoint: try endpoint()))
            default:
                throw .malformed("unknown roster record kind")
            }
        }
        return RosterDelta(epoch: epoch, sequence: sequence, version: version, registered: registered, scope: scope,
                           synced: synced == 1, records: records)
    }

    mutating func listEntry() throws(WireError) -> ListEntry {
        let id = try clientID(), endpoint = try endpoint(), natKind = try natKind()
        guard let dialect = Dialect(rawValue: try u8("dialect")) else { throw .malformed("unknown dialect") }
        return ListEntry(id: id, publicEndpoint: endpoint, natKind: natKind, dialect: dialect)
    }

    /// The start of an ID (empty allowed), with an ID's rules for what it may contain.
    mutating func idPrefix() throws(WireError) -> String {
        let raw = try shortBytes("ID prefix")
        guard raw.count <= ClientID.maxUTF8Length else { throw .malformed("ID prefix too long") }
        guard let text = String(validating: raw, as: UTF8.self) else { throw .invalidUTF8 }
        if !text.isEmpty, let violation = ClientID.violation(in: text) { throw .invalidClientID(violation) }
        return text
    }
}

extension ExtendedMessage {
    /// The encoded length of ``keepAliveAck(publicEndpoint:)``: magic, version, kind, endpoint.
    public static var keepAliveAckLength: Int { 9 }
    /// The kind byte of ``keepAliveAck(publicEndpoint:)``, for writers that build it in place.
    public static var keepAliveAckKind: UInt8 { Kind.keepAliveAck.rawValue }

    /// Writes ``keepAliveAck(publicEndpoint:)`` (``keepAliveAckLength`` bytes) at the start of
    /// `destination` in one pass, for a server that answers into a buffer it already has.
    /// Returns the number of bytes written, 0 when `destination` is too short.
    public static func writeKeepAliveAck(publicEndpoint: Endpoint, into destination: UnsafeMutableRawBufferPointer) -> Int {
        guard destination.count >= keepAliveAckLength, let base = destination.baseAddress else { return 0 }
        base.storeBytes(of: magic, toByteOffset: 0, as: UInt8.self)
        base.storeBytes(of: version, toByteOffset: 1, as: UInt8.self)
        base.storeBytes(of: keepAliveAckKind, toByteOffset: 2, as: UInt8.self)
        base.storeBytes(of: publicEndpoint.address.bits.bigEndian, toByteOffset: 3, as: UInt32.self)
        base.storeBytes(of: publicEndpoint.port.bigEndian, toByteOffset: 7, as: UInt16.self)
        return keepAliveAckLength
    }

    /// The fields of one encoded ``keepAlive(id:natKind:counter:tag:)``, read in place
    /// without allocating (the server's commonest datagram). It accepts exactly what
    /// ``decode(_:)`` accepts as a keep-alive, except that the ID's characters are not
    /// checked: ``idBytes`` is only compared with a registered ID.
    public struct KeepAliveFrame {
        /// The ID's UTF-8 bytes; valid while the datagram's memory is.
        public let idBytes: UnsafeRawBufferPointer
        public let natKind: NATKind
        public let counter: UInt64
        /// Everything but the trailing tag: what the tag covers.
        public let authenticated: UnsafeRawBufferPointer
        public let tag: Token128

        /// `nil` unless `datagram` is one whole keep-alive frame.
        public init?(_ datagram: UnsafeRawBufferPointer) {
            guard datagram.count >= 4, datagram[0] == ExtendedMessage.magic, datagram[1] == ExtendedMessage.version,
                  datagram[2] == Kind.keepAlive.rawValue else { return nil }
            let idLength = Int(datagram[3])
            guard idLength >= 1, idLength <= ClientID.maxUTF8Length, datagram.count == 4 + idLength + 1 + 8 + 16,
                  let natKind = NATKind(rawValue: datagram[4 + idLength]) else { return nil }
            let counterOffset = 5 + idLength
            let tagOffset = counterOffset + 8
            idBytes = UnsafeRawBufferPointer(rebasing: datagram[4..<(4 + idLength)])
            self.natKind = natKind
            counter = UInt64(bigEndian: datagram.loadUnaligned(fromByteOffset: counterOffset, as: UInt64.self))
            authenticated = UnsafeRawBufferPointer(rebasing: datagram[..<tagOffset])
            tag = Token128(high: UInt64(bigEndian: datagram.loadUnaligned(fromByteOffset: tagOffset, as: UInt64.self)),
                           low: UInt64(bigEndian: datagram.loadUnaligned(fromByteOffset: tagOffset + 8, as: UInt64.self)))
        }
    }
}

extension ExtendedMessage {
    /// The fields of one encoded ``relay(id:to:payload:counter:tag:)``, read in place without
    /// allocating. It accepts exactly the frames ``decode(_:)`` accepts as a relay request,
    /// except that the IDs' characters are not checked (they are only looked up).
    public struct RelayFrame {
        public let idBytes: UnsafeRawBufferPointer
        public let toBytes: UnsafeRawBufferPointer
        public let payload: UnsafeRawBufferPointer
        public let counter: UInt64
        /// Everything but the trailing tag: what the tag covers.
        public let authenticated: UnsafeRawBufferPointer
        public let tag: Token128

        /// `nil` unless `datagram` is one whole relay request.
        public init?(_ datagram: UnsafeRawBufferPointer) {
            guard datagram.count >= 4, datagram[0] == ExtendedMessage.magic, datagram[1] == ExtendedMessage.version,
                  datagram[2] == Kind.relay.rawValue else { return nil }
            let idLength = Int(datagram[3])
            let toOffset = 4 + idLength
            guard idLength >= 1, idLength <= ClientID.maxUTF8Length, datagram.count > toOffset else { return nil }
            let toLength = Int(datagram[toOffset])
            let payloadLengthOffset = toOffset + 1 + toLength
            guard toLength >= 1, toLength <= ClientID.maxUTF8Length, datagram.count >= payloadLengthOffset + 2 else { return nil }
            let payloadLength = Int(datagram[payloadLengthOffset]) << 8 | Int(datagram[payloadLengthOffset + 1])
            let payloadOffset = payloadLengthOffset + 2
            let counterOffset = payloadOffset + payloadLength
            let tagOffset = counterOffset + 8
            guard payloadLength <= ExtendedMessage.maxRelayPayload, datagram.count == tagOffset + 16 else { return nil }
            idBytes = UnsafeRawBufferPointer(rebasing: datagram[4..<toOffset])
            toBytes = UnsafeRawBufferPointer(rebasing: datagram[(toOffset + 1)..<payloadLengthOffset])
            payload = UnsafeRawBufferPointer(rebasing: datagram[payloadOffset..<counterOffset])
            counter = UInt64(bigEndian: datagram.loadUnaligned(fromByteOffset: counterOffset, as: UInt64.self))
            authenticated = UnsafeRawBufferPointer(rebasing: datagram[..<tagOffset])
            tag = Token128(high: UInt64(bigEndian: datagram.loadUnaligned(fromByteOffset: tagOffset, as: UInt64.self)),
                           low: UInt64(bigEndian: datagram.loadUnaligned(fromByteOffset: tagOffset + 8, as: UInt64.self)))
        }

        /// The length of the ``relayed(from:payload:)`` datagram the server forwards.
        public var relayedLength: Int { 3 + 1 + idBytes.count + 2 + payload.count }

        /// Writes that ``relayed(from:payload:)`` datagram (the sender's ID and the payload)
        /// at the start of `destination` in one pass; returns the number of bytes written,
        /// ``relayedLength``, or 0 when `destination` is too short.
        public func writeRelayed(into destination: UnsafeMutableRawBufferPointer) -> Int {
            let length = relayedLength
            guard destination.count >= length, let base = destination.baseAddress else { return 0 }
            base.storeBytes(of: ExtendedMessage.magic, toByteOffset: 0, as: UInt8.self)
            base.storeBytes(of: ExtendedMessage.version, toByteOffset: 1, as: UInt8.self)
            base.storeBytes(of: Kind.relayed.rawValue, toByteOffset: 2, as: UInt8.self)
            base.storeBytes(of: UInt8(idBytes.count), toByteOffset: 3, as: UInt8.self)
            var offset = 4
            if let id = idBytes.baseAddress { (base + offset).copyMemory(from: id, byteCount: idBytes.count) }
            offset += idBytes.count
            base.storeBytes(of: UInt16(truncatingIfNeeded: payload.count).bigEndian, toByteOffset: offset, as: UInt16.self)
            offset += 2
            if let bytes = payload.baseAddress { (base + offset).copyMemory(from: bytes, byteCount: payload.count) }
            return length
        }
    }
}

extension ClientID {
    /// A key for looking up a registered ID by its bytes as received: not checked against
    /// the rules, so it can only ever match an ID that was (the registry's in-place paths).
    package init(lookingUp utf8: UnsafeRawBufferPointer) {
        rawValue = String(decoding: utf8, as: UTF8.self)
    }
}
