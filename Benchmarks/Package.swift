// swift-tools-version:6.1
import PackageDescription

// Dev tooling, kept in its own package so that building and testing natchat does not
// pay for it: the load generator (natchat-load) and, later, ordo-one benchmarks.
// It depends on the natchat package by path and uses its library modules.
let package = Package(
    name: "natchat-benchmarks",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(name: "natchat", path: ".."),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
    ],
    targets: [
        .executableTarget(
            name: "natchat-load",
            dependencies: [
                .product(name: "Wire", package: "natchat"),
                .product(name: "STUN", package: "natchat"),
                .product(name: "Identity", package: "natchat"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]),
    ]
)
