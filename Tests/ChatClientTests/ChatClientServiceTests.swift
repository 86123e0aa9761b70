import Addressing
import Testing
import ChatClient
import Identity
import Logging
import MonotonicTime
import NIOCore
import Roster
import Synchronization
import Transport
import Wire

private func id(_ text: String) -> ClientID { try! ClientID(text) }
private func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }
private func at(_ seconds: Int64) -> Instant { Instant.zero + .seconds(seconds) }

private let S = ep("198.51.100.1:10080")
private let A = ep("203.0.113.7:40001"), B = ep("203.0.113.7:40002"), C = ep("198.51.100.9:50000")
private let stranger = ep("192.0.2.66:6666")

/// Collects what the service tells the user, from any thread.
private final class Recorder: Sendable {
    private let state = Mutex<(lines: [String], refusals: [String])>(([], []))
    var lines: [String] { state.withLock { $0.lines } }
    var refusals: [String] { state.withLock { $0.refusals } }
    func display(_ line: String) { state.withLock { $0.lines.append(line) } }
    func refused(_ text: String) { state.withLock { $0.refusals.append(text) } }
    func takeLines() -> [String] { state.withLock { s in defer { s.lines.removeAll() }; return s.lines } }
}

private struct Client {
    let recorder = Recorder()
    let service: ChatClientService

    /// A client speaking the seed's protocol only (`offerExtended: false`) unless told otherwise.
    init(keepAlive: Duration = .seconds(10), retry: Duration = .seconds(1), peerPrivatePort: UInt16 = 10081,
         offerExtended: Bool = false, listPageSize: Int = 50) {
        let recorder = self.recorder
        let configuration = ChatClientService.Configuration(
            id: id("alice"), server: S, privateAddress: IPv4Address(10, 0, 0, 5),
            keepAliveInterval: keepAlive, peerPrivatePort: peerPrivatePort, registrationRetry: retry,
            offerExtended: offerExtended, listPageSize: listPageSize)
        service = ChatClientService(
            configuration: configuration,
            sinks: .init(display: { recorder.display($0) }, registrationRefused: { recorder.refused($0) }),
            logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
    }

    func start(at now: Instant) -> [(Endpoint, String)] {
        var output = DatagramOutput()
        service.start(now: now, output: &output)
        return sent(output)
    }

    @discardableResult
    func receive(_ text: String, from source: Endpoint = S, at now: Instant) -> [(Endpoint, String)] {
        receive(Array(text.utf8), from: source, at: now)
    }

    @discardableResult
    func receive(_ bytes: [UInt8], from source: Endpoint = S, at now: Instant) -> [(Endpoint, String)] {
        var output = DatagramOutput()
        service.receive(ByteBuffer(bytes: bytes), from: source, now: now, output: &output)
        return sent(output)
    }

    func timeout(at now: Instant) -> [(Endpoint, String)] {
        var output = DatagramOutput()
        service.timeout(now: now, output: &output)
        return sent(output)
    }

    func handle(_ command: Command, at now: Instant) -> (keepGoing: Bool, sent: [(Endpoint, String)]) {
        var output = DatagramOutput()
        let keepGoing = service.handle(command, now: now, output: &output)
        return (keepGoing, sent(output))
    }

    func leave(at now: Instant) -> [(Endpoint, String)] {
        var output = DatagramOutput()
        service.leave(now: now, output: &output)
        return sent(output)
    }

    /// The datagrams in `output`, each checked to decode as a classic message.
    private func sent(_ output: DatagramOutput) -> [(Endpoint, String)] {
        output.pending.map { item in
            let bytes = Array(item.payload.readableBytesView)
            #expect((try? ClassicMessage.decode(bytes)) != nil, "sent an undecodable datagram")
            return (item.destination, String(decoding: bytes, as: UTF8.self))
        }
    }

    /// Starts at t=0 and lets the server list bob (same NAT), carol, then alice.
    static func registered() -> Client {
        let client = Client()
        _ = client.start(at: at(0))
        client.receive("bob 203.0.113.7:40002", at: at(0))
        client.receive("bob@private:10.0.0.6", at: at(0))
        client.receive("carol 198.51.100.9:50000", at: at(0))
        client.receive("alice 203.0.113.7:40001", at: at(0))
        client.receive("alice@private:10.0.0.5", at: at(0))
        return client
    }
}

/// What Tab offers for `prefix` when the answer comes at once (from the roster held).
private func completions(_ service: ChatClientService, _ prefix: String, at now: Instant = at(5)) -> [String]? {
    let answer = Mutex<[String]?>(nil)
    var output = DatagramOutput()
    service.completePeerIDs(prefix: prefix, now: now, output: &output) { ids in answer.withLock { $0 = ids } }
    return answer.withLock { $0 }
}

/// A roster datagram from the server with `records` (versions from `version` up).
private func rosterDelta(_ sequence: UInt32, _ records: [RosterRecord], synced: Bool = false, scope: RosterScope = .complete,
                         registered: UInt32 = 0) -> ExtendedMessage {
    .roster(RosterDelta(epoch: 1, sequence: sequence, version: records.map(\.version).max() ?? 0, registered: registered,
                        scope: scope, synced: synced, records: records))
}

private let someKeys = IdentityKey().publicKeys

private func present(_ name: String, _ endpoint: Endpoint, version: UInt64, order: UInt64? = nil) -> RosterRecord {
    .present(RosterEntry(info: PeerInfo(id: id(name), publicEndpoint: endpoint, keys: someKeys), order: order ?? version,
                         version: version))
}

private func same(_ actual: [(Endpoint, String)], _ expected: [(Endpoint, String)]) -> Bool {
    actual.map(\.0) == expected.map(\.0) && actual.map(\.1) == expected.map(\.1)
}

private let registration = (S, "alice 10.0.0.5")
private let keepAlive = (S, "alice@keepalive")

@Suite("ChatClientService registration")
struct ChatClientRegistrationTests {
    @Test func startSendsTheRegistration() {
        let client = Client()
        #expect(client.service.nextDeadline() == nil)
        let sent = client.start(at: at(0))
        #expect(same(sent, [registration]), "\(sent)")
        #expect(client.service.nextDeadline() == at(1))
        #expect(client.recorder.lines == [])
    }

