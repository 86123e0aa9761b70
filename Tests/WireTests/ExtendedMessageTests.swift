import Addressing
import Testing
@testable import Wire

// Uses the module-wide helpers id(_:), ip(_:), ep(_:) and wireError(_:) from WireTests.swift.

private func extendedError(_ bytes: [UInt8]) -> WireError? {
    wireError { () throws(WireError) in try ExtendedMessage.decode(bytes) }
}

private let keysA = PublicKeys(signing: (0..<32).map { UInt8($0) }, agreement: (0..<32).map { UInt8(100 + $0) })
private let keysB = PublicKeys(signing: Array(repeating: 0xAB, count: 32), agreement: Array(repeating: 0xCD, count: 32))
private let signature = (0..<64).map { UInt8(truncatingIfNeeded: 200 + $0) }
private let tagX = Token128(high: 0x0102_0304_0506_0708, low: 0x090A_0B0C_0D0E_0F10)
private let cookieX = Token128(high: 0xDEAD_BEEF_0000_0001, low: 0xFFFF_FFFF_FFFF_FFFF)

private let fullPeer = PeerInfo(id: id("bob"), publicEndpoint: ep("203.0.113.7:40002"),
                                privateEndpoints: [ep("10.0.0.6:10081"), ep("192.168.1.6:5000")],
                                natKind: .endpointDependent, dialect: .extended, keys: keysB)
/// A message and the trailer its kind calls for, for the round-trip and rejection lists.
private func plain(_ message: ExtendedMessage) -> ExtendedDatagram { ExtendedDatagram(message) }
private func session(_ message: ExtendedMessage, _ counter: UInt64, _ tag: Token128) -> ExtendedDatagram {
    ExtendedDatagram(message, trailer: .session(counter: counter, tag: tag))
}
private func pair(_ message: ExtendedMessage, _ tag: Token128) -> ExtendedDatagram { ExtendedDatagram(message, trailer: .pair(tag: tag)) }
private func signed(_ message: ExtendedMessage, _ signature: [UInt8]) -> ExtendedDatagram {
    ExtendedDatagram(message, trailer: .signature(signature))
}

private let classicPeer = PeerInfo(id: id("carol"), publicEndpoint: ep("198.51.100.9:50000"), privateEndpoints: [],
                                   natKind: .unknown, dialect: .classic, keys: nil)

