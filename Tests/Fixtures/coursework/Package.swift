// swift-tools-version:6.1
import PackageDescription

// A student's package that uses two natchat modules on their own (docs/coursework.md):
// the same-NAT rule (NATGrouping) and the server's liveness table (KeepAlive), with the
// address and time types they take (Addressing, MonotonicTime), from the natchat package
// three directories up. `traits: []` turns off natchat's package traits, which only
// modules with package dependencies need, so SwiftPM fetches no package at all.
// bin/check-coursework builds it from clean and checks that nothing else is fetched or
// compiled.
let package = Package(
    name: "coursework",
    dependencies: [
        .package(name: "natchat", path: "../../..", traits: []),
    ],
    targets: [
        .executableTarget(
            name: "coursework",
            dependencies: [
                .product(name: "NATGrouping", package: "natchat"),
                .product(name: "KeepAlive", package: "natchat"),
                .product(name: "Addressing", package: "natchat"),
                .product(name: "MonotonicTime", package: "natchat"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]),
    ]
)
