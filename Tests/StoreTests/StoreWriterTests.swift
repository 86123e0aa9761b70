import SQLiteStore
import Store
import Testing
import TestSupport

/// An interval no test waits for: batches go at the batch size, a flush or a close.
private let never: Duration = .seconds(3_600)

@Suite("StoreWriter")
struct StoreWriterTests {
    @Test func changesUnderTheBatchSizeGoAsOneBatchAtAFlush() throws {
        let store = RecordingStore()
        let writer = StoreWriter(store: store, flushInterval: never, batchSize: 512)
        defer { try? writer.close() }
        let changes = (0..<100).map { StoreChange.putMail(mail(Int64($0))) }
        writer.enqueue(contentsOf: changes[..<60])
        for change in changes[60...] { writer.enqueue(change) }
        #expect(writer.statistics.pending == 100)
        try writer.flush()
        #expect(store.batches == [changes])
        let statistics = writer.statistics
        #expect(statistics.batchesWritten == 1 && statistics.changesWritten == 100 && statistics.pending == 0)
        #expect(statistics.failures == 0 && statistics.lastError == nil && statistics.lastBatchLatency != nil)
        // Nothing pending: a flush applies nothing.
        try writer.flush()
        #expect(store.calls == 1)
    }

    @Test func reachingTheBatchSizeWakesTheWriter() throws {
        let store = RecordingStore()
        let writer = StoreWriter(store: store, flushInterval: never, batchSize: 8)
        defer { try? writer.close() }
        writer.enqueue(contentsOf: (0..<7).map { StoreChange.putClaim(claim("c\($0)")) })
        writer.enqueue(.putClaim(claim("c7")))
        // No flush: the eighth change wakes the writer, long before its hour-long interval.
        #expect(store.waitForApply())
        #expect(store.batches.map(\.count) == [8])
        #expect(try store.inner.load().claims.count == 8)
    }

    @Test func theWriterCoalescesABatch() throws {
        let store = RecordingStore()
        let writer = StoreWriter(store: store, flushInterval: never)
        defer { try? writer.close() }
        writer.enqueue(contentsOf: [.putClaim(claim("alice")), .putMail(mail(1)), .putClaim(claim("bob")),
                                    .removeClaim(id: "alice"), .putClaim(claim("bob", key: 5)), .removeMail(serial: 1)])
        try writer.flush()
        #expect(store.batches == [[.removeClaim(id: "alice"), .putClaim(claim("bob", key: 5)), .removeMail(serial: 1)]])
        #expect(writer.statistics.changesCoalesced == 3 && writer.statistics.changesWritten == 3)
        #expect(try store.inner.load() == StoreSnapshot(claims: [claim("bob", key: 5)]))
    }

