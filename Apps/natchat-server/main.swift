import Addressing
import Admission
import ArgumentParser
import Foundation
import Identity
import Logging
import MonotonicTime
import Registry
import RendezvousServer
import PostgresStore
import SQLiteStore
import Store
import Wire

/// `natchat-server`: the rendezvous server. All of the work is in the RendezvousServer module.
/// With no subcommand it serves (`serve`); `claims` lists and releases ID claims in the store.
@main
struct NatchatServer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "natchat-server",
        abstract: "The natchat UDP rendezvous server.",
        discussion: "With no subcommand, natchat-server serves: `natchat-server --port 10080` is `natchat-server serve --port 10080`.",
        subcommands: [Serve.self, Claims.self],
        defaultSubcommand: Serve.self)
}

/// The `--store` option, shared by the subcommands.
struct StoreOptions: ParsableArguments {
    @Option(help: "Durable state (ID claims): an SQLite file, a PostgreSQL database (postgres://USER@HOST[:PORT]/DB, or postgres://USER@/DB?host=/socket/dir; PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD fill what it leaves out), or 'memory' to keep nothing. Default: $STATE_DIRECTORY/natchat-server.sqlite, else $XDG_STATE_HOME/natchat-server/natchat-server.sqlite, else ~/.local/state/natchat-server/natchat-server.sqlite.")
    var store: String?

    @Option(help: "A file whose first line is the PostgreSQL password (for a postgres:// store; a password in the URL wins, PGPASSWORD comes after).")
    var storePasswordFile: String?

    /// The store to use: `nil` for memory. Throws a ``StoreError`` or a usage error the
    /// command prints as it is.
    func open() throws -> (any DurableStore)? {
        let location: StoreLocation
        do {
            location = try store.map(StoreLocation.parse) ?? .file(path: StoreLocation.defaultPath(environment: ProcessInfo.processInfo.environment))
        } catch {
            throw ValidationError("--store: \(error)")
        }
        if storePasswordFile != nil {
            guard case .postgres = location else { throw ValidationError("--store-password-file is for a postgres:// store") }
        }
        switch location {
        case .memory: return nil
        case .file(let path): return try SQLiteStore(path: path)
        case .postgres(let url):
            let settings: PostgresStore.Settings
            do {
                settings = try PostgresStore.Settings.parse(url, passwordFile: storePasswordFile)
            } catch {
                throw ValidationError("--store: \(error)")
            }
            return try PostgresStore(settings: settings)
        }
    }
}

/// Prints a store error and exits 1: never a crash, never an emptied store.
func exitOnStoreError<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as StoreError {
        FileHandle.standardError.write(Data("natchat-server: \(error)\n".utf8))
        throw ExitCode(1)
    }
}

/// `natchat-server claims list|release`: the operator's view of the claims in a store.
struct Claims: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List or release the ID claims kept in the store.",
        discussion: "Stop the server before releasing: a running server holds its claims in memory and writes them back.",
        subcommands: [List.self, Release.self])

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Lists the claims: ID, key fingerprint, claimed, last seen (UTC).")
        @OptionGroup var storeOptions: StoreOptions

        func run() throws {
            guard let store = try exitOnStoreError({ try storeOptions.open() }) else {
                print("the memory store keeps no claims")
                return
            }
            let snapshot = try exitOnStoreError { try store.load() }
            for claim in snapshot.claims {
                let fingerprint = IdentityKey.fingerprint(of: PublicKeys(signing: claim.signingKey, agreement: claim.agreementKey))
                print("\(claim.id) \(fingerprint) claimed \(Self.date(claim.claimedAt)) last-seen \(Self.date(claim.lastSeen))")
            }
            print("\(snapshot.claims.count) claim(s) in \(store.location)")
        }

        static func date(_ unixTime: Int64) -> String {
            ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: TimeInterval(unixTime)))
        }
    }

    struct Release: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Releases an ID's claim: any key may register it again.")
        @Argument(help: "The claimed ID.") var id: String
        @OptionGroup var storeOptions: StoreOptions

        func run() throws {
            guard let store = try exitOnStoreError({ try storeOptions.open() }) else {
                print("the memory store keeps no claims")
                return
            }
            let snapshot = try exitOnStoreError { try store.load() }
            guard snapshot.claims.contains(where: { $0.id == id }) else {
                FileHandle.standardError.write(Data("natchat-server: \(id) is not claimed in \(store.location)\n".utf8))
                throw ExitCode(1)
            }
            try exitOnStoreError { try store.apply([.removeClaim(id: id)]) }
            print("released \(id) in \(store.location)")
        }
    }
}

