#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// The console for pipes and scripts: one command per line from stdin, each output line
/// written (and so flushed) at once, end of input ends ``run(onLine:)``.
///
/// ``stop()`` ends ``run(onLine:)`` from any thread even while it waits for input: it waits
/// in `poll(2)` on stdin and on a pipe of its own, which `stop()` writes to. (Closing stdin
/// does not do it on Linux: a `read(2)` already blocked on a descriptor is not woken when
/// another thread closes it, so a refused or signalled client with a quiet pipe on its
/// stdin never ended.)
public final class PlainConsole: Console {
    private let stopped = Atomic<Bool>(false)
    /// The wake-up pipe: [read end, write end], -1 when it could not be made (then `stop()`
    /// takes effect at the next line).
    private let wake: (reader: Int32, writer: Int32)

    public init() {
        var ends: [Int32] = [-1, -1]
        wake = pipe(&ends) == 0 ? (ends[0], ends[1]) : (-1, -1)
    }

    deinit {
        if wake.reader >= 0 { close(wake.reader) }
        if wake.writer >= 0 { close(wake.writer) }
    }

    public func run(onLine: (String) -> LineDisposition) {
        var pending: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while !stopped.load(ordering: .relaxed) {
            if let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Self.text(pending[..<newline])
                pending.removeSubrange(...newline)
                if onLine(line) == .stop { return }
                continue
            }
            guard waitForInput() else { return }
            let count = chunk.withUnsafeMutableBytes { read(STDIN_FILENO, $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR || errno == EAGAIN { continue }
            guard count > 0 else {
                // End of input: a last line without a newline is still a line.
                if !pending.isEmpty, !stopped.load(ordering: .relaxed) { _ = onLine(Self.text(pending[...])) }
                return
            }
            pending.append(contentsOf: chunk[..<count])
        }
    }

    /// Waits until stdin can be read (true) or ``stop()`` was called (false).
    private func waitForInput() -> Bool {
        guard wake.reader >= 0 else { return true }
        var fds = [pollfd(fd: STDIN_FILENO, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: wake.reader, events: Int16(POLLIN), revents: 0)]
        while !stopped.load(ordering: .relaxed) {
            let ready = poll(&fds, nfds_t(fds.count), -1)
            if ready < 0, errno == EINTR { continue }
            if ready < 0 { return true } // let read(2) report what is wrong
            if fds[1].revents != 0 { return false }
            if fds[0].revents != 0 { return true }
        }
        return false
    }

    private static func text(_ bytes: ArraySlice<UInt8>) -> String {
        var line = bytes
        if line.last == UInt8(ascii: "\r") { line = line.dropLast() }
        return String(decoding: line, as: UTF8.self)
    }

    public func show(_ text: String) { LineWriter.write(text) }

    /// Stores nothing: there is no Tab completion without readline.
    public func setPeerCompletion(_ provider: @escaping @Sendable (String) -> [String]) {}

    public func stop() {
        stopped.store(true, ordering: .relaxed)
        if wake.writer >= 0 {
            var byte: UInt8 = 1
            _ = write(wake.writer, &byte, 1)
        }
    }
}
