import Store
import Testing

@Suite("StoreLocation")
struct StoreLocationTests {
    @Test func systemdsStateDirectoryComesFirst() {
        let environment = ["STATE_DIRECTORY": "/var/lib/natchat-server", "XDG_STATE_HOME": "/home/a/.state", "HOME": "/home/a"]
        #expect(StoreLocation.defaultPath(environment: environment) == "/var/lib/natchat-server/natchat-server.sqlite")
        // Several StateDirectory= entries: the first one.
        #expect(StoreLocation.defaultPath(environment: ["STATE_DIRECTORY": "/var/lib/one:/var/lib/two"])
                == "/var/lib/one/natchat-server.sqlite")
        #expect(StoreLocation.defaultPath(environment: ["STATE_DIRECTORY": "/var/lib/one/"]) == "/var/lib/one/natchat-server.sqlite")
    }

    @Test func thenXDGStateHome() {
        let environment = ["XDG_STATE_HOME": "/home/a/.state", "HOME": "/home/a"]
        #expect(StoreLocation.defaultPath(environment: environment) == "/home/a/.state/natchat-server/natchat-server.sqlite")
        // Empty or relative values count as unset (the XDG specification).
        #expect(StoreLocation.defaultPath(environment: ["STATE_DIRECTORY": "", "XDG_STATE_HOME": "/s", "HOME": "/home/a"])
                == "/s/natchat-server/natchat-server.sqlite")
        #expect(StoreLocation.defaultPath(environment: ["XDG_STATE_HOME": "relative/state", "HOME": "/home/a"])
                == "/home/a/.local/state/natchat-server/natchat-server.sqlite")
    }

    @Test func thenTheHomeFolder() {
        #expect(StoreLocation.defaultPath(environment: ["HOME": "/home/a"]) == "/home/a/.local/state/natchat-server/natchat-server.sqlite")
        #expect(StoreLocation.defaultPath(environment: ["HOME": "/home/a", "XDG_STATE_HOME": ""])
                == "/home/a/.local/state/natchat-server/natchat-server.sqlite")
        // No HOME: the user database's home folder (or, without one, the working folder).
        let fallback = StoreLocation.defaultPath(environment: [:])
        #expect(fallback.hasSuffix("/.local/state/natchat-server/natchat-server.sqlite") || fallback == "natchat-server.sqlite")
    }

    @Test func theStoreOption() throws {
        #expect(try StoreLocation.parse("memory") == .memory)
        #expect(try StoreLocation.parse("/var/lib/natchat/store.sqlite") == .file(path: "/var/lib/natchat/store.sqlite"))
        #expect(try StoreLocation.parse("store.sqlite") == .file(path: "store.sqlite"))
        #expect(try StoreLocation.parse("./memory") == .file(path: "./memory"))
        #expect(StoreLocation.memory.description == "memory")
        #expect(StoreLocation.file(path: "/x").description == "/x")
    }

    @Test func aPostgresURLIsAPostgresStore() throws {
        #expect(try StoreLocation.parse("postgres://natchat@db/natchat") == .postgres(url: "postgres://natchat@db/natchat"))
        #expect(try StoreLocation.parse("postgresql://db") == .postgres(url: "postgresql://db"))
        #expect(try StoreLocation.parse("POSTGRES://db") == .postgres(url: "POSTGRES://db"))
        // The description never shows a password.
        #expect(StoreLocation.postgres(url: "postgres://natchat:s3cret@db:5433/natchat").description == "postgres://natchat@db:5433/natchat")
        #expect(StoreLocation.postgres(url: "postgres://u:p%40ss@h/d?host=/run/pg&password=x&port=1").description
                == "postgres://u@h/d?host=/run/pg&port=1")
        #expect(StoreLocation.postgres(url: "postgres://natchat@db/natchat").description == "postgres://natchat@db/natchat")
        #expect(StoreLocation.postgres(url: "postgres:///natchat?password=x").description == "postgres:///natchat")
    }

    @Test func aURLIsNotTakenForAFileName() {
        #expect(throws: StoreLocationError.unsupported(scheme: "redis")) { try StoreLocation.parse("redis://localhost") }
        #expect(throws: StoreLocationError.empty) { try StoreLocation.parse("") }
        #expect(StoreLocationError.unsupported(scheme: "redis").description.contains("redis://"))
        // A path with "://" after a slash is a path.
        #expect((try? StoreLocation.parse("/tmp/a://b")) == .file(path: "/tmp/a://b"))
    }
}
