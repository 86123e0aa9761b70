/// The one shape of natchat's protocol cores.
///
/// A core is a value that does no I/O and reads no clock. Every input is a mutating method
/// that takes the time (`now`) and returns, in order, what the core wants done: its
/// `Output`s (datagrams to send, events to report). The core says when it next needs the
/// clock (``nextDeadline``) and is advanced by ``handleTimeout(now:)``, which answers the
/// same way. A driver (a socket, a terminal, a test with a fake clock) performs each output
/// with one `run(_:)`, so a unit test is a sequence of calls and a check of what came back.
///
/// The sub-machines inside a core (a path agent in a router, a feed in the registry) have the
/// same shape, and their owner turns their outputs into its own.
public protocol SansIOCore {
    associatedtype Output
    /// When ``handleTimeout(now:)`` is next needed; `nil` when nothing is scheduled (an idle
    /// core costs no wake-up).
    var nextDeadline: Instant? { get }
    /// Advances the core to `now` and returns what it wants done.
    mutating func handleTimeout(now: Instant) -> [Output]
}
