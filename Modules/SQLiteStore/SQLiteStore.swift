import Foundation
import GRDB
import Store

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The durable store in one SQLite file (`natchat-server --store PATH`, and the default),
/// through GRDB with Debian's libsqlite3.
///
/// At open it creates the folder (0700) and the file (0600) when missing, refuses a file that
/// is not SQLite or fails `PRAGMA quick_check` (``StoreError/corrupt(path:reason:)``), one
/// written by a newer natchat (``StoreError/schemaTooNew(path:found:supported:)``) and one it
/// cannot write (``StoreError/cannotOpen(path:reason:)``), without ever changing, truncating
/// or deleting a file it refuses; then it turns on WAL with `synchronous = FULL` and runs the
/// versioned schema migrations. ``apply(_:)`` writes a batch as one transaction.
///
/// Durability: in WAL mode with `synchronous = FULL`, SQLite syncs the WAL at each commit, so
/// a transaction (a batch) is atomic, the file stays consistent, and a committed batch
/// survives a crash of the process or the system and a power cut. The fsync costs the
/// writer's thread once per batch, never a datagram.
public final class SQLiteStore: DurableStore {
    /// The schema version this build writes: the number of migrations it knows (`v1`, ...).
    public static let schemaVersion = SQLiteStore.migrations.count

    /// How long a write waits for a lock held by another connection (another process on the
    /// same file, such as `natchat-server claims list`) before it fails.
    public static let busyTimeout: TimeInterval = 5

    /// The file's path, as given.
    public let location: String
    private let pool: DatabasePool

    /// Opens the store at `path`, creating it (and its folder) when missing, and brings its
    /// schema up to date.
    ///
    /// - Throws: ``StoreError/cannotOpen(path:reason:)`` when the folder or the file cannot be
    ///   created, opened or written; ``StoreError/corrupt(path:reason:)`` when the file is not
    ///   an SQLite database or is damaged; ``StoreError/schemaTooNew(path:found:supported:)``
    ///   when a newer natchat migrated it. A file that is refused is left exactly as it was.
    public init(path: String) throws(StoreError) {
        location = path
        guard !path.isEmpty else { throw .cannotOpen(path: path, reason: "the path is empty") }
        let created = try Self.prepareFile(at: path)
        if !created {
            // Check an existing file before anything writes to it (the pool turns on WAL,
            // the migrator creates its table): a file refused here is not touched.
            try Self.check(path: path)
        }
        var configuration = Configuration()
        configuration.busyMode = .timeout(Self.busyTimeout)
        configuration.label = "natchat-store"
        let opened: DatabasePool
        do {
            opened = try DatabasePool(path: path, configuration: configuration)
        } catch {
            throw Self.openError(error, path: path)
        }
        pool = opened
        do {
            // GRDB's pool opens its writer with synchronous = NORMAL; every batch goes through
            // that one connection, which syncs each commit from here on.
            try pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA synchronous = FULL") }
            // A file created here (not checked above) may have been migrated by a newer
            // natchat in the meantime: check again, then migrate.
            try pool.read { db in try Self.refuseNewerSchema(db, path: path) }
            try Self.migrator.migrate(pool)
        } catch let error as StoreError {
            throw error
        } catch {
            throw Self.openError(error, path: path)
        }
    }

    // MARK: DurableStore

