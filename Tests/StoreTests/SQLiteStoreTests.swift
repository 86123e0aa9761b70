import Foundation
import GRDB
@testable import SQLiteStore
import Store
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What opening a file may end in, for comparisons.
private func openError(_ path: String) -> StoreError? {
    do {
        _ = try SQLiteStore(path: path)
        return nil
    } catch {
        return error
    }
}

/// Another connection to the same file, as a person with the sqlite3 shell would have.
private func tamper(_ path: String, _ sql: String) throws {
    let queue = try DatabaseQueue(path: path)
    try queue.write { db in try db.execute(sql: sql) }
    try queue.close()
}

private let runningAsRoot = getuid() == 0

@Suite("SQLiteStore")
struct SQLiteStoreTests {
    @Test func whatIsWrittenIsThereAfterAReopen() throws {
        let folder = try TemporaryFolder()
        let path = folder.file("store.sqlite")
        var generator = SplitMix64(seed: 7)
        var model = Model()
        do {
            let store = try SQLiteStore(path: path)
            #expect(store.location == path)
            for _ in 0..<10 {
                let batch = randomChanges(20, using: &generator)
                model.apply(batch)
                try store.apply(batch)
            }
        }
        // The first store is gone (its connections closed), as after a restart.
        let reopened = try SQLiteStore(path: path)
        #expect(try reopened.load() == model.snapshot)
        let more: [StoreChange] = [.putClaim(claim("zoe")), .putMail(mail(1_000))]
        try reopened.apply(more)
        model.apply(more)
        let third = try SQLiteStore(path: path)
        #expect(try third.load() == model.snapshot)
    }

    @Test func theFolderAndTheFileAreCreatedOwnerOnly() throws {
        let folder = try TemporaryFolder()
        let path = folder.path + "/state/natchat-server/store.sqlite"
        let store = try SQLiteStore(path: path)
        try store.apply([.putClaim(claim("alice"))])
        #expect(mode(folder.path + "/state") == 0o700)
        #expect(mode(folder.path + "/state/natchat-server") == 0o700)
        #expect(mode(path) == 0o600)
        // SQLite gives the WAL and its index the file's permissions.
        for companion in [path + "-wal", path + "-shm"] where FileManager.default.fileExists(atPath: companion) {
            #expect(mode(companion) == 0o600, "\(companion)")
        }
    }

    @Test func anExistingFolderKeepsItsPermissions() throws {
        let folder = try TemporaryFolder()
        chmod(folder.path, 0o755)
        _ = try SQLiteStore(path: folder.file("store.sqlite"))
        #expect(mode(folder.path) == 0o755)
        #expect(mode(folder.file("store.sqlite")) == 0o600)
    }

    @Test func walWithSynchronousFull() throws {
        let folder = try TemporaryFolder()
        let store = try SQLiteStore(path: folder.file("store.sqlite"))
        #expect(try store.pragma("journal_mode") == "wal")
        #expect(try store.pragma("synchronous") == "2")    // FULL
        #expect(try store.pragma("busy_timeout") == "5000")
        #expect(SQLiteStore.schemaVersion == 1)
    }

    @Test func theSchemaIsVersionOneWithItsTablesAndIndex() throws {
        let folder = try TemporaryFolder()
        let path = folder.file("store.sqlite")
        _ = try SQLiteStore(path: path)
        let queue = try DatabaseQueue(path: path)
        let (migrations, claimColumns, mailColumns, claimKey, mailKey, mailIndexes) = try queue.read { db in
            (try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations"),
             try db.columns(in: "claims").map(\.name), try db.columns(in: "mail").map(\.name),
             try db.primaryKey("claims").columns, try db.primaryKey("mail").columns,
             try db.indexes(on: "mail").map(\.columns))
        }
        try queue.close()
        #expect(migrations == ["v1"])
        #expect(claimColumns == ["id", "signing_key", "agreement_key", "claimed_at", "last_seen"])
        #expect(mailColumns == ["serial", "recipient", "sender", "queued_at", "sealed"])
        #expect(claimKey == ["id"] && mailKey == ["serial"])
        #expect(mailIndexes.contains(["recipient", "serial"]))
    }

