#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What the line handler wants next.
public enum LineDisposition: Sendable {
    case keepReading
    case stop
}

/// A place where a person types commands and reads what happens.
///
/// ``run(onLine:)`` blocks the calling thread and owns the input; ``show(_:)``,
/// ``setPeerCompletion(_:)`` and ``stop()`` may be called from any thread.
public protocol Console: Sendable {
    /// Reads lines until end of input, ``stop()``, or `onLine` answers `.stop`.
    func run(onLine: (String) -> LineDisposition)
    /// Prints one line (or several, separated by newlines) for the user.
    func show(_ text: String)
    /// Where Tab finds peer IDs for the word right after a command that takes one (for
    /// ``ReadlineConsole``, its `peerArgumentCommands`): called on the console's own thread
    /// with the typed prefix, it returns the matching IDs in the order to offer them (it may
    /// block briefly, e.g. while a server answers).
    func setPeerCompletion(_ provider: @escaping @Sendable (String) -> [String])
    /// Makes ``run(onLine:)`` return soon.
    func stop()
}

/// Whether both stdin and stdout are terminals (readline is used only then).
public func standardStreamsAreTerminals() -> Bool {
    isatty(STDIN_FILENO) == 1 && isatty(STDOUT_FILENO) == 1
}

/// Writes whole lines to stdout with one `write` each, from any thread, so lines from the
/// network and from commands never interleave mid-line.
public enum LineWriter {
    public static func write(_ text: String) {
        writeRaw(text + "\n")
    }

    /// Writes `text` as it is (no newline added), e.g. a prompt.
    public static func writeRaw(_ text: String) {
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Glibc.write(STDOUT_FILENO, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                return
            }
            offset += written
        }
    }
}
