#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Dispatch
import Synchronization

/// Waits for SIGINT or SIGTERM without a signal handler doing any work: the signals are
/// ignored at the process level and delivered to a dispatch source instead.
public enum TerminationSignal {
    /// Keeps the dispatch sources alive for the life of the process. `@unchecked` because
    /// dispatch sources are thread-safe but not marked `Sendable`; the array is only touched
    /// under the lock.
    private final class Retainer: @unchecked Sendable {
        let lock = Mutex(())
        var sources: [any DispatchSourceSignal] = []
    }
    private static let retainer = Retainer()

    /// Suspends until SIGINT or SIGTERM arrives; returns the signal number.
    public static func wait(for signals: [Int32] = [SIGINT, SIGTERM]) async -> Int32 {
        await withCheckedContinuation { continuation in
            onSignal(signals) { continuation.resume(returning: $0) }
        }
    }

    /// Calls `handler` once, on a dispatch queue, when the first of `signals` arrives.
    public static func onSignal(_ signals: [Int32] = [SIGINT, SIGTERM], handler: @escaping @Sendable (Int32) -> Void) {
        let fired = Mutex(false)
        let queue = DispatchQueue(label: "natchat.signals")
        retainer.lock.withLock { _ in
            for number in signals {
                signal(number, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
                source.setEventHandler {
                    let first = fired.withLock { value in
                        defer { value = true }
                        return !value
                    }
                    if first { handler(number) }
                }
                source.resume()
                retainer.sources.append(source)
            }
        }
    }
}