@Suite("ExtendedMessage round trip")
struct ExtendedRoundTripTests {
    static let messages: [ExtendedDatagram] = [
        signed(.register(id: id("alice"), cookie: cookieX, privateEndpoints: [ep("10.0.0.5:10081")], natKind: .endpointIndependent,
                  keys: keysA), signature),
        signed(.register(id: id("한국어"), cookie: .zero, privateEndpoints: [], natKind: .unknown, keys: keysB), signature),
        signed(.register(id: id("a"), cookie: cookieX,
                  privateEndpoints: [ep("10.0.0.1:1"), ep("10.0.0.2:2"), ep("10.0.0.3:3"), ep("255.255.255.255:65535")],
                  natKind: .none, keys: keysA), signature),
        session(.keepAlive(id: id("alice"), natKind: .endpointDependent), 1, tagX),
        session(.keepAlive(id: id("alice"), natKind: .none), .max, .zero),
        session(.keepAlive(id: id("alice"), natKind: .endpointIndependentRemappedByInbound, mappedEndpoint: ep("203.0.113.5:10081")), 3, tagX),
        session(.exit(id: id("alice")), 42, tagX),
        session(.connect(id: id("alice"), peer: id("bob")), 7, tagX),
        session(.relay(id: id("alice"), to: id("bob"), payload: [0xFE, 1, 0x83, 0, 0]), 9, tagX),
        session(.relay(id: id("alice"), to: id("bob"), payload: []), 0, .zero),
        session(.relay(id: id("alice"), to: id("bob"), payload: Array(repeating: 0x55, count: ExtendedMessage.maxRelayPayload)), 3, tagX),
        plain(.challenge(cookie: cookieX)),
        plain(.registered(serverKey: Array(repeating: 0x11, count: 32), publicEndpoint: ep("203.0.113.7:40001"),
                    keepAliveMillis: 10_000, alternatePort: 10_082, nonce: cookieX)),
        plain(.registered(serverKey: (0..<32).map { UInt8($0) }, publicEndpoint: ep("1.2.3.4:5"), keepAliveMillis: .max, alternatePort: 0)),
        plain(.registered(serverKey: Array(repeating: 0xFF, count: 32), publicEndpoint: ep("255.255.255.255:65535"), keepAliveMillis: 0,
                    alternatePort: .max, nonce: Token128(high: .max, low: .max))),
        plain(.refused(text: "registration refused: ID bob - the ID is in use from another address")),
        plain(.refused(text: "")),
        plain(.refused(text: "tab\tand 안녕 👋")),
        plain(.refused(text: String(repeating: "x", count: ExtendedMessage.maxTextBytes))),
        plain(.roster(RosterDelta(epoch: 7, sequence: 1, version: 42, registered: 3, scope: .complete, synced: false, records: [
            .present(RosterEntry(info: fullPeer, order: 0, version: 40)),
            .present(RosterEntry(info: classicPeer, order: .max, version: 41)),
            .absent(id("bob"), version: 42, reason: .unregistered, publicEndpoint: ep("203.0.113.7:40002")),
            .absent(id("carol"), version: 39, reason: .offline, publicEndpoint: ep("203.0.113.7:40003")),
        ]))),
        plain(.roster(RosterDelta(epoch: .max, sequence: .max, version: .max, registered: 100_000, scope: .interest, synced: true, records: []))),
        session(.rosterAck(id: id("alice"), largest: 9, received: 0b1011), 4, tagX),
        session(.lookup(id: id("alice"), query: 3, peer: id("한국어")), 5, tagX),
        plain(.lookupResult(query: 3, epoch: 7, version: 99, peer: classicPeer.id, found: RosterEntry(info: classicPeer, order: 2, version: 98))),
        plain(.lookupResult(query: .max, epoch: 0, version: 0, peer: id("nobody"), found: nil)),
        session(.listQuery(id: id("alice"), query: 4, prefix: "", offset: 0, limit: 50), 6, tagX),
        session(.listQuery(id: id("alice"), query: 5, prefix: "bé", offset: .max, limit: .max), 7, tagX),
        plain(.listPage(query: 4, total: 100_000, offset: 50, entries: [
            ListEntry(id: id("bob"), publicEndpoint: ep("203.0.113.7:40002"), natKind: .endpointDependent, dialect: .extended),
            ListEntry(id: id("carol"), publicEndpoint: ep("198.51.100.2:1"), natKind: .unknown, dialect: .classic),
            ListEntry(id: id("dave"), publicEndpoint: ep("198.51.100.2:2"), natKind: .unknown, dialect: .extended, claimedSince: .max),
        ])),
        plain(.listPage(query: 5, total: 0, offset: 0, entries: [])),
        plain(.punch(peer: fullPeer, round: 1, delayMillis: 0)),
        plain(.punch(peer: PeerInfo(id: id("bob"), publicEndpoint: ep("203.0.113.7:40002"), natKind: .endpointDependent,
                                    keys: keysB, mappedEndpoint: ep("203.0.113.7:10081")), round: 1, delayMillis: 0)),
        plain(.punch(peer: PeerInfo(id: id("bob"), publicEndpoint: ep("203.0.113.7:40002"), keys: keysB, claimedSince: 1_764_900_000),
                     round: 1, delayMillis: 0)),
        plain(.punch(peer: classicPeer, round: .max, delayMillis: 800)),
        plain(.relayed(from: id("alice"), payload: [1, 2, 3])),
        plain(.relayed(from: id("alice"), payload: [])),
        plain(.keepAliveAck(publicEndpoint: ep("192.0.2.99:33333"))),
        plain(.unknownSession(id("alice"))),
        plain(.unknownSession(id("alice"), echo: tagX)),
        plain(.unknownSession(id("한국어"), echo: Token128(high: .max, low: 1))),
        pair(.ping(from: id("alice"), to: id("bob"), transaction: 0x1234_5678_9ABC_DEF0), tagX),
        pair(.pong(from: id("bob"), to: id("alice"), transaction: 1, observed: ep("203.0.113.7:40001")), tagX),
        plain(.chat(from: id("alice"), to: id("bob"), messageID: 99, sealed: Array(repeating: 7, count: 40))),
        plain(.chat(from: id("alice"), to: id("bob"), messageID: 0, sealed: Array(repeating: 7, count: ExtendedMessage.maxTextBytes + 16))),
        pair(.chatAck(from: id("bob"), to: id("alice"), messageID: 99), tagX),
        session(.claimLookup(id: id("alice"), query: 8, peer: id("bob")), 8, tagX),
        session(.deposit(id: id("alice"), query: 9, to: id("bob"), sealed: Array(repeating: 5, count: ExtendedMessage.maxMailBytes)), 9, tagX),
        session(.deposit(id: id("alice"), query: 0, to: id("한국어"), sealed: []), 10, tagX),
        session(.mailAck(id: id("bob"), serial: .max), 11, tagX),
        plain(.claimResult(query: 8, peer: id("bob"), keys: fullPeer.keys, claimedSince: 1_764_900_000)),
        plain(.claimResult(query: 8, peer: id("nobody"), keys: nil, claimedSince: 0)),
        plain(.depositResult(query: 9, to: id("bob"), outcome: .queued(serial: 1, keptSeconds: 604_800))),
        plain(.depositResult(query: 9, to: id("bob"), outcome: .unknownRecipient)),
        plain(.depositResult(query: 9, to: id("bob"), outcome: .recipientOnline)),
        plain(.depositResult(query: 9, to: id("bob"), outcome: .refused(.rateLimited))),
        plain(.depositResult(query: .max, to: id("bob"), outcome: .refused(.noMailbox))),
        plain(.mail(serial: 3, from: id("alice"), queuedAt: 1_764_900_000, sealed: Array(repeating: 1, count: ExtendedMessage.maxMailBytes))),
        plain(.mailDelivered(to: id("bob"), serial: 3)),
        session(.releaseClaim(id: id("alice")), 12, tagX),
        session(.rotateKey(id: id("alice"), newKeys: keysB, signature: Array(repeating: 0x5A, count: 64)), 13, tagX),
        plain(.claimChanged(id: id("alice"), keys: keysA)),
        plain(.claimChanged(id: id("alice"), keys: nil)),
        session(.pathReport(id: id("alice"), peer: id("bob"), outcome: .direct), 14, tagX),
        session(.pathReport(id: id("alice"), peer: id("한국어"), outcome: .private), 15, tagX),
        session(.pathReport(id: id("alice"), peer: id("bob"), outcome: .relayed), .max, tagX),
    ]

