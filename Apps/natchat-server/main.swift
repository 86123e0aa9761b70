import Addressing
import Admission
import ArgumentParser
import Foundation
import Identity
import JSONLogging
import LayeredSettings
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
/// (Started by the last line of this file rather than `@main`: the target has more than one
/// file, and a `main.swift` is top-level code.)
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

    /// The store the `claims` subcommands use: `--store` and `--store-password-file`, else
    /// their environment variables or the `$NATCHAT_SERVER_CONFIG` file, as `serve` reads them.
    func open() throws -> (any DurableStore)? {
        guard #available(macOS 15, *) else { throw ValidationError("natchat-server needs macOS 15 or later (swift-configuration)") }
        let settings = try ServeSettings.resolveStore(self, environment: ProcessInfo.processInfo.environment)
        return try Self.open(store: settings.store, passwordFile: settings.storePasswordFile)
    }

    /// The store to use: `nil` for memory. Throws a ``StoreError`` or a usage error the
    /// command prints as it is.
    static func open(store: String?, passwordFile storePasswordFile: String?) throws -> (any DurableStore)? {
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
///
/// Every option is optional here so that an option left off the command line can be looked up
/// in the environment and then the `--config` file before its default (``ServeSettings``): the
/// defaults are stated in the help text and applied there.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The natchat UDP rendezvous server.",
        discussion: """
            Clients register an ID and their private address; the server records the public \
            endpoint it sees, sends a newcomer the list of registered clients (with private \
            addresses of those behind the same NAT), tells everyone about joins and leaves, and \
            evicts a client silent for longer than the keep-alive timeout.

            Event lines (registrations, unregistrations, evictions) go to stdout; diagnostics to stderr.

            Every option can also be set by an environment variable, NATCHAT_SERVER_ and the \
            option's name in upper case with - as _ (NATCHAT_SERVER_PORT=10080, \
            NATCHAT_SERVER_KEEPALIVE_TIMEOUT=30), or by a key in the JSON object of the --config \
            file, the option's name without the dashes ({"port": 10080, "keepalive-timeout": 30}). \
            The command line wins over the environment, which wins over the file. An unknown key \
            in the file is an error. --print-config shows what each setting is and where it came from.
            """)

    @Option(help: ArgumentHelp("A JSON file of settings, an object whose keys are the long option names ({\"port\": 10080}). Default: $NATCHAT_SERVER_CONFIG, else none.", valueName: "file"))
    var config: String?

    @Flag(help: "Print every effective setting and where it came from (command line, environment, file or default), then exit without binding anything.")
    var printConfig = false

    @Option(help: "UDP port to listen on (default: 10080).")
    var port: Int?

    @Option(help: "Local address to bind (default: 0.0.0.0, all IPv4 addresses).")
    var bind: String?

    @Option(help: "Seconds a client may stay silent before it is evicted (strictly more than this; default: 30).")
    var keepaliveTimeout: Double?

    @Option(help: "Seconds between sweeps for silent clients (default: 10).")
    var sweepInterval: Double?

    @Option(help: "Most clients registered at once (default: 100000).")
    var maxClients: Int?

    @Option(help: "Second UDP port that answers STUN only, so clients can tell a cone NAT from a symmetric one (0: none; default: 10082).")
    var altPort: Int?

    @Option(help: "Accept classic (seed-protocol) clients: on or off (default: on).")
    var classic: ClassicMode?

    @Option(help: "Relay limit per client, datagrams per second (default: 200).")
    var relayPacketsPerSecond: Double?

    @Option(help: "Relay limit per client, bytes per second (default: 131072).")
    var relayBytesPerSecond: Double?

    @Option(help: "Relay limit for the whole server, bytes per second (default: 33554432).")
    var relayTotalBytesPerSecond: Double?

    @Option(help: "Registrations accepted per second from one source IP (burst: four times as many; default: 5).")
    var registrationsPerSecond: Double?

    @Option(help: "Most registered clients for which natchat/2 shells are pushed the whole roster; past it they are pushed only the clients they asked about or talked to, and list by asking (default: 1000).")
    var rosterLimit: Int?

    @Option(help: "Most records a push of the whole roster to every natchat/2 shell may take (registered clients × subscribed shells); past it, as past --roster-limit, shells are pushed only what they asked about or talked to (default: 20000).")
    var rosterFanOut: Int?

    enum ClassicMode: String, ExpressibleByArgument, CaseIterable, Sendable {
        case on, off
    }

    /// `--log-format`: lines for people, or one JSON object per line for log collectors.
    enum LogFormat: String, ExpressibleByArgument, CaseIterable, Sendable {
        case text, json
    }

    @Option(help: "Diagnostics level on stderr: trace, debug, info, notice, warning, error, critical (default: info).")
    var logLevel: String?

    @Option(help: "Diagnostics format on stderr: text (lines for people) or json (one JSON object per line: ts, level, label, msg and the metadata; default: text). Event lines on stdout are unchanged.")
    var logFormat: LogFormat?

    @Option(help: "The admin HTTP listener (Prometheus /metrics, /healthz, a status page at /): HOST:PORT, or off. Default: 127.0.0.1:10090 (when that port is taken, the server warns and serves without it).")
    var admin: String?

    @OptionGroup var storeOptions: StoreOptions

    @Option(help: "Days an ID's claim lives after its owner's latest registration (default: 90).")
    var claimTtl: Double?

    @Option(help: "Days a message for an offline claimed ID waits in the mailbox (default: 7).")
    var mailboxTtl: Double?

    @Option(help: "Most mailbox messages waiting for one recipient (default: 100).")
    var mailboxPerRecipient: Int?

    @Option(help: "Most mailbox messages one sender may queue per minute (default: 30).")
    var mailboxPerSenderPerMinute: Double?

    @Option(help: "Most bytes of sealed mail the server keeps in all (default: 67108864).")
    var mailboxBytes: Int?

    @Option(help: "With a shared database (--store postgres://...): the IPv4 address and UDP port clients and the other servers reach this server at. Default: --bind and --port, unless --bind is 0.0.0.0.")
    var advertise: String?

    @Option(help: "With a shared database: this server's name among the servers, unique (default: its --advertise address).")
    var name: String?

    func run() async throws {
        guard #available(macOS 15, *) else { throw ValidationError("natchat-server needs macOS 15 or later (swift-configuration)") }
        let settings = try ServeSettings.resolve(self, environment: ProcessInfo.processInfo.environment)
        for variable in settings.unknownEnvironmentVariables {
            FileHandle.standardError.write(Data("natchat-server: warning: the environment variable \(variable) names no option; ignored\n".utf8))
        }
        if printConfig {
            StandardOutput.writeLine(settings.printed())
            return
        }
        let level = Logger.Level(rawValue: settings.logLevel) ?? .info
        let format = settings.logFormat
        LoggingSystem.bootstrap { label in
            switch format {
            case .text:
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            case .json:
                var handler = JSONLineLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
        }
        let logger = Logger(label: "natchat.server")
        let store = try exitOnStoreError { try StoreOptions.open(store: settings.store, passwordFile: settings.storePasswordFile) }
        var relay = RelayLimiter<ClientID>.Configuration()
        relay.packetsPerSecond = settings.relayPacketsPerSecond
        relay.bytesPerSecond = settings.relayBytesPerSecond
        relay.globalBytesPerSecond = settings.relayTotalBytesPerSecond
        var sources = SourceGuard.Configuration()
        sources.registrationsPerSecond = settings.registrationsPerSecond
        sources.registrationBurst = settings.registrationsPerSecond * 4
        sources.totalRegistrationsPerSecond = max(sources.totalRegistrationsPerSecond, settings.registrationsPerSecond)
        sources.totalRegistrationBurst = max(sources.totalRegistrationBurst, settings.registrationsPerSecond * 4)
        let keepaliveTimeout = settings.keepaliveTimeout
        let configuration = RendezvousService.Configuration(
            registry: Registry.Configuration(keepAliveTimeout: .fractionalSeconds(keepaliveTimeout),
                                             sweepInterval: .fractionalSeconds(settings.sweepInterval),
                                             keepAliveInterval: .fractionalSeconds(min(10, keepaliveTimeout / 3)),
                                             maxClients: settings.maxClients, acceptClassic: settings.classic == .on, relay: relay,
                                             rosterLimit: settings.rosterLimit, rosterFanOutLimit: settings.rosterFanOut,
                                             claimTTL: store == nil ? nil : .fractionalSeconds(settings.claimTtl * 86_400),
                                             mailbox: MailboxConfiguration(ttl: .fractionalSeconds(settings.mailboxTtl * 86_400),
                                                                           perRecipient: settings.mailboxPerRecipient,
                                                                           perSenderPerMinute: settings.mailboxPerSenderPerMinute,
                                                                           totalBytes: settings.mailboxBytes)),
            sources: sources)
        var link: ClusterLink?
        if let shared = store as? any ClusterStore {
            let advertised = try settings.advertisedEndpoint()
            link = ClusterLink(store: shared,
                               configuration: .init(name: settings.name ?? "\(advertised)", advertise: "\(advertised)",
                                                    claimTTL: Int64(settings.claimTtl * 86_400), deadAfter: .fractionalSeconds(keepaliveTimeout)),
                               logger: logger)
        }
        do {
            try await RendezvousServer.run(host: settings.bind, port: settings.port, alternatePort: settings.altPort, configuration: configuration,
                                           store: store, cluster: link, admin: settings.admin, logger: logger) { line in
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

/// The entry point. A `main.swift` cannot use `@main`, and in its top-level code a call of
/// `NatchatServer.main()` resolves to ParsableCommand's synchronous overload (which would run
/// the synchronous default `run()` of `serve`: the help); inside an async function it is
/// AsyncParsableCommand's.
func startNatchatServer() async {
    await NatchatServer.main()
}

await startNatchatServer()
