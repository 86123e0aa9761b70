import Dispatch
import Foundation
import Synchronization

/// Applies ``StoreChange``s to a ``DurableStore`` off the event loop, in batches.
///
/// ``enqueue(_:)`` appends under a lock and returns: it never waits on the disk, so an event
/// loop can call it for every change. A dedicated thread (not an event loop's) applies what
/// is pending as one batch, one transaction, every `flushInterval`, or as soon as `batchSize`
/// changes have been enqueued since its last batch. Before a batch is applied it is coalesced
/// (``coalesce(_:)``: only the last change to each claim or message is kept, which leaves the
/// same state).
///
/// A batch the store refuses is reported to `onError` (on the writer's thread) and kept, to be
/// retried at the next interval (a failing store is not retried sooner, whatever is enqueued).
/// What waits is bounded by `maxPending`: beyond it the oldest changes are dropped and counted
/// (``Statistics/dropped``), and reported to `onError` at the next batch. So a crash loses at
/// most what was pending, and a store that stays down costs bounded memory.
///
/// ``flush()`` applies everything pending now and waits (tests, and the end of a shutdown);
/// ``close()`` flushes and stops the thread. The thread keeps the writer alive until
/// ``close()``: close every writer you create.
public final class StoreWriter: Sendable {
    /// The writer's counters, for metrics and tests.
    public struct Statistics: Hashable, Sendable {
        /// Batches the store applied.
        public var batchesWritten = 0
        /// Changes in those batches (after coalescing).
        public var changesWritten = 0
        /// Changes left out of batches because a later change to the same claim or message
        /// made them moot.
        public var changesCoalesced = 0
        /// Batches the store refused (each is retried).
        public var failures = 0
        /// Changes dropped, oldest first, because more than `maxPending` were waiting.
        public var dropped = 0
        /// Changes waiting now (including a refused batch waiting for its retry).
        public var pending = 0
        /// The last error the store returned, until a batch succeeds.
        public var lastError: StoreError?
        /// How long the last batch applied took in the store.
        public var lastBatchLatency: Duration?
        /// How long all the applied batches took together: with ``batchesWritten``, the mean
        /// latency over any interval (what a Prometheus `rate()` of both gives).
        public var totalBatchLatency: Duration = .zero

        /// All counters at zero, nothing pending, no error, no latency yet.
        public init() {}
    }

    /// The store the changes go to.
    public let store: any DurableStore
    /// The longest a change waits before its batch is applied (and the retry interval).
    public let flushInterval: Duration
    /// Enqueued changes that wake the writer before the interval is over.
    public let batchSize: Int
    /// The most changes kept waiting; beyond it the oldest are dropped.
    public let maxPending: Int

    private let onError: @Sendable (StoreError) -> Void
    private let state = Mutex(State())
    private let wake = DispatchSemaphore(value: 0)
    private let exited = DispatchSemaphore(value: 0)

    /// Starts the writer's thread.
    ///
    /// - Parameters:
    ///   - store: where batches go; its ``DurableStore/apply(_:)`` is called from the
    ///     writer's thread only.
    ///   - flushInterval: how often pending changes are applied (default 1 s).
    ///   - batchSize: this many changes enqueued since the last batch wake the writer at once
    ///     (default 512).
    ///   - maxPending: the bound on waiting changes (default 100 000).
    ///   - onError: told of each refused batch, and of dropped changes, on the writer's
    ///     thread (log it; it must not call ``flush()`` or ``close()``).
    public init(store: any DurableStore, flushInterval: Duration = .seconds(1), batchSize: Int = 512,
                maxPending: Int = 100_000, onError: @escaping @Sendable (StoreError) -> Void = { _ in }) {
        self.store = store
        self.flushInterval = flushInterval > .zero ? flushInterval : .milliseconds(1)
        self.batchSize = max(1, batchSize)
        self.maxPending = max(1, maxPending)
        self.onError = onError
        let thread = Thread { [self] in run() }
        thread.name = "natchat-store-writer"
        thread.start()
    }

    /// Adds a change to the next batch. Never waits on the disk.
    /// After ``close()`` the change is dropped (and counted).
    public func enqueue(_ change: StoreChange) {
        enqueue(contentsOf: CollectionOfOne(change))
    }