    @Test func registrationIsRetriedWithBackoff() {
        let client = Client()
        _ = client.start(at: at(0))
        var log: [(Int64, [(Endpoint, String)])] = []
        // wake exactly at every deadline the service asks for, up to t=40
        while let deadline = client.service.nextDeadline(), deadline <= at(40) {
            #expect(client.timeout(at: deadline - .nanoseconds(1)).isEmpty, "early wake at \(deadline) sent something")
            log.append((deadline.nanoseconds / 1_000_000_000, client.timeout(at: deadline)))
        }
        // retries after 1 s, then every 2 s (the cap: under loss a registration needs four
        // datagrams through); keep-alives run on their own 10 s schedule from start
        let retries: [Int64] = [1] + Array(stride(from: 3, through: 39, by: 2))
        let keepAlives: [Int64] = [10, 20, 30, 40]
        #expect(log.map(\.0) == (retries + keepAlives).sorted())
        let expected: [[(Endpoint, String)]] = (retries + keepAlives).sorted().map { keepAlives.contains($0) ? [keepAlive] : [registration] }
        #expect(log.count == expected.count)
        for (entry, want) in zip(log, expected) {
            #expect(same(entry.1, want), "at t=\(entry.0): \(entry.1)")
        }
    }

    @Test func ownLineStopsTheRetries() {
        let client = Client()
        _ = client.start(at: at(0))
        _ = client.timeout(at: at(1))
        #expect(client.receive("bob 203.0.113.7:40002", at: at(2)).isEmpty)
        #expect(client.receive("bob@private:10.0.0.6", at: at(2)).isEmpty)
        #expect(client.service.nextDeadline() == at(3)) // not registered yet: still retrying
        #expect(client.recorder.lines == [])
        #expect(client.receive("alice 203.0.113.7:40001", at: at(2)).isEmpty)
        #expect(client.recorder.lines == ["* registered as alice (public 203.0.113.7:40001); online: bob"])
        #expect(client.service.machine.classicRouter?.isRegistered == true)
        #expect(client.service.isRegistered)
        #expect(client.service.dialect == .classic)
        #expect(client.service.nextDeadline() == at(10)) // only the keep-alive is left
        #expect(client.timeout(at: at(3)).isEmpty)
        #expect(client.timeout(at: at(7)).isEmpty)
        #expect(same(client.timeout(at: at(10)), [keepAlive]))
    }

    @Test func offeringClientFallsBackToClassicWhenAClassicServerAnswers() {
        let client = Client(offerExtended: true)
        #expect(same(client.start(at: at(0)), [(S, "alice 10.0.0.5 natchat/2")]))
        #expect(same(client.timeout(at: at(1)), [(S, "alice 10.0.0.5 natchat/2")]))
        #expect(client.service.dialect == .negotiating)
        client.receive("bob 203.0.113.7:40002", at: at(2))
        client.receive("alice 203.0.113.7:40001", at: at(2))
        #expect(client.service.dialect == .classic)
        #expect(client.service.isRegistered)
        #expect(client.recorder.lines == ["* registered as alice (public 203.0.113.7:40001); online: bob"])
        #expect(client.service.nextDeadline() == at(10))
        #expect(client.timeout(at: at(3)).isEmpty)
        #expect(same(client.timeout(at: at(10)), [keepAlive]))
        #expect(same(client.handle(.chat(to: id("bob"), text: "hi"), at: at(11)).sent, [(B, "alice@chat hi")]))
        #expect(same(client.handle(.exit, at: at(12)).sent, [(S, "alice @exit")]))
    }

    @Test func registeredAloneSaysSo() {
        let client = Client()
        _ = client.start(at: at(0))
        client.receive("alice 203.0.113.7:40001", at: at(0))
        #expect(client.recorder.lines == ["* registered as alice (public 203.0.113.7:40001); no other clients online"])
    }

    @Test func completionFollowsTheClassicRoster() {
        let client = Client.registered()
        #expect(completions(client.service, "") == ["bob", "carol"])
        client.receive("aaron 192.0.2.1:1", at: at(1))
        client.receive("carol is off-line 198.51.100.9:50000", at: at(2))
        client.receive("aaron@private:10.0.0.9", at: at(3)) // no change to the ID list
        #expect(completions(client.service, "") == ["aaron", "bob"])
        #expect(completions(client.service, "b") == ["bob"])
        #expect(completions(client.service, "z") == [])
    }

    @Test func refusalStopsTheRetries() {
        let client = Client()
        _ = client.start(at: at(0))
        _ = client.timeout(at: at(1))
        let notice = "registration refused: ID alice - the ID is in use from another address"
        #expect(client.receive("server@chat " + notice, at: at(2)).isEmpty)
        #expect(client.recorder.lines == ["From server [\(notice)]"])
        #expect(client.recorder.refusals == [notice])
        #expect(client.service.nextDeadline() == nil)
        for second in [3, 7, 10, 15, 20, 100] as [Int64] {
            #expect(client.timeout(at: at(second)).isEmpty, "sent something at t=\(second) after the refusal")
        }
    }

    @Test func noticeFromAStrangerIsNotARefusal() {
        let client = Client()
        _ = client.start(at: at(0))
        client.receive("server@chat registration refused: go away", from: stranger, at: at(0))
        #expect(client.recorder.refusals == [])
        #expect(client.recorder.lines == [])
        #expect(client.service.nextDeadline() == at(1))
        #expect(same(client.timeout(at: at(1)), [registration]))
    }

    @Test func noticeAfterRegistrationIsOnlyShown() {
        let client = Client.registered()
        _ = client.recorder.takeLines()
        client.receive("server@chat maintenance at noon", at: at(5))
        #expect(client.recorder.lines == ["From server [maintenance at noon]"])
        #expect(client.recorder.refusals == [])
        #expect(client.service.nextDeadline() == at(10))
    }
}

@Suite("ChatClientService after registration")
struct ChatClientSessionTests {
    @Test func keepAliveEveryInterval() {
        let client = Client.registered()
        #expect(client.service.nextDeadline() == at(10))
        #expect(client.timeout(at: at(9)).isEmpty)
        #expect(same(client.timeout(at: at(10)), [keepAlive]))
        #expect(client.timeout(at: at(10)).isEmpty)
        #expect(client.service.nextDeadline() == at(20))
        #expect(client.timeout(at: at(15)).isEmpty)
        #expect(same(client.timeout(at: at(20)), [keepAlive]))
        #expect(same(client.timeout(at: at(30)), [keepAlive]))
        // slept through several intervals: one keep-alive, not a burst
        #expect(same(client.timeout(at: at(75)), [keepAlive]))
        #expect(client.service.nextDeadline() == at(85))
    }