    @Test("encode then decode gives the same datagram", arguments: messages)
    func roundTrip(_ datagram: ExtendedDatagram) throws {
        let bytes = datagram.encode()
        #expect(bytes.count <= ExtendedMessage.maxDatagramLength)
        #expect(Array(bytes.prefix(2)) == [0xFE, 0x01])
        #expect(ExtendedMessage.looksExtended(bytes))
        #expect(try ExtendedDatagram.decode(bytes) == datagram)
        #expect(try ExtendedMessage.decode(bytes) == datagram.message)
        // Decoding a slice with a non-zero start index works the same.
        let padded = [0x00, 0x00] + bytes
        #expect(try ExtendedDatagram.decode(padded[2...]) == datagram)
        // The trailer is the one the message's kind calls for, and it is last.
        #expect(bytes.count - datagram.message.encode().count == datagram.message.authentication.trailerLength)
    }

    @Test("every case is covered by the round-trip list")
    func everyCaseCovered() {
        let kinds = Set(Self.messages.map { $0.encode()[2] })
        // 0x44 and 0x45 (the per-peer notices the roster delta replaced) are retired.
        let all: Set<UInt8> = Set((0x01...0x0E) as ClosedRange<UInt8>).union([0x41, 0x42, 0x43]).union(0x46...0x51).union(0x81...0x84)
        #expect(kinds == all)
    }

