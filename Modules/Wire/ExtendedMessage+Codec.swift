import Addressing

// The natchat/2 message bodies: header (magic, version, kind) and fields, without the
// trailer that authenticates some kinds (``ExtendedDatagram`` adds and reads it). Every field
// is read through ``WireReader``, the same reading the in-place frames use.

extension ExtendedMessage {
    /// The message's bytes without a trailer: a whole datagram for the kinds whose
    /// ``authentication`` is `.none`; the part a tag or signature covers for the others
    /// (send those as an ``ExtendedDatagram``).
    public func encode() -> [UInt8] {
        var w = WireWriter(capacity: 96)
        w.u8(Self.magic)
        w.u8(Self.version)
        w.u8(kind.rawValue)
        switch self {
        case .register(let id, let cookie, let endpoints, let natKind, let keys, let subscribe):
            w.clientID(id); w.token(cookie); w.endpoints(endpoints); w.u8(natKind.rawValue); w.u8(subscribe ? 1 : 0); w.keys(keys)
        case .keepAlive(let id, let natKind, let mapped):
            w.clientID(id); w.natKind(natKind, mapped: mapped)
        case .exit(let id):
            w.clientID(id)
        case .connect(let id, let peer):
            w.clientID(id); w.clientID(peer)
        case .pathReport(let id, let peer, let outcome):
            w.clientID(id); w.clientID(peer); w.u8(outcome.rawValue)
        case .relay(let id, let to, let payload):
            w.clientID(id); w.clientID(to); w.longBytes(payload)
        case .rosterAck(let id, let largest, let received):
            w.clientID(id); w.u32(largest); w.u64(received)
        case .lookup(let id, let query, let peer):
            w.clientID(id); w.u32(query); w.clientID(peer)
        case .listQuery(let id, let query, let prefix, let offset, let limit):
            w.clientID(id); w.u32(query); w.shortBytes(Self.utf8Prefix(prefix, maxBytes: ClientID.maxUTF8Length))
            w.u32(offset); w.u16(limit)
        case .claimLookup(let id, let query, let peer):
            w.clientID(id); w.u32(query); w.clientID(peer)
        case .deposit(let id, let query, let to, let sealed):
            w.clientID(id); w.u32(query); w.clientID(to); w.longBytes(sealed)
        case .mailAck(let id, let serial):
            w.clientID(id); w.u64(serial)
        case .releaseClaim(let id):
            w.clientID(id)
        case .rotateKey(let id, let newKeys, let signature):
            w.clientID(id); w.keys(newKeys); w.fixed(signature, 64)
        case .claimChanged(let id, let keys):
            w.clientID(id)
            if let keys {
                w.u8(1); w.keys(keys)
            } else {
                w.u8(0)
            }
        case .claimResult(let query, let peer, let keys, let claimedSince):
            w.u32(query); w.clientID(peer)
            if let keys {
                w.u8(1); w.keys(keys); w.u64(claimedSince)
            } else {
                w.u8(0)
            }
        case .depositResult(let query, let to, let outcome):
            w.u32(query); w.clientID(to)
            switch outcome {
            case .queued(let serial, let kept): w.u8(0); w.u64(serial); w.u32(kept)
            case .unknownRecipient: w.u8(1)
            case .recipientOnline: w.u8(2)
            case .refused(let reason): w.u8(3); w.u8(reason.rawValue)
            }
        case .mail(let serial, let from, let queuedAt, let sealed):
            w.u64(serial); w.clientID(from); w.u64(queuedAt); w.longBytes(sealed)
        case .mailDelivered(let to, let serial):
            w.clientID(to); w.u64(serial)
        case .challenge(let cookie):
            w.token(cookie)
        case .registered(let serverKey, let endpoint, let keepAlive, let alternatePort, let nonce, let cookie):
            w.fixed(serverKey, 32); w.endpoint(endpoint); w.u32(keepAlive); w.u16(alternatePort); w.token(nonce); w.token(cookie)
        case .refused(let text):
            w.longBytes(Self.utf8Prefix(text, maxBytes: Self.maxTextBytes))
        case .roster(let delta):
            w.rosterDelta(delta)
        case .lookupResult(let query, let epoch, let version, let peer, let found):
            w.u32(query); w.u32(epoch); w.u64(version); w.clientID(peer)
            if let found {
                w.u8(1); w.rosterEntry(found)
            } else {
                w.u8(0)
            }
        case .listPage(let query, let total, let offset, let entries):
            w.u32(query); w.u32(total); w.u32(offset)
            let kept = entries.prefix(ListEntry.maxPerDatagram)
            w.u8(UInt8(kept.count))
            for entry in kept { w.listEntry(entry) }
        case .punch(let peer, let round, let delay):
            w.peerInfo(peer); w.u32(round); w.u32(delay)
        case .relayed(let from, let payload):
            w.clientID(from); w.longBytes(payload)
        case .keepAliveAck(let endpoint):
            w.endpoint(endpoint)
        case .unknownSession(let id, let echo):
            w.clientID(id); w.token(echo)
        case .ping(let from, let to, let transaction):
            w.clientID(from); w.clientID(to); w.u64(transaction)
        case .pong(let from, let to, let transaction, let observed):
            w.clientID(from); w.clientID(to); w.u64(transaction); w.endpoint(observed)
        case .chat(let from, let to, let messageID, let sealed):
            w.clientID(from); w.clientID(to); w.u64(messageID); w.longBytes(sealed)
        case .chatAck(let from, let to, let messageID):
            w.clientID(from); w.clientID(to); w.u64(messageID)
        case .serverPunch(let target, let peer, let round, let delay):
            w.clientID(target); w.peerInfo(peer); w.u32(round); w.u32(delay)
        case .serverRelay(let from, let to, let payload):
            w.clientID(from); w.clientID(to); w.longBytes(payload)
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

    /// Decodes a whole datagram's message, checking (but not verifying) its trailer; see
    /// ``ExtendedDatagram/decode(_:)`` for the trailer itself.
    public static func decode<Bytes: Collection<UInt8>>(_ input: Bytes) throws(WireError) -> ExtendedMessage {
        try ExtendedDatagram.decode(input).message
    }

    /// Reads the header; the kind it names.
    static func readHeader(_ r: inout WireReader) throws(WireError) -> Kind {
        guard try r.u8("magic") == magic else { throw .malformed("not an extended datagram") }
        guard try r.u8("version") == version else { throw .malformed("unsupported version") }
        guard let kind = Kind(rawValue: try r.u8("type")) else { throw .malformed("unknown message type") }
        return kind
    }

    /// Reads the fields of a message of `kind` (after the header, before the trailer).
    static func readBody(_ kind: Kind, _ r: inout WireReader) throws(WireError) -> ExtendedMessage {
        switch kind {
        case .register:
            let id = try r.clientID(), cookie = try r.token(), endpoints = try r.endpoints(), natKind = try r.natKind()
            let flags = try r.u8("flags")
            guard flags <= 1 else { throw .malformed("unknown registration flags") }
            return .register(id: id, cookie: cookie, privateEndpoints: endpoints, natKind: natKind, keys: try r.keys(),
                             subscribe: flags == 1)
        case .keepAlive:
            let fields = try KeepAliveFields(&r)
            return .keepAlive(id: try ClientID(utf8: fields.idBytes), natKind: fields.natKind, mappedEndpoint: fields.mappedEndpoint)
        case .exit:
            return .exit(id: try r.clientID())
        case .connect:
            return .connect(id: try r.clientID(), peer: try r.clientID())
        case .pathReport:
            let id = try r.clientID(), peer = try r.clientID()
            guard let outcome = PathOutcome(rawValue: try r.u8("outcome")) else { throw .malformed("unknown path outcome") }
            return .pathReport(id: id, peer: peer, outcome: outcome)
        case .relay:
            let fields = try RelayFields(&r)
            return .relay(id: try ClientID(utf8: fields.idBytes), to: try ClientID(utf8: fields.toBytes), payload: Array(fields.payload))
        case .rosterAck:
            return .rosterAck(id: try r.clientID(), largest: try r.u32(), received: try r.u64())
        case .lookup:
            return .lookup(id: try r.clientID(), query: try r.u32(), peer: try r.clientID())
        case .listQuery:
            let id = try r.clientID(), query = try r.u32(), prefix = try r.idPrefix()
            return .listQuery(id: id, query: query, prefix: prefix, offset: try r.u32(), limit: try r.u16())
        case .claimLookup:
            return .claimLookup(id: try r.clientID(), query: try r.u32(), peer: try r.clientID())
        case .deposit:
            let id = try r.clientID(), query = try r.u32(), to = try r.clientID()
            let sealed = try r.longBytes("sealed mail")
            guard sealed.count <= maxMailBytes else { throw .malformed("mail too long") }
            return .deposit(id: id, query: query, to: to, sealed: Array(sealed))
        case .mailAck:
            return .mailAck(id: try r.clientID(), serial: try r.u64())
        case .releaseClaim:
            return .releaseClaim(id: try r.clientID())
        case .rotateKey:
            return .rotateKey(id: try r.clientID(), newKeys: try r.keys(), signature: try r.array(64, "signature"))
        case .claimChanged:
            let id = try r.clientID()
            switch try r.u8("claim flag") {
            case 0: return .claimChanged(id: id, keys: nil)
            case 1: return .claimChanged(id: id, keys: try r.keys())
            default: throw .malformed("bad claim flag")
            }
        case .claimResult:
            let query = try r.u32(), peer = try r.clientID()
            switch try r.u8("claim flag") {
            case 0: return .claimResult(query: query, peer: peer, keys: nil, claimedSince: 0)
            case 1: return .claimResult(query: query, peer: peer, keys: try r.keys(), claimedSince: try r.u64())
            default: throw .malformed("bad claim flag")
            }
        case .depositResult:
            let query = try r.u32(), to = try r.clientID()
            let outcome: DepositOutcome
            switch try r.u8("deposit outcome") {
            case 0: outcome = .queued(serial: try r.u64(), keptSeconds: try r.u32())
            case 1: outcome = .unknownRecipient
            case 2: outcome = .recipientOnline
            case 3:
                guard let reason = DepositRefusal(rawValue: try r.u8("refusal")) else { throw .malformed("unknown deposit refusal") }
                outcome = .refused(reason)
            default: throw .malformed("unknown deposit outcome")
            }
            return .depositResult(query: query, to: to, outcome: outcome)
        case .mail:
            let serial = try r.u64(), from = try r.clientID(), queuedAt = try r.u64()
            let sealed = try r.longBytes("sealed mail")
            guard sealed.count <= maxMailBytes else { throw .malformed("mail too long") }
            return .mail(serial: serial, from: from, queuedAt: queuedAt, sealed: Array(sealed))
        case .mailDelivered:
            return .mailDelivered(to: try r.clientID(), serial: try r.u64())
        case .challenge:
            return .challenge(cookie: try r.token())
        case .registered:
            return .registered(serverKey: try r.array(32, "server key"), publicEndpoint: try r.endpoint(), keepAliveMillis: try r.u32(),
                               alternatePort: try r.u16(), nonce: try r.token(), cookie: try r.token())
        case .refused:
            return .refused(text: try r.text())
        case .roster:
            return .roster(try r.rosterDelta())
        case .lookupResult:
            let query = try r.u32(), epoch = try r.u32(), version = try r.u64(), peer = try r.clientID()
            let found: RosterEntry?
            switch try r.u8("found flag") {
            case 0: found = nil
            case 1: found = try r.rosterEntry()
            default: throw .malformed("bad found flag")
            }
            if let found, found.info.id != peer { throw .malformed("look-up answer names another client") }
            return .lookupResult(query: query, epoch: epoch, version: version, peer: peer, found: found)
        case .listPage:
            let query = try r.u32(), total = try r.u32(), offset = try r.u32()
            let count = Int(try r.u8("entry count"))
            guard count <= ListEntry.maxPerDatagram else { throw .malformed("too many list entries") }
            var entries: [ListEntry] = []
            for _ in 0..<count { entries.append(try r.listEntry()) }
            return .listPage(query: query, total: total, offset: offset, entries: entries)
        case .punch:
            return .punch(peer: try r.peerInfo(), round: try r.u32(), delayMillis: try r.u32())
        case .serverPunch:
            return .serverPunch(target: try r.clientID(), peer: try r.peerInfo(), round: try r.u32(), delayMillis: try r.u32())
        case .serverRelay:
            let from = try r.clientID(), to = try r.clientID()
            let payload = try r.longBytes("payload")
            guard payload.count <= maxRelayPayload else { throw .malformed("relay payload too long") }
            return .serverRelay(from: from, to: to, payload: Array(payload))
        case .relayed:
            let from = try r.clientID()
            let payload = try r.longBytes("payload")
            guard payload.count <= maxRelayPayload else { throw .malformed("relay payload too long") }
            return .relayed(from: from, payload: Array(payload))
        case .keepAliveAck:
            return .keepAliveAck(publicEndpoint: try r.endpoint())
        case .unknownSession:
            return .unknownSession(try r.clientID(), echo: try r.token())
        case .ping:
            return .ping(from: try r.clientID(), to: try r.clientID(), transaction: try r.u64())
        case .pong:
            return .pong(from: try r.clientID(), to: try r.clientID(), transaction: try r.u64(), observed: try r.endpoint())
        case .chat:
            let from = try r.clientID(), to = try r.clientID(), messageID = try r.u64()
            let sealed = try r.longBytes("sealed text")
            guard sealed.count <= maxTextBytes + 16 else { throw .malformed("chat too long") }
            return .chat(from: from, to: to, messageID: messageID, sealed: Array(sealed))
        case .chatAck:
            return .chatAck(from: try r.clientID(), to: try r.clientID(), messageID: try r.u64())
        }
    }
}

/// The fields of a keep-alive, read in place: shared by the decoder and the in-place frame.
struct KeepAliveFields {
    let idBytes: UnsafeRawBufferPointer
    let natKind: NATKind
    let mappedEndpoint: Endpoint?

    init(_ r: inout WireReader) throws(WireError) {
        idBytes = try r.clientIDBytes()
        (natKind, mappedEndpoint) = try r.natKindAndMapping()
    }
}

/// The fields of a relay request, read in place: shared by the decoder and the in-place frame.
struct RelayFields {
    let idBytes: UnsafeRawBufferPointer
    let toBytes: UnsafeRawBufferPointer
    let payload: UnsafeRawBufferPointer

    init(_ r: inout WireReader) throws(WireError) {
        idBytes = try r.clientIDBytes()
        toBytes = try r.clientIDBytes()
        payload = try r.longBytes("payload")
        guard payload.count <= ExtendedMessage.maxRelayPayload else { throw .malformed("relay payload too long") }
    }
}

extension WireWriter {
    mutating func token(_ token: Token128) { u64(token.high); u64(token.low) }

    mutating func endpoints(_ list: [Endpoint]) {
        let kept = list.prefix(ExtendedMessage.maxPrivateEndpoints)
        u8(UInt8(kept.count))
        for endpoint in kept { self.endpoint(endpoint) }
    }

    /// The NAT kind's byte, its top bit set when a port mapping's external endpoint follows.
    mutating func natKind(_ kind: NATKind, mapped: Endpoint?) {
        u8(kind.rawValue | (mapped == nil ? 0 : ExtendedMessage.mappedEndpointFlag))
        if let mapped { endpoint(mapped) }
    }

    mutating func peerInfo(_ info: PeerInfo) {
        clientID(info.id)
        endpoint(info.publicEndpoint)
        endpoints(info.privateEndpoints)
        natKind(info.natKind, mapped: info.mappedEndpoint)
        u8(info.dialect.rawValue)
        if let keys = info.keys {
            // 2: the keys and the claim's date; 1: the keys, unclaimed.
            u8(info.claimedSince == 0 ? 1 : 2)
            self.keys(keys)
            if info.claimedSince != 0 { u32(info.claimedSince) }
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
        u32(entry.claimedSince)
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

    /// A NAT kind byte whose top bit says that a port mapping's external endpoint follows.
    mutating func natKindAndMapping() throws(WireError) -> (NATKind, Endpoint?) {
        let byte = try u8("NAT kind")
        guard let kind = NATKind(rawValue: byte & ~ExtendedMessage.mappedEndpointFlag) else { throw .malformed("unknown NAT kind") }
        guard byte & ExtendedMessage.mappedEndpointFlag != 0 else { return (kind, nil) }
        let mapped = try endpoint()
        guard mapped.port != 0, mapped.address.bits != 0 else { throw .malformed("mapped endpoint unspecified") }
        return (kind, mapped)
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
        let (natKind, mappedEndpoint) = try natKindAndMapping()
        guard let dialect = Dialect(rawValue: try u8("dialect")) else { throw .malformed("unknown dialect") }
        let keys: PublicKeys?
        var claimedSince: UInt32 = 0
        switch try u8("key flag") {
        case 0: keys = nil
        case 1: keys = try self.keys()
        case 2:
            keys = try self.keys()
            claimedSince = try u32()
            guard claimedSince != 0 else { throw .malformed("a claim dated 0") }
        default: throw .malformed("bad key flag")
        }
        return PeerInfo(id: id, publicEndpoint: publicEndpoint, privateEndpoints: privateEndpoints, natKind: natKind,
                        dialect: dialect, keys: keys, claimedSince: claimedSince, mappedEndpoint: mappedEndpoint)
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
        return ListEntry(id: id, publicEndpoint: endpoint, natKind: natKind, dialect: dialect, claimedSince: try u32())
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

extension PeerInfo {
    /// The peer's bytes as every message that carries one writes them (what servers that
    /// share a database publish of their clients).
    public func encode() -> [UInt8] {
        var w = WireWriter(capacity: 128)
        w.peerInfo(self)
        return w.bytes
    }

    /// Reads ``encode()``'s bytes (all of them): a typed error for anything else.
    public static func decode(_ bytes: [UInt8]) throws(WireError) -> PeerInfo {
        let result = bytes.withUnsafeBytes { raw -> Result<PeerInfo, WireError> in
            do throws(WireError) {
                var r = WireReader(raw)
                let info = try r.peerInfo()
                guard r.isAtEnd else { throw .malformed("bytes after the peer") }
                return .success(info)
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }
}