    @Test func customKeepAliveInterval() {
        let client = Client(keepAlive: .seconds(3))
        _ = client.start(at: at(0))
        client.receive("alice 203.0.113.7:40001", at: at(0))
        #expect(client.service.nextDeadline() == at(3))
        #expect(same(client.timeout(at: at(3)), [keepAlive]))
        #expect(client.service.nextDeadline() == at(6))
    }

    @Test func chatToSameNATPeerGoesToItsPrivateAddress() {
        let client = Client.registered()
        let result = client.handle(.chat(to: id("bob"), text: "I love Network!!"), at: at(1))
        #expect(result.keepGoing)
        #expect(same(result.sent, [(ep("10.0.0.6:10081"), "alice@chat I love Network!!")]), "\(result.sent)")
    }

    @Test func chatToOtherPeerGoesToItsPublicEndpoint() {
        let client = Client.registered()
        let result = client.handle(.chat(to: id("carol"), text: "hi @ 10:30"), at: at(1))
        #expect(same(result.sent, [(C, "alice@chat hi @ 10:30")]), "\(result.sent)")
    }

    @Test func chatUsesTheConfiguredPrivatePort() {
        let client = Client(peerPrivatePort: 20000)
        _ = client.start(at: at(0))
        client.receive("bob 203.0.113.7:40002", at: at(0))
        client.receive("bob@private:10.0.0.6", at: at(0))
        client.receive("alice 203.0.113.7:40001", at: at(0))
        #expect(same(client.handle(.chat(to: id("bob"), text: "x"), at: at(1)).sent, [(ep("10.0.0.6:20000"), "alice@chat x")]))
    }

    @Test func chatToUnknownPeer() {
        let client = Client.registered()
        _ = client.recorder.takeLines()
        let result = client.handle(.chat(to: id("dave"), text: "hi"), at: at(1))
        #expect(result.keepGoing)
        #expect(result.sent.isEmpty)
        #expect(client.recorder.lines == ["There is no dave in registration list."])
    }

    @Test func incomingChatIsShown() {
        let client = Client.registered()
        _ = client.recorder.takeLines()
        #expect(client.receive("client2@chat I love Network!!", from: stranger, at: at(1)).isEmpty)
        #expect(client.recorder.lines == ["From client2 [I love Network!!]"])
    }

    @Test func rosterEventsAreShown() {
        let client = Client.registered()
        _ = client.recorder.takeLines()
        client.receive("dave 192.0.2.4:60000", at: at(1))
        client.receive("dave@private:10.0.0.9", at: at(1))
        client.receive("bob 203.0.113.7:41000", at: at(2))
        client.receive("alice 203.0.113.7:41001", at: at(2))
        client.receive("carol is off-line 198.51.100.9:50000", at: at(3))
        client.receive("dave is unregistered 192.0.2.4:60000", at: at(4))
        client.receive("eve 192.0.2.5:1", from: stranger, at: at(5)) // not from the server
        #expect(client.recorder.lines == [
            "* dave joined (192.0.2.4:60000)",
            "* dave is behind the same NAT (private 10.0.0.9)",
            "* bob moved to 203.0.113.7:41000",
            "* the server now sees you at 203.0.113.7:41001",
            "* carol is off-line 198.51.100.9:50000",
            "* dave is unregistered 192.0.2.4:60000",
        ])
    }

    @Test func showList() {
        let client = Client.registered()
        _ = client.recorder.takeLines()
        let result = client.handle(.showList(), at: at(1))
        #expect(result.keepGoing)
        #expect(result.sent.isEmpty)
        #expect(client.recorder.lines == [
            "bob 203.0.113.7:40002",
            "carol 198.51.100.9:50000",
            "alice 203.0.113.7:40001",
        ])
    }

    @Test func showListBeforeRegistration() {
        let client = Client()
        _ = client.start(at: at(0))
        #expect(client.handle(.showList(), at: at(0)).sent.isEmpty)
        #expect(client.recorder.lines == ["(no registered clients yet)"])
    }

    @Test func help() {
        let client = Client()
        #expect(client.handle(.help, at: at(0)).sent.isEmpty)
        #expect(client.recorder.lines == [Command.helpText])
    }

    @Test func malformedDatagramsAreCountedAndDropped() {
        let client = Client.registered()
        _ = client.recorder.takeLines()
        client.receive("garbage", at: at(1))
        client.receive([0xFF, 0x00], from: stranger, at: at(1))
        client.receive("bob@chat \u{1B}[2J", from: stranger, at: at(1))
        #expect(client.service.malformedCount == 3)
        #expect(client.recorder.lines == [])
    }
}

@Suite("ChatClientService exit")
struct ChatClientExitTests {
    @Test func exitSendsUnregisterOnce() {
        let client = Client.registered()
        let result = client.handle(.exit, at: at(5))
        #expect(result.keepGoing == false)
        #expect(same(result.sent, [(S, "alice @exit")]), "\(result.sent)")
        #expect(client.leave(at: at(6)).isEmpty)
        #expect(client.handle(.exit, at: at(7)).sent.isEmpty)
        #expect(client.service.nextDeadline() == nil)
        #expect(client.timeout(at: at(10)).isEmpty)
        #expect(client.timeout(at: at(100)).isEmpty)
    }

    @Test func datagramsAfterExitAreIgnored() {
        let client = Client.registered()
        _ = client.leave(at: at(5))
        _ = client.recorder.takeLines()
        client.receive("bob@chat still there?", from: B, at: at(6))
        client.receive("dave 192.0.2.4:60000", at: at(6))
        #expect(client.recorder.lines == [])
        #expect(client.service.machine.classicRouter?.peer(id("dave")) == nil)
    }

    @Test func exitBeforeRegistrationStopsTheRetries() {
        let client = Client()
        _ = client.start(at: at(0))
        #expect(same(client.leave(at: at(0)), [(S, "alice @exit")]))
        #expect(client.service.nextDeadline() == nil)
        #expect(client.timeout(at: at(1)).isEmpty)
    }
}

// MARK: - Extended dialect (natchat/2)

/// A client that offers the extended dialect, with a known identity, talking to a test
/// stand-in for the server (`serverKey` plays the server's X25519 key).
private struct ExtendedClient {
    let recorder = Recorder()
    let service: ChatClientService
    let identity = IdentityKey()
    let serverKey = IdentityKey()
    static let alice = id("alice")

