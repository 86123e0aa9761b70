import Foundation
import Synchronization

/// A ``ClusterStore`` in memory: several registries in one process (unit tests, coursework)
/// share it as servers share a PostgreSQL database, with the same rules for claims and
/// presence. Nothing is kept beyond the process.
public final class MemoryClusterStore: ClusterStore {
    struct State {
        var durable = (claims: [String: ClaimRecord](), mail: [Int64: MailRecord]())
        var servers: [String: ServerRecord] = [:]
        var secret: [UInt8]?
        var presence: [String: PresenceRecord] = [:]
        var nextSequence: Int64 = 1
        var listeners: [Int: AsyncStream<String>.Continuation] = [:]
        /// When each record was last written (Unix seconds): tombstones are pruned by it.
        var writtenAt: [String: Int64] = [:]
        var nextListener = 0
    }

    private let state = Mutex(State())
    private let makeSecret: @Sendable () -> [UInt8]
    private let clock: @Sendable () -> Int64

    /// - Parameters:
    ///   - secret: makes the shared secret when the first server joins.
    ///   - clock: the Unix time (seconds) records are written at, for ``prunePresence(before:)``.
    public init(secret: @escaping @Sendable () -> [UInt8] = { (0..<32).map { _ in UInt8.random(in: 0...255) } },
                clock: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970) }) {
        makeSecret = secret
        self.clock = clock
    }

    public var location: String { "memory (cluster)" }

    public func load() throws(StoreError) -> StoreSnapshot {
        state.withLock { state in
            StoreSnapshot(claims: state.durable.claims.values.sorted { $0.id < $1.id },
                          mail: state.durable.mail.values.sorted { $0.serial < $1.serial })
        }
    }

    public func apply(_ changes: [StoreChange]) throws(StoreError) {
        state.withLock { state in
            for change in changes {
                switch change {
                case .putClaim(let claim): state.durable.claims[claim.id] = claim
                case .removeClaim(let id): state.durable.claims[id] = nil
                case .putMail(let message): state.durable.mail[message.serial] = message
                case .removeMail(let serial): state.durable.mail[serial] = nil
                }
            }
        }
    }

    public func join(_ server: ServerRecord) async throws(StoreError) -> [UInt8] {
        let fresh = makeSecret()
        return state.withLock { state in
            state.servers[server.name] = server
            if state.secret == nil { state.secret = fresh }
            return state.secret ?? fresh
        }
    }

    public func heartbeat(server: String, at unixTime: Int64) async throws(StoreError) -> [ServerRecord] {
        state.withLock { state in
            state.servers[server]?.heartbeat = unixTime
            return state.servers.values.sorted { $0.name < $1.name }
        }
    }

    public func claim(_ record: ClaimRecord, ttl: Int64, at unixTime: Int64) async throws(StoreError) -> ClaimOutcome {
        state.withLock { state in
            if var held = state.durable.claims[record.id], unixTime < held.lastSeen &+ ttl {
                guard held.signingKey == record.signingKey, held.agreementKey == record.agreementKey else { return .heldByAnother(held) }
                held.lastSeen = max(held.lastSeen, record.lastSeen)
                state.durable.claims[record.id] = held
                return .granted(held)
            }
            state.durable.claims[record.id] = record
            return .granted(record)
        }
    }

    public func currentClaim(of id: String, ttl: Int64, at unixTime: Int64) async throws(StoreError) -> ClaimRecord? {
        state.withLock { state in
            guard let held = state.durable.claims[id], unixTime < held.lastSeen &+ ttl else { return nil }
            return held
        }
    }

    public func publish(_ records: [PresenceRecord]) async throws(StoreError) {
        let now = clock()
        let listeners = state.withLock { state in
            var homes: Set<String> = []
            for var record in records {
                if let stored = state.presence[record.id], stored.home != record.home, stored.sessionStart > record.sessionStart { continue }
                record.sequence = state.nextSequence
                state.nextSequence += 1
                state.presence[record.id] = record
                state.writtenAt[record.id] = now
                homes.insert(record.home)
            }
            return (Array(state.listeners.values), homes)
        }
        for home in listeners.1.sorted() { for listener in listeners.0 { listener.yield(home) } }
    }

    public func presence(home: String, after sequence: Int64, limit: Int) async throws(StoreError) -> [PresenceRecord] {
        state.withLock { state in
            Array(state.presence.values.filter { $0.home == home && $0.sequence > sequence }
                .sorted { $0.sequence < $1.sequence }.prefix(max(0, limit)))
        }
    }

    public func retire(home: String) async throws(StoreError) {
        let now = clock()
        let listeners = state.withLock { state in
            for (id, var record) in state.presence where record.home == home && record.departure == nil {
                record.departure = .offline
                record.info = []
                record.sequence = state.nextSequence
                state.nextSequence += 1
                state.presence[id] = record
                state.writtenAt[id] = now
            }
            return Array(state.listeners.values)
        }
        for listener in listeners { listener.yield(home) }
    }

    public func prunePresence(before unixTime: Int64) async throws(StoreError) {
        state.withLock { state in
            for (id, record) in state.presence where record.departure != nil && state.writtenAt[id, default: 0] < unixTime {
                state.presence[id] = nil
                state.writtenAt[id] = nil
            }
        }
    }

    public func mail(for recipient: String) async throws(StoreError) -> [MailRecord] {
        state.withLock { state in
            state.durable.mail.values.filter { $0.recipient == recipient }.sorted { $0.serial < $1.serial }
        }
    }

    public func presenceNotifications() -> AsyncStream<String> {
        let (stream, continuation) = AsyncStream<String>.makeStream(bufferingPolicy: .bufferingNewest(64))
        let key = state.withLock { state in
            let key = state.nextListener
            state.nextListener += 1
            state.listeners[key] = continuation
            return key
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.listeners.removeValue(forKey: key) }
        }
        return stream
    }

    /// Ends every notification stream (what closing a database connection does).
    public func close() {
        let listeners = state.withLock { state in
            defer { state.listeners = [:] }
            return Array(state.listeners.values)
        }
        for listener in listeners { listener.finish() }
    }
}
