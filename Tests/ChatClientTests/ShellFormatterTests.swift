import Addressing
import ChatRouter
import ClientSession
import HolePunch
import KnownPeers
import Testing
import Wire
@testable import ChatClient

// The shell's words, byte for byte as the shell printed them before the events were typed
// (the strings of ChatClientService and ListPage at 8a6e0b5).

private func id(_ text: String) -> ClientID { try! ClientID(text) }
private func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }

private let alice = id("alice"), bob = id("bob"), carol = id("carol"), dave = id("dave")
private let A = ep("203.0.113.7:40001"), B = ep("203.0.113.7:40002"), C = ep("198.51.100.9:50000")

private func lines(_ event: ClientEvent) -> [String] { ShellFormatter.lines(for: event) }
private func line(_ event: ClientEvent) -> String? {
    let all = lines(event)
    #expect(all.count == 1, "\(event): \(all)")
    return all.first
}

/// Every case of ``ClientEvent`` is printed by a test below: a new case must not compile
/// until it is added here and given its test.
private func isCovered(_ event: ClientEvent) -> Bool {
    switch event {
    case .registered, .registeredAgain, .registeringAgain, .serverChanged, .publicEndpointChanged, .serverNotice, .registrationRefused,
         .natClassified, .joined, .sameNAT, .moved, .left, .moreOnline, .rosterScopeChanged, .chat, .delivered, .undelivered,
         .noSuchPeer, .lookupPending, .tooManyInFlight, .pathChanged, .keyChanged, .listEntry, .listFooter, .listEmpty,
         .listUnanswered, .help, .peerKeyChanged, .chatHeld, .chatFromHeldPeer, .trusted, .trustNotNeeded, .nothingPinned,
         .knownPeersOff, .whois, .queued, .mail, .mailRejected, .mailDelivered, .claimReleased, .claimRotated,
         .claimChangeRefused, .claimChangeUnanswered, .status, .pingAnswered, .pingUnanswered, .pingNotSent:
        true
    }
}

