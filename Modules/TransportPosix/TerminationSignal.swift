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

    /// A signal catcher installed at once, awaited later: install it before announcing
    /// readiness so that a signal sent right after the announcement is never lost.
    public final class Catcher: Sendable {
        private let state = Mutex<(signal: Int32?, continuation: CheckedContinuation<Int32, Never>?)>((nil, nil))

        fileprivate init(signals: [Int32]) {
            TerminationSignal.onSignal(signals) { [self] number in
                let continuation = self.state.withLock { value -> CheckedContinuation<Int32, Never>? in
                    value.signal = number
                    defer { value.continuation = nil }
                    return value.continuation
                }
                continuation?.resume(returning: number)
            }
        }

        /// Suspends until the first signal (returns at once if it already came).
        public func wait() async -> Int32 {
            await withCheckedContinuation { continuation in
                let arrived = state.withLock { value -> Int32? in
                    if let signal = value.signal { return signal }
                    value.continuation = continuation
                    return nil
                }
                if let arrived { continuation.resume(returning: arrived) }
            }
        }
    }

    /// Starts catching SIGINT and SIGTERM now.
    public static func install(_ signals: [Int32] = [SIGINT, SIGTERM]) -> Catcher {
        Catcher(signals: signals)
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
