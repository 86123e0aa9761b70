import Dispatch
import Foundation
@testable import PostgresStore
import Store
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Without NATCHAT_TEST_POSTGRES the PostgreSQL suites are skipped: this says so in the log.
@Test func postgresTestsRunOrSaySoLoudly() {
    if !TestDatabase.enabled { print(TestDatabase.skipNotice) }
}

@Suite("PostgresStore", .enabled(if: TestDatabase.enabled, "NATCHAT_TEST_POSTGRES is unset"))
struct PostgresStoreTests {
    // MARK: Opening and migrations

    @Test func anEmptyDatabaseIsMigratedAndReopened() async throws {
        let settings = try await TestDatabase.fresh("migrate")
        let store = try PostgresStore(settings: settings)
        #expect(try await store.recordedSchemaVersion() == PostgresStore.schemaVersion)
        #expect(try store.load() == StoreSnapshot())
        try store.apply([.putClaim(claim("alice")), .putMail(mail(1))])
        store.close()

        let again = try await PostgresStore.open(settings: settings)
        defer { again.close() }
        #expect(try await again.recordedSchemaVersion() == PostgresStore.schemaVersion)
        #expect(try again.load() == StoreSnapshot(claims: [claim("alice")], mail: [mail(1)]))
        #expect(again.location == settings.redactedURL)
    }

    @Test func twoServersMigratingAtOnceMigrateOnce() async throws {
        let settings = try await TestDatabase.fresh("migrate2")
        async let first = PostgresStore.open(settings: settings)
        async let second = PostgresStore.open(settings: settings)
        let (a, b) = try await (first, second)
        defer { a.close(); b.close() }
        #expect(try await a.recordedSchemaVersion() == PostgresStore.schemaVersion)
    }