@Suite("ShellFormatter")
struct ShellFormatterTests {
    @Test func registration() {
        #expect(line(.registered(alice, publicEndpoint: A, .natchat2(keyFingerprint: "0f:1e:2d:3c:4b:5a:69:78")))
            == "* registered as alice (public 203.0.113.7:40001); natchat/2, key 0f:1e:2d:3c:4b:5a:69:78")
        #expect(line(.registered(alice, publicEndpoint: A, .classic(online: [bob, carol])))
            == "* registered as alice (public 203.0.113.7:40001); online: bob carol")
        #expect(line(.registered(alice, publicEndpoint: A, .classic(online: [bob])))
            == "* registered as alice (public 203.0.113.7:40001); online: bob")
        #expect(line(.registered(alice, publicEndpoint: A, .classic(online: [])))
            == "* registered as alice (public 203.0.113.7:40001); no other clients online")
        #expect(line(.registeredAgain(alice, publicEndpoint: A)) == "* registered again as alice (public 203.0.113.7:40001)")
        #expect(line(.registeringAgain(.unknownSession)) == "* the server lost our session; registering again")
        #expect(line(.registeringAgain(.serverSilent)) == "* the server stopped answering; registering again")
        #expect(line(.serverChanged(from: try! Endpoint(parsing: "10.0.0.1:10080"), to: try! Endpoint(parsing: "10.0.0.2:10080"),
                                    publicEndpoint: A))
            == "* server 10.0.0.1:10080 is not answering; now registered with 10.0.0.2:10080")
        #expect(line(.publicEndpointChanged(ep("203.0.113.7:41001"))) == "* the server now sees you at 203.0.113.7:41001")
    }

    @Test func serverNoticesAndRefusal() {
        let notice = "registration refused: ID alice - the ID is in use from another address"
        #expect(line(.serverNotice(notice)) == "From server [\(notice)]")
        #expect(line(.serverNotice("")) == "From server []")
        // The refusal's text was shown as the notice before it; the refusal itself prints
        // nothing (the shell quits on it).
        #expect(lines(.registrationRefused(notice)) == [])
    }

    @Test func claimChanges() {
        #expect(line(.claimReleased) == "* the claim on your ID was released: any key may register it now")
        #expect(line(.claimRotated(fingerprint: "0f:1e:2d:3c:4b:5a:69:78")) == "* your ID is now claimed by the new key 0f:1e:2d:3c:4b:5a:69:78")
        #expect(line(.claimChangeRefused) == "* the server did not change the claim: this key does not hold it")
        #expect(line(.claimChangeUnanswered) == "* the server did not answer the claim change")
    }

    @Test func natClassification() {
        #expect(line(.natClassified(.unknown)) == "* NAT: unknown")
        #expect(line(.natClassified(.none)) == "* NAT: no NAT")
        #expect(line(.natClassified(.endpointIndependent)) == "* NAT: endpoint-independent mapping (cone)")
        #expect(line(.natClassified(.endpointDependent)) == "* NAT: endpoint-dependent mapping (symmetric)")
    }

    @Test func rosterNews() {
        #expect(line(.joined(dave, publicEndpoint: ep("192.0.2.4:60000"), classicPeer: false)) == "* dave joined (192.0.2.4:60000)")
        #expect(line(.joined(dave, publicEndpoint: ep("192.0.2.4:60000"), classicPeer: true))
            == "* dave joined (192.0.2.4:60000) [classic]")
        #expect(line(.sameNAT(dave, privateAddress: IPv4Address(10, 0, 0, 9))) == "* dave is behind the same NAT (private 10.0.0.9)")
        #expect(line(.moved(bob, ep("203.0.113.7:41000"))) == "* bob moved to 203.0.113.7:41000")
        #expect(line(.left(carol, .offline, C)) == "* carol is off-line 198.51.100.9:50000")
        #expect(line(.left(dave, .unregistered, ep("192.0.2.4:60000"))) == "* dave is unregistered 192.0.2.4:60000")
        #expect(line(.moreOnline(1)) == "* and 1 more online; @show_list lists them")
        #expect(line(.moreOnline(9_980)) == "* and 9980 more online; @show_list lists them")
        #expect(line(.rosterScopeChanged(.interest, registered: 100_001))
            == "* 100001 clients are registered: the list is no longer followed; @show_list and Tab ask the server")
        #expect(line(.rosterScopeChanged(.complete, registered: 40))
            == "* 40 clients are registered: following the whole list again")
    }

    @Test func chats() {
        for origin in [ChatOrigin.classicSession, .authenticated(.relayed), .authenticated(.direct(B))] {
            #expect(line(.chat(from: bob, text: "I love Network!!", origin: origin)) == "From bob [I love Network!!]", "\(origin)")
        }
        #expect(line(.chat(from: bob, text: "hi @ 10:30", origin: .unverifiedClassicPeer))
            == "From bob [hi @ 10:30] (unverified: classic client)")
        #expect(line(.chat(from: bob, text: "", origin: .classicSession)) == "From bob []")
        #expect(line(.chat(from: id("ünï"), text: "é\te", origin: .classicSession)) == "From ünï [é\te]")
    }

    @Test func delivery() {
        #expect(line(.delivered(to: bob)) == "* delivered to bob")
        #expect(line(.undelivered(to: bob, text: "hello?", reason: .serverSilent))
            == "* NOT delivered to bob: \"hello?\" (the server did not answer whether bob is registered)")
        #expect(line(.undelivered(to: bob, text: "hello?", reason: .notAcknowledged)) == "* NOT delivered to bob: \"hello?\"")
        #expect(line(.undelivered(to: bob, text: "say \"hi\"", reason: .peerLeft)) == "* NOT delivered to bob: \"say \"hi\"\"")
        #expect(line(.noSuchPeer(dave)) == "There is no dave in registration list.")
        #expect(line(.lookupPending(bob)) == "* the server has not answered yet whether bob is registered; still asking")
        #expect(line(.tooManyInFlight(to: bob)) == "* cannot send to bob: too many messages waiting for acknowledgement")
    }

    @Test func mailbox() {
        #expect(line(.queued(to: bob, keptSeconds: 7 * 86_400, reason: .offline)) == "* bob is offline: queued at the server (kept 7 days)")
        #expect(line(.queued(to: bob, keptSeconds: 7 * 86_400, reason: .notAcknowledged))
            == "* bob did not answer: queued at the server (kept 7 days)")
        #expect(line(.queued(to: bob, keptSeconds: 7 * 86_400, reason: .peerLeft)) == "* bob left: queued at the server (kept 7 days)")
        #expect(line(.queued(to: bob, keptSeconds: 86_400 + 3_600, reason: .offline)) == "* bob is offline: queued at the server (kept 1 day)")
        #expect(line(.queued(to: bob, keptSeconds: 7_200, reason: .offline)) == "* bob is offline: queued at the server (kept 2 hours)")
        #expect(line(.queued(to: bob, keptSeconds: 60, reason: .offline)) == "* bob is offline: queued at the server (kept 1 minute)")
        #expect(line(.queued(to: bob, keptSeconds: 5, reason: .offline)) == "* bob is offline: queued at the server (kept 5 seconds)")
        // 2026-12-04T14:03:59Z: the minute, in UTC.
        #expect(line(.mail(from: alice, text: "hello", sentAt: 1_796_393_039)) == "From alice [hello] (sent 2026-12-04 14:03, queued)")
        #expect(line(.mail(from: alice, text: "", sentAt: 0)) == "From alice [] (sent 1970-01-01 00:00, queued)")
        #expect(line(.mail(from: alice, text: "x", sentAt: .max)) == "From alice [x] (sent 9999-12-31 23:59, queued)")
        #expect(line(.mailDelivered(to: bob, queuedEarlier: false)) == "* delivered to bob")
        #expect(line(.mailDelivered(to: bob, queuedEarlier: true)) == "* delivered to bob (queued earlier)")
        #expect(line(.mailRejected(from: alice, .unreadable(.badSignature)))
            == "* a queued message from alice was not shown: it could not be opened (bad signature)")
        #expect(line(.mailRejected(from: alice, .unreadable(.cannotDecrypt)))
            == "* a queued message from alice was not shown: it could not be opened (not sealed to your key)")
        #expect(line(.mailRejected(from: alice, .unreadable(.malformed)))
            == "* a queued message from alice was not shown: it could not be opened (malformed)")
        #expect(line(.mailRejected(from: alice, .otherKey(seen: "8b:c7:2a:8d:9e:92:f1:f2", known: "0f:4a:44:bc:e7:a7:40:08")))
            == "* WARNING: a queued message said to be from alice was not shown: it is signed by key 8b:c7:2a:8d:9e:92:f1:f2, "
            + "not by alice's key 0f:4a:44:bc:e7:a7:40:08. Someone may be impersonating alice.")
        #expect(line(.undelivered(to: bob, text: "hello", reason: .mailboxRefused(.recipientFull)))
            == "* NOT delivered to bob: \"hello\" (the server would not queue it: the recipient's mailbox is full)")
        #expect(line(.undelivered(to: bob, text: "hello", reason: .mailboxRefused(.rateLimited)))
            == "* NOT delivered to bob: \"hello\" (the server would not queue it: too many queued messages; wait a minute)")
        #expect(line(.undelivered(to: bob, text: "hello", reason: .mailboxSilent))
            == "* NOT delivered to bob: \"hello\" (the server did not answer the request to queue it)")
        #expect(line(.undelivered(to: bob, text: "hello", reason: .unsealable))
            == "* NOT delivered to bob: \"hello\" (it could not be sealed to bob's key)")
    }

    /// `@status`: three lines of our own, then one aligned line per peer; a relayed peer
    /// says why, a peer with no measurement says "-".
    @Test func status() {
        let report = StatusReport(
            id: alice, keyFingerprint: "SHA256:abc", session: .natchat2, server: ep("198.51.100.1:10080"), publicEndpoint: A,
            natKind: .endpointIndependent, serverRoundTrip: .microseconds(1_250),
            peers: [
                .init(id: bob, route: .private(ep("10.0.0.6:10081")), roundTrip: .microseconds(420), lastHeard: .seconds(2)),
                .init(id: carol, route: .direct(C), roundTrip: .microseconds(12_345), lastHeard: .milliseconds(1_500)),
                .init(id: dave, route: .relayed, lastHeard: nil,
                      relayReason: .hopeless(ours: .endpointDependent, peers: .endpointDependent)),
            ],
            otherPeers: 3)
        #expect(lines(.status(report)) == [
            "alice  key SHA256:abc  natchat/2",
            "  server 198.51.100.1:10080  rtt 1.3 ms",
            "  public 203.0.113.7:40001  NAT endpoint-independent mapping (cone)",
            "bob    private 10.0.0.6:10081     rtt 0.4 ms   heard 2 s ago",
            "carol  direct 198.51.100.9:50000  rtt 12.3 ms  heard 1.5 s ago",
            "dave   relayed                    rtt -        heard never      (symmetric NAT on both sides)",
            "(and 3 more registered, not talked to)",
        ])
        let empty = StatusReport(id: alice, keyFingerprint: "SHA256:abc", session: .registering, server: ep("198.51.100.1:10080"),
                                 publicEndpoint: nil, natKind: .unknown, serverRoundTrip: nil, peers: [], otherPeers: 0)
        #expect(lines(.status(empty)) == [
            "alice  key SHA256:abc  registering",
            "  server 198.51.100.1:10080  rtt -",
            "  public -  NAT unknown",
            "(no peers)",
        ])
    }

    @Test func ping() {
        #expect(line(.pingAnswered(bob, route: .direct(C), roundTrip: .microseconds(12_340))) == "pong from bob via direct 198.51.100.9:50000 in 12.3 ms")
        #expect(line(.pingAnswered(bob, route: .relayed, roundTrip: .milliseconds(30))) == "pong from bob via relay in 30.0 ms")
        #expect(line(.pingUnanswered(bob, route: .relayed, after: .seconds(3))) == "no answer from bob within 3 s (path: relayed)")
        #expect(line(.pingNotSent(bob, .unknownPeer)) == "* not pinged bob: not online (as far as this client knows)")
        #expect(line(.pingNotSent(alice, .yourself)) == "* not pinged alice: that is you")
    }

    @Test func pathsAndKeys() {
        #expect(line(.pathChanged(bob, .none)) == "* path to bob: none yet")
        #expect(line(.pathChanged(bob, .relayed)) == "* path to bob: relayed")
        #expect(line(.pathChanged(bob, .direct(B, .publicEndpoint))) == "* path to bob: direct 203.0.113.7:40002")
        #expect(line(.pathChanged(bob, .direct(ep("192.0.2.50:3333"), .peerReflexive))) == "* path to bob: direct 192.0.2.50:3333")
        #expect(line(.pathChanged(bob, .direct(ep("10.0.0.6:10081"), .privateEndpoint))) == "* path to bob: private 10.0.0.6:10081")
        #expect(line(.keyChanged(bob)) == "!!! WARNING: the server announced a different key for bob; keeping the key pinned at "
            + "first sight. Someone may be impersonating bob.")
    }

    @Test func knownPeers() {
        let old = "0f:4a:44:bc:e7:a7:40:08", new = "8b:c7:2a:8d:9e:92:f1:f2"
        #expect(line(.peerKeyChanged(bob, pinned: old, seen: new))
            == "* WARNING: bob's key changed: pinned \(old), now \(new). Chat with bob is held; "
            + "check the new fingerprint with bob out of band, then @trust bob")
        #expect(line(.chatHeld(to: bob, text: "hi"))
            == "* NOT sent to bob: \"hi\" (chat with bob is held: its key changed; @whois bob, then @trust bob)")
        #expect(line(.chatFromHeldPeer(bob))
            == "* a message from bob was not shown: chat with bob is held (its key changed; @whois bob, then @trust bob)")
        #expect(line(.trusted(bob, previous: old, now: new)) == "* bob's key \(new) is trusted (was \(old)); chat with bob goes on")
        #expect(line(.trustNotNeeded(bob, fingerprint: old)) == "* bob is not held: its key \(old) is the one pinned")
        #expect(line(.nothingPinned(dave)) == "* no key is pinned for dave: nothing to trust")
        #expect(line(.knownPeersOff) == "* known peers are off (--known-peers none): nothing to trust")
        #expect(lines(.whois(WhoisReport(id: bob, record: nil, path: .path(.relayed), knownPeersOff: true)))
            == ["* bob: known peers are off (--known-peers none); path relayed"])
        var record = KnownPeers.Record(server: "127.0.0.1:10080", id: "bob", fingerprint: old, firstSeen: 1_777_629_600,
                                       lastSeen: 1_777_633_200)
        #expect(lines(.whois(WhoisReport(id: bob, record: record, path: .path(.direct(B, .publicEndpoint))))) == [
            "* bob: key \(old), first seen 2026-05-01T10:00:00Z, last seen 2026-05-01T11:00:00Z; path direct 203.0.113.7:40002",
        ])
        record.heldFingerprint = new
        #expect(lines(.whois(WhoisReport(id: bob, record: record, path: .path(.relayed)))) == [
            "* bob: key \(old), first seen 2026-05-01T10:00:00Z, last seen 2026-05-01T11:00:00Z; path relayed",
            "* bob is HELD: it showed key \(new) instead; check it with bob out of band, then @trust bob",
        ])
        #expect(lines(.whois(WhoisReport(id: dave, record: nil, path: .notHeld)))
            == ["* dave: no key pinned; not online (as far as this client knows)"])
        #expect(lines(.whois(WhoisReport(id: carol, record: nil, path: .classicPeer)))
            == ["* carol: no key pinned; classic client (no key), path classic"])
        #expect(lines(.whois(WhoisReport(id: bob, record: nil, path: .path(.none)))) == ["* bob: no key pinned; path none yet"])
        #expect(lines(.whois(WhoisReport(id: alice, record: nil, path: .yourself))) == ["* alice: no key pinned; yourself"])
        #expect(lines(.whois(WhoisReport(id: bob, record: nil, path: .classicSession)))
            == ["* bob: no key pinned; classic session (no keys or paths)"])
    }

    @Test func listLines() {
        #expect(line(.listEntry(.classic(bob, B))) == "bob 203.0.113.7:40002")
        #expect(line(.listEntry(.own(alice, A, .unknown))) == "alice 203.0.113.7:40001 (you; NAT: unknown)")
        #expect(line(.listEntry(.own(alice, nil, .endpointIndependent))) == "alice ? (you; NAT: endpoint-independent mapping (cone))")
        #expect(line(.listEntry(.own(alice, A, .none))) == "alice 203.0.113.7:40001 (you; NAT: no NAT)")
        #expect(line(.listEntry(.peer(bob, B, PathAgent.Path.none))) == "bob 203.0.113.7:40002 none yet")
        #expect(line(.listEntry(.peer(bob, B, .relayed))) == "bob 203.0.113.7:40002 relayed")
        #expect(line(.listEntry(.peer(bob, B, .direct(B, .publicEndpoint)))) == "bob 203.0.113.7:40002 direct 203.0.113.7:40002")
        #expect(line(.listEntry(.peer(bob, B, .direct(ep("10.0.0.6:10081"), .privateEndpoint))))
            == "bob 203.0.113.7:40002 private 10.0.0.6:10081")
        #expect(line(.listEntry(.peer(dave, C, nil))) == "dave 198.51.100.9:50000 classic")
        // A peer whose key the server has held the ID with since a date.
        #expect(line(.listEntry(.peer(bob, B, .relayed, claimedSince: 1_764_900_000)))
            == "bob 203.0.113.7:40002 relayed (claimed since 2025-12-05)")
        #expect(line(.listEmpty) == "(no registered clients yet)")
        #expect(line(.listUnanswered) == "* the server did not answer @show_list; try again")
    }

    @Test func help() {
        #expect(lines(.help) == [Command.helpText])
        #expect(Command.helpText == """
            commands:
              @show_list            list registered clients (you included) and their public endpoints;
                                    a long list is shown a page at a time, with a line saying what follows
              @show_list <n>        page <n> of the list
              @show_list <prefix>   only the clients whose ID starts with <prefix>;
                                    @show_list <prefix> <n> for page <n> of those
              @chat <id> <text>     send <text> to client <id>; when <id> is offline (or does not answer) but
                                    its ID is claimed, the server keeps it, sealed, until <id> registers
              @whois <id>           the key pinned for <id>, when it was first and last seen, whether chat
                                    with <id> is held (its key changed), and the path to it
              @trust <id>           after checking <id>'s new key out of band: pin it, and chat goes on
              @ping <id>            the round trip to <id> over the current path (direct, private or relayed),
                                    and which path answered
              @status               your ID, key, public endpoint, NAT and server round trip; then each peer's
                                    path, round trip, when it was last heard, and why a relayed peer is relayed
                                    (natchat --status prints the same from another terminal)
              @exit                 unregister and quit (end of input and Ctrl-C do the same)
              @help                 this help
            """)
    }

    @Test func everyCaseIsCovered() {
        #expect(isCovered(.help))
    }
}

// MARK: - List footers

/// The lines under a page, as the shell prints them.
private func footerLines(_ page: ListPage) -> [String] {
    page.footer.map { ShellFormatter.lines(for: .listFooter($0)) } ?? []
}

private func page(_ names: [String], prefix: String? = nil, page: Int = 1, size: Int) -> ListPage {
    let ids = names.map { id($0) }
    return ListPage.make(count: ids.count, id: { ids[$0] }, prefix: prefix, page: page, pageSize: size)
}

/// The footer exactly as `ListPage.footer` wrote it at 8a6e0b5 (the reference).
private func oldFooter(total: Int, shown: Int, first: Int, prefix: String?, page: Int, size: Int) -> String? {
    func counted(_ n: Int, _ noun: String) -> String { "\(n) \(noun)\(n == 1 ? "" : "s")" }
    let pages = max(1, total / size + (total % size == 0 ? 0 : 1))
    let matching = prefix.map { " starting with \($0)" } ?? ""
    if total == 0, let prefix { return "-- no ID starts with \(prefix) --" }
    if shown == 0 {
        let what = prefix == nil ? counted(total, "client") : "\(total)\(matching)"
        return "-- no page \(page): \(what), \(counted(pages, "page")) of \(size) --"
    }
    if prefix == nil, pages == 1 { return nil }
    let range = shown == 1 ? "\(first + 1)" : "\(first + 1)-\(first + shown)"
    let position = "\(range) of \(total)\(matching)"
    let isLast = first + shown >= total
    switch (prefix, isLast) {
    case (nil, false):
        return "-- \(position); @show_list \(page + 1) for the next page, @show_list <prefix> to filter --"
    case (nil, true):
        return "-- \(position), the last page; @show_list <prefix> to filter --"
    case (let prefix?, false):
        return "-- \(position); @show_list \(prefix) \(page + 1) for the next page --"
    case (_?, true):
        return pages == 1 ? "-- \(position) --" : "-- \(position), the last page --"
    }
}

@Suite("ShellFormatter list footers")
struct ShellFormatterFooterTests {
    /// The pages ListPageTests covers.
    @Test func theListPageCases() {
        let names = (1...7).map { "c\($0)" }
        #expect(footerLines(page(names, size: 7)) == [])
        #expect(footerLines(page(names, size: 100)) == [])
        #expect(footerLines(page(names, page: 2, size: 3)) == ["-- 4-6 of 7; @show_list 3 for the next page, @show_list <prefix> to filter --"])
        #expect(footerLines(page(names, page: 3, size: 3)) == ["-- 7 of 7, the last page; @show_list <prefix> to filter --"])
        #expect(footerLines(page(names, page: 2, size: 7)) == ["-- no page 2: 7 clients, 1 page of 7 --"])
        #expect(footerLines(page(["solo"], page: 2, size: 5)) == ["-- no page 2: 1 client, 1 page of 5 --"])
        #expect(footerLines(page(["a", "b"], page: 1, size: Int.max)) == [])
        #expect(footerLines(page(["e\u{301}va", "\u{E9}mile", "eve", "zoe"], prefix: "eve", size: 10)) == ["-- 1 of 1 starting with eve --"])
    }

    /// The pages the shell's @show_list tests printed (ChatClientServiceTests at 8a6e0b5).
    @Test func theShowListCases() {
        let eight = ["bob", "bo", "carol", "bobby", "dave", "boris", "eve", "alice"]
        #expect(footerLines(page(eight, size: 3)) == ["-- 1-3 of 8; @show_list 2 for the next page, @show_list <prefix> to filter --"])
        #expect(footerLines(page(eight, page: 3, size: 3)) == ["-- 7-8 of 8, the last page; @show_list <prefix> to filter --"])
        #expect(footerLines(page(eight, page: 4, size: 3)) == ["-- no page 4: 8 clients, 3 pages of 3 --"])
        #expect(footerLines(page(eight, page: 1_000_000_000, size: 3)) == ["-- no page 1000000000: 8 clients, 3 pages of 3 --"])
        #expect(footerLines(page(eight, prefix: "bo", page: 3, size: 3)) == ["-- no page 3: 4 starting with bo, 2 pages of 3 --"])
        #expect(footerLines(page(eight, prefix: "bo", size: 3)) == ["-- 1-3 of 4 starting with bo; @show_list bo 2 for the next page --"])
        #expect(footerLines(page(eight, prefix: "bo", page: 2, size: 3)) == ["-- 4 of 4 starting with bo, the last page --"])
        #expect(footerLines(page(eight, prefix: "bob", size: 3)) == ["-- 1-2 of 2 starting with bob --"])
        #expect(footerLines(page(eight, prefix: "alice", size: 3)) == ["-- 1 of 1 starting with alice --"])
        #expect(footerLines(page(eight, prefix: "Bo", size: 3)) == ["-- no ID starts with Bo --"])
        #expect(footerLines(page(eight, page: 8, size: 0)) == ["-- 8 of 8, the last page; @show_list <prefix> to filter --"])
        let small = ["bob", "carol", "alice"]
        #expect(footerLines(page(small, size: 3)) == [])
        #expect(footerLines(page(small, page: 2, size: 3)) == ["-- no page 2: 3 clients, 1 page of 3 --"])
        // natchat/2, 10 001 entries (the server's pages are footed the same way).
        let big = ListFooter(total: 10_001, shown: 50, first: 0, prefix: nil, page: 1, pageSize: 50)
        #expect(big.map { ShellFormatter.lines(for: .listFooter($0)) }
            == ["-- 1-50 of 10001; @show_list 2 for the next page, @show_list <prefix> to filter --"])
        let last = ListFooter(total: 10_001, shown: 1, first: 10_000, prefix: nil, page: 201, pageSize: 50)
        #expect(last.map { ShellFormatter.lines(for: .listFooter($0)) }
            == ["-- 10001 of 10001, the last page; @show_list <prefix> to filter --"])
        let beyond = ListFooter(total: 10_001, shown: 0, first: 10_050, prefix: nil, page: 202, pageSize: 50)
        #expect(beyond.map { ShellFormatter.lines(for: .listFooter($0)) } == ["-- no page 202: 10001 clients, 201 pages of 50 --"])
        let ones = ListFooter(total: 1_111, shown: 50, first: 100, prefix: "peer1", page: 3, pageSize: 50)
        #expect(ones.map { ShellFormatter.lines(for: .listFooter($0)) }
            == ["-- 101-150 of 1111 starting with peer1; @show_list peer1 4 for the next page --"])
    }

    /// Every page of lists up to 13 entries, with and without prefixes, every page size
    /// up to 6: the footer (or its absence) is the old one, byte for byte.
    @Test func everySmallPageMatchesTheOldFooter() {
        let pool = ["bob", "bo", "carol", "bobby", "dave", "boris", "eve", "alice", "b", "zed", "bond", "amy", "ben"]
        var compared = 0
        for count in 0...pool.count {
            let names = Array(pool.prefix(count))
            for prefix in [nil, "b", "bo", "bob", "z", "q", ""] as [String?] {
                for size in 1...6 {
                    for number in 0...((count / size) + 2) {
                        let made = page(names, prefix: prefix, page: number, size: size)
                        let total = prefix.map { p in names.filter { $0.hasPrefix(p) }.count } ?? count
                        let first = (max(1, number) - 1) * size
                        let old = oldFooter(total: total, shown: made.positions.count, first: first, prefix: prefix,
                                            page: max(1, number), size: size)
                        #expect(footerLines(made) == (old.map { [$0] } ?? []),
                                "\(count) names, prefix \(prefix ?? "nil"), page \(number) of \(size)")
                        compared += 1
                    }
                }
            }
        }
        #expect(compared > 1_000)
    }

    /// The server's pages (past its roster limit) are footed from what came back, which may
    /// be fewer entries than a page: every combination matches the old footer.
    @Test func everyServerPageMatchesTheOldFooter() {
        for total in 0...12 {
            for size in 1...5 {
                for page in 1...5 {
                    let first = (page - 1) * size
                    for shown in 0...max(0, min(size, total - first)) {
                        for prefix in [nil, "p"] as [String?] {
                            let footer = ListFooter(total: total, shown: shown, first: first, prefix: prefix, page: page, pageSize: size)
                            let old = oldFooter(total: total, shown: shown, first: first, prefix: prefix, page: page, size: size)
                            #expect((footer.map { ShellFormatter.lines(for: .listFooter($0)) } ?? []) == (old.map { [$0] } ?? []),
                                    "total \(total) shown \(shown) first \(first) page \(page) of \(size) prefix \(prefix ?? "nil")")
                        }
                    }
                }
            }
        }
    }
}
