import Addressing
import ArgumentParser
import Foundation
import LayeredSettings
import Logging
import RendezvousServer
import Store

/// The server's effective settings: each option from the command line, else its environment
/// variable (`NATCHAT_SERVER_PORT`), else the `--config` file's key (`port`), else its
/// default, with where each came from (`--print-config`).
///
/// The layering is LayeredSettings' (a module, unit-tested on its own); what is here is the
/// server's list of options, their defaults and their checks. A value from the environment
/// or the file is converted by the same `ExpressibleByArgument` parser as on the command line
/// and checked by the same rules, and an error names where the value came from.
/// (macOS 15: swift-configuration's floor on Apple platforms; no restriction on Linux.)
@available(macOS 15, *)
struct ServeSettings {

    /// The environment variables' prefix.
    static let environmentPrefix = "NATCHAT_SERVER"
    /// The environment variable that names the configuration file when `--config` is absent.
    static let configEnvironmentVariable = "NATCHAT_SERVER_CONFIG"

    /// Every option `serve` reads from the environment or the file, by long name, in
    /// `--help`'s order. (`config` and `print-config` are not settings: they say where the
    /// settings come from, and what to do with them.)
    static let keys = [
        "port", "bind", "keepalive-timeout", "sweep-interval", "max-clients", "alt-port", "classic",
        "relay-packets-per-second", "relay-bytes-per-second", "relay-total-bytes-per-second",
        "registrations-per-second", "roster-limit", "roster-fan-out", "log-level", "log-format", "admin",
        "store", "store-password-file", "claim-ttl", "mailbox-ttl", "mailbox-per-recipient",
        "mailbox-per-sender-per-minute", "mailbox-bytes", "advertise", "name",
    ]

    /// One line of `--print-config`.
    struct Entry {
        var key: String
        var value: String
        var source: SettingSource
    }

    var port = 10080
    var bind = "0.0.0.0"
    var keepaliveTimeout: Double = 30
    var sweepInterval: Double = 10
    var maxClients = 100_000
    var altPort = 10082
    var classic = Serve.ClassicMode.on
    var relayPacketsPerSecond: Double = 200
    var relayBytesPerSecond: Double = 131_072
    var relayTotalBytesPerSecond: Double = 33_554_432
    var registrationsPerSecond: Double = 5
    var rosterLimit = 1000
    var rosterFanOut = 20_000
    var logLevel = "info"
    var logFormat = Serve.LogFormat.text
    /// `nil`: off. `isExplicit` is true when the value came from the command line, the
    /// environment or the file, false when defaulted.
    var admin: AdminEndpoint? = AdminEndpoint()
    var store: String?
    var storePasswordFile: String?
    var claimTtl: Double = 90
    var mailboxTtl: Double = 7
    var mailboxPerRecipient = 100
    var mailboxPerSenderPerMinute: Double = 30
    var mailboxBytes = 64 << 20
    var advertise: String?
    var name: String?

    /// What `--print-config` prints, in `keys` order, after the file itself.
    private(set) var entries: [Entry] = []
    /// Environment variables with the prefix that name no option (typos), for a warning.
    private(set) var unknownEnvironmentVariables: [String] = []

