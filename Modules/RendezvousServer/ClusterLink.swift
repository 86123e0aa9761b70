import Addressing
import Foundation
import Logging
import MonotonicTime
import Registry
import Store
import Synchronization
import TransportPosix

/// The driver between a server's registry and the database its cluster shares: it performs
/// the registry's cluster outputs off the event loop and feeds the answers back on it.
///
/// - **Presence out:** records the registry emits (``RendezvousService/ClusterHooks/publish``)
///   are coalesced per ID and written every ``Configuration/publishInterval`` as one
///   transaction. Keep-alives never emit one, so the writes per client-hour are those of its
///   registrations, moves and departure (docs/several-servers.md).
/// - **Presence in:** on each notification from the database, and every
///   ``Configuration/pollInterval`` in case one was lost, it reads what every other server
///   wrote since its cursor for that server, and hands it to the registry.
/// - **Heartbeat:** every ``Configuration/heartbeatInterval`` it renews this server's and
///   reads the others' (the registry takes a server silent past the keep-alive timeout for
///   dead); a server silent for twice that is retired in the database (its clients' records
///   become departures), by whichever server sees it first.
/// - **Claims:** each registration the registry parks is decided by the database
///   (``ClusterStore/claim(_:ttl:at:)``), a few at a time; a granted ID's mail is fetched
///   with it. A database that does not answer makes the decision `nil`: the registry then
///   registers only IDs it knows the registrant owns, and this link logs it loudly once.
///
/// Every failure is logged and retried at the next interval; what waits is bounded.
public final class ClusterLink: Sendable {
    /// Intervals and bounds.
    public struct Configuration: Sendable {
        /// This server's name in the cluster.
        public var name: String
        /// Where clients and other servers reach it (`IP:PORT`).
        public var advertise: String
        /// Seconds an ID's claim lives after its owner's latest registration.
        public var claimTTL: Int64
        /// A server whose heartbeat is this old is taken for dead (the keep-alive timeout).
        public var deadAfter: Duration
        public var heartbeatInterval: Duration = .seconds(5)
        public var publishInterval: Duration = .milliseconds(200)
        public var pollInterval: Duration = .seconds(1)
        /// Departed presence records older than this are deleted.
        public var pruneAfter: Duration = .seconds(3600)
        /// Batches of claims being decided at once.
        public var claimConcurrency = 4
        /// Presence records kept waiting while the database is down; beyond it the oldest go.
        public var maxPendingPresence = 100_000

        public init(name: String, advertise: String, claimTTL: Int64, deadAfter: Duration) {
            self.name = name
            self.advertise = advertise
            self.claimTTL = claimTTL
            self.deadAfter = deadAfter
        }
    }

    struct State {
        /// Presence waiting to be written, in order, at most one per ID.
        var pendingPresence: [PresenceRecord] = []
        var pendingIndex: [String: Int] = [:]
        var droppedPresence = 0
        /// Per other server: the sequence of the last record read.
        var cursors: [String: Int64] = [:]
        var servers: [ServerRecord] = []
        /// Servers whose heartbeat is older than ``Configuration/deadAfter`` (the registry
        /// removed their clients), and those of them whose presence was retired.
        var dead: Set<String> = []
        var retired: Set<String> = []
        var databaseDown = false
        /// The server the link runs for (set by ``run(host:)``): told when the database goes
        /// and comes back.
        var host: DatagramHost<RendezvousService>?
        /// Claims waiting for a batch (the registry parks at most 4 096 registrations).
        var pendingClaims: [ClaimRecord] = []
    }

    public let configuration: Configuration
    let store: any ClusterStore
    let logger: Logger
    private let state = Mutex(State())
    /// Wakes the claim loop: claims wait in ``State/pendingClaims`` and are decided in batches.
    private let claimWake: AsyncStream<Void>
    private let claimInput: AsyncStream<Void>.Continuation
    private let wake: AsyncStream<Void>
    private let wakeInput: AsyncStream<Void>.Continuation

