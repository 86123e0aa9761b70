import Dispatch
import Foundation
import Logging
import PostgresNIO
import Store
import Synchronization

/// The store in a PostgreSQL database that several rendezvous servers share
/// (`natchat-server --store postgres://...`): a ``ClusterStore`` through postgres-nio's
/// connection pool (no libpq; TCP or a Unix-domain socket, no TLS).
///
/// Opening connects once on its own connection and runs the versioned schema migrations in
/// one transaction, under an advisory lock so that servers starting together migrate once;
/// a database migrated by a newer natchat is refused
/// (``StoreError/schemaTooNew(path:found:supported:)``). Then a pool serves every call.
///
/// Every call has a deadline (``Settings/timeout``, 5 s by default): a database that is down
/// or unreachable makes a call fail with a ``StoreError`` (``StoreError/failed(reason:)``;
/// ``StoreError/cannotOpen(path:reason:)`` at open) within it, never hang. A call that timed
/// out may still complete in the database afterwards: its outcome is unknown, which the
/// callers' writes tolerate (every write is an upsert or a delete, safe to repeat). What a
/// server does while the database is down is the caller's choice; the store only reports.
///
/// The synchronous calls (``init(settings:logger:secret:)``, ``load()``, ``apply(_:)``) block
/// their thread until the answer or the deadline; the work itself runs on the store's own
/// threads, not on Swift's cooperative pool, so that they may be called from any thread
/// (the ``StoreWriter``'s, a command's main thread, even a task) without starving it.
///
/// Close every store with ``close()``: it stops the pool and the notification listener and
/// ends the notification streams.
public final class PostgresStore: ClusterStore {
    /// The schema version this build writes: the number of migrations it knows.
    public static let schemaVersion = PostgresStore.migrations.count

    /// The channel presence changes are notified on; the payload is the home's name.
    public static let presenceChannel = "natchat_presence"

    /// The settings the store was opened with.
    public let settings: Settings

    /// The database as a URL without the password (``Settings/redactedURL``).
    public var location: String { settings.redactedURL }

    private let client: PostgresClient
    private let logger: Logger
    private let makeSecret: @Sendable () -> [UInt8]
    private let state = Mutex(State())
    private static let connectionIDs = Atomic<Int>(1_000_000)

    struct State {
        var runTask: Task<Void, Never>?
        var listenTask: Task<Void, Never>?
        var listenConnection: PostgresConnection?
        var listening = false
        var listeners: [Int: AsyncStream<String>.Continuation] = [:]
        var nextListener = 0
        var closed = false
    }

    /// Opens the store: connects, brings the schema up to date, and starts the pool. Blocks
    /// the calling thread, at most about ``Settings/timeout``.
    ///
    /// - Parameters:
    ///   - settings: where the database is (``Settings/parse(_:passwordFile:environment:)``).
    ///   - logger: where postgres-nio logs its background events (default: nowhere).
    ///   - secret: makes the cluster's shared secret when the first server joins (default:
    ///     32 random bytes from the system's generator).
    /// - Throws: ``StoreError/cannotOpen(path:reason:)`` when the database cannot be reached,
    ///   refuses the login or the migration fails; ``StoreError/schemaTooNew(path:found:supported:)``
    ///   when a newer natchat migrated it. Nothing is changed in a database that is refused.
    public convenience init(settings: Settings, logger: Logger? = nil,
                            secret: @escaping @Sendable () -> [UInt8] = PostgresStore.randomSecret) throws(StoreError) {
        self.init(unopened: settings, logger: logger, secret: secret)
        do throws(StoreError) {
            try blocking("opening") { [self] in try await migrate() }
        } catch {
            close()
            throw Self.openError(error, location: location)
        }
        start()
    }

    /// Opens the store from a task, without blocking a thread: what
    /// ``init(settings:logger:secret:)`` does.
    public static func open(settings: Settings, logger: Logger? = nil,
                            secret: @escaping @Sendable () -> [UInt8] = PostgresStore.randomSecret) async throws(StoreError) -> PostgresStore {
        let store = PostgresStore(unopened: settings, logger: logger, secret: secret)
        do throws(StoreError) {
            try await store.timed("opening") { [store] in try await store.migrate() }
        } catch {
            store.close()
            throw openError(error, location: store.location)
        }
        store.start()
        return store
    }

    private init(unopened settings: Settings, logger: Logger?, secret: @escaping @Sendable () -> [UInt8]) {
        self.settings = settings
        self.logger = logger ?? Logger(label: "natchat.postgres-store", factory: { _ in SwiftLogNoOpLogHandler() })
        makeSecret = secret
        client = PostgresClient(configuration: Self.clientConfiguration(settings), backgroundLogger: self.logger)
    }

    deinit {
        close()
    }