    /// Every claim (sorted by ID) and every message (by serial).
    ///
    /// - Throws: ``StoreError/corrupt(path:reason:)`` when a row does not hold what the schema
    ///   says (a file edited by hand, or damaged since it was opened), ``StoreError/failed(reason:)``
    ///   when the read fails.
    public func load() throws(StoreError) -> StoreSnapshot {
        let path = location
        do {
            return try pool.read { db in
                var claims: [ClaimRecord] = []
                let claimRows = try Row.fetchCursor(
                    db, sql: "SELECT id, signing_key, agreement_key, claimed_at, last_seen FROM claims ORDER BY id")
                while let row = try claimRows.next() {
                    claims.append(ClaimRecord(
                        id: try Self.text(row, 0, path: path), signingKey: try Self.blob(row, 1, path: path),
                        agreementKey: try Self.blob(row, 2, path: path), claimedAt: try Self.integer(row, 3, path: path),
                        lastSeen: try Self.integer(row, 4, path: path)))
                }
                var mail: [MailRecord] = []
                let mailRows = try Row.fetchCursor(
                    db, sql: "SELECT serial, recipient, sender, queued_at, sealed FROM mail ORDER BY serial")
                while let row = try mailRows.next() {
                    mail.append(MailRecord(
                        serial: try Self.integer(row, 0, path: path), recipient: try Self.text(row, 1, path: path),
                        sender: try Self.text(row, 2, path: path), queuedAt: try Self.integer(row, 3, path: path),
                        sealed: try Self.blob(row, 4, path: path)))
                }
                // SQLite orders text by its UTF-8 bytes; Swift's order is the one callers compare with.
                claims.sort { $0.id < $1.id }
                return StoreSnapshot(claims: claims, mail: mail)
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw Self.operationError(error, path: path)
        }
    }

    /// Applies `changes` in order in one transaction: all of them, or, when any fails, none.
    /// A put is an upsert (it replaces the row with the same ID or serial); a remove of a row
    /// that is not there does nothing.
    ///
    /// - Throws: ``StoreError/failed(reason:)`` (or ``StoreError/corrupt(path:reason:)`` when
    ///   SQLite finds the file damaged); nothing of the batch is then written.
    public func apply(_ changes: [StoreChange]) throws(StoreError) {
        guard !changes.isEmpty else { return }
        do {
            try pool.write { db in
                for change in changes {
                    switch change {
                    case .putClaim(let claim):
                        try db.cachedStatement(sql: """
                            INSERT INTO claims (id, signing_key, agreement_key, claimed_at, last_seen)
                            VALUES (?, ifnull(?, x''), ifnull(?, x''), ?, ?)
                            ON CONFLICT (id) DO UPDATE SET signing_key = excluded.signing_key,
                                agreement_key = excluded.agreement_key, claimed_at = excluded.claimed_at,
                                last_seen = excluded.last_seen
                            """).execute(arguments: [claim.id, Data(claim.signingKey), Data(claim.agreementKey),
                                                     claim.claimedAt, claim.lastSeen])
                    case .removeClaim(let id):
                        try db.cachedStatement(sql: "DELETE FROM claims WHERE id = ?").execute(arguments: [id])
                    case .putMail(let message):
                        // ifnull: SQLite binds an empty blob given without bytes as NULL.
                        try db.cachedStatement(sql: """
                            INSERT INTO mail (serial, recipient, sender, queued_at, sealed)
                            VALUES (?, ?, ?, ?, ifnull(?, x''))
                            ON CONFLICT (serial) DO UPDATE SET recipient = excluded.recipient,
                                sender = excluded.sender, queued_at = excluded.queued_at, sealed = excluded.sealed
                            """).execute(arguments: [message.serial, message.recipient, message.sender,
                                                     message.queuedAt, Data(message.sealed)])
                    case .removeMail(let serial):
                        try db.cachedStatement(sql: "DELETE FROM mail WHERE serial = ?").execute(arguments: [serial])
                    }
                }
            }
        } catch {
            throw Self.operationError(error, path: location)
        }
    }

    // MARK: Schema

    /// The migrations, oldest first; their identifiers are `v1`, `v2`, ... (a new version
    /// appends one; an applied migration is never edited).
    static let migrations: [(identifier: String, sql: String)] = [
        ("v1", """
            CREATE TABLE claims (
                id TEXT PRIMARY KEY NOT NULL,
                signing_key BLOB NOT NULL,
                agreement_key BLOB NOT NULL,
                claimed_at INTEGER NOT NULL,
                last_seen INTEGER NOT NULL
            );
            CREATE TABLE mail (
                serial INTEGER PRIMARY KEY,
                recipient TEXT NOT NULL,
                sender TEXT NOT NULL,
                queued_at INTEGER NOT NULL,
                sealed BLOB NOT NULL
            );
            CREATE INDEX mail_by_recipient ON mail (recipient, serial);
            """),
    ]

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        // Never set eraseDatabaseOnSchemaChange: a store is never emptied to fit a schema.
        for migration in migrations {
            migrator.registerMigration(migration.identifier) { db in try db.execute(sql: migration.sql) }
        }
        return migrator
    }

