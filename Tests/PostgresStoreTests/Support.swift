import Foundation
import PostgresNIO
@testable import PostgresStore
import Store

/// The test PostgreSQL (bin/test starts one: bin/lib.sh, start_test_postgres).
enum TestDatabase {
    static let adminURL: String? = {
        guard let url = ProcessInfo.processInfo.environment["NATCHAT_TEST_POSTGRES"], !url.isEmpty else { return nil }
        return url
    }()

    static var enabled: Bool { adminURL != nil }

    static let skipNotice = "PostgreSQL tests skipped: NATCHAT_TEST_POSTGRES is unset (bin/test starts one; apt-get install postgresql)"

    /// Runs SQL statements on the admin database.
    static func admin(_ statements: [String], database: String? = nil) async throws {
        guard let adminURL else { throw StoreError.failed(reason: skipNotice) }
        var settings = try PostgresStore.Settings.parse(adminURL, environment: [:])
        if let database { settings.database = database }
        let connection = try await PostgresConnection.connect(
            configuration: PostgresStore.connectionConfiguration(settings), id: 1,
            logger: Logger(label: "natchat.test"))
        do {
            for statement in statements {
                try await PostgresStore.run(PostgresQuery(unsafeSQL: statement), on: connection, logger: Logger(label: "natchat.test"))
            }
        } catch {
            try? await connection.close()
            throw StoreError.failed(reason: PostgresStore.describe(error))
        }
        try await connection.close()
    }

    /// A new, empty database of its own for one test; its settings (TCP), with a short timeout.
    static func fresh(_ prefix: String = "t") async throws -> PostgresStore.Settings {
        guard let adminURL else { throw StoreError.failed(reason: skipNotice) }
        let name = "natchat_\(prefix)_\(UInt32.random(in: 0...UInt32.max))_\(UInt32.random(in: 0...UInt32.max))"
        try await admin(["CREATE DATABASE \(name)"])
        var settings = try PostgresStore.Settings.parse(adminURL, environment: [:])
        settings.database = name
        settings.timeout = .seconds(10)
        return settings
    }
}

func claim(_ id: String, key: UInt8 = 1, claimedAt: Int64 = 1_000, lastSeen: Int64 = 2_000) -> ClaimRecord {
    ClaimRecord(id: id, signingKey: [UInt8](repeating: key, count: 32), agreementKey: [UInt8](repeating: key &+ 1, count: 32),
                claimedAt: claimedAt, lastSeen: lastSeen)
}

func mail(_ serial: Int64, to recipient: String = "bob", from sender: String = "alice", sealed: [UInt8] = [1, 2, 3]) -> MailRecord {
    MailRecord(serial: serial, recipient: recipient, sender: sender, queuedAt: 5_000 + serial, sealed: sealed)
}

func presence(_ id: String, home: String, start: Int64, info: [UInt8] = [1], departure: Departure? = nil) -> PresenceRecord {
    PresenceRecord(id: id, home: home, sessionStart: start, info: info, departure: departure)
}

/// Records without their sequence numbers (which differ between stores).
func unsequenced(_ records: [PresenceRecord]) -> [PresenceRecord] {
    records.map { var record = $0; record.sequence = 0; return record }
}