    @Test func typeBytes() {
        let expected: [(ExtendedMessage, UInt8)] = [
            (.exit(id: id("a")), 0x03),
            (.challenge(cookie: .zero), 0x41),
            (.unknownSession(id("a")), 0x49),
            (.ping(from: id("a"), to: id("b"), transaction: 0), 0x81),
            (.chatAck(from: id("a"), to: id("b"), messageID: 0), 0x84),
        ]
        for (message, type) in expected { #expect(message.encode()[2] == type, "\(message)") }
    }

    @Test func exactLayoutOfAKeepAlive() {
        let bytes = session(.keepAlive(id: id("ab"), natKind: .endpointIndependent), 0x0102, tagX).encode()
        #expect(bytes == [0xFE, 0x01, 0x02, 2, 0x61, 0x62, 0x02,
                          0, 0, 0, 0, 0, 0, 0x01, 0x02,
                          1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16])
    }

    /// A port mapping rides on the NAT kind byte: its top bit set, the endpoint follows.
    @Test func exactLayoutOfAKeepAliveWithAPortMapping() {
        let bytes = session(.keepAlive(id: id("ab"), natKind: .endpointDependent, mappedEndpoint: ep("203.0.113.5:10081")), 0x0102, tagX)
            .encode()
        #expect(bytes == [0xFE, 0x01, 0x02, 2, 0x61, 0x62, 0x83, 203, 0, 113, 5, 0x27, 0x61,
                          0, 0, 0, 0, 0, 0, 0x01, 0x02] + Array(1...16))
        let frame = bytes.withUnsafeBytes { raw in ExtendedMessage.KeepAliveFrame(raw).map { ($0.natKind, $0.mappedEndpoint) } }
        #expect(frame?.0 == .endpointDependent)
        #expect(frame?.1 == ep("203.0.113.5:10081"))
        // The flag without the endpoint, an unspecified endpoint, and an unknown kind are refused.
        var cut = bytes
        cut.removeSubrange(7..<13)
        #expect(extendedError(cut) != nil)
        var unspecified = bytes
        for index in 7..<13 { unspecified[index] = 0 }
        #expect(extendedError(unspecified) == .malformed("mapped endpoint unspecified"))
        var unknownKind = bytes
        unknownKind[6] = 0x85
        #expect(extendedError(unknownKind) == .malformed("unknown NAT kind"))
    }

    /// A path report: kind 0x0E, the two IDs, the outcome byte, then the session trailer.
    @Test func exactLayoutOfAPathReport() {
        let bytes = session(.pathReport(id: id("ab"), peer: id("c"), outcome: .private), 0x0102, tagX).encode()
        #expect(bytes == [0xFE, 0x01, 0x0E, 2, 0x61, 0x62, 1, 0x63, 0x02,
                          0, 0, 0, 0, 0, 0, 0x01, 0x02] + Array(1...16))
        #expect(ExtendedMessage.pathReport(id: id("ab"), peer: id("c"), outcome: .direct).authentication == .session)
    }

    /// An outcome byte other than 1 to 5 is refused, as is a report cut short.
    @Test func malformedPathReportsAreRefused() {
        let good = session(.pathReport(id: id("ab"), peer: id("c"), outcome: .relayed), 1, tagX).encode()
        for outcome: UInt8 in [0, 6, 0xFF] {
            var bad = good
            bad[8] = outcome
            #expect(extendedError(bad) == .malformed("unknown path outcome"), "outcome \(outcome)")
        }
        #expect(extendedError(Array(good.prefix(8))) != nil)
        #expect(extendedError(Array(good.prefix(9))) != nil)
    }

    /// The nonce follows the alternate port; the echoed cookie goes last.
    @Test func exactLayoutOfRegistered() {
        let bytes = ExtendedMessage.registered(serverKey: Array(repeating: 0x11, count: 32), publicEndpoint: ep("1.2.3.4:258"),
                                               keepAliveMillis: 0x0A0B_0C0D, alternatePort: 0x2762, nonce: tagX, cookie: cookieX).encode()
        let cookieBytes = ExtendedMessage.challenge(cookie: cookieX).encode().suffix(16)
        #expect(bytes == [0xFE, 0x01, 0x42] + Array(repeating: 0x11, count: 32)
                + [1, 2, 3, 4, 1, 2, 0x0A, 0x0B, 0x0C, 0x0D, 0x27, 0x62] + Array(1...16) + cookieBytes)
        // Without a nonce and a cookie the fields are there, all zero.
        let bare = ExtendedMessage.registered(serverKey: Array(repeating: 0x11, count: 32), publicEndpoint: ep("1.2.3.4:258"),
                                              keepAliveMillis: 0x0A0B_0C0D, alternatePort: 0x2762)
        #expect(bare == .registered(serverKey: Array(repeating: 0x11, count: 32), publicEndpoint: ep("1.2.3.4:258"),
                                    keepAliveMillis: 0x0A0B_0C0D, alternatePort: 0x2762, nonce: .zero, cookie: .zero))
        #expect(bare.encode() == Array(bytes.dropLast(32)) + Array(repeating: 0, count: 32))
        // The old layouts (no cookie; no nonce) are refused.
        #expect(extendedError(Array(bytes.dropLast(16))) == .malformed("truncated token"))
        #expect(extendedError(Array(bytes.dropLast(32))) == .malformed("truncated token"))
    }

    /// The echoed tag follows the ID.
    @Test func exactLayoutOfUnknownSession() {
        #expect(ExtendedMessage.unknownSession(id("ab"), echo: tagX).encode() == [0xFE, 0x01, 0x49, 2, 0x61, 0x62] + Array(1...16))
        #expect(ExtendedMessage.unknownSession(id("ab")) == .unknownSession(id("ab"), echo: .zero))
        #expect(ExtendedMessage.unknownSession(id("ab")).encode() == [0xFE, 0x01, 0x49, 2, 0x61, 0x62] + Array(repeating: 0, count: 16))
        // The old layout (the ID alone) is refused.
        #expect(extendedError([0xFE, 0x01, 0x49, 2, 0x61, 0x62]) == .malformed("truncated token"))
    }

    @Test func exactLayoutOfARosterDelta() {
        let info = PeerInfo(id: id("b"), publicEndpoint: ep("1.2.3.4:258"), privateEndpoints: [ep("10.0.0.6:10081")],
                            natKind: .none, dialect: .classic, keys: nil)
        let delta = RosterDelta(epoch: 1, sequence: 2, version: 3, registered: 4, scope: .interest, synced: true, records: [
            .present(RosterEntry(info: info, order: 6, version: 7)),
            .absent(id("c"), version: 5, reason: .offline, publicEndpoint: ep("1.2.3.4:258")),
        ])
        let header: [UInt8] = [0xFE, 0x01, 0x4A, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 4, 1, 1, 2]
        let present: [UInt8] = [1, 1, 0x62, 1, 2, 3, 4, 1, 2, 1, 10, 0, 0, 6, 0x27, 0x61, 1, 0, 0,
                                0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 7]
        let absent: [UInt8] = [0, 1, 0x63, 0, 0, 0, 0, 0, 0, 0, 5, 2, 1, 2, 3, 4, 1, 2]
        #expect(ExtendedMessage.roster(delta).encode() == header + present + absent)
    }

    @Test func encoderKeepsAtMostFourPrivateEndpoints() throws {
        let five = (1...5).map { Endpoint(address: IPv4Address(10, 0, 0, UInt8($0)), port: 10081) }
        let message = signed(.register(id: id("a"), cookie: .zero, privateEndpoints: five, natKind: .unknown,
                                               keys: keysA), signature)
        guard case .register(_, _, let decoded, _, _, _) = try ExtendedMessage.decode(message.encode()) else {
            Issue.record("not a register"); return
        }
        #expect(decoded == Array(five.prefix(4)))
    }

    /// The encoder cuts refused text to maxTextBytes; a cut in the middle of a multi-byte
    /// character must not make its own output undecodable.
    @Test func longRefusedTextIsCutToDecodableText() throws {
        let text = String(repeating: "a", count: ExtendedMessage.maxTextBytes - 1) + "é"
        #expect(text.utf8.count == ExtendedMessage.maxTextBytes + 1)
        let bytes = ExtendedMessage.refused(text: text).encode()
        #expect(extendedError(bytes) == nil, "encoder output fails to decode: \(String(describing: extendedError(bytes)))")
        if case .refused(let decoded)? = try? ExtendedMessage.decode(bytes) {
            #expect(text.hasPrefix(decoded))
            #expect(decoded.utf8.count <= ExtendedMessage.maxTextBytes)
        }
    }
}

