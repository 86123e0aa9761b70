// swift-tools-version:6.1
import PackageDescription

// One library target per module under Modules/, two thin executables under Apps/.
// Every library is usable on its own; the dependency arrows only point "down"
// (Addressing and MonotonicTime at the bottom, Transport and the two node modules on top).
let swiftSettings: [SwiftSetting] = [.swiftLanguageMode(.v6)]

func module(_ name: String, _ deps: [Target.Dependency] = []) -> Target {
    .target(name: name, dependencies: deps, path: "Modules/\(name)", swiftSettings: swiftSettings)
}

func tests(_ name: String, _ deps: [Target.Dependency]) -> Target {
    .testTarget(name: "\(name)Tests", dependencies: deps, path: "Tests/\(name)Tests", swiftSettings: swiftSettings)
}

// Every use of another package is guarded by a package trait, and all the traits are on by
// default, so building natchat, or depending on it without saying more, uses every package
// as before. A package that uses only modules with no package dependencies (NATGrouping,
// KeepAlive, Wire, ...) depends on natchat with `traits: []`, and SwiftPM then fetches none of
// them (docs/coursework.md: which module needs which trait; bin/check-coursework checks it).
let nio = TargetDependencyCondition.when(traits: ["NIO"])
let nioCore: Target.Dependency = .product(name: "NIOCore", package: "swift-nio", condition: nio)
let nioPosix: Target.Dependency = .product(name: "NIOPosix", package: "swift-nio", condition: nio)
let nioEmbedded: Target.Dependency = .product(name: "NIOEmbedded", package: "swift-nio", condition: nio)
let logging: Target.Dependency = .product(name: "Logging", package: "swift-log", condition: nio)
let crypto: Target.Dependency = .product(name: "Crypto", package: "swift-crypto", condition: .when(traits: ["Crypto"]))
let deque: Target.Dependency = .product(name: "DequeModule", package: "swift-collections", condition: .when(traits: ["Collections"]))
let heap: Target.Dependency = .product(name: "HeapModule", package: "swift-collections", condition: .when(traits: ["Collections"]))
let argumentParser: Target.Dependency = .product(name: "ArgumentParser", package: "swift-argument-parser", condition: .when(traits: ["CLI"]))
let grdb: Target.Dependency = .product(name: "GRDB", package: "GRDB.swift", condition: .when(traits: ["SQLite"]))
// PostgresStore's own: postgres-nio, and swift-log for the logger it hands the driver.
let postgresql = TargetDependencyCondition.when(traits: ["PostgreSQL"])
let postgresNIO: Target.Dependency = .product(name: "PostgresNIO", package: "postgres-nio", condition: postgresql)
let pgLogging: Target.Dependency = .product(name: "Logging", package: "swift-log", condition: postgresql)
// LayeredSettings' own: swift-configuration (its JSON trait, on by default there) reads the
// environment and the --config file.
let configuration: Target.Dependency = .product(name: "Configuration", package: "swift-configuration", condition: .when(traits: ["Config"]))
// The server's admin listener: metrics through swift-metrics' API into swift-prometheus's
// registry, and NIO's HTTP/1 codec (swift-nio is the NIO trait's package).
let metricsTrait = TargetDependencyCondition.when(traits: ["Metrics"])
let coreMetrics: Target.Dependency = .product(name: "CoreMetrics", package: "swift-metrics", condition: metricsTrait)
let prometheus: Target.Dependency = .product(name: "Prometheus", package: "swift-prometheus", condition: metricsTrait)
let nioHTTP1: Target.Dependency = .product(name: "NIOHTTP1", package: "swift-nio", condition: nio)
// PortMappingPosix's UPnP IGD client: Debian's libminiupnpc-dev through the CMiniupnpc system
// library (no package is fetched for it; the trait only spares a machine without the library).
let miniupnpc: Target.Dependency = .target(name: "CMiniupnpc", condition: .when(traits: ["UPnP"]))