    init(listPageSize: Int = 50) {
        let recorder = self.recorder
        let configuration = ChatClientService.Configuration(id: Self.alice, server: S, privateAddress: IPv4Address(10, 0, 0, 5),
                                                            identity: identity, offerExtended: true, listPageSize: listPageSize)
        service = ChatClientService(
            configuration: configuration,
            sinks: .init(display: { recorder.display($0) }, registrationRefused: { recorder.refused($0) }),
            logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
    }

    /// The session key the server derives for `cookie` and `nonce`.
    func sessionKey(cookie: Token128, nonce: Token128) -> KeyBytes {
        SessionCrypto.sessionKey(privateKey: serverKey.agreement, peerPublicKey: identity.publicKeys.agreement, cookie: cookie,
                                 nonce: nonce, id: Self.alice)!
    }

    /// The server's answer to the registration that echoed `cookie`.
    func registered(nonce: Token128, cookie: Token128) -> ExtendedMessage {
        .registered(serverKey: serverKey.publicKeys.agreement, publicEndpoint: A, keepAliveMillis: 10_000, alternatePort: 0,
                    nonce: nonce, cookie: cookie)
    }

    func start(at now: Instant) -> [(Endpoint, [UInt8])] {
        var output = DatagramOutput()
        service.start(now: now, output: &output)
        return Self.raw(output)
    }

    @discardableResult
    func receive(_ message: ExtendedMessage, from source: Endpoint = S, at now: Instant) -> [(Endpoint, [UInt8])] {
        var output = DatagramOutput()
        service.receive(ByteBuffer(bytes: message.encode()), from: source, now: now, output: &output)
        return Self.raw(output)
    }

    func timeout(at now: Instant) -> [(Endpoint, [UInt8])] {
        var output = DatagramOutput()
        service.timeout(now: now, output: &output)
        return Self.raw(output)
    }

    static func raw(_ output: DatagramOutput) -> [(Endpoint, [UInt8])] {
        output.pending.map { ($0.destination, Array($0.payload.readableBytesView)) }
    }

    /// The extended datagrams among `sent` (STUN probes left out), decoded, with their bytes.
    static func extended(_ sent: [(Endpoint, [UInt8])]) -> [(Endpoint, ExtendedMessage, [UInt8])] {
        sent.compactMap { destination, bytes in
            guard ExtendedMessage.looksExtended(bytes), let message = try? ExtendedMessage.decode(bytes) else { return nil }
            return (destination, message, bytes)
        }
    }

    /// The keep-alives among `sent`: their counter and bytes.
    static func keepAlives(_ sent: [(Endpoint, [UInt8])]) -> [(counter: UInt64, bytes: [UInt8])] {
        extended(sent).compactMap { destination, message, bytes in
            guard destination == S, case .keepAlive(let id, _, _) = message, id == alice,
                  let counter = (try? ExtendedDatagram.decode(bytes))?.trailer.counter else { return nil }
            return (counter, bytes)
        }
    }

    /// Offer, challenge, signed registration, registered: a client in extended mode at t=0.
    static func registered(cookie: Token128, nonce: Token128, listPageSize: Int = 50) -> ExtendedClient {
        let client = ExtendedClient(listPageSize: listPageSize)
        let offer = client.start(at: at(0))
        #expect(offer.map(\.0) == [S])
        #expect(offer.map { String(decoding: $0.1, as: UTF8.self) } == ["alice 10.0.0.5 natchat/2"])
        let registration = extended(client.receive(.challenge(cookie: cookie), at: at(0)))
        #expect(registration.count == 1)
        if case .register(let id, let echoed, _, _, let keys, _)? = registration.first?.1 {
            #expect(id == alice)
            #expect(echoed == cookie)
            #expect(keys == client.identity.publicKeys)
        } else {
            Issue.record("no registration: \(registration.map(\.1))")
        }
        client.receive(client.registered(nonce: nonce, cookie: cookie), at: at(0))
        #expect(client.service.dialect == .natchat2)
        #expect(client.service.isRegistered)
        #expect(client.recorder.lines.first == "* registered as alice (public 203.0.113.7:40001); natchat/2, key \(client.identity.fingerprint)")
        return client
    }
}

private let cookie1 = Token128(high: 0xC001, low: 1), cookie2 = Token128(high: 0xC002, low: 2)
private let nonce1 = Token128(high: 0x7777, low: 1), nonce2 = Token128(high: 0x7777, low: 2)

@Suite("ChatClientService extended session")
struct ChatClientExtendedSessionTests {
    @Test func keepAlivesAreTaggedUnderTheKeyOfCookieAndNonce() throws {
        let client = ExtendedClient.registered(cookie: cookie1, nonce: nonce1)
        let keepAlives = ExtendedClient.keepAlives(client.timeout(at: at(10)))
        let keepAlive = try #require(keepAlives.last)
        #expect(SessionCrypto.verifyAuthenticated(keepAlive.bytes, key: client.sessionKey(cookie: cookie1, nonce: nonce1)))
        // Not under the key without the nonce, nor under another nonce.
        #expect(!SessionCrypto.verifyAuthenticated(keepAlive.bytes, key: client.sessionKey(cookie: cookie1, nonce: .zero)))
        #expect(!SessionCrypto.verifyAuthenticated(keepAlive.bytes, key: client.sessionKey(cookie: cookie1, nonce: nonce2)))
    }

    /// Someone sends an offer in alice's name: the server challenges alice. Registered, she
    /// must not answer it (nor take its cookie for her session key).
    @Test func unsolicitedChallengeIsIgnoredOnceRegistered() throws {
        let client = ExtendedClient.registered(cookie: cookie1, nonce: nonce1)
        let first = ExtendedClient.keepAlives(client.timeout(at: at(10)))
        let lastCounter = try #require(first.last?.counter)
        _ = client.recorder.takeLines()
        let deadline = client.service.nextDeadline()
        #expect(client.receive(.challenge(cookie: cookie2), at: at(11)).isEmpty)
        #expect(client.recorder.lines == [])
        #expect(client.service.nextDeadline() == deadline)
        #expect(client.service.isRegistered)
        // The server repeats its answer to the same registration (same nonce): the session
        // goes on with the same key and counter, silently.
        #expect(ExtendedClient.extended(client.receive(client.registered(nonce: nonce1, cookie: cookie1), at: at(12))).isEmpty)
        #expect(client.recorder.lines == [])
        let next = try #require(ExtendedClient.keepAlives(client.timeout(at: at(22))).last)
        #expect(next.counter == lastCounter + 1)
        #expect(SessionCrypto.verifyAuthenticated(next.bytes, key: client.sessionKey(cookie: cookie1, nonce: nonce1)))
    }