@Suite("ExtendedMessage rejections")
struct ExtendedRejectionTests {
    static let samples: [ExtendedDatagram] = [
        signed(.register(id: id("alice"), cookie: cookieX, privateEndpoints: [ep("10.0.0.5:10081"), ep("10.0.0.9:1")],
                  natKind: .endpointIndependent, keys: keysA), signature),
        session(.keepAlive(id: id("alice"), natKind: .none), 5, tagX),
        session(.relay(id: id("alice"), to: id("bob"), payload: [1, 2, 3, 4]), 9, tagX),
        plain(.registered(serverKey: Array(repeating: 0x11, count: 32), publicEndpoint: ep("203.0.113.7:40001"),
                    keepAliveMillis: 10_000, alternatePort: 10_082, nonce: cookieX)),
        plain(.refused(text: "no")),
        plain(.roster(RosterDelta(epoch: 7, sequence: 1, version: 42, registered: 3, scope: .complete, synced: true, records: [
            .present(RosterEntry(info: fullPeer, order: 0, version: 40)),
            .absent(id("bob"), version: 42, reason: .offline, publicEndpoint: ep("203.0.113.7:40002")),
        ]))),
        session(.rosterAck(id: id("alice"), largest: 9, received: 1), 4, tagX),
        session(.lookup(id: id("alice"), query: 3, peer: id("bob")), 5, tagX),
        plain(.lookupResult(query: 3, epoch: 7, version: 99, peer: id("bob"), found: RosterEntry(info: fullPeer, order: 2, version: 98))),
        session(.listQuery(id: id("alice"), query: 5, prefix: "bo", offset: 1, limit: 2), 7, tagX),
        plain(.listPage(query: 4, total: 10, offset: 5, entries: [
            ListEntry(id: id("bob"), publicEndpoint: ep("203.0.113.7:40002"), natKind: .endpointDependent, dialect: .extended),
        ])),
        plain(.punch(peer: fullPeer, round: 2, delayMillis: 800)),
        plain(.relayed(from: id("alice"), payload: [9, 9])),
        plain(.unknownSession(id("alice"), echo: tagX)),
        pair(.pong(from: id("bob"), to: id("alice"), transaction: 1, observed: ep("203.0.113.7:40001")), tagX),
        plain(.chat(from: id("alice"), to: id("bob"), messageID: 99, sealed: Array(repeating: 7, count: 20))),
        pair(.chatAck(from: id("bob"), to: id("alice"), messageID: 99), tagX),
    ]