    /// Resolves and checks every setting of `serve`. Throws a `ValidationError` (printed with
    /// the usage, exit 64) naming the source of a bad value, the file's path for an unknown
    /// key, an unreadable or malformed file.
    static func resolve(_ options: Serve, environment: [String: String]) throws -> ServeSettings {
        var settings = ServeSettings()
        var resolver = try Resolver(commandLineConfig: options.config, environment: environment)
        settings.entries.append(resolver.configEntry)
        settings.unknownEnvironmentVariables = resolver.layers.unknownEnvironmentVariables

        settings.port = try resolver.value("port", options.port, default: settings.port)
        try resolver.check("port", (0...65535).contains(settings.port), "must be 0...65535")
        settings.bind = try resolver.value("bind", options.bind, default: settings.bind)
        settings.keepaliveTimeout = try resolver.value("keepalive-timeout", options.keepaliveTimeout, default: settings.keepaliveTimeout)
        try resolver.check("keepalive-timeout", settings.keepaliveTimeout > 0 && settings.keepaliveTimeout < 86_400, "must be in (0, 86400) seconds")
        settings.sweepInterval = try resolver.value("sweep-interval", options.sweepInterval, default: settings.sweepInterval)
        try resolver.check("sweep-interval", settings.sweepInterval > 0 && settings.sweepInterval < 86_400, "must be in (0, 86400) seconds")
        settings.maxClients = try resolver.value("max-clients", options.maxClients, default: settings.maxClients)
        try resolver.check("max-clients", settings.maxClients > 0, "must be positive")
        settings.altPort = try resolver.value("alt-port", options.altPort, default: settings.altPort)
        try resolver.check("alt-port", (0...65535).contains(settings.altPort), "must be 0...65535")
        try resolver.check("alt-port", settings.altPort == 0 || settings.altPort != settings.port, "must differ from --port")
        settings.classic = try resolver.value("classic", options.classic, default: settings.classic)
        settings.relayPacketsPerSecond = try resolver.value("relay-packets-per-second", options.relayPacketsPerSecond, default: settings.relayPacketsPerSecond)
        try resolver.check("relay-packets-per-second", settings.relayPacketsPerSecond > 0, "must be positive")
        settings.relayBytesPerSecond = try resolver.value("relay-bytes-per-second", options.relayBytesPerSecond, default: settings.relayBytesPerSecond)
        try resolver.check("relay-bytes-per-second", settings.relayBytesPerSecond > 0, "must be positive")
        settings.relayTotalBytesPerSecond = try resolver.value("relay-total-bytes-per-second", options.relayTotalBytesPerSecond, default: settings.relayTotalBytesPerSecond)
        try resolver.check("relay-total-bytes-per-second", settings.relayTotalBytesPerSecond > 0, "must be positive")
        settings.registrationsPerSecond = try resolver.value("registrations-per-second", options.registrationsPerSecond, default: settings.registrationsPerSecond)
        try resolver.check("registrations-per-second", settings.registrationsPerSecond > 0, "must be positive")
        settings.rosterLimit = try resolver.value("roster-limit", options.rosterLimit, default: settings.rosterLimit)
        try resolver.check("roster-limit", settings.rosterLimit >= 0, "must not be negative")
        settings.rosterFanOut = try resolver.value("roster-fan-out", options.rosterFanOut, default: settings.rosterFanOut)
        try resolver.check("roster-fan-out", settings.rosterFanOut >= 0, "must not be negative")
        settings.logLevel = try resolver.value("log-level", options.logLevel, default: settings.logLevel)
        try resolver.check("log-level", Logger.Level(rawValue: settings.logLevel) != nil,
                           "must be one of trace, debug, info, notice, warning, error, critical, not '\(settings.logLevel)'")
        settings.logFormat = try resolver.value("log-format", options.logFormat, default: settings.logFormat)
        settings.admin = try resolver.admin(options.admin)
        try settings.resolveStore(options.storeOptions, resolver: &resolver, environment: environment)
        settings.claimTtl = try resolver.value("claim-ttl", options.claimTtl, default: settings.claimTtl)
        try resolver.check("claim-ttl", settings.claimTtl > 0 && settings.claimTtl <= 36_500, "must be in (0, 36500] days")
        settings.mailboxTtl = try resolver.value("mailbox-ttl", options.mailboxTtl, default: settings.mailboxTtl)
        try resolver.check("mailbox-ttl", settings.mailboxTtl > 0 && settings.mailboxTtl <= 3650, "must be in (0, 3650] days")
        settings.mailboxPerRecipient = try resolver.value("mailbox-per-recipient", options.mailboxPerRecipient, default: settings.mailboxPerRecipient)
        try resolver.check("mailbox-per-recipient", settings.mailboxPerRecipient > 0, "must be positive")
        settings.mailboxPerSenderPerMinute = try resolver.value("mailbox-per-sender-per-minute", options.mailboxPerSenderPerMinute, default: settings.mailboxPerSenderPerMinute)
        try resolver.check("mailbox-per-sender-per-minute", settings.mailboxPerSenderPerMinute > 0, "must be positive")
        settings.mailboxBytes = try resolver.value("mailbox-bytes", options.mailboxBytes, default: settings.mailboxBytes)
        try resolver.check("mailbox-bytes", settings.mailboxBytes > 0, "must be positive")
        settings.advertise = try resolver.optional("advertise", options.advertise, absent: "(--bind and --port)")
        if let advertise = settings.advertise {
            try resolver.check("advertise", (try? Endpoint(parsing: advertise)) != nil, "must be IPv4:PORT, not '\(advertise)'")
        }
        settings.name = try resolver.optional("name", options.name, absent: "(the --advertise address)")
        if let name = settings.name {
            try resolver.check("name", !(name.isEmpty || name.utf8.count > 64 || name.contains(where: { $0.isWhitespace || $0.isNewline })),
                               "must be 1 to 64 bytes without spaces")
        }
        settings.entries += resolver.entries
        return settings
    }

    /// `--store` and `--store-password-file` alone, for the `claims` subcommands: the file is
    /// `$NATCHAT_SERVER_CONFIG` (they have no `--config`).
    static func resolveStore(_ options: StoreOptions, environment: [String: String]) throws -> ServeSettings {
        var settings = ServeSettings()
        var resolver = try Resolver(commandLineConfig: nil, environment: environment)
        try settings.resolveStore(options, resolver: &resolver, environment: environment)
        settings.entries += resolver.entries
        return settings
    }

    private mutating func resolveStore(_ options: StoreOptions, resolver: inout Resolver, environment: [String: String]) throws {
        store = try resolver.optional("store", options.store, absent: StoreLocation.defaultPath(environment: environment),
                                      redact: Self.redactingPassword)
        if let store {
            do {
                _ = try StoreLocation.parse(store)
            } catch {
                throw ValidationError("\(resolver.name("store")): \(error)")
            }
        }
        storePasswordFile = try resolver.optional("store-password-file", options.storePasswordFile, absent: "(none)")
    }