    /// 32 bytes from the system's random number generator.
    public static let randomSecret: @Sendable () -> [UInt8] = {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    /// Stops the pool and the notification listener, and ends every notification stream.
    /// Calls made after it fail with ``StoreError/failed(reason:)``. Idempotent.
    public func close() {
        let (run, listen, connection, listeners) = state.withLock { state in
            state.closed = true
            defer {
                state.runTask = nil
                state.listenTask = nil
                state.listenConnection = nil
                state.listeners = [:]
            }
            return (state.runTask, state.listenTask, state.listenConnection, Array(state.listeners.values))
        }
        listen?.cancel()
        if let connection { Self.shut(connection) }
        run?.cancel()
        for listener in listeners { listener.finish() }
    }

    private func start() {
        let client = self.client
        state.withLock { state in
            guard !state.closed, state.runTask == nil else { return }
            // Cancelling this task shuts the pool down (close()).
            state.runTask = Task(executorPreference: StoreExecutor.shared) { await client.run() }
        }
    }

    // MARK: DurableStore

    /// Every claim (sorted by ID) and every message (by serial), read in one snapshot.
    ///
    /// - Throws: ``StoreError/failed(reason:)`` when the read fails or times out.
    public func load() throws(StoreError) -> StoreSnapshot {
        try blocking("load") { [client, logger] in
            try await client.withTransaction(logger: logger) { connection in
                try await Self.run("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", on: connection, logger: logger)
                var claims: [ClaimRecord] = []
                let claimRows = try await connection.query(
                    "SELECT id, signing_key, agreement_key, claimed_at, last_seen FROM claims", logger: logger)
                for try await (id, signing, agreement, claimedAt, lastSeen) in claimRows.decode((String, Data, Data, Int64, Int64).self) {
                    claims.append(ClaimRecord(id: id, signingKey: [UInt8](signing), agreementKey: [UInt8](agreement),
                                              claimedAt: claimedAt, lastSeen: lastSeen))
                }
                var mail: [MailRecord] = []
                let mailRows = try await connection.query(
                    "SELECT serial, recipient, sender, queued_at, sealed FROM mail ORDER BY serial", logger: logger)
                for try await (serial, recipient, sender, queuedAt, sealed) in mailRows.decode((Int64, String, String, Int64, Data).self) {
                    mail.append(MailRecord(serial: serial, recipient: recipient, sender: sender, queuedAt: queuedAt, sealed: [UInt8](sealed)))
                }
                // PostgreSQL orders text by its collation; Swift's order is the one callers compare with.
                claims.sort { $0.id < $1.id }
                return StoreSnapshot(claims: claims, mail: mail)
            }
        }
    }

    /// Applies `changes` in order in one transaction: all of them, or, when any fails, none.
    /// A put is an upsert; a remove of a row that is not there does nothing.
    ///
    /// - Throws: ``StoreError/failed(reason:)``; nothing of the batch is then written (but a
    ///   batch that timed out may still commit: the writer's retry is harmless).
    public func apply(_ changes: [StoreChange]) throws(StoreError) {
        guard !changes.isEmpty else { return }
        try blocking("apply (\(changes.count) changes)") { [client, logger] in
            try await client.withTransaction(logger: logger) { connection in
                for change in changes {
                    switch change {
                    case .putClaim(let claim):
                        try await Self.run("""
                            INSERT INTO claims (id, signing_key, agreement_key, claimed_at, last_seen)
                            VALUES (\(claim.id), \(Data(claim.signingKey)), \(Data(claim.agreementKey)), \(claim.claimedAt), \(claim.lastSeen))
                            ON CONFLICT (id) DO UPDATE SET signing_key = EXCLUDED.signing_key,
                                agreement_key = EXCLUDED.agreement_key, claimed_at = EXCLUDED.claimed_at,
                                last_seen = EXCLUDED.last_seen
                            """, on: connection, logger: logger)
                    case .removeClaim(let id):
                        try await Self.run("DELETE FROM claims WHERE id = \(id)", on: connection, logger: logger)
                    case .putMail(let message):
                        try await Self.run("""
                            INSERT INTO mail (serial, recipient, sender, queued_at, sealed)
                            VALUES (\(message.serial), \(message.recipient), \(message.sender), \(message.queuedAt), \(Data(message.sealed)))
                            ON CONFLICT (serial) DO UPDATE SET recipient = EXCLUDED.recipient,
                                sender = EXCLUDED.sender, queued_at = EXCLUDED.queued_at, sealed = EXCLUDED.sealed
                            """, on: connection, logger: logger)
                    case .removeMail(let serial):
                        try await Self.run("DELETE FROM mail WHERE serial = \(serial)", on: connection, logger: logger)
                    }
                }
            }
        }
    }

    // MARK: ClusterStore

    /// Enters `server` (an upsert by name) and returns the cluster's secret. The first join
    /// inserts the secret (`INSERT ... ON CONFLICT DO NOTHING`) and every join then reads the
    /// one row: two servers joining at once get the same secret (the second insert waits for
    /// the first to commit, then does nothing).
    public func join(_ server: ServerRecord) async throws(StoreError) -> [UInt8] {
        let fresh = makeSecret()
        return try await timed("join \(server.name)") { [client, logger] in
            try await client.withConnection { connection in
                try await Self.run("""
                    INSERT INTO servers (name, advertise, heartbeat) VALUES (\(server.name), \(server.advertise), \(server.heartbeat))
                    ON CONFLICT (name) DO UPDATE SET advertise = EXCLUDED.advertise, heartbeat = EXCLUDED.heartbeat
                    """, on: connection, logger: logger)
                try await Self.run("INSERT INTO cluster_secret (id, secret) VALUES (1, \(Data(fresh))) ON CONFLICT (id) DO NOTHING",
                                   on: connection, logger: logger)
                let rows = try await connection.query("SELECT secret FROM cluster_secret WHERE id = 1", logger: logger)
                for try await secret in rows.decode(Data.self) { return [UInt8](secret) }
                throw StoreError.failed(reason: "the cluster secret is missing after it was inserted")
            }
        }
    }

    /// Records the heartbeat of `server` (a server that never joined is not added) and returns
    /// every server, sorted by name.
    public func heartbeat(server: String, at unixTime: Int64) async throws(StoreError) -> [ServerRecord] {
        try await timed("heartbeat \(server)") { [client, logger] in
            try await client.withConnection { connection in
                try await Self.run("UPDATE servers SET heartbeat = \(unixTime) WHERE name = \(server)", on: connection, logger: logger)
                var servers: [ServerRecord] = []
                let rows = try await connection.query("SELECT name, advertise, heartbeat FROM servers", logger: logger)
                for try await (name, advertise, heartbeat) in rows.decode((String, String, Int64).self) {
                    servers.append(ServerRecord(name: name, advertise: advertise, heartbeat: heartbeat))
                }
                return servers.sorted { $0.name < $1.name }
            }
        }
    }

    /// Decides the claim in one statement, atomic across servers:
    ///
    /// ```sql
    /// INSERT INTO claims AS c (...) VALUES (...)
    /// ON CONFLICT (id) DO UPDATE SET ... -- the new record if the held one expired,
    ///                                    -- else only last_seen moves on
    /// WHERE c.last_seen + ttl <= now     -- expired
    ///    OR (c.signing_key = EXCLUDED.signing_key AND c.agreement_key = EXCLUDED.agreement_key)
    /// RETURNING ...
    /// ```
    ///
    /// PostgreSQL makes `INSERT ... ON CONFLICT DO UPDATE` atomic: of two servers inserting
    /// the same new ID at once, one inserts and the other waits for it to commit, then finds
    /// the conflict and evaluates the `WHERE` against the committed row. A row back means
    /// granted; none means a live claim of another key, which a `SELECT` then names. (If that
    /// claim vanished or changed in between, the statement is run again.)
    public func claim(_ record: ClaimRecord, ttl: Int64, at unixTime: Int64) async throws(StoreError) -> ClaimOutcome {
        try await timed("claim \(record.id)") { [client, logger] in
            try await client.withConnection { connection in
                for _ in 0..<8 {
                    let rows = try await connection.query("""
                        INSERT INTO claims AS c (id, signing_key, agreement_key, claimed_at, last_seen)
                        VALUES (\(record.id), \(Data(record.signingKey)), \(Data(record.agreementKey)), \(record.claimedAt), \(record.lastSeen))
                        ON CONFLICT (id) DO UPDATE SET
                            signing_key = CASE WHEN c.last_seen::numeric + \(ttl) <= \(unixTime) THEN EXCLUDED.signing_key ELSE c.signing_key END,
                            agreement_key = CASE WHEN c.last_seen::numeric + \(ttl) <= \(unixTime) THEN EXCLUDED.agreement_key ELSE c.agreement_key END,
                            claimed_at = CASE WHEN c.last_seen::numeric + \(ttl) <= \(unixTime) THEN EXCLUDED.claimed_at ELSE c.claimed_at END,
                            last_seen = CASE WHEN c.last_seen::numeric + \(ttl) <= \(unixTime) THEN EXCLUDED.last_seen
                                             ELSE GREATEST(c.last_seen, EXCLUDED.last_seen) END
                        WHERE c.last_seen::numeric + \(ttl) <= \(unixTime)
                           OR (c.signing_key = EXCLUDED.signing_key AND c.agreement_key = EXCLUDED.agreement_key)
                        RETURNING id, signing_key, agreement_key, claimed_at, last_seen
                        """, logger: logger)
                    if let granted = try await Self.claims(rows).first { return ClaimOutcome.granted(granted) }
                    let held = try await Self.claims(connection.query("""
                        SELECT id, signing_key, agreement_key, claimed_at, last_seen FROM claims WHERE id = \(record.id)
                        """, logger: logger))
                    if let held = held.first, unixTime < held.lastSeen &+ ttl,
                       held.signingKey != record.signingKey || held.agreementKey != record.agreementKey {
                        return .heldByAnother(held)
                    }
                }
                throw StoreError.failed(reason: "the claim of \(record.id) kept changing under concurrent writes")
            }
        }
    }

    /// Decides `records` in one statement: the same upsert as ``claim(_:ttl:at:)`` over an
    /// `unnest` of the batch, then one `SELECT` of the holders of the IDs it did not grant.
    /// The rows are inserted in ID order: two servers' batches that share IDs then lock them
    /// in the same order and wait for each other instead of deadlocking.
    /// An ID that appears twice, or whose row changed between the two statements, is
    /// decided again alone. The outcomes follow the order of `records`.
    public func claims(_ records: [ClaimRecord], ttl: Int64, at unixTime: Int64) async throws(StoreError) -> [ClaimOutcome] {
        if records.count == 1, let record = records.first { return [try await claim(record, ttl: ttl, at: unixTime)] }
        guard !records.isEmpty else { return [] }
        var firstIndex: [String: Int] = [:]
        for (index, record) in records.enumerated() where firstIndex[record.id] == nil { firstIndex[record.id] = index }
        let unique = firstIndex.values.sorted().map { records[$0] }
        let indexOf = firstIndex
        let decided = try await timed("claim \(unique.count) IDs") { [client, logger] () async throws -> [String: ClaimOutcome] in
            var decided: [String: ClaimOutcome] = [:]
            let ids = unique.map(\.id)
            let signing = unique.map { Self.hex($0.signingKey) }
            let agreement = unique.map { Self.hex($0.agreementKey) }
            let claimedAt = unique.map(\.claimedAt)
            let lastSeen = unique.map(\.lastSeen)
            let granted = try await Self.claims(client.query("""
                INSERT INTO claims AS c (id, signing_key, agreement_key, claimed_at, last_seen)
                SELECT t.id, decode(t.sk, 'hex'), decode(t.ak, 'hex'), t.ca, t.ls
                FROM unnest(\(ids)::text[], \(signing)::text[], \(agreement)::text[], \(claimedAt)::bigint[], \(lastSeen)::bigint[])
                    AS t(id, sk, ak, ca, ls)
                ORDER BY t.id
                ON CONFLICT (id) DO UPDATE SET
                    signing_key = CASE WHEN c.last_seen::numeric + \(ttl) <= \(unixTime) THEN EXCLUDED.signing_key ELSE c.signing_key END,
                    agreement_key = CASE WHEN c.last_seen::numeric + \(ttl) <= \(unixTime) THEN EXCLUDED.agreement_key ELSE c.agreement_key END,
                    claimed_at = CASE WHEN c.last_seen::numeric + \(ttl) <= \(unixTime) THEN EXCLUDED.claimed_at ELSE c.claimed_at END,
                    last_seen = CASE WHEN c.last_seen::numeric + \(ttl) <= \(unixTime) THEN EXCLUDED.last_seen
                                     ELSE GREATEST(c.last_seen, EXCLUDED.last_seen) END
                WHERE c.last_seen::numeric + \(ttl) <= \(unixTime)
                   OR (c.signing_key = EXCLUDED.signing_key AND c.agreement_key = EXCLUDED.agreement_key)
                RETURNING id, signing_key, agreement_key, claimed_at, last_seen
                """, logger: logger))
            for claim in granted { decided[claim.id] = .granted(claim) }
            let rest = ids.filter { decided[$0] == nil }
            guard !rest.isEmpty else { return decided }
            let held = try await Self.claims(client.query("""
                SELECT id, signing_key, agreement_key, claimed_at, last_seen FROM claims WHERE id = ANY(\(rest)::text[])
                """, logger: logger))
            for holder in held {
                guard let index = indexOf[holder.id], unixTime < holder.lastSeen &+ ttl,
                      holder.signingKey != records[index].signingKey || holder.agreementKey != records[index].agreementKey
                else { continue }
                decided[holder.id] = .heldByAnother(holder)
            }
            return decided
        }
        var outcomes: [ClaimOutcome] = []
        for (index, record) in records.enumerated() {
            if firstIndex[record.id] == index, let outcome = decided[record.id] {
                outcomes.append(outcome)
            } else {
                outcomes.append(try await claim(record, ttl: ttl, at: unixTime))
            }
        }
        return outcomes
    }

    /// The mail waiting for any of `recipients`, by serial, in one query.
    public func mail(forRecipients recipients: [String]) async throws(StoreError) -> [MailRecord] {
        guard !recipients.isEmpty else { return [] }
        return try await timed("mail for \(recipients.count) recipients") { [client, logger] in
            let rows = try await client.query("""
                SELECT serial, recipient, sender, queued_at, sealed FROM mail WHERE recipient = ANY(\(recipients)::text[]) ORDER BY serial
                """, logger: logger)
            var mail: [MailRecord] = []
            for try await (serial, recipient, sender, queuedAt, sealed) in rows.decode((Int64, String, String, Int64, Data).self) {
                mail.append(MailRecord(serial: serial, recipient: recipient, sender: sender, queuedAt: queuedAt, sealed: [UInt8](sealed)))
            }
            return mail
        }
    }

    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var text: [UInt8] = []
        text.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: text, as: UTF8.self)
    }

    /// The claim of `id` when it lives at `unixTime` (`last_seen + ttl > unixTime`).
    public func currentClaim(of id: String, ttl: Int64, at unixTime: Int64) async throws(StoreError) -> ClaimRecord? {
        try await timed("current claim of \(id)") { [client, logger] in
            try await Self.claims(client.query("""
                SELECT id, signing_key, agreement_key, claimed_at, last_seen FROM claims
                WHERE id = \(id) AND last_seen::numeric + \(ttl) > \(unixTime)
                """, logger: logger)).first
        }
    }

    /// Writes `records` in order in one transaction. Each is an upsert that replaces the
    /// stored row of its ID only when that row has the same home or a `session_start` no
    /// later than the record's; each row written takes the next value of the sequence
    /// `presence_seq`. Then `pg_notify('natchat_presence', home)` for each home written,
    /// inside the transaction: PostgreSQL delivers the notifications when it commits (and
    /// not at all if it does not).
    public func publish(_ records: [PresenceRecord]) async throws(StoreError) {
        guard !records.isEmpty else { return }
        try await timed("publish (\(records.count) records)") { [client, logger] in
            try await client.withTransaction(logger: logger) { connection in
                var homes: Set<String> = []
                let oneStatement = records.count > 1 && Set(records.map(\.id)).count == records.count
                if oneStatement {
                    // One statement for the batch (the link sends one record per ID). Rows
                    // go in ID order, so two servers' batches that share IDs (a client moving)
                    // lock them in the same order. Within a batch every ID is another row, so
                    // the order of their sequence numbers does not matter to a reader.
                    let ids = records.map(\.id)
                    let homesOf = records.map(\.home)
                    let starts = records.map(\.sessionStart)
                    let infos = records.map { Self.hex($0.info) }
                    let departures = records.map { Int16($0.departure?.rawValue ?? 0) }
                    let rows = try await connection.query("""
                        INSERT INTO presence AS p (id, home, session_start, info, departure, seq, updated_at)
                        SELECT t.id, t.home, t.start, decode(t.info, 'hex'), NULLIF(t.departure, 0), nextval('presence_seq'), now()
                        FROM unnest(\(ids)::text[], \(homesOf)::text[], \(starts)::bigint[], \(infos)::text[], \(departures)::int2[])
                            AS t(id, home, start, info, departure)
                        ORDER BY t.id
                        ON CONFLICT (id) DO UPDATE SET home = EXCLUDED.home, session_start = EXCLUDED.session_start,
                            info = EXCLUDED.info, departure = EXCLUDED.departure, seq = EXCLUDED.seq, updated_at = now()
                        WHERE p.home = EXCLUDED.home OR p.session_start <= EXCLUDED.session_start
                        RETURNING home
                        """, logger: logger)
                    for try await home in rows.decode(String.self) { homes.insert(home) }
                }
                for record in records where !oneStatement {
                    let rows = try await connection.query("""
                        INSERT INTO presence AS p (id, home, session_start, info, departure, seq, updated_at)
                        VALUES (\(record.id), \(record.home), \(record.sessionStart), \(Data(record.info)),
                                \(record.departure.map { Int16($0.rawValue) }), nextval('presence_seq'), now())
                        ON CONFLICT (id) DO UPDATE SET home = EXCLUDED.home, session_start = EXCLUDED.session_start,
                            info = EXCLUDED.info, departure = EXCLUDED.departure, seq = EXCLUDED.seq, updated_at = now()
                        WHERE p.home = EXCLUDED.home OR p.session_start <= EXCLUDED.session_start
                        RETURNING home
                        """, logger: logger)
                    for try await home in rows.decode(String.self) { homes.insert(home) }
                }
                for home in homes.sorted() {
                    try await Self.run("SELECT pg_notify(\(Self.presenceChannel), \(home))", on: connection, logger: logger)
                }
            }
        }
    }

    /// The rows of `home` with a sequence number above `sequence`, in sequence order, at most
    /// `limit` (`WHERE home = $1 AND seq > $2 ORDER BY seq LIMIT $3`).
    ///
    /// Complete per home: only `home`'s server writes its rows, one batch after another
    /// (one writer), so each of its transactions takes its numbers after the previous one
    /// committed, and a reader that saw number `n` of `home` will find every later row of
    /// `home` above `n`. A single cursor over every home would not be complete: two servers'
    /// transactions take numbers concurrently and may commit out of order (5 after 6), and a
    /// reader that read up to 6 in between would skip 5 for ever. (``retire(home:)`` run by
    /// another server for a home whose heartbeat stopped is the one other writer of a home's
    /// rows; it only matters if that home was alive after all, and then its rows are marked
    /// offline, as the cluster believed.)
    public func presence(home: String, after sequence: Int64, limit: Int) async throws(StoreError) -> [PresenceRecord] {
        guard limit > 0 else { return [] }
        let location = self.location
        return try await timed("presence of \(home)") { [client, logger] in
            let rows = try await client.query("""
                SELECT id, home, session_start, info, departure, seq FROM presence
                WHERE home = \(home) AND seq > \(sequence) ORDER BY seq LIMIT \(Int64(limit))
                """, logger: logger)
            var records: [PresenceRecord] = []
            for try await (id, home, sessionStart, info, departure, seq) in rows.decode((String, String, Int64, Data, Int16?, Int64).self) {
                var reason: Departure?
                if let departure {
                    guard let known = UInt8(exactly: departure).flatMap(Departure.init(rawValue:)) else {
                        throw StoreError.corrupt(path: location, reason: "the presence row of \(id) holds the departure \(departure), which natchat does not know")
                    }
                    reason = known
                }
                records.append(PresenceRecord(id: id, home: home, sessionStart: sessionStart, info: [UInt8](info),
                                              departure: reason, sequence: seq))
            }
            return records
        }
    }

    /// Marks every present row of `home` departed (`offline`, info emptied, a new sequence
    /// number each) in one transaction, and notifies `home`.
    public func retire(home: String) async throws(StoreError) {
        try await timed("retire \(home)") { [client, logger] in
            try await client.withTransaction(logger: logger) { connection in
                try await Self.run("""
                    UPDATE presence SET departure = \(Int16(Departure.offline.rawValue)), info = '\\x'::bytea,
                        seq = nextval('presence_seq'), updated_at = now()
                    WHERE home = \(home) AND departure IS NULL
                    """, on: connection, logger: logger)
                try await Self.run("SELECT pg_notify(\(Self.presenceChannel), \(home))", on: connection, logger: logger)
            }
        }
    }

    /// Deletes the departed rows written before `unixTime` (their `updated_at`: the
    /// departure's time, so a tombstone lives its full time whatever its session's length).
    public func prunePresence(before unixTime: Int64) async throws(StoreError) {
        try await timed("prune presence") { [client, logger] in
            for try await _ in try await client.query("""
                DELETE FROM presence WHERE departure IS NOT NULL AND updated_at < to_timestamp(\(Double(unixTime)))
                """, logger: logger) {}
        }
    }

    /// The messages for `recipient`, by serial.
    public func mail(for recipient: String) async throws(StoreError) -> [MailRecord] {
        try await timed("mail for \(recipient)") { [client, logger] in
            let rows = try await client.query("""
                SELECT serial, recipient, sender, queued_at, sealed FROM mail WHERE recipient = \(recipient) ORDER BY serial
                """, logger: logger)
            var mail: [MailRecord] = []
            for try await (serial, recipient, sender, queuedAt, sealed) in rows.decode((Int64, String, String, Int64, Data).self) {
                mail.append(MailRecord(serial: serial, recipient: recipient, sender: sender, queuedAt: queuedAt, sealed: [UInt8](sealed)))
            }
            return mail
        }
    }

    /// The homes named in `natchat_presence` notifications, from any server (this one
    /// included). The first call starts a listener on a connection of its own (`LISTEN`);
    /// when that connection drops, the listener reconnects, waiting 0.1 s, then twice as long
    /// each time up to 5 s. What is notified while it is away is lost (servers also poll).
    /// Each stream keeps the newest 64 names it was not asked for yet; it ends at ``close()``.
    public func presenceNotifications() -> AsyncStream<String> {
        let (stream, continuation) = AsyncStream<String>.makeStream(bufferingPolicy: .bufferingNewest(64))
        let key: Int? = state.withLock { state in
            guard !state.closed else { return nil }
            let key = state.nextListener
            state.nextListener += 1
            state.listeners[key] = continuation
            if state.listenTask == nil {
                state.listenTask = Task(executorPreference: StoreExecutor.shared) { [self] in await listen() }
            }
            return key
        }
        guard let key else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.listeners.removeValue(forKey: key) }
        }
        return stream
    }

    /// Whether the listener's `LISTEN` is in force now (tests wait for it).
    var isListening: Bool { state.withLock { $0.listening } }

    private func listen() async {
        var delay = Duration.milliseconds(100)
        while !Task.isCancelled {
            do {
                let connection = try await PostgresConnection.connect(
                    configuration: Self.connectionConfiguration(settings), id: Self.nextConnectionID(), logger: logger)
                let kept = state.withLock { state in
                    guard !state.closed else { return false }
                    state.listenConnection = connection
                    return true
                }
                guard kept else {
                    Self.shut(connection)
                    return
                }
                try await connection.listen(on: Self.presenceChannel) { notifications in
                    state.withLock { $0.listening = true }
                    delay = .milliseconds(100)
                    for try await notification in notifications {
                        broadcast(notification.payload)
                    }
                }
            } catch {
                logger.debug("natchat: PostgreSQL listener: \(Self.describe(error))")
            }
            let connection = state.withLock { state in
                state.listening = false
                defer { state.listenConnection = nil }
                return state.listenConnection
            }
            if let connection { Self.shut(connection) }
            if state.withLock({ $0.closed }) { return }
            do { try await Task.sleep(for: delay) } catch { return }
            delay = min(delay * 2, .seconds(5))
        }
    }

    private func broadcast(_ home: String) {
        let listeners = state.withLock { Array($0.listeners.values) }
        for listener in listeners { listener.yield(home) }
    }

    // MARK: Schema

    /// The migrations, oldest first: version N is `migrations[N - 1]`, a list of statements
    /// (a new version appends one; an applied migration is never edited).
    static let migrations: [[String]] = [
        [
            """
            CREATE TABLE claims (
                id text PRIMARY KEY,
                signing_key bytea NOT NULL,
                agreement_key bytea NOT NULL,
                claimed_at bigint NOT NULL,
                last_seen bigint NOT NULL
            )
            """,
            """
            CREATE TABLE mail (
                serial bigint PRIMARY KEY,
                recipient text NOT NULL,
                sender text NOT NULL,
                queued_at bigint NOT NULL,
                sealed bytea NOT NULL
            )
            """,
            "CREATE INDEX mail_by_recipient ON mail (recipient, serial)",
            """
            CREATE TABLE servers (
                name text PRIMARY KEY,
                advertise text NOT NULL,
                heartbeat bigint NOT NULL
            )
            """,
            """
            CREATE TABLE cluster_secret (
                id smallint PRIMARY KEY CHECK (id = 1),
                secret bytea NOT NULL
            )
            """,
            "CREATE SEQUENCE presence_seq AS bigint",
            """
            CREATE TABLE presence (
                id text PRIMARY KEY,
                home text NOT NULL,
                session_start bigint NOT NULL,
                info bytea NOT NULL,
                departure smallint NULL,
                seq bigint NOT NULL,
                updated_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            "CREATE INDEX presence_by_home ON presence (home, seq)",
            "CREATE INDEX presence_departed ON presence (session_start) WHERE departure IS NOT NULL",
        ],
    ]

    /// The advisory lock the migrations run under (servers starting together migrate once).
    static let migrationLock: Int64 = 0x6E61_7463_6861_7401 // "natchat" 1

    /// Brings the schema up to date on a connection of its own, in one transaction.
    func migrate() async throws {
        let location = self.location
        let connection = try await PostgresConnection.connect(
            configuration: Self.connectionConfiguration(settings), id: Self.nextConnectionID(), logger: logger)
        do {
            try await connection.withTransaction(logger: logger) { [logger] (connection: PostgresConnection) in
                try await Self.run("SELECT pg_advisory_xact_lock(\(Self.migrationLock))", on: connection, logger: logger)
                try await Self.run("""
                    CREATE TABLE IF NOT EXISTS natchat_schema (
                        version integer PRIMARY KEY,
                        applied_at timestamptz NOT NULL DEFAULT now()
                    )
                    """, on: connection, logger: logger)
                var found = 0
                for try await version in try await connection.query(
                    "SELECT coalesce(max(version), 0)::bigint FROM natchat_schema", logger: logger).decode(Int64.self) {
                    found = Int(clamping: version)
                }
                guard found <= Self.schemaVersion else {
                    throw StoreError.schemaTooNew(path: location, found: found, supported: Self.schemaVersion)
                }
                for (index, statements) in Self.migrations.enumerated() where index + 1 > found {
                    for statement in statements {
                        try await Self.run(PostgresQuery(unsafeSQL: statement), on: connection, logger: logger)
                    }
                    try await Self.run("INSERT INTO natchat_schema (version) VALUES (\(Int64(index + 1)))", on: connection, logger: logger)
                }
            }
        } catch {
            try? await connection.close()
            throw error
        }
        try? await connection.close()
    }

    /// The schema version recorded in the database (tests).
    func recordedSchemaVersion() async throws(StoreError) -> Int {
        try await timed("schema version") { [client, logger] in
            var found = 0
            for try await version in try await client.query(
                "SELECT coalesce(max(version), 0)::bigint FROM natchat_schema", logger: logger).decode(Int64.self) {
                found = Int(clamping: version)
            }
            return found
        }
    }

    // MARK: Connections

    static func clientConfiguration(_ settings: Settings) -> PostgresClient.Configuration {
        var configuration: PostgresClient.Configuration
        switch settings.address {
        case .tcp(let host, let port):
            configuration = .init(host: host, port: port, username: settings.user, password: settings.password,
                                  database: settings.database, tls: .disable)
        case .socket:
            configuration = .init(unixSocketPath: settings.address.socketPath ?? "", username: settings.user,
                                  password: settings.password, database: settings.database)
        }
        configuration.options.connectTimeout = settings.timeout
        configuration.options.minimumConnections = 0
        configuration.options.maximumConnections = max(1, settings.maximumConnections)
        return configuration
    }

    static func connectionConfiguration(_ settings: Settings) -> PostgresConnection.Configuration {
        var configuration: PostgresConnection.Configuration
        switch settings.address {
        case .tcp(let host, let port):
            configuration = .init(host: host, port: port, username: settings.user, password: settings.password,
                                  database: settings.database, tls: .disable)
        case .socket:
            configuration = .init(unixSocketPath: settings.address.socketPath ?? "", username: settings.user,
                                  password: settings.password, database: settings.database)
        }
        let (seconds, attoseconds) = settings.timeout.components
        configuration.options.connectTimeout = .nanoseconds(seconds &* 1_000_000_000 &+ attoseconds / 1_000_000_000)
        return configuration
    }

    /// Closes a connection of the store's own (not the pool's) without waiting.
    static func shut(_ connection: PostgresConnection) {
        Task(executorPreference: StoreExecutor.shared) { try? await connection.close() }
    }

    static func nextConnectionID() -> Int {
        connectionIDs.add(1, ordering: .relaxed).newValue
    }

    // MARK: Running queries

    /// Runs a statement and reads its rows to the end (a result must be read before the
    /// connection takes the next statement).
    static func run(_ query: PostgresQuery, on connection: PostgresConnection, logger: Logger) async throws {
        for try await _ in try await connection.query(query, logger: logger) {}
    }

    static func claims(_ rows: PostgresRowSequence) async throws -> [ClaimRecord] {
        var claims: [ClaimRecord] = []
        for try await (id, signing, agreement, claimedAt, lastSeen) in rows.decode((String, Data, Data, Int64, Int64).self) {
            claims.append(ClaimRecord(id: id, signingKey: [UInt8](signing), agreementKey: [UInt8](agreement),
                                      claimedAt: claimedAt, lastSeen: lastSeen))
        }
        return claims
    }

    /// Runs `operation` on the store's threads with the settings' deadline: the answer, or
    /// ``StoreError/failed(reason:)`` when it fails or does not come in time (the operation
    /// is then cancelled and left to finish on its own).
    func timed<T: Sendable>(_ what: String, _ operation: @escaping @Sendable () async throws -> T) async throws(StoreError) -> T {
        let limit = settings.timeout
        let location = self.location
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<T, StoreError>, Never>) in
            let race = Race(continuation)
            let timer = Task(executorPreference: StoreExecutor.shared) {
                do { try await Task.sleep(for: limit) } catch { return }
                race.finish(.failure(.failed(reason: "\(location): \(what): no answer within \(limit) (is the database up and reachable?)")))
            }
            let work = Task(executorPreference: StoreExecutor.shared) {
                do {
                    race.finish(.success(try await operation()))
                } catch {
                    race.finish(.failure(Self.storeError(error, doing: what, location: location)))
                }
            }
            race.watch(work, timer)
        }
        return try result.get()
    }

    /// ``timed(_:_:)`` for a synchronous caller: blocks the calling thread until the answer.
    func blocking<T: Sendable>(_ what: String, _ operation: @escaping @Sendable () async throws -> T) throws(StoreError) -> T {
        let done = DispatchSemaphore(value: 0)
        let box = Answer<T>(done: done)
        Task(executorPreference: StoreExecutor.shared) { [self] in
            do throws(StoreError) {
                box.set(.success(try await timed(what, operation)))
            } catch {
                box.set(.failure(error))
            }
        }
        // timed answers within the deadline; this wait's own limit only guards against a
        // deadline that could not fire.
        let (seconds, _) = settings.timeout.components
        guard done.wait(timeout: .now() + .seconds(Int(clamping: seconds) + 5)) == .success,
              let result = box.take() else {
            throw .failed(reason: "\(location): \(what): no answer within \(settings.timeout)")
        }
        return try result.get()
    }

    // MARK: Errors

    static func openError(_ error: StoreError, location: String) -> StoreError {
        switch error {
        case .failed(let reason):
            let prefix = "\(location): opening: "
            return .cannotOpen(path: location, reason: reason.hasPrefix(prefix) ? String(reason.dropFirst(prefix.count)) : reason)
        default:
            return error
        }
    }

    static func storeError(_ error: any Error, doing what: String, location: String) -> StoreError {
        if let error = error as? StoreError { return error }
        if let error = error as? PostgresTransactionError,
           let inner = error.closureError ?? error.beginError ?? error.commitError {
            return storeError(inner, doing: what, location: location)
        }
        return .failed(reason: "\(location): \(what): \(describe(error))")
    }

    /// An error as an operator reads it (postgres-nio's `PSQLError` hides the server's
    /// message from its description; this shows it, and never a query's parameters).
    static func describe(_ error: any Error) -> String {
        if let error = error as? PSQLError {
            var text: String
            if let message = error.serverInfo?[.message] {
                text = message
                if let detail = error.serverInfo?[.detail] { text += " (\(detail))" }
                if let code = error.serverInfo?[.sqlState] { text += " [SQLSTATE \(code)]" }
            } else {
                text = "\(error.code)"
            }
            if let underlying = error.underlying { text += ": " + describe(underlying) }
            return text
        }
        if let error = error as? PostgresTransactionError {
            if let inner = error.closureError ?? error.beginError ?? error.commitError { return describe(inner) }
        }
        return "\(error)"
    }
}

/// One answer, given once: to the first of the operation and its deadline.
private final class Race<T: Sendable>: Sendable {
    private let state: Mutex<(continuation: CheckedContinuation<Result<T, StoreError>, Never>?, tasks: [Task<Void, Never>])>

    init(_ continuation: CheckedContinuation<Result<T, StoreError>, Never>) {
        state = Mutex((continuation, []))
    }

    /// Resumes the waiter unless already resumed, and cancels the other task.
    func finish(_ result: Result<T, StoreError>) {
        let (continuation, tasks) = state.withLock { state in
            defer { state.continuation = nil; state.tasks = [] }
            return (state.continuation, state.tasks)
        }
        guard let continuation else { return }
        continuation.resume(returning: result)
        for task in tasks { task.cancel() }
    }

    /// Keeps the tasks to cancel at the finish (at once, when it is already over).
    func watch(_ tasks: Task<Void, Never>...) {
        let over = state.withLock { state in
            if state.continuation == nil { return true }
            state.tasks = tasks
            return false
        }
        if over { for task in tasks { task.cancel() } }
    }
}

/// Where a synchronous call's answer lands.
private final class Answer<T: Sendable>: Sendable {
    private let answer = Mutex<Result<T, StoreError>?>(nil)
    private let done: DispatchSemaphore

    init(done: DispatchSemaphore) {
        self.done = done
    }

    func set(_ result: Result<T, StoreError>) {
        answer.withLock { $0 = result }
        done.signal()
    }

    func take() -> Result<T, StoreError>? {
        answer.withLock { $0 }
    }
}

/// The threads the store's async work runs on: Dispatch's, not Swift's cooperative pool, so
/// that a caller blocking a thread of that pool in ``PostgresStore/load()`` cannot starve the
/// work it waits for.
final class StoreExecutor: TaskExecutor {
    static let shared = StoreExecutor()
    private let queue = DispatchQueue(label: "natchat.postgres-store", attributes: .concurrent)

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        queue.async { job.runSynchronously(on: executor) }
    }
}