    @Test("every strict prefix is refused with a WireError", arguments: samples)
    func everyPrefixIsRefused(_ datagram: ExtendedDatagram) {
        let bytes = datagram.encode()
        #expect(extendedError([]) == .empty)
        for length in 1..<bytes.count {
            let error = extendedError(Array(bytes.prefix(length)))
            guard case .malformed? = error else {
                Issue.record("prefix of \(length)/\(bytes.count) bytes: \(String(describing: error))")
                continue
            }
        }
    }

    @Test("a trailing byte is refused", arguments: samples)
    func trailingByte(_ datagram: ExtendedDatagram) {
        #expect(extendedError(datagram.encode() + [0]) == .malformed("1 trailing bytes"))
        #expect(extendedError(datagram.encode() + [0xFE, 0x01]) == .malformed("2 trailing bytes"))
    }

    @Test func wrongMagicVersionOrType() {
        var bytes = ExtendedMessage.challenge(cookie: cookieX).encode()
        bytes[0] = 0xFF
        #expect(extendedError(bytes) == .malformed("not an extended datagram"))
        bytes[0] = 0xFE
        for version: UInt8 in [0, 2, 0xFF] {
            bytes[1] = version
            #expect(extendedError(bytes) == .malformed("unsupported version"))
        }
        bytes[1] = 0x01
        for type: UInt8 in [0x00, 0x0F, 0x40, 0x44, 0x45, 0x52, 0x80, 0x85, 0xFF] {
            bytes[2] = type
            #expect(extendedError(bytes) == .malformed("unknown message type"), "type \(type)")
        }
        // Classic text never decodes as extended.
        #expect(extendedError(Array("alice 10.0.0.5".utf8)) == .malformed("not an extended datagram"))
    }

    @Test func tooLongAndEmpty() {
        #expect(extendedError([]) == .empty)
        let long: [UInt8] = [0xFE, 0x01, 0x47] + Array(repeating: 0, count: ExtendedMessage.maxDatagramLength - 2)
        #expect(extendedError(long) == .datagramTooLong(length: 1501, limit: 1500))
    }

    @Test func tooManyEndpoints() {
        // register: magic, version, type, ID "a" (2 bytes), cookie (16), endpoint count.
        var bytes = signed(.register(id: id("a"), cookie: cookieX, privateEndpoints: [], natKind: .unknown,
                                             keys: keysA), signature).encode()
        let countOffset = 3 + 2 + 16
        #expect(bytes[countOffset] == 0)
        bytes[countOffset] = 5
        bytes.insert(contentsOf: Array(repeating: 1, count: 5 * 6), at: countOffset + 1)
        #expect(extendedError(bytes) == .malformed("too many endpoints"))
        bytes[countOffset] = 255
        #expect(extendedError(bytes) == .malformed("too many endpoints"))

        // The same limit inside a punch instruction's peer.
        var peer = ExtendedMessage.punch(peer: classicPeer, round: 1, delayMillis: 0).encode()
        let peerCount = 3 + 1 + 5 + 6
        #expect(peer[peerCount] == 0)
        peer[peerCount] = 5
        peer.insert(contentsOf: Array(repeating: 1, count: 5 * 6), at: peerCount + 1)
        #expect(extendedError(peer) == .malformed("too many endpoints"))
    }