    @Test func aBatchIsAllOrNone() throws {
        let folder = try TemporaryFolder()
        let path = folder.file("store.sqlite")
        let store = try SQLiteStore(path: path)
        try store.apply([.putClaim(claim("alice")), .putMail(mail(1))])
        // A trigger that refuses one ID: the batch fails at its last change.
        try tamper(path, """
            CREATE TRIGGER refuse_poison BEFORE INSERT ON claims WHEN NEW.id = 'poison'
            BEGIN SELECT RAISE(ABORT, 'poisoned for the test'); END
            """)
        let before = try store.load()
        #expect(throws: StoreError.self) {
            try store.apply([.putClaim(claim("bob")), .removeClaim(id: "alice"), .putMail(mail(2)), .removeMail(serial: 1),
                             .putClaim(claim("alice", key: 7)), .putClaim(claim("poison"))])
        }
        #expect(try store.load() == before)
        // The store goes on: the same batch without the refused change is written.
        try store.apply([.putClaim(claim("bob")), .removeMail(serial: 1)])
        #expect(try store.load().claims.map(\.id) == ["alice", "bob"])
    }

    @Test func garbageIsCorruptAndLeftAsItWas() throws {
        let folder = try TemporaryFolder()
        let path = folder.file("store.sqlite")
        var generator = SplitMix64(seed: 99)
        let garbage = Data((0..<8192).map { _ in UInt8(truncatingIfNeeded: generator.next()) })
        #expect(FileManager.default.createFile(atPath: path, contents: garbage))
        chmod(path, 0o644)
        guard case .corrupt(let reported, _)? = openError(path) else {
            Issue.record("expected .corrupt, got \(String(describing: openError(path)))")
            return
        }
        #expect(reported == path)
        #expect(contents(path) == garbage)
        #expect(mode(path) == 0o644)
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path) == ["store.sqlite"])
    }

    @Test(arguments: [Data("SQLite format 3\0".utf8), Data("hello, world\n".utf8), Data(repeating: 0, count: 4096)])
    func aShortOrForeignFileIsCorrupt(bytes: Data) throws {
        let folder = try TemporaryFolder()
        let path = folder.file("store.sqlite")
        #expect(FileManager.default.createFile(atPath: path, contents: bytes))
        let error = openError(path)
        if case .corrupt? = error {} else { Issue.record("expected .corrupt, got \(String(describing: error))") }
        #expect(contents(path) == bytes)
    }

    @Test func aDamagedDatabaseIsCorruptAndLeftAsItWas() throws {
        let folder = try TemporaryFolder()
        let path = folder.file("store.sqlite")
        do {
            let store = try SQLiteStore(path: path)
            try store.apply((0..<400).map { .putMail(mail(Int64($0), sealed: [UInt8](repeating: 7, count: 200))) })
        }
        // Closed: the WAL was checkpointed into the file. Keep page 1 (the header and the
        // schema), scribble over the rest.
        guard var bytes = contents(path), bytes.count > 3 * 4096 else {
            Issue.record("the store file is smaller than expected")
            return
        }
        for index in 4096..<bytes.count { bytes[index] = 0xA5 }
        #expect(FileManager.default.createFile(atPath: path, contents: bytes))
        for companion in [path + "-wal", path + "-shm"] { try? FileManager.default.removeItem(atPath: companion) }
        let error = openError(path)
        if case .corrupt? = error {} else { Issue.record("expected .corrupt, got \(String(describing: error))") }
        #expect(contents(path) == bytes)
    }

    @Test func anEmptyFileIsANewStore() throws {
        let folder = try TemporaryFolder()
        let path = folder.file("store.sqlite")
        #expect(FileManager.default.createFile(atPath: path, contents: Data()))
        let store = try SQLiteStore(path: path)
        try store.apply([.putClaim(claim("alice"))])
        #expect(try SQLiteStore(path: path).load().claims.map(\.id) == ["alice"])
    }

    @Test func aRowOfTheWrongTypeIsCorruptNotACrash() throws {
        let folder = try TemporaryFolder()
        let path = folder.file("store.sqlite")
        let store = try SQLiteStore(path: path)
        try store.apply([.putClaim(claim("alice"))])
        try tamper(path, "INSERT INTO claims VALUES ('bob', x'01', x'02', 'yesterday', 0)")
        #expect(throws: StoreError.self) { try store.load() }
        do {
            _ = try store.load()
        } catch {
            if case .corrupt = error {} else { Issue.record("expected .corrupt, got \(error)") }
        }
        try tamper(path, "DELETE FROM claims WHERE id = 'bob'; INSERT INTO mail VALUES (1, 'bob', 'alice', 0, 'text, not bytes')")
        #expect(throws: StoreError.self) { try store.load() }
    }

    @Test func aStoreMigratedByANewerNatchatIsRefusedAndLeftAsItWas() throws {
        let folder = try TemporaryFolder()
        let path = folder.file("store.sqlite")
        do {
            let store = try SQLiteStore(path: path)
            try store.apply([.putClaim(claim("alice"))])
        }
        try tamper(path, "INSERT INTO grdb_migrations (identifier) VALUES ('v2')")
        let before = contents(path)
        #expect(openError(path) == .schemaTooNew(path: path, found: 2, supported: 1))
        #expect(contents(path) == before)
        // A migration named otherwise still counts as newer.
        try tamper(path, "UPDATE grdb_migrations SET identifier = 'add-contacts' WHERE identifier = 'v2'")
        #expect(openError(path) == .schemaTooNew(path: path, found: 2, supported: 1))
        try tamper(path, "DELETE FROM grdb_migrations WHERE identifier = 'add-contacts'")
        #expect(try SQLiteStore(path: path).load().claims.map(\.id) == ["alice"])
    }

    @Test func aParentThatIsAFileCannotBeOpened() throws {
        let folder = try TemporaryFolder()
        let parent = folder.file("not-a-folder")
        #expect(FileManager.default.createFile(atPath: parent, contents: Data("x".utf8)))
        for path in [parent + "/store.sqlite", parent + "/deeper/store.sqlite"] {
            let error = openError(path)
            if case .cannotOpen(let reported, _)? = error { #expect(reported == path) } else {
                Issue.record("expected .cannotOpen, got \(String(describing: error))")
            }
        }
        #expect(contents(parent) == Data("x".utf8))
    }

    @Test func aFolderInPlaceOfTheFileCannotBeOpened() throws {
        let folder = try TemporaryFolder()
        let path = folder.file("store.sqlite")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        let error = openError(path)
        if case .cannotOpen? = error {} else { Issue.record("expected .cannotOpen, got \(String(describing: error))") }
        #expect(openError("") == .cannotOpen(path: "", reason: "the path is empty"))
    }

    @Test(.enabled(if: !runningAsRoot, "root can write whatever the permissions say"))
    func anUnwritableFolderOrFileCannotBeOpened() throws {
        let folder = try TemporaryFolder()
        let locked = folder.file("locked")
        try FileManager.default.createDirectory(atPath: locked, withIntermediateDirectories: false)
        chmod(locked, 0o500)
        let inLocked = openError(locked + "/store.sqlite")
        if case .cannotOpen? = inLocked {} else { Issue.record("expected .cannotOpen, got \(String(describing: inLocked))") }

        let path = folder.file("store.sqlite")
        do { _ = try SQLiteStore(path: path) }
        chmod(path, 0o400)
        let before = contents(path)
        let readOnly = openError(path)
        if case .cannotOpen? = readOnly {} else { Issue.record("expected .cannotOpen, got \(String(describing: readOnly))") }
        #expect(contents(path) == before)
    }

    @Test func twoStoresOnOneFileSeeEachOthersWrites() throws {
        // natchat-server and `natchat-server claims list` may open the file at once.
        let folder = try TemporaryFolder()
        let path = folder.file("store.sqlite")
        let server = try SQLiteStore(path: path)
        let tool = try SQLiteStore(path: path)
        try server.apply([.putClaim(claim("alice"))])
        #expect(try tool.load().claims.map(\.id) == ["alice"])
        try tool.apply([.removeClaim(id: "alice")])
        #expect(try server.load().claims.isEmpty)
    }
}