/// Serves (the default subcommand).
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The natchat UDP rendezvous server.",
        discussion: """
            Clients register an ID and their private address; the server records the public \
            endpoint it sees, sends a newcomer the list of registered clients (with private \
            addresses of those behind the same NAT), tells everyone about joins and leaves, and \
            evicts a client silent for longer than the keep-alive timeout.

            Event lines (registrations, unregistrations, evictions) go to stdout; diagnostics to stderr.
            """)

    @Option(help: "UDP port to listen on.")
    var port: Int = 10080

    @Option(help: "Local address to bind (0.0.0.0: all IPv4 addresses).")
    var bind: String = "0.0.0.0"

    @Option(help: "Seconds a client may stay silent before it is evicted (strictly more than this).")
    var keepaliveTimeout: Double = 30

    @Option(help: "Seconds between sweeps for silent clients.")
    var sweepInterval: Double = 10

    @Option(help: "Most clients registered at once.")
    var maxClients: Int = 100_000

    @Option(help: "Second UDP port that answers STUN only, so clients can tell a cone NAT from a symmetric one (0: none).")
    var altPort: Int = 10082

    @Option(help: "Accept classic (seed-protocol) clients: on or off.")
    var classic: ClassicMode = .on

    @Option(help: "Relay limit per client, datagrams per second.")
    var relayPacketsPerSecond: Double = 200

    @Option(help: "Relay limit per client, bytes per second.")
    var relayBytesPerSecond: Double = 131_072

    @Option(help: "Relay limit for the whole server, bytes per second.")
    var relayTotalBytesPerSecond: Double = 33_554_432

    @Option(help: "Registrations accepted per second from one source IP (burst: four times as many).")
    var registrationsPerSecond: Double = 5

    @Option(help: "Most registered clients for which natchat/2 shells are pushed the whole roster; past it they are pushed only the clients they asked about or talked to, and list by asking.")
    var rosterLimit: Int = 1000

    @Option(help: "Most records a push of the whole roster to every natchat/2 shell may take (registered clients × subscribed shells); past it, as past --roster-limit, shells are pushed only what they asked about or talked to.")
    var rosterFanOut: Int = 20_000

    enum ClassicMode: String, ExpressibleByArgument, CaseIterable {
        case on, off
    }

    @Option(help: "Diagnostics level on stderr: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Option(help: "The admin HTTP listener (Prometheus /metrics, /healthz, a status page at /): HOST:PORT, or off. Default: 127.0.0.1:10090 (when that port is taken, the server warns and serves without it).")
    var admin: String?

    /// `--admin` parsed: `nil` for off.
    func adminEndpoint() throws -> AdminEndpoint? {
        guard let admin else { return AdminEndpoint() }
        do {
            return try AdminEndpoint.parse(admin)
        } catch {
            throw ValidationError("--admin: \(error)")
        }
    }

    @OptionGroup var storeOptions: StoreOptions

    @Option(help: "Days an ID's claim lives after its owner's latest registration.")
    var claimTtl: Double = 90

    @Option(help: "Days a message for an offline claimed ID waits in the mailbox.")
    var mailboxTtl: Double = 7

    @Option(help: "Most mailbox messages waiting for one recipient.")
    var mailboxPerRecipient: Int = 100

    @Option(help: "Most mailbox messages one sender may queue per minute.")
    var mailboxPerSenderPerMinute: Double = 30

    @Option(help: "Most bytes of sealed mail the server keeps in all.")
    var mailboxBytes: Int = 64 << 20

    @Option(help: "With a shared database (--store postgres://...): the IPv4 address and UDP port clients and the other servers reach this server at. Default: --bind and --port, unless --bind is 0.0.0.0.")
    var advertise: String?

    @Option(help: "With a shared database: this server's name among the servers, unique (default: its --advertise address).")
    var name: String?

    /// Where clients and the other servers reach this server: `--advertise`, else the bound
    /// address when it is not a wildcard.
    func advertisedEndpoint() throws -> Endpoint {
        if let advertise {
            guard let endpoint = try? Endpoint(parsing: advertise) else { throw ValidationError("--advertise must be IPv4:PORT, not '\(advertise)'") }
            return endpoint
        }
        guard let address = try? IPv4Address(parsing: bind), address.bits != 0 else {
            throw ValidationError("with a shared database, say where clients reach this server: --advertise IP:PORT (--bind is \(bind))")
        }
        return Endpoint(address: address, port: UInt16(clamping: port))
    }

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0...65535") }
        guard (0...65535).contains(altPort) else { throw ValidationError("--alt-port must be 0...65535") }
        guard altPort == 0 || altPort != port else { throw ValidationError("--alt-port must differ from --port") }
        guard registrationsPerSecond > 0 else { throw ValidationError("--registrations-per-second must be positive") }
        guard relayPacketsPerSecond > 0, relayBytesPerSecond > 0, relayTotalBytesPerSecond > 0 else {
            throw ValidationError("relay limits must be positive")
        }
        guard keepaliveTimeout > 0, keepaliveTimeout < 86_400 else { throw ValidationError("--keepalive-timeout must be in (0, 86400) seconds") }
        guard sweepInterval > 0, sweepInterval < 86_400 else { throw ValidationError("--sweep-interval must be in (0, 86400) seconds") }
        guard maxClients > 0 else { throw ValidationError("--max-clients must be positive") }
        guard rosterLimit >= 0 else { throw ValidationError("--roster-limit must not be negative") }
        guard rosterFanOut >= 0 else { throw ValidationError("--roster-fan-out must not be negative") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown --log-level \(logLevel)") }
        guard claimTtl > 0, claimTtl <= 36_500 else { throw ValidationError("--claim-ttl must be in (0, 36500] days") }
        guard mailboxTtl > 0, mailboxTtl <= 3650 else { throw ValidationError("--mailbox-ttl must be in (0, 3650] days") }
        guard mailboxPerRecipient > 0, mailboxPerSenderPerMinute > 0, mailboxBytes > 0 else {
            throw ValidationError("mailbox limits must be positive")
        }
        _ = try adminEndpoint()
        if let advertise, (try? Endpoint(parsing: advertise)) == nil {
            throw ValidationError("--advertise must be IPv4:PORT, not '\(advertise)'")
        }
        if let name, name.isEmpty || name.utf8.count > 64 || name.contains(where: { $0.isWhitespace || $0.isNewline }) {
            throw ValidationError("--name must be 1 to 64 bytes without spaces")
        }
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "natchat.server")
        let store = try exitOnStoreError { try storeOptions.open() }
        var relay = RelayLimiter<ClientID>.Configuration()
        relay.packetsPerSecond = relayPacketsPerSecond
        relay.bytesPerSecond = relayBytesPerSecond
        relay.globalBytesPerSecond = relayTotalBytesPerSecond
        var sources = SourceGuard.Configuration()
        sources.registrationsPerSecond = registrationsPerSecond
        sources.registrationBurst = registrationsPerSecond * 4
        sources.totalRegistrationsPerSecond = max(sources.totalRegistrationsPerSecond, registrationsPerSecond)
        sources.totalRegistrationBurst = max(sources.totalRegistrationBurst, registrationsPerSecond * 4)
        let configuration = RendezvousService.Configuration(
            registry: Registry.Configuration(keepAliveTimeout: .fractionalSeconds(keepaliveTimeout),
                                             sweepInterval: .fractionalSeconds(sweepInterval),
                                             keepAliveInterval: .fractionalSeconds(min(10, keepaliveTimeout / 3)),
                                             maxClients: maxClients, acceptClassic: classic == .on, relay: relay,
                                             rosterLimit: rosterLimit, rosterFanOutLimit: rosterFanOut,
                                             claimTTL: store == nil ? nil : .fractionalSeconds(claimTtl * 86_400),
                                             mailbox: MailboxConfiguration(ttl: .fractionalSeconds(mailboxTtl * 86_400),
                                                                           perRecipient: mailboxPerRecipient,
                                                                           perSenderPerMinute: mailboxPerSenderPerMinute,
                                                                           totalBytes: mailboxBytes)),
            sources: sources)
        var link: ClusterLink?
        if let shared = store as? any ClusterStore {
            let advertised = try advertisedEndpoint()
            link = ClusterLink(store: shared,
                               configuration: .init(name: name ?? "\(advertised)", advertise: "\(advertised)",
                                                    claimTTL: Int64(claimTtl * 86_400), deadAfter: .fractionalSeconds(keepaliveTimeout)),
                               logger: logger)
        }
        do {
            try await RendezvousServer.run(host: bind, port: port, alternatePort: altPort, configuration: configuration,
                                           store: store, cluster: link, admin: try adminEndpoint(), logger: logger) { line in
                StandardOutput.writeLine(line)
            }
        } catch let error as StoreError {
            FileHandle.standardError.write(Data("natchat-server: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}

/// Line-buffered stdout that is safe to call from any thread.
enum StandardOutput {
    static func writeLine(_ line: String) {
        FileHandle.standardOutput.write(Data((line + "\n").utf8))
    }
}