    @Test func coalescingKeepsTheLastChangeToEachRecord() {
        let changes: [StoreChange] = [.putClaim(claim("a")), .putClaim(claim("b")), .removeClaim(id: "a"), .putMail(mail(1)),
                                      .putClaim(claim("a", key: 2)), .removeMail(serial: 1), .removeMail(serial: 2)]
        #expect(StoreWriter.coalesce(changes) == [.putClaim(claim("b")), .putClaim(claim("a", key: 2)),
                                                  .removeMail(serial: 1), .removeMail(serial: 2)])
        #expect(StoreWriter.coalesce([]) == [])
        // A claim and a message never stand for each other, whatever their keys.
        #expect(StoreWriter.coalesce([.removeClaim(id: "1"), .removeMail(serial: 1)]).count == 2)
    }

    @Test func aRefusedBatchIsKeptAndWrittenByTheNextFlush() throws {
        let store = RecordingStore()
        let log = ErrorLog()
        let writer = StoreWriter(store: store, flushInterval: never, onError: log.callback)
        defer { try? writer.close() }
        store.refuse(true)
        writer.enqueue(contentsOf: [.putClaim(claim("alice")), .putMail(mail(1)), .putMail(mail(2))])
        #expect(throws: StoreError.failed(reason: "refused for the test")) { try writer.flush() }
        var statistics = writer.statistics
        #expect(statistics.failures == 1 && statistics.pending == 3 && statistics.batchesWritten == 0)
        #expect(statistics.lastError == .failed(reason: "refused for the test"))
        #expect(log.all == [.failed(reason: "refused for the test")])

        // Changes enqueued meanwhile go after the kept ones.
        writer.enqueue(.removeMail(serial: 1))
        store.refuse(false)
        try writer.flush()
        #expect(store.batches == [[.putClaim(claim("alice")), .putMail(mail(2)), .removeMail(serial: 1)]])
        #expect(try store.inner.load() == StoreSnapshot(claims: [claim("alice")], mail: [mail(2)]))
        statistics = writer.statistics
        #expect(statistics.pending == 0 && statistics.lastError == nil && statistics.batchesWritten == 1)
    }

    @Test func aRefusedBatchIsRetriedAtTheNextInterval() throws {
        let store = RecordingStore()
        let writer = StoreWriter(store: store, flushInterval: .milliseconds(10))
        defer { try? writer.close() }
        store.refuse(true)
        writer.enqueue(.putClaim(claim("alice")))
        #expect(store.waitForApply())       // refused
        store.refuse(false)
        // No flush: the writer tries again by itself, until the store takes it.
        while try store.inner.load().claims.isEmpty {
            guard store.waitForApply() else { Issue.record("the writer did not retry"); return }
        }
        #expect(try store.inner.load().claims == [claim("alice")])
        #expect(writer.statistics.failures >= 1 && writer.statistics.pending == 0)
    }

    @Test func pendingChangesAreBoundedOldestDroppedFirst() throws {
        let store = RecordingStore()
        let log = ErrorLog()
        let writer = StoreWriter(store: store, flushInterval: never, maxPending: 10, onError: log.callback)
        defer { try? writer.close() }
        store.refuse(true)
        writer.enqueue(contentsOf: (0..<25).map { StoreChange.putMail(mail(Int64($0))) })
        #expect(writer.statistics.pending == 10 && writer.statistics.dropped == 15)
        #expect(throws: StoreError.self) { try writer.flush() }
        // The refused batch is kept within the bound too.
        writer.enqueue(contentsOf: (25..<30).map { StoreChange.putMail(mail(Int64($0))) })
        #expect(writer.statistics.pending == 10 && writer.statistics.dropped == 20)
        store.refuse(false)
        try writer.flush()
        #expect(try store.inner.load().mail.map(\.serial) == Array(20..<30))
        #expect(log.all.contains { if case .failed(let reason) = $0 { reason.contains("dropped") } else { false } })
    }

    @Test func closeWritesWhatIsPendingAndStops() throws {
        let store = RecordingStore()
        let writer = StoreWriter(store: store, flushInterval: never)
        writer.enqueue(.putClaim(claim("alice")))
        try writer.close()
        #expect(try store.inner.load().claims == [claim("alice")])
        // After close: nothing more is applied; what is enqueued is counted as dropped.
        writer.enqueue(.putClaim(claim("bob")))
        try writer.flush()
        try writer.close()
        #expect(store.calls == 1)
        #expect(writer.statistics.dropped == 1 && writer.statistics.pending == 0)
    }

    @Test func closeReportsChangesItCouldNotWrite() {
        let store = RecordingStore()
        let writer = StoreWriter(store: store, flushInterval: never)
        store.refuse(true)
        writer.enqueue(.putClaim(claim("alice")))
        #expect(throws: StoreError.self) { try writer.close() }
        #expect(writer.statistics.pending == 1)
        #expect(throws: StoreError.self) { try writer.flush() }
    }

    @Test func writesReachAnSQLiteFile() throws {
        let folder = try TemporaryFolder()
        let path = folder.file("store.sqlite")
        var generator = SplitMix64(seed: 3)
        var model = Model()
        let writer = StoreWriter(store: try SQLiteStore(path: path), flushInterval: never, batchSize: 50)
        for _ in 0..<20 {
            let changes = randomChanges(30, using: &generator)
            model.apply(changes)
            writer.enqueue(contentsOf: changes)
        }
        try writer.close()
        #expect(try SQLiteStore(path: path).load() == model.snapshot)
        #expect(writer.statistics.batchesWritten >= 1)
    }
}