    /// Throws ``StoreError/schemaTooNew(path:found:supported:)`` when the file records a
    /// migration this build does not know (a newer natchat migrated it).
    static func refuseNewerSchema(_ db: Database, path: String) throws {
        let migrator = Self.migrator
        guard try migrator.hasBeenSuperseded(db) else { return }
        let known = Set(migrator.migrations)
        let unknown = try migrator.appliedIdentifiers(db).subtracting(known)
        // `vN` is version N; an identifier of another form counts as one past this build's.
        let found = unknown.map { identifier -> Int in
            if identifier.first == "v", let number = Int(identifier.dropFirst()), number > schemaVersion { return number }
            return schemaVersion + 1
        }.max() ?? schemaVersion + 1
        throw StoreError.schemaTooNew(path: path, found: found, supported: schemaVersion)
    }

    // MARK: Opening

    /// Creates the folder (0700, with any missing parents) and the file (0600) when missing,
    /// and checks that both can be written. Returns true when it created the file.
    static func prepareFile(at path: String) throws(StoreError) -> Bool {
        let folder = (path as NSString).deletingLastPathComponent
        if !folder.isEmpty {
            try makeFolder(folder, for: path)
        }
        var status = stat()
        if stat(path, &status) == 0 {
            guard status.st_mode & S_IFMT == S_IFREG else {
                throw .cannotOpen(path: path, reason: "it is not a regular file")
            }
            guard access(path, R_OK | W_OK) == 0 else {
                throw .cannotOpen(path: path, reason: "the file cannot be read and written (\(errorText()))")
            }
            // WAL keeps two files beside the store (-wal and -shm): the folder must be writable.
            guard access(folder.isEmpty ? "." : folder, W_OK | X_OK) == 0 else {
                throw .cannotOpen(path: path, reason: "its folder is not writable (\(errorText())); WAL needs to create files beside the store")
            }
            return false
        }
        guard errno == ENOENT else {
            throw .cannotOpen(path: path, reason: errorText())
        }
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw .cannotOpen(path: path, reason: "cannot create the file (\(errorText()))")
        }
        // The umask may have taken bits away, never added any; set the mode exactly.
        let changed = fchmod(descriptor, 0o600)
        let reason = errorText()
        close(descriptor)
        guard changed == 0 else { throw .cannotOpen(path: path, reason: "cannot make the file owner-only (\(reason))") }
        return true
    }

    /// Creates `folder` and its missing parents owner-only (0700); folders that exist are
    /// left as they are.
    static func makeFolder(_ folder: String, for path: String) throws(StoreError) {
        var status = stat()
        if stat(folder, &status) == 0 {
            guard status.st_mode & S_IFMT == S_IFDIR else {
                throw .cannotOpen(path: path, reason: "\(folder) is not a folder")
            }
            return
        }
        guard errno == ENOENT else {
            throw .cannotOpen(path: path, reason: "\(folder): \(errorText())")
        }
        let parent = (folder as NSString).deletingLastPathComponent
        if !parent.isEmpty && parent != folder {
            try makeFolder(parent, for: path)
        }
        if mkdir(folder, 0o700) != 0 {
            // Another process may have created it in the meantime.
            guard errno == EEXIST, stat(folder, &status) == 0, status.st_mode & S_IFMT == S_IFDIR else {
                throw .cannotOpen(path: path, reason: "cannot create the folder \(folder) (\(errorText()))")
            }
            return
        }
        guard chmod(folder, 0o700) == 0 else {
            throw .cannotOpen(path: path, reason: "cannot make the folder \(folder) owner-only (\(errorText()))")
        }
    }

    /// The checks of an existing file, none of which writes to it: the SQLite header, then
    /// `PRAGMA quick_check` and the schema version through a connection that only reads.
    static func check(path: String) throws(StoreError) {
        let header = Array("SQLite format 3\0".utf8)
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw .cannotOpen(path: path, reason: "cannot read the file")
        }
        let start: Data
        do {
            start = try handle.read(upToCount: 100) ?? Data()
            try handle.close()
        } catch {
            throw .cannotOpen(path: path, reason: "cannot read the file (\(error))")
        }
        // An empty file is an empty database (SQLite's own rule; an interrupted first open
        // leaves one). Anything else must start with SQLite's 100-byte header.
        if start.isEmpty { return }
        guard start.count == 100, Array(start.prefix(header.count)) == header else {
            throw .corrupt(path: path, reason: "not an SQLite database (its first bytes are not SQLite's header)")
        }
        var configuration = Configuration()
        configuration.readonly = true
        configuration.busyMode = .timeout(busyTimeout)
        configuration.label = "natchat-store-check"
        do {
            let queue = try DatabaseQueue(path: path, configuration: configuration)
            try queue.read { db in
                let problems = try String.fetchAll(db, sql: "PRAGMA quick_check(10)")
                guard problems == ["ok"] else {
                    throw StoreError.corrupt(path: path, reason: "quick_check: " + problems.joined(separator: "; "))
                }
                try refuseNewerSchema(db, path: path)
            }
            try queue.close()
        } catch let error as StoreError {
            throw error
        } catch {
            throw openError(error, path: path)
        }
    }

    /// What an error met while opening means to the operator.
    static func openError(_ error: any Error, path: String) -> StoreError {
        if let error = error as? StoreError { return error }
        guard let error = error as? DatabaseError else {
            return .cannotOpen(path: path, reason: "\(error)")
        }
        switch error.resultCode {
        case .SQLITE_NOTADB, .SQLITE_CORRUPT:
            return .corrupt(path: path, reason: error.message ?? "\(error)")
        default:
            return .cannotOpen(path: path, reason: error.message ?? "\(error)")
        }
    }

    /// What an error met while reading or writing means.
    static func operationError(_ error: any Error, path: String) -> StoreError {
        if let error = error as? StoreError { return error }
        if let error = error as? DatabaseError, error.resultCode == .SQLITE_CORRUPT || error.resultCode == .SQLITE_NOTADB {
            return .corrupt(path: path, reason: error.message ?? "\(error)")
        }
        return .failed(reason: "\(path): \(error)")
    }

    static func errorText() -> String { String(cString: strerror(errno)) }

    // MARK: Decoding rows without trusting the file

    static func integer(_ row: Row, _ index: Int, path: String) throws -> Int64 {
        let value: DatabaseValue = row[index]
        if case .int64(let integer) = value.storage { return integer }
        throw StoreError.corrupt(path: path, reason: "a row holds \(value) where an integer belongs")
    }

    static func text(_ row: Row, _ index: Int, path: String) throws -> String {
        let value: DatabaseValue = row[index]
        if case .string(let text) = value.storage { return text }
        throw StoreError.corrupt(path: path, reason: "a row holds \(value) where text belongs")
    }

    static func blob(_ row: Row, _ index: Int, path: String) throws -> [UInt8] {
        let value: DatabaseValue = row[index]
        if case .blob(let data) = value.storage { return [UInt8](data) }
        throw StoreError.corrupt(path: path, reason: "a row holds \(value) where bytes belong")
    }

    // MARK: For tests

    /// The value of a pragma on the writer connection (`journal_mode`, `synchronous`, ...).
    func pragma(_ name: String) throws -> String? {
        try pool.writeWithoutTransaction { db in try String.fetchOne(db, sql: "PRAGMA \(name)") }
    }
}