    /// Adds changes, in order, to the next batch. Never waits on the disk.
    /// After ``close()`` they are dropped (and counted).
    public func enqueue(contentsOf changes: some Sequence<StoreChange>) {
        let wakeNow = state.withLock { state -> Bool in
            guard !state.stopped else {
                state.statistics.dropped += changes.reduce(0) { count, _ in count + 1 }
                return false
            }
            var added = 0
            for change in changes {
                state.pending.append(change)
                added += 1
            }
            state.newSinceBatch += added
            state.dropBeyond(maxPending)
            guard !state.failing, !state.wakeRequested, state.newSinceBatch >= batchSize else { return false }
            state.wakeRequested = true
            return true
        }
        if wakeNow { wake.signal() }
    }

    /// Applies everything enqueued before this call, and waits until it is applied.
    ///
    /// - Throws: the store's error when the batch was refused (its changes stay pending, to
    ///   be retried); ``StoreError/failed(reason:)`` after ``close()`` when changes were left
    ///   unwritten.
    public func flush() throws(StoreError) {
        let semaphore = DispatchSemaphore(value: 0)
        let ticket = state.withLock { state -> UInt64? in
            guard !state.stopped else { return nil }
            state.requested += 1
            state.waiters.append(Waiter(ticket: state.requested, semaphore: semaphore))
            return state.requested
        }
        guard let ticket else {
            let left = state.withLock { $0.pending.count }
            if left > 0 { throw .failed(reason: "the store writer is closed with \(left) changes unwritten") }
            return
        }
        wake.signal()
        semaphore.wait()
        if let error = state.withLock({ $0.outcomes.removeValue(forKey: ticket) ?? nil }) { throw error }
    }

    /// Flushes, then stops the writer's thread and waits for it. Call it once, at shutdown;
    /// a second call does nothing (it throws if changes were left unwritten).
    ///
    /// - Throws: the store's error when the last batch was refused: its changes are lost
    ///   (``Statistics/pending`` still counts them).
    public func close() throws(StoreError) {
        let first = state.withLock { state -> Bool in
            defer { state.closing = true }
            return !state.closing
        }
        guard first else {
            let left = state.withLock { $0.pending.count }
            if left > 0 { throw .failed(reason: "the store writer is closed with \(left) changes unwritten") }
            return
        }
        var failure: StoreError?
        do { try flush() } catch { failure = error }
        exited.wait()
        if let failure { throw failure }
    }

    /// The counters now.
    public var statistics: Statistics {
        state.withLock { state in
            var statistics = state.statistics
            statistics.pending = state.pending.count
            return statistics
        }
    }

    /// The changes that leave the same state as `changes` applied in order: only the last
    /// change to each claim (by ID) and each message (by serial) is kept, in the order of those
    /// last changes. A put replaces a whole row and a remove deletes it, so the last one alone
    /// decides (a put then a remove is a remove; a remove then a put is the put).
    public static func coalesce(_ changes: [StoreChange]) -> [StoreChange] {
        enum Key: Hashable {
            case claim(String)
            case mail(Int64)
        }
        var seen = Set<Key>(minimumCapacity: changes.count)
        var kept: [StoreChange] = []
        kept.reserveCapacity(changes.count)
        for change in changes.reversed() {
            let key: Key = switch change {
            case .putClaim(let claim): .claim(claim.id)
            case .removeClaim(let id): .claim(id)
            case .putMail(let message): .mail(message.serial)
            case .removeMail(let serial): .mail(serial)
            }
            if seen.insert(key).inserted { kept.append(change) }
        }
        kept.reverse()
        return kept
    }

    // MARK: The writer's thread

    private func run() {
        let interval = Self.dispatchInterval(flushInterval)
        while true {
            _ = wake.wait(timeout: .now() + interval)
            if writeBatch() { break }
        }
        exited.signal()
    }