    /// The server lost the session: it answers with unknownSession echoing the tag of the
    /// refused message. Only an echo of one of alice's recent messages makes her register
    /// again; then the challenge is welcome, and the new session has its own key.
    @Test func unknownSessionEchoingARecentTagTriggersRegistration() throws {
        let client = ExtendedClient.registered(cookie: cookie1, nonce: nonce1)
        let keepAlive = try #require(ExtendedClient.keepAlives(client.timeout(at: at(10))).last)
        let tag = Token128(bytes: keepAlive.bytes.suffix(16))
        _ = client.recorder.takeLines()
        // Forgeries: an unknown tag, no tag, another ID, another source.
        for (message, source) in [(ExtendedMessage.unknownSession(ExtendedClient.alice, echo: Token128(high: tag.high, low: tag.low ^ 1)), S),
                                  (.unknownSession(ExtendedClient.alice), S),
                                  (.unknownSession(id("bob"), echo: tag), S),
                                  (.unknownSession(ExtendedClient.alice, echo: tag), stranger)] {
            #expect(client.receive(message, from: source, at: at(11)).isEmpty, "\(message) from \(source)")
        }
        #expect(client.recorder.lines == [])
        // The real answer.
        let sent = client.receive(.unknownSession(ExtendedClient.alice, echo: tag), at: at(11))
        #expect(sent.map(\.0) == [S])
        #expect(sent.map { String(decoding: $0.1, as: UTF8.self) } == ["alice 10.0.0.5 natchat/2"])
        #expect(client.recorder.takeLines() == ["* the server lost our session; registering again"])
        // A second copy while registering does nothing more.
        #expect(client.receive(.unknownSession(ExtendedClient.alice, echo: tag), at: at(11)).isEmpty)
        #expect(client.recorder.lines == [])
        // Unanswered, the offer is sent again after the first backoff (1 s).
        func offers(_ sent: [(Endpoint, [UInt8])]) -> [Endpoint] {
            sent.filter { String(decoding: $0.1, as: UTF8.self) == "alice 10.0.0.5 natchat/2" }.map(\.0)
        }
        #expect(offers(client.timeout(at: at(12) - .milliseconds(1))).isEmpty)
        #expect(offers(client.timeout(at: at(12))) == [S])
        // Registering, the challenge is answered with its cookie.
        let registration = ExtendedClient.extended(client.receive(.challenge(cookie: cookie2), at: at(12)))
        guard case .register(_, let echoed, _, _, _, _)? = registration.first?.1 else {
            Issue.record("no registration"); return
        }
        #expect(echoed == cookie2)
        client.receive(client.registered(nonce: nonce2, cookie: cookie2), at: at(12))
        #expect(client.recorder.takeLines() == ["* registered again as alice (public 203.0.113.7:40001)"])
        let at20 = client.timeout(at: at(20))
        #expect(offers(at20).isEmpty) // no more retries
        #expect(ExtendedClient.keepAlives(at20).isEmpty)
        // The new session counts from 1 under the new key (at 22: the keep-alive due 10 s
        // after registering, and the one that reports the probe's conclusion).
        let fresh = ExtendedClient.keepAlives(client.timeout(at: at(22)))
        #expect(fresh.map(\.counter) == [1, 2])
        #expect(client.recorder.takeLines() == ["* NAT: unknown"])
        for keepAlive in fresh {
            #expect(SessionCrypto.verifyAuthenticated(keepAlive.bytes, key: client.sessionKey(cookie: cookie2, nonce: nonce2)))
            #expect(!SessionCrypto.verifyAuthenticated(keepAlive.bytes, key: client.sessionKey(cookie: cookie1, nonce: nonce1)))
        }
        // Once registered again, a challenge is unsolicited again.
        #expect(client.receive(.challenge(cookie: cookie1), at: at(23)).isEmpty)
    }