let package = Package(
    name: "natchat",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "natchat-server", targets: ["natchat-server"]),
        .executable(name: "natchat", targets: ["natchat"]),
        .library(name: "Addressing", targets: ["Addressing"]),
        .library(name: "Wire", targets: ["Wire"]),
        .library(name: "MonotonicTime", targets: ["MonotonicTime"]),
        .library(name: "AddressDiscovery", targets: ["AddressDiscovery"]),
        .library(name: "STUN", targets: ["STUN"]),
        .library(name: "NATGrouping", targets: ["NATGrouping"]),
        .library(name: "KeepAlive", targets: ["KeepAlive"]),
        .library(name: "HolePunch", targets: ["HolePunch"]),
        .library(name: "Identity", targets: ["Identity"]),
        .library(name: "Delivery", targets: ["Delivery"]),
        .library(name: "Admission", targets: ["Admission"]),
        .library(name: "Roster", targets: ["Roster"]),
        .library(name: "Store", targets: ["Store"]),
        .library(name: "SQLiteStore", targets: ["SQLiteStore"]),
        .library(name: "PostgresStore", targets: ["PostgresStore"]),
        .library(name: "Registry", targets: ["Registry"]),
        .library(name: "ChatRouter", targets: ["ChatRouter"]),
        .library(name: "ClientSession", targets: ["ClientSession"]),
        .library(name: "Transport", targets: ["Transport"]),
        .library(name: "TransportPosix", targets: ["TransportPosix"]),
        .library(name: "LineEditor", targets: ["LineEditor"]),
        .library(name: "RendezvousServer", targets: ["RendezvousServer"]),
        .library(name: "KnownPeers", targets: ["KnownPeers"]),
        .library(name: "ChatClient", targets: ["ChatClient"]),
        .library(name: "LayeredSettings", targets: ["LayeredSettings"]),
        .library(name: "JSONLogging", targets: ["JSONLogging"]),
        .library(name: "PortMapping", targets: ["PortMapping"]),
        .library(name: "PortMappingPosix", targets: ["PortMappingPosix"]),
    ],
    traits: [
        .trait(name: "NIO", description: "swift-nio and swift-log: Transport, TransportPosix, RendezvousServer, ChatClient, JSONLogging"),
        .trait(name: "Crypto", description: "swift-crypto: Identity, and ClientSession, Registry, ChatRouter and the nodes through it"),
        .trait(name: "Collections", description: "swift-collections: Roster, and Registry, ChatRouter and the nodes through it"),
        .trait(name: "CLI", description: "swift-argument-parser: the programs natchat-server and natchat"),
        .trait(name: "SQLite", description: "GRDB.swift (and Debian's libsqlite3-dev): SQLiteStore"),
        .trait(name: "PostgreSQL", description: "postgres-nio and swift-log: PostgresStore"),
        .trait(name: "Config", description: "swift-configuration: LayeredSettings (the server's environment variables and --config file)"),
        .trait(name: "Metrics", description: "swift-metrics and swift-prometheus: RendezvousServer's admin listener (/metrics)"),
        .trait(name: "UPnP", description: "Debian's libminiupnpc-dev (miniupnpc 2.2.4): UPnP IGD port mapping in PortMappingPosix (PCP and NAT-PMP need nothing)"),
        .default(enabledTraits: ["NIO", "Crypto", "Collections", "CLI", "SQLite", "PostgreSQL", "Config", "Metrics", "UPnP"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-configuration.git", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        module("MonotonicTime"),
        // IPv4Address, Endpoint, ClientID: no dependencies, so that NATGrouping and the
        // other small cores can be used without the codecs.
        module("Addressing"),
        module("Wire", ["Addressing"]),
        module("STUN", ["Addressing"]),
        module("AddressDiscovery", ["Addressing", "Wire", "STUN", "MonotonicTime"]),
        module("NATGrouping", ["Addressing"]),
        module("KeepAlive", ["MonotonicTime"]),
        module("Identity", ["Addressing", "Wire", crypto]),
        module("HolePunch", ["Addressing", "Wire", "MonotonicTime"]),
        module("Delivery", ["Addressing", "MonotonicTime"]),
        module("Admission", ["Addressing", "MonotonicTime"]),
        module("Roster", ["Addressing", "Wire", "MonotonicTime", deque]),
        // The durable store's protocol, records and the memory store: no package dependency,
        // so cores (the registry) can emit changes without linking a database.
        module("Store"),
        // The store in an SQLite file, through GRDB (which links Debian's libsqlite3).
        module("SQLiteStore", ["Store", grdb]),
        // The store in a PostgreSQL database several servers share (a ClusterStore), through
        // postgres-nio's connection pool; no libpq, the socket is NIO's.
        module("PostgresStore", ["Store", postgresNIO, pgLogging]),
        // The client's known peers (pins across sessions), their file format and file: no
        // dependency, so students can reuse the table without the client.
        module("KnownPeers"),
        module("Registry", ["Addressing", "Wire", "NATGrouping", "KeepAlive", "MonotonicTime", "HolePunch", "Admission", "Identity", "Roster", "Store", crypto, heap]),
        module("ClientSession", ["Addressing", "Wire", "Identity", "KeepAlive", "AddressDiscovery", "MonotonicTime"]),
        module("ChatRouter", ["Addressing", "Wire", "NATGrouping", "HolePunch", "Delivery", "MonotonicTime", "Identity", "Roster"]),
        // The I/O layer along SwiftNIO's own line: the driver protocol and the channel handler
        // need NIOCore only (tests run them on an EmbeddedChannel); the host that binds
        // sockets, and the signal catcher, need NIOPosix.
        module("Transport", ["Addressing", "MonotonicTime", nioCore, logging]),
        module("TransportPosix", ["Transport", "MonotonicTime", nioCore, nioPosix, logging]),
        // A small C shim over GNU readline (Debian: libreadline-dev). readline's state is C
        // globals, so the shim keeps every access to them in C and the Swift side calls it
        // from one thread only (see LineEditor.ReadlineTerminal).
        .target(name: "CReadline", path: "Modules/CReadline", linkerSettings: [.linkedLibrary("readline")]),
        module("LineEditor", ["CReadline"]),
        module("RendezvousServer", ["Addressing", "Wire", "STUN", "Registry", "Store", "Admission", "MonotonicTime", "Transport", "TransportPosix", crypto, nioCore, nioPosix, nioHTTP1, logging,
                                      coreMetrics, prometheus]),
        // Settings from the command line, the environment and a JSON file, with where each
        // came from (the server's --config and --print-config), through swift-configuration.
        module("LayeredSettings", [configuration]),
        // A swift-log handler writing one JSON object per line (the server's --log-format json).
        module("JSONLogging", [logging]),
        // Port mapping: the PCP (RFC 6887) and NAT-PMP (RFC 6886) client core, sans-I/O, no dependency
        // on a package; UPnP IGD through miniupnpc (a system library: SSDP, HTTP and SOAP are
        // too much to write again); the driver that runs them on a socket and a queue.
        module("PortMapping", ["Addressing", "MonotonicTime"]),
        .systemLibrary(name: "CMiniupnpc", path: "Modules/CMiniupnpc", pkgConfig: "miniupnpc", providers: [.apt(["libminiupnpc-dev"])]),
        module("PortMappingPosix", ["PortMapping", "Addressing", "AddressDiscovery", "MonotonicTime", "Transport", "TransportPosix", miniupnpc,
                                    nioCore, logging]),
        module("ChatClient", ["PortMapping", "PortMappingPosix", "Addressing", "Wire", "STUN", "ChatRouter", "ClientSession", "Roster", "HolePunch", "NATGrouping", "AddressDiscovery", "MonotonicTime", "Transport", "TransportPosix", "LineEditor", "Identity", "KnownPeers", nioCore, nioPosix, logging]),
        .executableTarget(name: "natchat-server", dependencies: ["RendezvousServer", "Registry", "Admission", "Addressing", "MonotonicTime", "Store",
                                                                "SQLiteStore", "PostgresStore", "Identity", "Wire", "LayeredSettings", "JSONLogging", argumentParser, logging],
                          path: "Apps/natchat-server", swiftSettings: swiftSettings),
        .executableTarget(name: "natchat", dependencies: ["ChatClient", "AddressDiscovery", "LineEditor", "Addressing", "MonotonicTime", argumentParser, logging],
                          path: "Apps/natchat", swiftSettings: swiftSettings),
        // Helpers shared by the test targets (a seeded generator); not a product.
        .target(name: "TestSupport", path: "Tests/TestSupport", swiftSettings: swiftSettings),
        tests("Addressing", ["Addressing"]),
        tests("Wire", ["Wire", "Addressing"]),
        tests("NATGrouping", ["NATGrouping", "Addressing"]),
        tests("KeepAlive", ["KeepAlive", "MonotonicTime"]),
        tests("Registry", ["Registry", "TestSupport", "Addressing", "Wire", "MonotonicTime", "NATGrouping", "Identity", "Admission", "Store", crypto]),
        tests("ClientSession", ["ClientSession", "TestSupport", "Addressing", "Wire", "Identity", "MonotonicTime", crypto]),
        tests("ChatRouter", ["ChatRouter", "ClientSession", "TestSupport", "Addressing", "Wire", "HolePunch", "MonotonicTime", "Registry", "Identity", crypto]),
        tests("AddressDiscovery", ["AddressDiscovery", "TestSupport", "Addressing", "STUN", "MonotonicTime"]),
        tests("Transport", ["Transport", "Addressing", "MonotonicTime", nioCore, nioEmbedded]),
        tests("TransportPosix", ["TransportPosix", "Transport", "Addressing", "MonotonicTime", nioCore, nioPosix, logging]),
        tests("RendezvousServer", ["RendezvousServer", "Registry", "Transport", "Addressing", "Wire", "MonotonicTime", "Identity", "Store", "STUN", "TransportPosix", nioCore, nioPosix, nioHTTP1, nioEmbedded,
                                    logging, crypto]),
        tests("ChatClient", ["ChatClient", "ChatRouter", "ClientSession", "HolePunch", "STUN", "TestSupport", "Addressing", "Wire", "MonotonicTime", "Transport", "Identity", "Roster", "KnownPeers", nioCore, logging]),
        tests("LineEditor", ["LineEditor"]),
        tests("MonotonicTime", ["MonotonicTime"]),
        tests("STUN", ["STUN", "TestSupport", "Addressing", "Wire"]),
        tests("HolePunch", ["HolePunch", "TestSupport", "Addressing", "Wire", "MonotonicTime"]),
        tests("Delivery", ["Delivery", "Addressing", "MonotonicTime"]),
        tests("Admission", ["Admission", "MonotonicTime", "Addressing"]),
        tests("Roster", ["Roster", "TestSupport", "Addressing", "Wire", "MonotonicTime"]),
        tests("Identity", ["Identity", "TestSupport", "Addressing", "Wire", crypto]),
        tests("Store", ["Store", "SQLiteStore", "TestSupport", grdb]),
        tests("PostgresStore", ["PostgresStore", "Store", postgresNIO]),
        tests("KnownPeers", ["KnownPeers"]),
        tests("LayeredSettings", ["LayeredSettings"]),
        tests("JSONLogging", ["JSONLogging", logging]),
        tests("PortMapping", ["PortMapping", "TestSupport", "Addressing", "MonotonicTime"]),
    ]
)