    @Test func badNATKindDialectAndKeyFlag() {
        var keepAlive = session(.keepAlive(id: id("a"), natKind: .none), 1, tagX).encode()
        keepAlive[5] = 5
        #expect(extendedError(keepAlive) == .malformed("unknown NAT kind"))
        keepAlive[5] = 0xFF
        #expect(extendedError(keepAlive) == .malformed("unknown NAT kind"))

        // punch(classicPeer): 3 header, ID "carol" (6), endpoint (6), count 0 (1), NAT kind, dialect, key flag, round, delay.
        let peer = ExtendedMessage.punch(peer: classicPeer, round: 1, delayMillis: 0).encode()
        let natOffset = 3 + 6 + 6 + 1
        #expect(Array(peer[natOffset..<natOffset + 3]) == [0, 0, 0])
        var bad = peer
        bad[natOffset] = 9
        #expect(extendedError(bad) == .malformed("unknown NAT kind"))
        bad = peer
        bad[natOffset + 1] = 2
        #expect(extendedError(bad) == .malformed("unknown dialect"))
        bad = peer
        bad[natOffset + 2] = 3
        #expect(extendedError(bad) == .malformed("bad key flag"))
        // Flag 1 without the 64 key bytes is truncated.
        bad = peer
        bad[natOffset + 2] = 1
        #expect(extendedError(bad) == .malformed("truncated signing key"))

        // A roster delta's absent record: 26 bytes of header, then kind, ID "b" (2), version (8), reason.
        var left = ExtendedMessage.roster(RosterDelta(epoch: 1, sequence: 1, version: 1, registered: 0, scope: .complete, synced: false,
                                                      records: [.absent(id("b"), version: 1, reason: .offline,
                                                                        publicEndpoint: ep("1.2.3.4:5"))])).encode()
        left[26 + 1 + 2 + 8] = 3
        #expect(extendedError(left) == .malformed("unknown leave reason"))
        left[26 + 1 + 2 + 8] = 2
        left[26] = 2
        #expect(extendedError(left) == .malformed("unknown roster record kind"))
        left[26] = 0
        left[23] = 2
        #expect(extendedError(left) == .malformed("unknown roster scope"))
    }

    @Test func oversizedPayloadAndText() {
        let relay = session(.relay(id: id("a"), to: id("b"), payload: Array(repeating: 1, count: ExtendedMessage.maxRelayPayload + 1)), 1, tagX).encode()
        #expect(relay.count <= ExtendedMessage.maxDatagramLength)
        #expect(extendedError(relay) == .malformed("relay payload too long"))

        let relayed = ExtendedMessage.relayed(from: id("a"), payload: Array(repeating: 1, count: ExtendedMessage.maxRelayPayload + 1)).encode()
        #expect(extendedError(relayed) == .malformed("relay payload too long"))

        let chat = ExtendedMessage.chat(from: id("a"), to: id("b"), messageID: 1,
                                        sealed: Array(repeating: 1, count: ExtendedMessage.maxTextBytes + 17)).encode()
        #expect(extendedError(chat) == .malformed("chat too long"))

        // The refused encoder cuts its text, so build an oversized one by hand.
        var writer = WireWriter()
        writer.u8(0xFE); writer.u8(1); writer.u8(0x43)
        writer.longBytes(Array(repeating: UInt8(ascii: "x"), count: ExtendedMessage.maxTextBytes + 1))
        #expect(extendedError(writer.bytes) == .malformed("text too long"))
    }

    @Test func invalidUTF8AndControlCharacters() {
        func refused(_ raw: [UInt8]) -> [UInt8] {
            var writer = WireWriter()
            writer.u8(0xFE); writer.u8(1); writer.u8(0x43)
            writer.longBytes(raw)
            return writer.bytes
        }
        #expect(extendedError(refused([0x61, 0xFF, 0x62])) == .invalidUTF8)
        #expect(extendedError(refused([0xC3])) == .invalidUTF8)            // cut multi-byte character
        #expect(extendedError(refused([0xED, 0xA0, 0x80])) == .invalidUTF8) // a surrogate
        #expect(extendedError(refused(Array("clear\u{1B}[2J".utf8))) == .controlCharacterInText)
        #expect(extendedError(refused(Array("over\rwrite".utf8))) == .controlCharacterInText)
        #expect(extendedError(refused(Array("line\nbreak".utf8))) == .controlCharacterInText)
        #expect(extendedError(refused(Array("c1 \u{9B} csi".utf8))) == .controlCharacterInText)
        #expect(extendedError(refused(Array("tab\tok".utf8))) == nil)

        // Client IDs are checked too.
        var unknown = ExtendedMessage.unknownSession(id("ab")).encode()
        unknown[4] = 0xFF
        #expect(extendedError(unknown) == .invalidUTF8)
        unknown[4] = UInt8(ascii: " ")
        #expect(extendedError(unknown) == .invalidClientID(.forbiddenCharacter(" ")))
        #expect(extendedError([0xFE, 0x01, 0x49, 0x00]) == .invalidClientID(.empty))
        #expect(extendedError([0xFE, 0x01, 0x49, 33] + Array(repeating: UInt8(ascii: "a"), count: 33)) == .invalidClientID(.tooLong(33)))
    }
}