    /// Where clients and the other servers reach this server: `advertise`, else the bound
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

    /// `--print-config`: one line per setting, `key  value  source`, in columns.
    func printed() -> String {
        let keyWidth = entries.map(\.key.count).max() ?? 0
        let valueWidth = min(40, entries.map(\.value.count).max() ?? 0)
        return entries.map { entry in
            entry.key.padding(toLength: keyWidth, withPad: " ", startingAt: 0) + "  "
                + (entry.value.count < valueWidth ? entry.value.padding(toLength: valueWidth, withPad: " ", startingAt: 0) : entry.value)
                + "  " + entry.source.description
        }.joined(separator: "\n")
    }

    /// A postgres:// URL with its password (`user:password@`) shown as `****`: the printed
    /// configuration ends up in tickets and chats.
    static func redactingPassword(_ value: String) -> String {
        guard let scheme = value.range(of: "://"), let at = value[scheme.upperBound...].firstIndex(of: "@") else { return value }
        let credentials = value[scheme.upperBound..<at]
        guard let colon = credentials.firstIndex(of: ":") else { return value }
        return String(value[..<colon]) + ":****" + String(value[at...])
    }
}

/// One resolution: the layers, and what each key resolved to.
@available(macOS 15, *)
private struct Resolver {
    let layers: LayeredSettings
    let configEntry: ServeSettings.Entry
    private(set) var entries: [ServeSettings.Entry] = []
    private var sources: [String: SettingSource] = [:]

    init(commandLineConfig: String?, environment: [String: String]) throws {
        let path: String?
        if let commandLineConfig {
            path = commandLineConfig
            configEntry = .init(key: "config", value: commandLineConfig, source: .commandLine)
        } else if let fromEnvironment = environment[ServeSettings.configEnvironmentVariable], !fromEnvironment.isEmpty {
            path = fromEnvironment
            configEntry = .init(key: "config", value: fromEnvironment, source: .environment(variable: ServeSettings.configEnvironmentVariable))
        } else {
            path = nil
            configEntry = .init(key: "config", value: "(none)", source: .defaultValue)
        }
        do {
            layers = try LayeredSettings(keys: ServeSettings.keys, environmentPrefix: ServeSettings.environmentPrefix,
                                         environment: environment, filePath: path,
                                         ignoredEnvironmentVariables: [ServeSettings.configEnvironmentVariable])
        } catch let error as SettingsError {
            throw ValidationError("\(error)")
        }
    }

    /// `--port` for a value from the command line or by default; `--port (environment
    /// NATCHAT_SERVER_PORT)` or `--port (file F key port)` for the others.
    func name(_ key: String) -> String {
        switch sources[key] {
        case .environment?, .file?: return "--\(key) (\(sources[key]?.description ?? ""))"
        default: return "--\(key)"
        }
    }

    /// Throws `--KEY (SOURCE) MESSAGE` unless `condition`.
    func check(_ key: String, _ condition: Bool, _ message: String) throws {
        guard condition else { throw ValidationError("\(name(key)) \(message)") }
    }

    /// The command line's value, else the environment's or the file's parsed as on the
    /// command line, else `defaultValue`.
    mutating func value<Value: ExpressibleByArgument>(_ key: String, _ commandLine: Value?, default defaultValue: Value) throws -> Value {
        try optional(key, commandLine, absent: "\(defaultValue)") ?? defaultValue
    }

    /// As `value`, for an option whose absence means something (`absent` describes it for
    /// `--print-config`).
    mutating func optional<Value: ExpressibleByArgument>(_ key: String, _ commandLine: Value?, absent: String,
                                                         redact: (String) -> String = { $0 }) throws -> Value? {
        if let commandLine {
            record(key, "\(commandLine)", .commandLine, redact)
            return commandLine
        }
        if let found = layers.lookup(key) {
            guard let parsed = Value(argument: found.value) else {
                let choices = Value.allValueStrings.isEmpty ? "" : " (one of \(Value.allValueStrings.joined(separator: ", ")))"
                throw ValidationError("\(found.source): the value '\(found.value)' is invalid for --\(key)\(choices)")
            }
            record(key, found.value, found.source, redact)
            return parsed
        }
        record(key, absent, .defaultValue, redact)
        return nil
    }

    /// `--admin`: `HOST:PORT` or `off`; explicit from any source but the default.
    mutating func admin(_ commandLine: String?) throws -> AdminEndpoint? {
        guard let text = try optional("admin", commandLine, absent: "127.0.0.1:\(AdminEndpoint.defaultPort)") else {
            return AdminEndpoint()
        }
        do {
            return try AdminEndpoint.parse(text, isExplicit: true)
        } catch {
            throw ValidationError("\(name("admin")): \(error)")
        }
    }

    private mutating func record(_ key: String, _ value: String, _ source: SettingSource, _ redact: (String) -> String) {
        sources[key] = source
        entries.append(.init(key: key, value: redact(value), source: source))
    }
}