    public init(store: any ClusterStore, configuration: Configuration, logger: Logger) {
        self.store = store
        self.configuration = configuration
        self.logger = logger
        (claimWake, claimInput) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        (wake, wakeInput) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// Enters this server in the cluster: its record, the shared secret, and its previous
    /// life's presence retired (a starting server knows none of its clients yet).
    public func join() async throws(StoreError) -> [UInt8] {
        let now = Self.unixTime()
        let secret = try await store.join(ServerRecord(name: configuration.name, advertise: configuration.advertise, heartbeat: now))
        try await store.retire(home: configuration.name)
        return secret
    }

    /// The registry's inputs to this link, for ``RendezvousService``.
    public func hooks(secret: [UInt8]) -> RendezvousService.ClusterHooks {
        RendezvousService.ClusterHooks(name: configuration.name, secret: secret,
                                       publish: { [self] record in enqueue(record) },
                                       confirmClaim: { [self] record in enqueueClaim(record) })
    }

    /// Presence records waiting to be written (for tests and status).
    public var pendingPresenceCount: Int { state.withLock { $0.pendingPresence.count } }

    /// What the admin listener shows of the link: whether the shared database answers, and
    /// what waits for it. One lock, no database call.
    public struct Status: Sendable, Hashable {
        public var databaseReachable: Bool
        public var pendingPresence: Int
        public var pendingClaims: Int

        public init(databaseReachable: Bool = true, pendingPresence: Int = 0, pendingClaims: Int = 0) {
            self.databaseReachable = databaseReachable
            self.pendingPresence = pendingPresence
            self.pendingClaims = pendingClaims
        }
    }

    /// The link's ``Status`` now.
    public var status: Status {
        state.withLock { Status(databaseReachable: !$0.databaseDown, pendingPresence: $0.pendingPresence.count,
                                pendingClaims: $0.pendingClaims.count) }
    }

    private func enqueue(_ record: PresenceRecord) {
        state.withLock { state in
            if let index = state.pendingIndex[record.id] {
                state.pendingPresence[index] = record
                return
            }
            if state.pendingPresence.count >= configuration.maxPendingPresence {
                let dropped = state.pendingPresence.removeFirst()
                state.pendingIndex[dropped.id] = nil
                state.pendingIndex = Dictionary(uniqueKeysWithValues: state.pendingPresence.enumerated().map { ($1.id, $0) })
                state.droppedPresence += 1
            }
            state.pendingIndex[record.id] = state.pendingPresence.count
            state.pendingPresence.append(record)
        }
    }

    /// Runs the link's loops until the task is cancelled; then writes what presence waits.
    public func run(host: DatagramHost<RendezvousService>) async {
        state.withLock { $0.host = host }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.heartbeatLoop(host: host) }
            group.addTask { await self.publishLoop() }
            group.addTask { await self.notificationLoop(host: host) }
            group.addTask { await self.pollLoop() }
            group.addTask { await self.readLoop(host: host) }
            group.addTask { await self.claimLoop(host: host) }
            group.addTask { await self.pruneLoop() }
            await group.waitForAll()
        }
    }

    /// Ends the link's streams (with the task cancelled, its loops return). The server's
    /// clients' presence stays in the database: when they register with another server, their
    /// peers see them move; those that do not are taken for gone when this server's heartbeat
    /// is older than the keep-alive timeout, as a silent client is.
    public func stop() {
        claimInput.finish()
        wakeInput.finish()
    }

    static func unixTime() -> Int64 { Int64(Date().timeIntervalSince1970) }

    private func sleep(_ duration: Duration) async -> Bool {
        do {
            try await Task.sleep(for: duration)
            return true
        } catch {
            return false
        }
    }

    private func databaseAnswered() {
        let (wasDown, host) = state.withLock { state in
            defer { state.databaseDown = false }
            return (state.databaseDown, state.host)
        }
        guard wasDown else { return }
        logger.notice("cluster: the database answers again; catching up")
        host?.perform { service, _, _ in service.databaseReachable(true) }
    }

    private func databaseFailed(_ error: StoreError, doing what: String) {
        let (wasDown, host) = state.withLock { state in
            defer { state.databaseDown = true }
            return (state.databaseDown, state.host)
        }
        if !wasDown {
            host?.perform { service, _, _ in service.databaseReachable(false) }
            logger.error("cluster: the database is unreachable; serving the clients in memory, refusing new IDs until it is back",
                         metadata: ["doing": "\(what)", "error": "\(error)"])
        } else {
            logger.debug("cluster: the database is still unreachable", metadata: ["doing": "\(what)", "error": "\(error)"])
        }
    }

    private func heartbeatLoop(host: DatagramHost<RendezvousService>) async {
        var failedLast = false
        repeat {
            do {
                // After an outage every server's last heartbeat may be old only because none
                // could write it: judge them at the next beat, when the live ones have
                // written theirs (else their clients would leave and come back).
                try await beat(host: host, judge: !failedLast)
                failedLast = false
            } catch {
                failedLast = true
                databaseFailed(error, doing: "heartbeat")
            }
        } while await sleep(configuration.heartbeatInterval)
    }

    /// Renews this server's heartbeat and takes in every server's record; with `judge`, also
    /// tells the registry which are alive, retires the long dead and re-reads the revived.
    private func beat(host: DatagramHost<RendezvousService>, judge: Bool) async throws(StoreError) {
        let now = Self.unixTime()
        let servers = try await store.heartbeat(server: configuration.name, at: now)
        databaseAnswered()
        guard judge else {
            state.withLock { $0.servers = servers }
            return
        }
        let deadAfter = configuration.deadAfter.components.seconds
        let (revived, toRetire) = state.withLock { state -> ([String], [String]) in
            var revived: [String] = []
            var toRetire: [String] = []
            for server in servers where server.name != configuration.name {
                let age = now - server.heartbeat
                if age > deadAfter { state.dead.insert(server.name) }
                if age > 2 * deadAfter {
                    if state.retired.insert(server.name).inserted { toRetire.append(server.name) }
                } else if age <= deadAfter, state.dead.remove(server.name) != nil {
                    // The registry removed its clients when it was taken for dead
                    // (retired or not): they come back only if read again.
                    state.retired.remove(server.name)
                    revived.append(server.name)
                }
            }
            // A server that came back: read all it holds (what it published since it
            // came back, or what it still held from before it went silent).
            for name in revived { state.cursors[name] = 0 }
            state.servers = servers
            return (revived, toRetire)
        }
        host.perform { service, output, instant in
            service.updateServers(servers, unixTime: now, now: instant, output: &output)
        }
        for name in toRetire {
            logger.warning("cluster: retiring a dead server's clients", metadata: ["server": "\(name)"])
            do {
                try await store.retire(home: name)
            } catch {
                // Tried again at the next heartbeat: until it is done, a server that
                // starts meanwhile reads the dead server's clients as present.
                state.withLock { _ = $0.retired.remove(name) }
                databaseFailed(error, doing: "retire a dead server's clients")
            }
        }
        if !revived.isEmpty { wakeInput.yield() }
    }

    /// A notification from a server this link has not listed yet (it just started): its
    /// record is read now rather than at the next heartbeat, so that its clients show within
    /// the notification's round trip and punches and relays can reach it.
    private func learnServer(_ name: String, host: DatagramHost<RendezvousService>) async {
        let known = state.withLock { state in state.servers.contains { $0.name == name } }
        guard !known else { return }
        do {
            try await beat(host: host, judge: true)
        } catch {
            databaseFailed(error, doing: "read the servers")
        }
    }

    private func publishLoop() async {
        while true {
            let alive = await sleep(configuration.publishInterval)
            let (batch, dropped) = state.withLock { state -> ([PresenceRecord], Int) in
                defer {
                    state.pendingPresence = []
                    state.pendingIndex = [:]
                    state.droppedPresence = 0
                }
                return (state.pendingPresence, state.droppedPresence)
            }
            if dropped > 0 {
                logger.error("cluster: presence records dropped while the database was unreachable", metadata: ["dropped": "\(dropped)"])
            }
            if !batch.isEmpty {
                do {
                    try await store.publish(batch)
                    databaseAnswered()
                } catch {
                    databaseFailed(error, doing: "publish presence")
                    // Put them back in front of what came since (newer records of an ID win).
                    state.withLock { state in
                        let newer = state.pendingPresence
                        state.pendingPresence = []
                        state.pendingIndex = [:]
                        for record in batch where !newer.contains(where: { $0.id == record.id }) {
                            state.pendingIndex[record.id] = state.pendingPresence.count
                            state.pendingPresence.append(record)
                        }
                        for record in newer {
                            state.pendingIndex[record.id] = state.pendingPresence.count
                            state.pendingPresence.append(record)
                        }
                    }
                }
            }
            if !alive {
                return
            }
        }
    }

    private func notificationLoop(host: DatagramHost<RendezvousService>) async {
        while !Task.isCancelled {
            for await home in store.presenceNotifications() where home != configuration.name {
                await learnServer(home, host: host)
                wakeInput.yield()
            }
            // The stream ended (the connection dropped or the store closed): listen again.
            guard await sleep(.seconds(1)) else { return }
        }
    }

    private func pollLoop() async {
        while await sleep(configuration.pollInterval) {
            wakeInput.yield()
        }
    }

    private func readLoop(host: DatagramHost<RendezvousService>) async {
        for await _ in wake {
            if Task.isCancelled { return }
            let homes = state.withLock { state in state.servers.map(\.name).filter { $0 != configuration.name } }
            for home in homes {
                await read(home: home, host: host)
            }
        }
    }

    private func read(home: String, host: DatagramHost<RendezvousService>) async {
        // Bounded: at most 50 pages of 1 000 per wake-up; the rest comes at the next.
        for _ in 0..<50 {
            let cursor = state.withLock { $0.cursors[home] ?? 0 }
            let records: [PresenceRecord]
            do {
                records = try await store.presence(home: home, after: cursor, limit: 1000)
                databaseAnswered()
            } catch {
                databaseFailed(error, doing: "read presence")
                return
            }
            guard let last = records.last else { return }
            state.withLock { $0.cursors[home] = max($0.cursors[home] ?? 0, last.sequence) }
            host.perform { service, output, now in service.applyPresence(records, now: now, output: &output) }
            if records.count < 1000 { return }
        }
    }

    private func enqueueClaim(_ record: ClaimRecord) {
        let queued = state.withLock { state in
            guard state.pendingClaims.count < ClusterLinkLimits.pendingClaims else { return false }
            state.pendingClaims.append(record)
            return true
        }
        if queued {
            claimInput.yield()
        } else {
            logger.warning("cluster: too many claims waiting for the database; a registration is dropped (its client retries)")
        }
    }

    /// Decides the waiting claims in batches of up to ``ClusterLinkLimits/claimBatch``, a
    /// few batches at a time: one round trip for a batch rather than one per claim, which
    /// is what a burst of registrations (a mass failover) needs.
    private func claimLoop(host: DatagramHost<RendezvousService>) async {
        await withTaskGroup(of: Void.self) { group in
            var running = 0
            for await _ in claimWake {
                while true {
                    let batch = state.withLock { state -> [ClaimRecord] in
                        let batch = Array(state.pendingClaims.prefix(ClusterLinkLimits.claimBatch))
                        state.pendingClaims.removeFirst(batch.count)
                        return batch
                    }
                    if batch.isEmpty { break }
                    if running >= configuration.claimConcurrency {
                        await group.next()
                        running -= 1
                    }
                    running += 1
                    group.addTask { await self.decide(batch, host: host) }
                }
            }
        }
    }

    private func decide(_ batch: [ClaimRecord], host: DatagramHost<RendezvousService>) async {
        var outcomes: [ClaimOutcome?] = Array(repeating: nil, count: batch.count)
        var mail: [String: [MailRecord]] = [:]
        do {
            let decided = try await store.claims(batch, ttl: configuration.claimTTL, at: Self.unixTime())
            let granted = zip(batch, decided).compactMap { record, outcome -> String? in
                if case .granted = outcome { return record.id }
                return nil
            }
            if !granted.isEmpty {
                for message in try await store.mail(forRecipients: granted) { mail[message.recipient, default: []].append(message) }
            }
            for (index, outcome) in decided.enumerated() where index < outcomes.count { outcomes[index] = outcome }
            databaseAnswered()
        } catch {
            databaseFailed(error, doing: "decide \(batch.count) claim(s)")
        }
        let answers = zip(batch, outcomes).compactMap { record, outcome -> (ClientID, ClaimOutcome?, [MailRecord])? in
            guard let id = try? ClientID(record.id) else { return nil }
            return (id, outcome, mail[record.id] ?? [])
        }
        host.perform { service, output, now in
            for (id, outcome, mail) in answers { service.claimDecided(id, outcome: outcome, mail: mail, now: now, output: &output) }
        }
    }

    private func pruneLoop() async {
        while await sleep(.seconds(600)) {
            do {
                try await store.prunePresence(before: Self.unixTime() - configuration.pruneAfter.components.seconds)
            } catch {
                databaseFailed(error, doing: "prune presence")
            }
        }
    }
}

enum ClusterLinkLimits {
    /// Claims waiting for the database; the registry bounds its parked registrations too.
    static let pendingClaims = 4096
    /// Most claims decided in one round trip.
    static let claimBatch = 128
}
