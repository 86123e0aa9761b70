import Store
import Testing
import TestSupport

/// What every ``DurableStore`` does, run against each kind: the memory store and the SQLite file.
@Suite("DurableStore contract")
struct StoreContractTests {
    @Test(arguments: StoreKind.allCases)
    func aNewStoreIsEmpty(kind: StoreKind) throws {
        let (store, folder) = try kind.make()
        defer { withExtendedLifetime(folder) {} }
        #expect(try store.load() == StoreSnapshot())
        try store.apply([])
        #expect(try store.load() == StoreSnapshot())
    }

    @Test(arguments: StoreKind.allCases)
    func claimsArePutReplacedAndRemovedAndLoadSortedByID(kind: StoreKind) throws {
        let (store, folder) = try kind.make()
        defer { withExtendedLifetime(folder) {} }
        try store.apply([.putClaim(claim("carol")), .putClaim(claim("alice")), .putClaim(claim("bob"))])
        #expect(try store.load().claims.map(\.id) == ["alice", "bob", "carol"])

        // A put for an ID already claimed replaces the whole record.
        let rotated = claim("alice", key: 9, claimedAt: 3_000, lastSeen: 4_000)
        try store.apply([.putClaim(rotated)])
        try store.apply([.removeClaim(id: "bob"), .removeClaim(id: "nobody")])
        let loaded = try store.load()
        #expect(loaded.claims == [rotated, claim("carol")])
        #expect(loaded.mail.isEmpty)
    }

    @Test(arguments: StoreKind.allCases)
    func mailIsPutReplacedAndRemovedAndLoadsOldestFirst(kind: StoreKind) throws {
        let (store, folder) = try kind.make()
        defer { withExtendedLifetime(folder) {} }
        try store.apply([.putMail(mail(30)), .putMail(mail(10, to: "carol")), .putMail(mail(20))])
        #expect(try store.load().mail.map(\.serial) == [10, 20, 30])

        let replaced = mail(20, to: "dave", from: "erin", sealed: [9, 9])
        try store.apply([.putMail(replaced), .removeMail(serial: 10), .removeMail(serial: 99)])
        let loaded = try store.load()
        #expect(loaded.mail == [replaced, mail(30)])
        #expect(loaded.claims.isEmpty)
    }

    @Test(arguments: StoreKind.allCases)
    func changesApplyInOrderWithinABatch(kind: StoreKind) throws {
        let (store, folder) = try kind.make()
        defer { withExtendedLifetime(folder) {} }
        try store.apply([
            .putClaim(claim("alice")), .removeClaim(id: "alice"),               // put then remove: removed
            .removeClaim(id: "bob"), .putClaim(claim("bob", key: 3)),           // remove then put: there
            .putClaim(claim("carol", key: 4)), .putClaim(claim("carol", key: 5)), // the later put wins
            .putMail(mail(1)), .removeMail(serial: 1),
            .removeMail(serial: 2), .putMail(mail(2)),
            .putMail(mail(3, sealed: [1])), .putMail(mail(3, sealed: [2])),
        ])
        let loaded = try store.load()
        #expect(loaded.claims == [claim("bob", key: 3), claim("carol", key: 5)])
        #expect(loaded.mail == [mail(2), mail(3, sealed: [2])])
    }

    @Test(arguments: StoreKind.allCases)
    func edgeValuesRoundTrip(kind: StoreKind) throws {
        let (store, folder) = try kind.make()
        defer { withExtendedLifetime(folder) {} }
        let empty = ClaimRecord(id: "émile-Ω", signingKey: [], agreementKey: [], claimedAt: .min, lastSeen: .max)
        let zeros = ClaimRecord(id: "z", signingKey: [0, 0, 0], agreementKey: [0], claimedAt: 0, lastSeen: -1)
        let blank = MailRecord(serial: .min, recipient: "", sender: "", queuedAt: .max, sealed: [])
        let large = MailRecord(serial: .max, recipient: "b", sender: "a", queuedAt: 0, sealed: (0..<70_000).map { UInt8(truncatingIfNeeded: $0) })
        try store.apply([.putClaim(empty), .putClaim(zeros), .putMail(large), .putMail(blank)])
        let loaded = try store.load()
        #expect(loaded.claims == [zeros, empty].sorted { $0.id < $1.id })
        #expect(loaded.mail == [blank, large])
    }

    /// Many random batches against a plain model, and the same batches coalesced (what the
    /// writer applies) against a second store: all three agree after every batch.
    @Test(arguments: StoreKind.allCases)
    func randomBatchesLeaveWhatAModelSays(kind: StoreKind) throws {
        let (store, folder) = try kind.make()
        let (coalescedStore, coalescedFolder) = try kind.make()
        defer { withExtendedLifetime((folder, coalescedFolder)) {} }
        var generator = SplitMix64(seed: 15)
        var model = Model()
        for _ in 0..<60 {
            let batch = randomChanges(Int(generator.next() % 25), using: &generator)
            model.apply(batch)
            try store.apply(batch)
            try coalescedStore.apply(StoreWriter.coalesce(batch))
            let expected = model.snapshot
            #expect(try store.load() == expected)
            #expect(try coalescedStore.load() == expected)
        }
        #expect(!model.claims.isEmpty && !model.mail.isEmpty)
    }
}