    /// After registering again, an echo of a tag of the previous session (a late copy of the
    /// server's answer, or one replayed) concerns a session that is gone: it must not tear
    /// down the new one.
    @Test func echoOfThePreviousSessionIsIgnoredAfterRegisteringAgain() throws {
        let client = ExtendedClient.registered(cookie: cookie1, nonce: nonce1)
        let keepAlive = try #require(ExtendedClient.keepAlives(client.timeout(at: at(10))).last)
        let oldTag = Token128(bytes: keepAlive.bytes.suffix(16))
        _ = client.recorder.takeLines()
        #expect(!client.receive(.unknownSession(ExtendedClient.alice, echo: oldTag), at: at(11)).isEmpty)
        _ = client.receive(.challenge(cookie: cookie2), at: at(11))
        client.receive(client.registered(nonce: nonce2, cookie: cookie2), at: at(11))
        #expect(client.recorder.takeLines() == ["* the server lost our session; registering again",
                                                "* registered again as alice (public 203.0.113.7:40001)"])
        let late = client.receive(.unknownSession(ExtendedClient.alice, echo: oldTag), at: at(12))
        // The old session's tags are forgotten on reset: a late echo of them changes nothing.
        #expect(late.isEmpty)
        #expect(client.recorder.lines == [])
    }

    @Test func completionFollowsRosterDeltas() {
        let client = ExtendedClient.registered(cookie: cookie1, nonce: nonce1)
        #expect(completions(client.service, "") == [])
        client.receive(rosterDelta(1, [present("carol", C, version: 1), present("bob", B, version: 2)]), at: at(1))
        client.receive(rosterDelta(2, [present("bob", A, version: 3)]), at: at(2)) // moved: same IDs
        client.receive(rosterDelta(3, [present("dave", A, version: 4)]), from: stranger, at: at(2)) // not from the server
        #expect(completions(client.service, "") == ["bob", "carol"])
        let gone = rosterDelta(4, [.absent(id("carol"), version: 5, reason: .offline, publicEndpoint: C)])
        client.receive(gone, at: at(3))
        client.receive(gone, at: at(3)) // gone already
        #expect(completions(client.service, "") == ["bob"])
        // Before the feed said it is whole, joins are the listing (shown, up to a screenful).
        #expect(client.recorder.takeLines().filter { $0.contains("carol") }
                == ["* carol joined (198.51.100.9:50000)", "* carol is off-line 198.51.100.9:50000"])
    }

    /// Every roster datagram is acknowledged (with the bitmap of those before it), under the
    /// session, to the server.
    @Test func rosterDeltasAreAcknowledged() throws {
        let client = ExtendedClient.registered(cookie: cookie1, nonce: nonce1)
        let key = client.sessionKey(cookie: cookie1, nonce: nonce1)
        var acks: [(UInt32, UInt64)] = []
        for sequence: UInt32 in [1, 3, 2] {
            for (destination, message, bytes) in ExtendedClient.extended(client.receive(rosterDelta(sequence, []), at: at(1))) {
                guard case .rosterAck(_, let largest, let received) = message else { continue }
                #expect(destination == S)
                #expect(SessionCrypto.verifyAuthenticated(bytes, key: key))
                acks.append((largest, received))
            }
        }
        #expect(acks.map(\.0) == [1, 3, 3])
        #expect(acks.map(\.1) == [0, 0b10, 0b11])
    }

    /// A chat to an ID the roster does not hold asks the server; it goes out only when the
    /// server answers, and only the server's "no" is reported as "There is no".
    @Test func chatToAnUnknownIDAsksTheServerFirst() throws {
        let client = ExtendedClient.registered(cookie: cookie1, nonce: nonce1)
        _ = client.recorder.takeLines()
        var output = DatagramOutput()
        #expect(client.service.handle(.chat(to: id("bob"), text: "hi"), now: at(1), output: &output))
        let asked = ExtendedClient.extended(ExtendedClient.raw(output))
        guard case .lookup(_, let query, let peer)? = asked.first?.1 else {
            Issue.record("no look-up: \(asked.map(\.1))"); return
        }
        #expect(peer == id("bob") && asked.count == 1)
        #expect(client.recorder.lines.isEmpty, "nothing is decided on the client's say-so")
        // Unanswered: asked again with backoff, and the user is told after 3 s.
        let again = ExtendedClient.extended(client.timeout(at: at(1) + .milliseconds(400)))
        #expect(again.contains { if case .lookup(_, query, id("bob")) = $0.1 { true } else { false } })
        _ = client.timeout(at: at(4))
        #expect(client.recorder.takeLines() == ["* the server has not answered yet whether bob is registered; still asking"])
        // The server says bob is registered: the chat goes out (to the relay first).
        let bob = IdentityKey()
        let entry = RosterEntry(info: PeerInfo(id: id("bob"), publicEndpoint: B, keys: bob.publicKeys), order: 3, version: 9)
        let sent = ExtendedClient.extended(client.receive(.lookupResult(query: query, epoch: 1, version: 9, peer: id("bob"), found: entry),
                                                          at: at(5)))
        #expect(sent.contains { if case .relay(_, id("bob"), _) = $0.1 { true } else { false } })
        #expect(sent.contains { if case .connect(_, id("bob")) = $0.1 { true } else { false } })
        #expect(!client.recorder.lines.contains { $0.hasPrefix("There is no") })

        // An ID the server does not know: "There is no" only then.
        var second = DatagramOutput()
        _ = client.service.handle(.chat(to: id("zed"), text: "anyone?"), now: at(6), output: &second)
        guard case .lookup(_, let zedQuery, _)? = ExtendedClient.extended(ExtendedClient.raw(second)).first?.1 else {
            Issue.record("no look-up for zed"); return
        }
        _ = client.recorder.takeLines()
        let claimAsked = ExtendedClient.extended(client.receive(.lookupResult(query: zedQuery, epoch: 1, version: 10, peer: id("zed"),
                                                                              found: nil), at: at(6)))
        // Not registered: is the ID claimed (then the chat would wait in the server's mailbox)?
        guard case .claimLookup(_, let claimQuery, id("zed"))? = claimAsked.first?.1 else {
            Issue.record("no claim look-up for zed: \(claimAsked)"); return
        }
        #expect(client.recorder.lines.isEmpty)
        client.receive(.claimResult(query: claimQuery, peer: id("zed"), keys: nil, claimedSince: 0), at: at(6))
        #expect(client.recorder.takeLines() == ["There is no zed in registration list."])
        // An answer to a question not asked (or asked again since) changes nothing.
        client.receive(.lookupResult(query: zedQuery, epoch: 1, version: 10, peer: id("zed"), found: nil), at: at(6))
        client.receive(.claimResult(query: claimQuery, peer: id("zed"), keys: nil, claimedSince: 0), at: at(6))
        #expect(client.recorder.lines.isEmpty)
    }

    /// When the server never answers, the chat is reported undelivered at its deadline,
    /// saying why; the look-up stops.
    @Test func silentServerMeansNotDeliveredAtTheDeadline() {
        let client = ExtendedClient.registered(cookie: cookie1, nonce: nonce1)
        var output = DatagramOutput()
        _ = client.service.handle(.chat(to: id("bob"), text: "hello?"), now: at(1), output: &output)
        var lookups = 1
        var now = at(1)
        for _ in 0..<10_000 {
            guard let deadline = client.service.nextDeadline(), deadline <= at(40) else { break }
            now = max(now, deadline)
            lookups += ExtendedClient.extended(client.timeout(at: now)).filter { if case .lookup = $0.1 { true } else { false } }.count
        }
        #expect(client.service.nextDeadline().map { $0 > at(40) } ?? true, "timers never settled")
        let lines = client.recorder.takeLines()
        #expect(lines.contains("* NOT delivered to bob: \"hello?\" (the server did not answer whether bob is registered)"))
        #expect(!lines.contains { $0.hasPrefix("There is no") })
        // 400 ms doubling to 2 s for 30 s: about 17 tries, then no more.
        #expect((10...20).contains(lookups), "\(lookups) look-ups")
    }

    /// A look-up answered just before the chat's deadline: the chat still gets
    /// `leastDeliveryWindow` (5 s) to be delivered, rather than being sent and given up at once.
    @Test func aLateLookupAnswerStillLeavesTimeToDeliver() throws {
        let client = ExtendedClient.registered(cookie: cookie1, nonce: nonce1)
        var output = DatagramOutput()
        _ = client.service.handle(.chat(to: id("bob"), text: "late"), now: at(1), output: &output)
        guard case .lookup(_, let query, _)? = ExtendedClient.extended(ExtendedClient.raw(output)).first?.1 else {
            Issue.record("no look-up"); return
        }
        func runTimers(until end: Instant) {
            for _ in 0..<10_000 {
                guard let deadline = client.service.nextDeadline(), deadline <= end else { return }
                _ = client.timeout(at: deadline)
            }
        }
        runTimers(until: at(30) + .milliseconds(500))
        let entry = RosterEntry(info: PeerInfo(id: id("bob"), publicEndpoint: B, keys: IdentityKey().publicKeys), order: 3, version: 9)
        let sent = ExtendedClient.extended(client.receive(.lookupResult(query: query, epoch: 1, version: 9, peer: id("bob"), found: entry),
                                                          at: at(30) + .milliseconds(500)))
        #expect(sent.contains { if case .relay(_, id("bob"), _) = $0.1 { true } else { false } })
        // Typed at 1 s, its own deadline was 31 s: still in flight at 35 s...
        runTimers(until: at(35))
        #expect(!client.recorder.lines.contains { $0.hasPrefix("* NOT delivered") })
        // ...and, 5 s after the answer, handed to the mailbox (bob's claim is looked up); this
        // server does not answer, so the chat is given up 10 s later.
        runTimers(until: at(36))
        #expect(!client.recorder.lines.contains { $0.hasPrefix("* NOT delivered") })
        runTimers(until: at(46))
        #expect(client.recorder.takeLines().contains("* NOT delivered to bob: \"late\""))
    }

    @Test func unknownSessionBeforeAnySessionMessageIsIgnored() {
        let client = ExtendedClient.registered(cookie: cookie1, nonce: nonce1)
        _ = client.recorder.takeLines()
        // Nothing sent under the session yet (the probe is STUN): no echo can be ours.
        #expect(client.receive(.unknownSession(ExtendedClient.alice), at: at(1)).isEmpty)
        #expect(client.receive(.unknownSession(ExtendedClient.alice, echo: Token128(high: 1, low: 1)), at: at(1)).isEmpty)
        #expect(client.recorder.lines == [])
    }
}