@Suite("ExtendedMessage trailers and dialect detection")
struct ExtendedTrailerTests {
    @Test func trailerLengths() {
        let tagged: [ExtendedDatagram] = [
            session(.keepAlive(id: id("a"), natKind: .none), 1, tagX),
            session(.exit(id: id("a")), 1, tagX),
            session(.connect(id: id("a"), peer: id("b")), 1, tagX),
            session(.relay(id: id("a"), to: id("b"), payload: [1]), 1, tagX),
            pair(.ping(from: id("a"), to: id("b"), transaction: 1), tagX),
            pair(.pong(from: id("a"), to: id("b"), transaction: 1, observed: ep("1.2.3.4:5")), tagX),
            pair(.chatAck(from: id("a"), to: id("b"), messageID: 1), tagX),
        ]
        for datagram in tagged {
            let bytes = datagram.encode()
            #expect(ExtendedMessage.trailerLength(ofEncoded: bytes) == 16, "\(datagram)")
            // The tag really is the last 16 bytes.
            #expect(Array(bytes.suffix(16)) == Array(1...16), "\(datagram)")
        }
        let register = signed(.register(id: id("a"), cookie: cookieX, privateEndpoints: [], natKind: .none,
                                                keys: keysA), signature).encode()
        #expect(ExtendedMessage.trailerLength(ofEncoded: register) == 64)
        #expect(Array(register.suffix(64)) == signature)

        let untagged: [ExtendedMessage] = [
            .challenge(cookie: cookieX),
            .registered(serverKey: Array(repeating: 1, count: 32), publicEndpoint: ep("1.2.3.4:5"), keepAliveMillis: 1, alternatePort: 0),
            .refused(text: "x"),
            .roster(RosterDelta(epoch: 1, sequence: 1, version: 1, registered: 1, scope: .complete, synced: true, records: [])),
            .lookupResult(query: 1, epoch: 1, version: 1, peer: id("b"), found: nil),
            .listPage(query: 1, total: 0, offset: 0, entries: []),
            .punch(peer: fullPeer, round: 1, delayMillis: 0), .relayed(from: id("a"), payload: [1]),
            .keepAliveAck(publicEndpoint: ep("1.2.3.4:5")), .unknownSession(id("a"), echo: tagX),
            .chat(from: id("a"), to: id("b"), messageID: 1, sealed: Array(repeating: 0, count: 16)),
        ]
        for message in untagged {
            #expect(ExtendedMessage.trailerLength(ofEncoded: message.encode()) == nil, "\(message)")
        }
        #expect(ExtendedMessage.trailerLength(ofEncoded: [UInt8]()) == nil)
        #expect(ExtendedMessage.trailerLength(ofEncoded: [0xFE, 0x01]) == nil)
        #expect(ExtendedMessage.trailerLength(ofEncoded: [0xFE, 0x01, 0x00]) == nil)
        #expect(ExtendedMessage.trailerLength(ofEncoded: [0xFE, 0x01, 0x7F]) == nil)
        // Works on slices whose indices do not start at zero.
        let slice = ([0x00, 0x00, 0x00] + register)[3...]
        #expect(ExtendedMessage.trailerLength(ofEncoded: slice) == 64)
    }

    @Test func looksExtendedVersusClassicAndSTUN() {
        #expect(ExtendedMessage.looksExtended(ExtendedMessage.challenge(cookie: .zero).encode()))
        #expect(ExtendedMessage.looksExtended([0xFE]))
        #expect(!ExtendedMessage.looksExtended([UInt8]()))
        for classic: ClassicMessage in [.register(id("alice"), privateAddress: ip("10.0.0.5"), offers: [ExtendedMessage.offer]),
                                        .keepAlive(id("alice")), .chat(from: id("é"), text: "hi"), .serverNotice("x")] {
            #expect(!ExtendedMessage.looksExtended(classic.encode()), "\(classic)")
        }
        // A STUN Binding request starts with 0x00 0x01 and carries the magic cookie.
        let stun: [UInt8] = [0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42] + Array(repeating: 7, count: 12)
        #expect(!ExtendedMessage.looksExtended(stun))
        #expect(extendedError(stun) == .malformed("not an extended datagram"))
        // 0xFE is never valid UTF-8, so classic decoding refuses every extended datagram.
        #expect(wireError { () throws(WireError) in try ClassicMessage.decode(ExtendedMessage.unknownSession(id("a")).encode()) } == .invalidUTF8)
        #expect(ExtendedMessage.offer == "natchat/2")
        #expect(ClientID.violation(in: ExtendedMessage.offer) == nil)
    }

    @Test func tokenBasics() {
        #expect(Token128.zero.constantTimeEquals(Token128(high: 0, low: 0)))
        #expect(!tagX.constantTimeEquals(Token128(high: tagX.high, low: tagX.low ^ 1)))
        #expect(!tagX.constantTimeEquals(Token128(high: tagX.high ^ (1 << 63), low: tagX.low)))
        #expect(tagX.description == "token:0102…")
        #expect(Token128(high: 0xABC, low: 0).description == "token:0000…")
    }
}
