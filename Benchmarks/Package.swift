// swift-tools-version:6.1
import PackageDescription

// Dev tooling, kept in its own package so that building and testing natchat does not
// pay for it: the load generator (natchat-load), the roster simulation (roster-sim), and
// ordo-one benchmarks.
// It depends on the natchat package by path and uses its library modules.
let package = Package(
    name: "natchat-benchmarks",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(name: "natchat", path: ".."),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
    ],
    targets: [
        // sendmmsg/recvmmsg for natchat-load (Swift's Glibc module does not export them), so
        // that the load generator spends far less per datagram than the server it measures.
        .target(name: "CBatchIO"),
        .executableTarget(
            name: "natchat-load",
            dependencies: [
                "CBatchIO",
                .product(name: "Addressing", package: "natchat"),
                .product(name: "Wire", package: "natchat"),
                .product(name: "STUN", package: "natchat"),
                .product(name: "Identity", package: "natchat"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]),
        // Issue 13: time until every roster is complete after a burst of joins, under loss, in
        // virtual time (a real Registry and real ExtendedRouters through a simulated network).
        .executableTarget(
            name: "roster-sim",
            dependencies: [
                .product(name: "Addressing", package: "natchat"),
                .product(name: "Wire", package: "natchat"),
                .product(name: "Identity", package: "natchat"),
                .product(name: "MonotonicTime", package: "natchat"),
                .product(name: "Registry", package: "natchat"),
                .product(name: "Roster", package: "natchat"),
                .product(name: "ChatRouter", package: "natchat"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]),
        // A yardstick beside stunmin: the least a SwiftNIO server does to answer STUN (see its
        // header), so bin/bench can split natchat-server's cost into SwiftNIO's and its own.
        .executableTarget(
            name: "nio-stunfloor",
            dependencies: [
                .product(name: "STUN", package: "natchat"),
                .product(name: "Addressing", package: "natchat"),
                .product(name: "Transport", package: "natchat"),
                .product(name: "TransportPosix", package: "natchat"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]),
        // Micro-benchmarks of the hot paths (`swift package benchmark`), with malloc counts;
        // thresholds are checked in under Thresholds/.
        .executableTarget(
            name: "NatchatBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "Addressing", package: "natchat"),
                .product(name: "Wire", package: "natchat"),
                .product(name: "STUN", package: "natchat"),
                .product(name: "Identity", package: "natchat"),
                .product(name: "Registry", package: "natchat"),
                .product(name: "KeepAlive", package: "natchat"),
                .product(name: "MonotonicTime", package: "natchat"),
                .product(name: "LineEditor", package: "natchat"),
                .product(name: "RendezvousServer", package: "natchat"),
                .product(name: "Admission", package: "natchat"),
                .product(name: "Transport", package: "natchat"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/NatchatBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]),
    ]
)
