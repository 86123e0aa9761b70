#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CReadline
import Synchronization

/// The peer-ID provider behind Tab completion, and its bridge to the C shim's
/// `natchat_rl_peer_source` callback.
///
/// Why the bridge is safe under Swift 6 strict concurrency:
/// - C gets a capture-free `@convention(c)` function plus this object as its `context` (an
///   `Unmanaged` pointer), not a global: each ``ReadlineConsole`` keeps its own provider, and
///   ``Completion`` installs its own without reaching into a console. ``installed(_:)``
///   retains the object for exactly as long as C holds the pointer (it uninstalls before it
///   releases), so the callback never sees a dangling context.
/// - The C shim's own globals (the source and its context) are set and read only on the
///   thread that owns readline: ``installed(_:)`` runs there, and C calls the source from
///   `natchat_rl_candidates` on that same thread.
/// - The provider, which any thread may replace, lives in a `Mutex`. The callback copies it
///   out under the lock and calls it after unlocking, so a provider that blocks (a server
///   round trip) never holds up ``set(_:)`` on another thread, and a provider that itself
///   calls ``set(_:)`` cannot deadlock. The class is `Sendable` with a single `let` `Mutex`.
final class PeerCompletionSource: Sendable {
    private let provider: Mutex<@Sendable (String) -> [String]>

    /// The default provider offers no peer.
    init(_ provider: @escaping @Sendable (String) -> [String] = { _ in [] }) {
        self.provider = Mutex(provider)
    }

    /// Replaces the provider; from any thread.
    func set(_ provider: @escaping @Sendable (String) -> [String]) {
        self.provider.withLock { $0 = provider }
    }

    /// Asks the current provider for the IDs that start with `prefix` (on the calling thread).
    func ids(startingWith prefix: String) -> [String] {
        let current = provider.withLock { $0 }
        return current(prefix)
    }

    /// Makes this the C shim's peer source while `body` runs, then removes it. Call on the
    /// thread that owns readline (the shim's globals are touched only there).
    func installed<Result>(_ body: () throws -> Result) rethrows -> Result {
        let retained = Unmanaged.passRetained(self)
        natchat_rl_set_peer_source({ prefix, context in
            guard let context else { return nil }
            let source = Unmanaged<PeerCompletionSource>.fromOpaque(context).takeUnretainedValue()
            return mallocCStringArray(source.ids(startingWith: prefix.map { String(cString: $0) } ?? ""))
        }, retained.toOpaque())
        defer {
            natchat_rl_set_peer_source(nil, nil)
            retained.release()
        }
        return try body()
    }
}

/// `words` as the shim wants them: a `malloc`ed NULL-terminated array of `malloc`ed
/// strings, which the shim takes over and frees; `nil` for no word.
private func mallocCStringArray(_ words: [String]) -> UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? {
    guard !words.isEmpty else { return nil }
    let (size, overflow) = MemoryLayout<UnsafeMutablePointer<CChar>?>.stride.multipliedReportingOverflow(by: words.count + 1)
    guard !overflow, let raw = malloc(size) else { return nil }
    let array = raw.bindMemory(to: UnsafeMutablePointer<CChar>?.self, capacity: words.count + 1)
    var count = 0
    for word in words {
        guard let copy = strdup(word) else { continue }
        (array + count).initialize(to: copy)
        count += 1
    }
    (array + count).initialize(to: nil)
    return array
}
