import Foundation
@testable import PostgresStore
import Testing

@Suite("PostgresStore.Settings")
struct SettingsTests {
    typealias Settings = PostgresStore.Settings

    @Test func aFullURL() throws {
        let settings = try Settings.parse("postgres://natchat:s%40cret@db.example:5433/chat", environment: [:])
        #expect(settings.address == .tcp(host: "db.example", port: 5433))
        #expect(settings.user == "natchat")
        #expect(settings.password == "s@cret")
        #expect(settings.database == "chat")
        #expect(settings.timeout == .seconds(5))
        #expect(settings.redactedURL == "postgres://natchat@db.example:5433/chat")
        #expect(!"\(settings)".contains("cret"))
        #expect(!String(reflecting: settings).contains("cret"))
    }

    @Test func postgresqlAndIPv6AndDefaults() throws {
        let settings = try Settings.parse("postgresql://u@[::1]/d", environment: [:])
        #expect(settings.address == .tcp(host: "::1", port: 5432))
        #expect(settings.password == nil)
        #expect(settings.redactedURL == "postgres://u@[::1]:5432/d")
        // No database: the user's name.
        #expect(try Settings.parse("postgres://u@h", environment: [:]).database == "u")
    }

    @Test func aUnixSocketAsLibpqNamesIt() throws {
        let query = try Settings.parse("postgres://u@/d?host=/run/pg&port=6000", environment: [:])
        #expect(query.address == .socket(directory: "/run/pg", port: 6000))
        #expect(query.address.socketPath == "/run/pg/.s.PGSQL.6000")
        #expect(query.redactedURL == "postgres://u@:6000/d?host=/run/pg")
        let encoded = try Settings.parse("postgres://u@%2Frun%2Fpg:6001/d", environment: [:])
        #expect(encoded.address == .socket(directory: "/run/pg", port: 6001))
        // Nothing names a host: Debian's socket folder.
        #expect(try Settings.parse("postgres:///d", environment: ["PGUSER": "x"]).address
                == .socket(directory: "/var/run/postgresql", port: 5432))
    }

    @Test func theEnvironmentFillsWhatTheURLLeavesOut() throws {
        let environment = ["PGHOST": "envhost", "PGPORT": "7000", "PGUSER": "envuser", "PGDATABASE": "envdb", "PGPASSWORD": "envpw"]
        let empty = try Settings.parse("postgres://", environment: environment)
        #expect(empty.address == .tcp(host: "envhost", port: 7000))
        #expect(empty.user == "envuser" && empty.database == "envdb" && empty.password == "envpw")
        let full = try Settings.parse("postgres://u:urlpw@h:1/d", environment: environment)
        #expect(full.address == .tcp(host: "h", port: 1))
        #expect(full.user == "u" && full.database == "d" && full.password == "urlpw")
        // PGHOST naming a folder is a socket.
        #expect(try Settings.parse("postgres://u@/d", environment: ["PGHOST": "/tmp/s"]).address == .socket(directory: "/tmp/s", port: 5432))
        // Empty variables count as unset.
        #expect(try Settings.parse("postgres://u@h/d", environment: ["PGPORT": ""]).address == .tcp(host: "h", port: 5432))
    }

    @Test func precedenceURLThenPasswordFileThenEnvironment() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("natchat-pw-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: file) }
        try Data("filepw\r\nsecond line\n".utf8).write(to: URL(fileURLWithPath: file))
        let environment = ["PGPASSWORD": "envpw"]
        #expect(try Settings.parse("postgres://u:urlpw@h/d", passwordFile: file, environment: environment).password == "urlpw")
        #expect(try Settings.parse("postgres://u@h/d", passwordFile: file, environment: environment).password == "filepw")
        #expect(try Settings.parse("postgres://u@h/d", environment: environment).password == "envpw")
        #expect(try Settings.parse("postgres://u@h/d?password=q", passwordFile: file, environment: environment).password == "q")
    }

    @Test func aBadPasswordFileIsATypedError() throws {
        #expect(throws: PostgresSettingsError.passwordFile(path: "/nonexistent/pw", reason: "no such file")) {
            try Settings.parse("postgres://u@h/d", passwordFile: "/nonexistent/pw", environment: [:])
        }
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("natchat-pw-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: file) }
        try Data("\nx\n".utf8).write(to: URL(fileURLWithPath: file))
        #expect(throws: PostgresSettingsError.passwordFile(path: file, reason: "its first line is empty")) {
            try Settings.parse("postgres://u@h/d", passwordFile: file, environment: [:])
        }
    }

    @Test(arguments: [
        "mysql://u@h/d", "postgres://u@h:0/d", "postgres://u@h:99999/d", "postgres://u@h:x/d", "postgres://u@h/a/b",
        "postgres://u@h/d?sslmode=require", "postgres://u@h/d?what=1", "postgres://u@h/d?novalue", "postgres://u@h/%zz",
        "postgres://u@[::1/d", "postgres://u@h1,h2/d", "postgres://u@h/d#x", "postgres://u@h/d d", "postgres://u@h/d?connect_timeout=0",
    ])
    func badURLsAreTypedErrors(url: String) {
        #expect(throws: PostgresSettingsError.self) { try Settings.parse(url, environment: [:]) }
    }

    @Test func errorsNeverQuoteThePassword() {
        do {
            _ = try Settings.parse("postgres://u:zq%zzxy@h/d", environment: [:])
            Issue.record("accepted a bad escape")
        } catch {
            #expect(!error.description.contains("zq") && !error.description.contains("xy"))
        }
        #expect(throws: PostgresSettingsError.badEnvironment(name: "PGPORT", reason: "'abc' is not a port (1-65535)")) {
            try Settings.parse("postgres://u@h/d", environment: ["PGPORT": "abc"])
        }
    }

    @Test func connectTimeoutAndSSLModeDisable() throws {
        let settings = try Settings.parse("postgres://u@h/d?connect_timeout=2&sslmode=disable", environment: [:])
        #expect(settings.timeout == .seconds(2))
    }
}
