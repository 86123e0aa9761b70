#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// The console for pipes and scripts: one command per line from stdin, each output line
/// written (and so flushed) at once, end of input ends ``run(onLine:)``.
public final class PlainConsole: Console {
    private let stopped = Atomic<Bool>(false)

    public init() {}

    public func run(onLine: (String) -> LineDisposition) {
        while !stopped.load(ordering: .relaxed), let line = readLine(strippingNewline: true) {
            if onLine(line) == .stop { return }
        }
    }

    public func show(_ text: String) { LineWriter.write(text) }

    /// Stores nothing: there is no Tab completion without readline.
    public func setPeerCompletion(_ provider: @escaping @Sendable (String) -> [String]) {}

    public func stop() {
        stopped.store(true, ordering: .relaxed)
        // readLine may be blocked in read(2): closing stdin makes it return end of input.
        close(STDIN_FILENO)
    }
}