    @Test func aDatabaseMigratedByANewerNatchatIsRefused() async throws {
        let settings = try await TestDatabase.fresh("newer")
        try PostgresStore(settings: settings).close()
        try await TestDatabase.admin(["INSERT INTO natchat_schema (version) VALUES (99)"], database: settings.database)
        #expect(throws: StoreError.schemaTooNew(path: settings.redactedURL, found: 99, supported: PostgresStore.schemaVersion)) {
            try PostgresStore(settings: settings)
        }
    }

    @Test func theUnixSocketWorks() async throws {
        guard let directory = ProcessInfo.processInfo.environment["NATCHAT_TEST_POSTGRES_SOCKET_DIR"],
              let port = ProcessInfo.processInfo.environment["NATCHAT_TEST_POSTGRES_PORT"] else { return }
        let tcp = try await TestDatabase.fresh("socket")
        let settings = try PostgresStore.Settings.parse("postgres://postgres@/\(tcp.database)?host=\(directory)&port=\(port)", environment: [:])
        let store = try PostgresStore(settings: settings)
        defer { store.close() }
        try store.apply([.putClaim(claim("alice"))])
        #expect(try store.load().claims == [claim("alice")])
    }

    // MARK: DurableStore

    @Test func claimsAndMailArePutReplacedAndRemoved() async throws {
        let store = try PostgresStore(settings: try await TestDatabase.fresh("durable"))
        defer { store.close() }
        try store.apply([.putClaim(claim("carol")), .putClaim(claim("alice")), .putClaim(claim("bob")), .putClaim(claim("Zed")), .putClaim(claim("é"))])
        #expect(try store.load().claims.map(\.id) == ["Zed", "alice", "bob", "carol", "é"])
        let rotated = claim("alice", key: 9, claimedAt: 3_000, lastSeen: 4_000)
        try store.apply([.putClaim(rotated), .removeClaim(id: "bob"), .removeClaim(id: "nobody"), .removeClaim(id: "Zed"), .removeClaim(id: "é")])
        #expect(try store.load().claims == [rotated, claim("carol")])

        try store.apply([.putMail(mail(30)), .putMail(mail(10, to: "carol")), .putMail(mail(20)), .putMail(mail(40, sealed: []))])
        #expect(try store.load().mail.map(\.serial) == [10, 20, 30, 40])
        let replaced = mail(20, to: "dave", from: "erin", sealed: [9, 9])
        try store.apply([.putMail(replaced), .removeMail(serial: 10), .removeMail(serial: 99)])
        #expect(try store.load().mail == [replaced, mail(30), mail(40, sealed: [])])
    }

    @Test func changesApplyInOrderWithinABatch() async throws {
        let store = try PostgresStore(settings: try await TestDatabase.fresh("order"))
        defer { store.close() }
        try store.apply([
            .putClaim(claim("alice")), .removeClaim(id: "alice"),
            .removeClaim(id: "bob"), .putClaim(claim("bob", key: 3)),
            .putClaim(claim("carol", key: 4)), .putClaim(claim("carol", key: 5)),
            .putMail(mail(1)), .removeMail(serial: 1),
            .removeMail(serial: 2), .putMail(mail(2)),
            .putMail(mail(3, sealed: [1])), .putMail(mail(3, sealed: [2])),
        ])
        let loaded = try store.load()
        #expect(loaded.claims == [claim("bob", key: 3), claim("carol", key: 5)])
        #expect(loaded.mail == [mail(2), mail(3, sealed: [2])])
    }

    @Test func aBatchIsAllOrNone() async throws {
        let store = try PostgresStore(settings: try await TestDatabase.fresh("atomic"))
        defer { store.close() }
        try store.apply([.putClaim(claim("alice"))])
        // PostgreSQL's text cannot hold NUL: the second change fails, the batch with it.
        #expect(throws: StoreError.self) {
            try store.apply([.putClaim(claim("bob")), .putClaim(claim("bad\u{0}id")), .removeClaim(id: "alice")])
        }
        #expect(try store.load().claims == [claim("alice")])
    }

    @Test func twoStoresSeeEachOthersWrites() async throws {
        let settings = try await TestDatabase.fresh("shared")
        let a = try PostgresStore(settings: settings)
        let b = try PostgresStore(settings: settings)
        defer { a.close(); b.close() }
        try a.apply([.putClaim(claim("alice")), .putMail(mail(7, to: "carol"))])
        #expect(try b.load() == StoreSnapshot(claims: [claim("alice")], mail: [mail(7, to: "carol")]))
        #expect(try await b.mail(for: "carol") == [mail(7, to: "carol")])
        #expect(try await b.mail(for: "bob") == [])
    }

    // MARK: Claims

    @Test func concurrentClaimsGrantExactlyOne() async throws {
        let settings = try await TestDatabase.fresh("race")
        let a = try await PostgresStore.open(settings: settings)
        let b = try await PostgresStore.open(settings: settings)
        defer { a.close(); b.close() }
        for round in 0..<50 {
            let id = "id\(round)"
            let mine = claim(id, key: 1, claimedAt: 100, lastSeen: 100)
            let theirs = claim(id, key: 3, claimedAt: 100, lastSeen: 100)
            async let first = a.claim(mine, ttl: 60, at: 100)
            async let second = b.claim(theirs, ttl: 60, at: 100)
            let outcomes = try await [first, second]
            let granted = outcomes.compactMap { if case .granted(let record) = $0 { record } else { nil } }
            let held = outcomes.compactMap { if case .heldByAnother(let record) = $0 { record } else { nil } }
            #expect(granted.count == 1 && held.count == 1, "round \(round): \(outcomes)")
            #expect(granted == held, "round \(round): the loser is told who won")
            #expect(try await a.currentClaim(of: id, ttl: 60, at: 100) == granted.first)
        }
    }

    /// Batches of claims (one statement each) decided by two servers at once: per ID
    /// exactly one key wins, whichever batch it was in; a batch answers in its own order,
    /// an ID twice in one batch included; the batch agrees with the memory store.
    @Test func concurrentBatchesGrantExactlyOnePerID() async throws {
        let settings = try await TestDatabase.fresh("batch")
        let a = try await PostgresStore.open(settings: settings)
        let b = try await PostgresStore.open(settings: settings)
        defer { a.close(); b.close() }
        for round in 0..<10 {
            let ids = (0..<40).map { "r\(round)id\($0)" }
            let mine = ids.map { claim($0, key: 1, claimedAt: 100, lastSeen: 100) }
            let theirs = ids.reversed().map { claim($0, key: 3, claimedAt: 100, lastSeen: 100) }
            async let first = a.claims(mine, ttl: 60, at: 100)
            async let second = b.claims(theirs, ttl: 60, at: 100)
            let (ours, others) = try await (first, second)
            #expect(ours.count == ids.count && others.count == ids.count)
            for (index, id) in ids.enumerated() {
                let pair = [ours[index], others[ids.count - 1 - index]]
                let granted = pair.compactMap { if case .granted(let record) = $0 { record } else { nil } }
                let held = pair.compactMap { if case .heldByAnother(let record) = $0 { record } else { nil } }
                #expect(granted.count == 1 && held.count == 1 && granted == held, "\(id): \(pair)")
            }
        }
        let memory = MemoryClusterStore()
        let batch = [claim("x", key: 1, claimedAt: 5, lastSeen: 5), claim("y", key: 1, claimedAt: 5, lastSeen: 5),
                     claim("x", key: 3, claimedAt: 6, lastSeen: 6), claim("x", key: 1, claimedAt: 7, lastSeen: 7)]
        let postgres = try await a.claims(batch, ttl: 60, at: 7)
        #expect(postgres == (try await memory.claims(batch, ttl: 60, at: 7)))
        #expect(postgres[0] == .granted(batch[0]) && postgres[2] == .heldByAnother(claim("x", key: 1, claimedAt: 5, lastSeen: 5)))
        #expect(postgres[3] == .granted(claim("x", key: 1, claimedAt: 5, lastSeen: 7)))
        let mail = try await a.mail(forRecipients: ["x", "y"])
        #expect(mail.isEmpty)
    }

    @Test func renewalKeepsClaimedAtAndAnExpiredClaimIsReplaced() async throws {
        let store = try PostgresStore(settings: try await TestDatabase.fresh("renew"))
        let memory = MemoryClusterStore()
        defer { store.close() }
        for cluster in [store as any ClusterStore, memory] {
            let first = claim("alice", key: 1, claimedAt: 1_000, lastSeen: 1_000)
            #expect(try await cluster.claim(first, ttl: 100, at: 1_000) == .granted(first))
            // Own keys: granted, claimedAt kept, lastSeen moves forward only.
            let renewed = claim("alice", key: 1, claimedAt: 1_050, lastSeen: 1_050)
            #expect(try await cluster.claim(renewed, ttl: 100, at: 1_050) == .granted(claim("alice", key: 1, claimedAt: 1_000, lastSeen: 1_050)))
            let late = claim("alice", key: 1, claimedAt: 1_060, lastSeen: 1_020)
            #expect(try await cluster.claim(late, ttl: 100, at: 1_060) == .granted(claim("alice", key: 1, claimedAt: 1_000, lastSeen: 1_050)))
            // Another key while it lives: held.
            let other = claim("alice", key: 5, claimedAt: 1_149, lastSeen: 1_149)
            #expect(try await cluster.claim(other, ttl: 100, at: 1_149) == .heldByAnother(claim("alice", key: 1, claimedAt: 1_000, lastSeen: 1_050)))
            #expect(try await cluster.currentClaim(of: "alice", ttl: 100, at: 1_149) != nil)
            // Expired (lastSeen + ttl <= now): the new record replaces it.
            #expect(try await cluster.currentClaim(of: "alice", ttl: 100, at: 1_150) == nil)
            let taken = claim("alice", key: 5, claimedAt: 1_150, lastSeen: 1_150)
            #expect(try await cluster.claim(taken, ttl: 100, at: 1_150) == .granted(taken))
            // Its own expired claim starts over too.
            let back = claim("alice", key: 5, claimedAt: 2_000, lastSeen: 2_000)
            #expect(try await cluster.claim(back, ttl: 100, at: 2_000) == .granted(back))
            #expect(try await cluster.currentClaim(of: "nobody", ttl: 100, at: 2_000) == nil)
        }
    }

    // MARK: Servers

    @Test func serversJoiningAtOnceGetTheSameSecret() async throws {
        let settings = try await TestDatabase.fresh("join")
        let a = try await PostgresStore.open(settings: settings, secret: { [UInt8](repeating: 1, count: 32) })
        let b = try await PostgresStore.open(settings: settings, secret: { [UInt8](repeating: 2, count: 32) })
        defer { a.close(); b.close() }
        async let first = a.join(ServerRecord(name: "s1", advertise: "10.0.0.1:10080", heartbeat: 10))
        async let second = b.join(ServerRecord(name: "s2", advertise: "10.0.0.2:10080", heartbeat: 11))
        let (one, two) = try await (first, second)
        #expect(one == two)
        #expect(one == [UInt8](repeating: 1, count: 32) || one == [UInt8](repeating: 2, count: 32))
        #expect(try await a.join(ServerRecord(name: "s1", advertise: "10.0.0.9:10080", heartbeat: 12)) == one)
        let servers = try await b.heartbeat(server: "s2", at: 20)
        #expect(servers == [ServerRecord(name: "s1", advertise: "10.0.0.9:10080", heartbeat: 12),
                            ServerRecord(name: "s2", advertise: "10.0.0.2:10080", heartbeat: 20)])
        // A server that never joined is not added by a heartbeat.
        #expect(try await b.heartbeat(server: "ghost", at: 30).map(\.name) == ["s1", "s2"])
    }

    // MARK: Presence

    /// One scenario, run on PostgreSQL and on the memory store: the same records come back.
    static func presenceScenario(_ cluster: any ClusterStore) async throws -> [[PresenceRecord]] {
        var seen: [[PresenceRecord]] = []
        try await cluster.publish([presence("alice", home: "s1", start: 1_000_000), presence("bob", home: "s1", start: 1_000_500),
                                   presence("carol", home: "s2", start: 1_001_000)])
        seen.append(try await cluster.presence(home: "s1", after: 0, limit: 10))
        // A later session elsewhere wins; the old home's late write is dropped.
        try await cluster.publish([presence("alice", home: "s2", start: 2_000_000, info: [2])])
        try await cluster.publish([presence("alice", home: "s1", start: 1_000_000, info: [9], departure: .offline)])
        seen.append(try await cluster.presence(home: "s2", after: 0, limit: 10))
        seen.append(try await cluster.presence(home: "s1", after: 0, limit: 10))
        // The same home may write an earlier session start (its own record).
        try await cluster.publish([presence("carol", home: "s2", start: 500_000, info: [3])])
        // Retire: present rows of the home go offline, info emptied.
        try await cluster.publish([presence("dave", home: "s1", start: 3_000_000, departure: .unregistered)])
        try await cluster.retire(home: "s1")
        seen.append(try await cluster.presence(home: "s1", after: 0, limit: 10))
        seen.append(try await cluster.presence(home: "s2", after: 0, limit: 1))
        // Prune: departed rows written before the time go; the present stay.
        let now = Int64(Date().timeIntervalSince1970)
        try await cluster.prunePresence(before: now - 3600)
        seen.append(try await cluster.presence(home: "s1", after: 0, limit: 10))
        try await cluster.prunePresence(before: now + 3600)
        seen.append(try await cluster.presence(home: "s1", after: 0, limit: 10))
        seen.append(try await cluster.presence(home: "s2", after: 0, limit: 0))
        return seen
    }

    @Test func presenceFollowsTheMemoryStoresRules() async throws {
        let store = try PostgresStore(settings: try await TestDatabase.fresh("presence"))
        defer { store.close() }
        let postgres = try await Self.presenceScenario(store)
        let memory = try await Self.presenceScenario(MemoryClusterStore())
        #expect(postgres.map(unsequenced) == memory.map(unsequenced))
        // Spot checks of what the scenario means.
        #expect(unsequenced(postgres[0]) == [presence("alice", home: "s1", start: 1_000_000), presence("bob", home: "s1", start: 1_000_500)])
        #expect(postgres[1].map(\.id) == ["carol", "alice"])
        #expect(postgres[2].map(\.id) == ["bob"])
        // dave (already departed) before bob, whom the retire wrote later.
        #expect(unsequenced(postgres[3]) == [presence("dave", home: "s1", start: 3_000_000, departure: .unregistered),
                                             presence("bob", home: "s1", start: 1_000_500, info: [], departure: .offline)])
        #expect(postgres[6].isEmpty)
    }

    @Test func sequencesIncreasePerHomeInWriteOrder() async throws {
        let store = try PostgresStore(settings: try await TestDatabase.fresh("seq"))
        defer { store.close() }
        var cursor: Int64 = 0
        var got: [String] = []
        for batch in 0..<5 {
            try await store.publish((0..<4).map { presence("c\(batch)-\($0)", home: "s1", start: Int64(batch * 10 + $0)) })
            let page = try await store.presence(home: "s1", after: cursor, limit: 3)
            got += page.map(\.id)
            cursor = page.last?.sequence ?? cursor
            #expect(zip(page, page.dropFirst()).allSatisfy { $0.sequence < $1.sequence })
        }
        while true {
            let page = try await store.presence(home: "s1", after: cursor, limit: 3)
            if page.isEmpty { break }
            got += page.map(\.id)
            cursor = page.last?.sequence ?? cursor
        }
        #expect(got == (0..<5).flatMap { batch in (0..<4).map { "c\(batch)-\($0)" } })
    }

    @Test func notificationsReachAnotherServer() async throws {
        let settings = try await TestDatabase.fresh("notify")
        let listener = try PostgresStore(settings: settings)
        let writer = try PostgresStore(settings: settings)
        defer { listener.close(); writer.close() }
        let stream = listener.presenceNotifications()
        let deadline = ContinuousClock.now + .seconds(15)
        while !listener.isListening && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        #expect(listener.isListening)
        try await writer.publish([presence("alice", home: "s9", start: 1)])
        try await writer.retire(home: "s8")
        let received = await withTaskGroup(of: [String].self) { group in
            group.addTask {
                var names: [String] = []
                for await name in stream {
                    names.append(name)
                    if names.count == 2 { break }
                }
                return names
            }
            group.addTask {
                try? await Task.sleep(for: .seconds(10))
                return []
            }
            let first = await group.next() ?? []
            group.cancelAll()
            return first
        }
        #expect(received == ["s9", "s8"])
        // close() ends the streams.
        listener.close()
        var ended = false
        for await _ in listener.presenceNotifications() {}
        ended = true
        #expect(ended)
    }

    // MARK: A database that is down

    @Test func aClosedPortIsAStoreErrorNotAHang() async throws {
        // A port nothing listens on: bind one, and close it.
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) } }
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) } }
        let port = Int(UInt16(bigEndian: address.sin_port))
        close(descriptor)
        var settings = PostgresStore.Settings(address: .tcp(host: "127.0.0.1", port: port), user: "postgres", database: "postgres")
        settings.timeout = .seconds(2)
        let started = ContinuousClock.now
        do {
            _ = try PostgresStore(settings: settings)
            Issue.record("opened a store on a closed port")
        } catch {
            guard case .cannotOpen = error else { Issue.record("\(error)"); return }
        }
        #expect(ContinuousClock.now - started < .seconds(8))
    }

    @Test func aSilentServerIsAStoreErrorWithinTheTimeout() async throws {
        // A listener that accepts connections (the kernel does) and never answers.
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(descriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) } }
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) } }
        listen(descriptor, 16)
        let port = Int(UInt16(bigEndian: address.sin_port))
        var settings = PostgresStore.Settings(address: .tcp(host: "127.0.0.1", port: port), user: "postgres", database: "postgres")
        settings.timeout = .seconds(1)
        let started = ContinuousClock.now
        await #expect(throws: StoreError.self) { _ = try await PostgresStore.open(settings: settings) }
        #expect(ContinuousClock.now - started < .seconds(6))
    }

    @Test func callsAfterCloseFailFast() async throws {
        let store = try PostgresStore(settings: try await TestDatabase.fresh("closed"))
        store.close()
        let started = ContinuousClock.now
        #expect(throws: StoreError.self) { try store.load() }
        await #expect(throws: StoreError.self) { try await store.mail(for: "bob") }
        #expect(ContinuousClock.now - started < .seconds(25))
    }
}
