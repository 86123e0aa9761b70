import Dispatch
import Foundation
import SQLiteStore
import Store
import Synchronization
import TestSupport

/// A folder under the system's temporary folder, removed (with everything in it, whatever
/// its permissions) when the value goes away.
final class TemporaryFolder {
    let path: String

    init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("natchat-store-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    func file(_ name: String) -> String { path + "/" + name }

    deinit {
        // A test may have made a folder unwritable; give the owner its rights back first.
        if let walker = FileManager.default.enumerator(atPath: path) {
            for case let relative as String in walker { chmod(path + "/" + relative, 0o700) }
        }
        chmod(path, 0o700)
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// The stores the contract suite runs against.
enum StoreKind: String, CaseIterable, CustomStringConvertible, Sendable {
    case memory
    case sqlite

    var description: String { rawValue }

    /// A fresh, empty store of this kind, and the folder that holds its file (kept alive by
    /// the caller as long as the store is used).
    func make() throws -> (store: any DurableStore, folder: TemporaryFolder?) {
        switch self {
        case .memory:
            return (MemoryStore(), nil)
        case .sqlite:
            let folder = try TemporaryFolder()
            return (try SQLiteStore(path: folder.file("store.sqlite")), folder)
        }
    }
}

func claim(_ id: String, key: UInt8 = 1, claimedAt: Int64 = 1_000, lastSeen: Int64 = 2_000) -> ClaimRecord {
    ClaimRecord(id: id, signingKey: [UInt8](repeating: key, count: 32), agreementKey: [UInt8](repeating: key &+ 1, count: 32),
                claimedAt: claimedAt, lastSeen: lastSeen)
}

func mail(_ serial: Int64, to recipient: String = "bob", from sender: String = "alice", sealed: [UInt8] = [1, 2, 3]) -> MailRecord {
    MailRecord(serial: serial, recipient: recipient, sender: sender, queuedAt: 5_000 + serial, sealed: sealed)
}

/// The state `changes` leave, computed the plain way (a dictionary per table).
struct Model {
    var claims: [String: ClaimRecord] = [:]
    var mail: [Int64: MailRecord] = [:]

    mutating func apply(_ changes: [StoreChange]) {
        for change in changes {
            switch change {
            case .putClaim(let record): claims[record.id] = record
            case .removeClaim(let id): claims[id] = nil
            case .putMail(let record): mail[record.serial] = record
            case .removeMail(let serial): mail[serial] = nil
            }
        }
    }

    var snapshot: StoreSnapshot {
        StoreSnapshot(claims: claims.values.sorted { $0.id < $1.id }, mail: mail.values.sorted { $0.serial < $1.serial })
    }
}

/// Random changes over a few IDs and serials, so that puts, replacements and removals of the
/// same record meet within and across batches.
func randomChanges(_ count: Int, using generator: inout SplitMix64) -> [StoreChange] {
    let ids = ["alice", "bob", "carol", "dave", "émile", "z", "A", "bob2"]
    return (0..<count).map { _ in
        let id = ids[Int(generator.next() % UInt64(ids.count))]
        let serial = Int64(generator.next() % 12) - 2
        let bytes = (0..<Int(generator.next() % 40)).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
        switch generator.next() % 4 {
        case 0:
            return .putClaim(ClaimRecord(id: id, signingKey: bytes, agreementKey: Array(bytes.reversed()),
                                         claimedAt: Int64(bitPattern: generator.next()), lastSeen: Int64(generator.next() % 1_000_000)))
        case 1:
            return .removeClaim(id: id)
        case 2:
            return .putMail(MailRecord(serial: serial, recipient: id, sender: ids[Int(generator.next() % UInt64(ids.count))],
                                       queuedAt: Int64(generator.next() % 1_000_000), sealed: bytes))
        default:
            return .removeMail(serial: serial)
        }
    }
}

/// A memory store that records each batch, can be told to refuse batches, and signals each
/// call of ``apply(_:)``.
final class RecordingStore: DurableStore {
    let inner = MemoryStore()
    private let state = Mutex<(batches: [[StoreChange]], refusing: Bool, calls: Int)>(([], false, 0))
    /// Signalled after each call of apply, accepted or refused.
    let applied = DispatchSemaphore(value: 0)

    var location: String { "recording" }

    var batches: [[StoreChange]] { state.withLock { $0.batches } }
    var calls: Int { state.withLock { $0.calls } }

    func refuse(_ refusing: Bool) { state.withLock { $0.refusing = refusing } }

    func load() throws(StoreError) -> StoreSnapshot { try inner.load() }

    func apply(_ changes: [StoreChange]) throws(StoreError) {
        defer { applied.signal() }
        let refusing = state.withLock { state -> Bool in
            state.calls += 1
            if !state.refusing { state.batches.append(changes) }
            return state.refusing
        }
        if refusing { throw .failed(reason: "refused for the test") }
        try inner.apply(changes)
    }

    /// Waits for the next call of apply; false after a minute without one (a hang guard, not
    /// a timing bound: every wait here is expected to end long before).
    func waitForApply() -> Bool {
        applied.wait(timeout: .now() + .seconds(60)) == .success
    }
}

/// Collects what a writer reports.
final class ErrorLog: Sendable {
    private let errors = Mutex<[StoreError]>([])
    var all: [StoreError] { errors.withLock { $0 } }
    var callback: @Sendable (StoreError) -> Void { { [self] error in errors.withLock { $0.append(error) } } }
}

/// The bytes of a file (nil when it cannot be read).
func contents(_ path: String) -> Data? { FileManager.default.contents(atPath: path) }

/// The permission bits of a file or folder.
func mode(_ path: String) -> Int? {
    (try? FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber)?.intValue
}