    /// One round: applies what is pending, answers the flushes it covers. Returns true when
    /// the writer is closing (this was the last round).
    private func writeBatch() -> Bool {
        let (batch, ticket, last, newlyDropped) = state.withLock { state in
            state.wakeRequested = false
            state.newSinceBatch = 0
            if state.closing { state.stopped = true }
            let dropped = state.statistics.dropped - state.reportedDropped
            state.reportedDropped = state.statistics.dropped
            return (state.pending.takeAll(), state.requested, state.closing, dropped)
        }
        if newlyDropped > 0 {
            onError(.failed(reason: "\(newlyDropped) pending store changes were dropped, oldest first: more than \(maxPending) were waiting"))
        }
        var failure: StoreError?
        if !batch.isEmpty {
            let coalesced = Self.coalesce(batch)
            let clock = ContinuousClock()
            let started = clock.now
            do {
                try store.apply(coalesced)
            } catch {
                failure = error
            }
            let latency = clock.now - started
            state.withLock { state in
                if let failure {
                    state.pending.prepend(coalesced)
                    state.dropBeyond(maxPending)
                    state.failing = true
                    state.statistics.failures += 1
                    state.statistics.lastError = failure
                } else {
                    state.failing = false
                    state.statistics.batchesWritten += 1
                    state.statistics.changesWritten += coalesced.count
                    state.statistics.changesCoalesced += batch.count - coalesced.count
                    state.statistics.lastError = nil
                    state.statistics.lastBatchLatency = latency
                    state.statistics.totalBatchLatency += latency
                }
            }
            if let failure { onError(failure) }
        }
        let answered = state.withLock { state -> [DispatchSemaphore] in
            var answered: [DispatchSemaphore] = []
            state.waiters.removeAll { waiter in
                guard waiter.ticket <= ticket else { return false }
                state.outcomes[waiter.ticket] = failure
                answered.append(waiter.semaphore)
                return true
            }
            return answered
        }
        for semaphore in answered { semaphore.signal() }
        return last
    }

    static func dispatchInterval(_ duration: Duration) -> DispatchTimeInterval {
        let (seconds, attoseconds) = duration.components
        // A day at most: a longer interval (a test's "never") waits the same way.
        guard seconds < 86_400 else { return .seconds(86_400) }
        return .nanoseconds(Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000))
    }

    private struct Waiter {
        let ticket: UInt64
        let semaphore: DispatchSemaphore
    }

    private struct State {
        var pending = PendingChanges()
        /// Changes enqueued since the writer last took a batch (what wakes it early).
        var newSinceBatch = 0
        var wakeRequested = false
        /// The last batch was refused: wait for the interval (or a flush) before retrying.
        var failing = false
        /// Flush requests issued; a batch taken when this was N answers requests 1...N.
        var requested: UInt64 = 0
        var waiters: [Waiter] = []
        /// The error (or nil) each answered flush gets.
        var outcomes: [UInt64: StoreError?] = [:]
        var closing = false
        /// The last batch has been taken: nothing more is applied.
        var stopped = false
        var reportedDropped = 0
        var statistics = Statistics()

        /// Drops the oldest changes beyond `bound`.
        mutating func dropBeyond(_ bound: Int) {
            let over = pending.count - bound
            guard over > 0 else { return }
            pending.dropOldest(over)
            statistics.dropped += over
        }
    }
}

/// A FIFO of changes whose oldest can be dropped in O(1) (amortised).
struct PendingChanges {
    private var items: [StoreChange] = []
    private var head = 0

    var count: Int { items.count - head }

    mutating func append(_ change: StoreChange) { items.append(change) }

    mutating func dropOldest(_ n: Int) {
        head += min(n, count)
        if head == items.count {
            items.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 1024 && head * 2 >= items.count {
            items.removeFirst(head)
            head = 0
        }
    }

    /// Everything, oldest first; leaves it empty.
    mutating func takeAll() -> [StoreChange] {
        var taken: [StoreChange] = []
        swap(&taken, &items)
        if head > 0 { taken.removeFirst(head) }
        head = 0
        return taken
    }

    /// Puts `changes` back before everything waiting (a refused batch, to retry first).
    mutating func prepend(_ changes: [StoreChange]) {
        var merged = changes
        merged.append(contentsOf: items[head...])
        items = merged
        head = 0
    }
}
