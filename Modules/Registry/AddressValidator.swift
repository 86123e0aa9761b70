import Addressing
import MonotonicTime
import Wire

/// Proves that a source address receives datagrams: the cookie of a challenge, checked
/// when it comes back, and dated, so that a registration can be told fresh from replayed.
/// The server implements it with a keyed MAC; tests with a fake.
public protocol AddressValidator: Sendable {
    /// A cookie for a challenge sent to `source` at `now`.
    func cookie(for source: Endpoint, now: Instant) -> Token128
    /// When `cookie` was issued, if this validator made it for `source` and it is still
    /// within ``cookieLifetime`` at `now`; `nil` for anything else.
    func issueTime(of cookie: Token128, for source: Endpoint, now: Instant) -> Instant?
    /// How long a cookie is accepted after it was issued.
    var cookieLifetime: Duration { get }
}

/// A validator that accepts no cookie: the default for a registry that serves only the
/// classic dialect.
public struct RejectingValidator: AddressValidator {
    public init() {}
    public func cookie(for source: Endpoint, now: Instant) -> Token128 { .zero }
    public func issueTime(of cookie: Token128, for source: Endpoint, now: Instant) -> Instant? { nil }
    public var cookieLifetime: Duration { .zero }
}