// MARK: - @show_list pages

/// The e2e harnesses' readings of a `@show_list` line (Tests/e2e/harness.py LIST_LINE and
/// test_nat_support.py): a footer must match neither, so it is never taken for a client.
private let listLinePatterns = [#"(\S+) (\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}:\d{1,5})(?: .*)?"#,
                                #"(\S+) (\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}:\d{1,5}|\?) (.*)"#]

private func looksLikeAListLine(_ line: String) -> Bool {
    listLinePatterns.contains { pattern in (try? Regex(pattern)).map { line.wholeMatch(of: $0) != nil } ?? false }
}

@Suite("ChatClientService @show_list pages")
struct ChatClientShowListPageTests {
    /// The server lists seven peers, then alice: eight entries, three a page.
    static let classicRoster = [("bob", "192.0.2.1:1001"), ("bo", "192.0.2.2:1002"), ("carol", "192.0.2.3:1003"),
                                ("bobby", "192.0.2.4:1004"), ("dave", "192.0.2.5:1005"), ("boris", "192.0.2.6:1006"),
                                ("eve", "192.0.2.7:1007"), ("alice", "203.0.113.7:40001")]

    private static func classicClient(pageSize: Int) -> Client {
        let client = Client(listPageSize: pageSize)
        _ = client.start(at: at(0))
        for (name, endpoint) in classicRoster { client.receive("\(name) \(endpoint)", at: at(0)) }
        #expect(client.service.isRegistered)
        _ = client.recorder.takeLines()
        return client
    }

    private func lines(_ client: Client, _ command: Command) -> [String] {
        let result = client.handle(command, at: at(1))
        #expect(result.keepGoing)
        #expect(result.sent.isEmpty, "@show_list sends nothing")
        return client.recorder.takeLines()
    }

    private static func entries(_ names: String...) -> [String] {
        names.map { name in
            let endpoint = classicRoster.first { $0.0 == name }?.1 ?? "?"
            return "\(name) \(endpoint)"
        }
    }

    @Test func smallListIsPrintedAsBefore() {
        // Three entries, three a page: exactly the old output, no footer.
        let client = Client(listPageSize: 3)
        _ = client.start(at: at(0))
        client.receive("bob 203.0.113.7:40002", at: at(0))
        client.receive("carol 198.51.100.9:50000", at: at(0))
        client.receive("alice 203.0.113.7:40001", at: at(0))
        _ = client.recorder.takeLines()
        let old = ["bob 203.0.113.7:40002", "carol 198.51.100.9:50000", "alice 203.0.113.7:40001"]
        #expect(lines(client, .showList()) == old)
        #expect(lines(client, .showList(page: 1)) == old)
        #expect(lines(client, .showList(page: 2)) == ["-- no page 2: 3 clients, 1 page of 3 --"])
    }

    @Test func pagesInServerOrder() {
        let client = Self.classicClient(pageSize: 3)
        let first = lines(client, .showList())
        #expect(first == Self.entries("bob", "bo", "carol")
            + ["-- 1-3 of 8; @show_list 2 for the next page, @show_list <prefix> to filter --"])
        #expect(lines(client, .showList(page: 1)) == first)
        #expect(lines(client, .showList(page: 2)) == Self.entries("bobby", "dave", "boris")
            + ["-- 4-6 of 8; @show_list 3 for the next page, @show_list <prefix> to filter --"])
        #expect(lines(client, .showList(page: 3)) == Self.entries("eve", "alice")
            + ["-- 7-8 of 8, the last page; @show_list <prefix> to filter --"])
    }

    @Test func pageBeyondTheEnd() {
        let client = Self.classicClient(pageSize: 3)
        #expect(lines(client, .showList(page: 4)) == ["-- no page 4: 8 clients, 3 pages of 3 --"])
        #expect(lines(client, .showList(page: 1_000_000_000)) == ["-- no page 1000000000: 8 clients, 3 pages of 3 --"])
        #expect(lines(client, .showList(prefix: "bo", page: 3)) == ["-- no page 3: 4 starting with bo, 2 pages of 3 --"])
    }

    @Test func prefixFilter() {
        let client = Self.classicClient(pageSize: 3)
        #expect(lines(client, .showList(prefix: "bo")) == Self.entries("bob", "bo", "bobby")
            + ["-- 1-3 of 4 starting with bo; @show_list bo 2 for the next page --"])
        #expect(lines(client, .showList(prefix: "bo", page: 2)) == Self.entries("boris")
            + ["-- 4 of 4 starting with bo, the last page --"])
        #expect(lines(client, .showList(prefix: "bob")) == Self.entries("bob", "bobby") + ["-- 1-2 of 2 starting with bob --"])
        #expect(lines(client, .showList(prefix: "alice")) == Self.entries("alice") + ["-- 1 of 1 starting with alice --"])
        #expect(lines(client, .showList(prefix: "Bo")) == ["-- no ID starts with Bo --"], "case matters, as in IDs")
        #expect(lines(client, .showList(prefix: "z")) == ["-- no ID starts with z --"])
        // A page of a prefix fits within the page size even when everything matches.
        #expect(lines(client, .showList(prefix: "b")).count == 3 + 1)
    }

    @Test func pagesFollowJoinsAndLeaves() {
        let client = Self.classicClient(pageSize: 3)
        client.receive("bo is unregistered 192.0.2.2:1002", at: at(2))
        client.receive("carol is off-line 192.0.2.3:1003", at: at(2))
        client.receive("bob 192.0.2.9:2000", at: at(2))          // moved: keeps its place
        client.receive("zed 192.0.2.10:1010", at: at(3))         // joins last
        client.receive("bo 192.0.2.2:1002", at: at(3))           // comes back: last again
        client.receive("mallory 192.0.2.11:1", from: stranger, at: at(3)) // not from the server
        _ = client.recorder.takeLines()
        #expect(lines(client, .showList()) == ["bob 192.0.2.9:2000", "bobby 192.0.2.4:1004", "dave 192.0.2.5:1005",
                                               "-- 1-3 of 8; @show_list 2 for the next page, @show_list <prefix> to filter --"])
        #expect(lines(client, .showList(page: 3)) == ["zed 192.0.2.10:1010", "bo 192.0.2.2:1002",
                                                      "-- 7-8 of 8, the last page; @show_list <prefix> to filter --"])
        #expect(lines(client, .showList(prefix: "bo")) == ["bob 192.0.2.9:2000", "bobby 192.0.2.4:1004", "boris 192.0.2.6:1006",
                                                           "-- 1-3 of 4 starting with bo; @show_list bo 2 for the next page --"])
    }

    @Test func footersAreNeverTakenForClients() {
        let client = Self.classicClient(pageSize: 3)
        var footers: [String] = []
        for command in [Command.showList(), .showList(page: 2), .showList(page: 3), .showList(page: 9), .showList(prefix: "bo"),
                        .showList(prefix: "bo", page: 2), .showList(prefix: "bob"), .showList(prefix: "z"), .showList(prefix: "1")] {
            footers += lines(client, command).filter { $0.hasPrefix("-- ") }
        }
        #expect(footers.count == 9)
        #expect(looksLikeAListLine("bob 192.0.2.1:1001"), "the patterns read a real list line")
        #expect(looksLikeAListLine("alice ? (you; NAT: unknown)"))
        for footer in footers { #expect(!looksLikeAListLine(footer), "\(footer)") }
    }

    @Test func pageSizeCanChange() {
        let client = Self.classicClient(pageSize: 3)
        client.service.setListPageSize(5)
        #expect(lines(client, .showList(page: 2)) == Self.entries("boris", "eve", "alice")
            + ["-- 6-8 of 8, the last page; @show_list <prefix> to filter --"])
        client.service.setListPageSize(0) // treated as 1
        #expect(lines(client, .showList(page: 8)) == Self.entries("alice") + ["-- 8 of 8, the last page; @show_list <prefix> to filter --"])
    }

    /// natchat/2 with 10 000 peers: our own line first, then the peers as announced.
    @Test func tenThousandPeers() {
        let client = ExtendedClient.registered(cookie: cookie1, nonce: nonce1, listPageSize: 50)
        let count = 10_000
        func endpoint(_ i: Int) -> Endpoint {
            Endpoint(address: IPv4Address(10, 1, UInt8(i / 256), UInt8(i % 256)), port: 4000)
        }
        for start in stride(from: 0, to: count, by: 10) {
            let records = (start..<min(count, start + 10)).map { present("peer\($0)", endpoint($0), version: UInt64($0 + 1)) }
            client.receive(rosterDelta(UInt32(start / 10 + 1), records), at: at(1))
        }
        _ = client.recorder.takeLines()
        func show(_ command: Command) -> [String] {
            var output = DatagramOutput()
            #expect(client.service.handle(command, now: at(2), output: &output))
            return client.recorder.takeLines()
        }
        func peerLines(_ numbers: some Sequence<Int>) -> [String] { numbers.map { "peer\($0) \(endpoint($0)) none yet" } }
        let selfLine = "alice 203.0.113.7:40001 (you; NAT: \(client.service.natKind))"

        #expect(show(.showList()) == [selfLine] + peerLines(0..<49)
            + ["-- 1-50 of 10001; @show_list 2 for the next page, @show_list <prefix> to filter --"])
        #expect(show(.showList(page: 2)) == peerLines(49..<99)
            + ["-- 51-100 of 10001; @show_list 3 for the next page, @show_list <prefix> to filter --"])
        #expect(show(.showList(page: 200)) == peerLines(9949..<9999)
            + ["-- 9951-10000 of 10001; @show_list 201 for the next page, @show_list <prefix> to filter --"])
        #expect(show(.showList(page: 201)) == peerLines([9999]) + ["-- 10001 of 10001, the last page; @show_list <prefix> to filter --"])
        #expect(show(.showList(page: 202)) == ["-- no page 202: 10001 clients, 201 pages of 50 --"])
        #expect(show(.showList(prefix: "alice")) == [selfLine, "-- 1 of 1 starting with alice --"])
        #expect(show(.showList(prefix: "peer123")) == peerLines([123] + Array(1230...1239)) + ["-- 1-11 of 11 starting with peer123 --"])
        // peer1, peer10-19, peer100-199, peer1000-1999 match: 1111, in the order they joined.
        let ones = (0..<count).filter { "peer\($0)".hasPrefix("peer1") }
        #expect(ones.count == 1111)
        #expect(show(.showList(prefix: "peer1", page: 3)) == peerLines(ones[100..<150])
            + ["-- 101-150 of 1111 starting with peer1; @show_list peer1 4 for the next page --"])
        #expect(Array(ones[100..<150].prefix(12)) == Array(189...199) + [1000])

        // Leaves close the gaps; the numbers follow.
        client.receive(rosterDelta(1_000, (0..<10).map {
            .absent(id("peer\($0)"), version: UInt64(20_000 + $0), reason: .unregistered, publicEndpoint: endpoint($0))
        }), at: at(3))
        _ = client.recorder.takeLines()
        #expect(show(.showList()) == [selfLine] + peerLines(10..<59)
            + ["-- 1-50 of 9991; @show_list 2 for the next page, @show_list <prefix> to filter --"])
    }
}
