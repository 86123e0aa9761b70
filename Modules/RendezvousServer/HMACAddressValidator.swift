import Addressing
import Crypto
import MonotonicTime
import Registry
import Wire

/// Stateless address validation with dated cookies. A cookie is 128 bits:
/// - the high 64 are its issue time, in milliseconds on the server's monotonic clock plus a
///   random per-process offset (so the cookie does not tell the host's uptime);
/// - the low 64 are HMAC-SHA256(secret, address, port, those 64 bits), cut to 64 bits.
///
/// It is valid for ``cookieLifetime`` after it was issued, and only for the address and port
/// it was sent to. The issue time is what makes a registration provably fresh: the registry
/// takes a registration only when its cookie was issued after the one the client's current
/// (or last) session began with, so a captured registration replayed later refreshes
/// nothing. The secret is random per process: a restarted server simply challenges again.
public struct HMACAddressValidator: AddressValidator {
    private let key: SymmetricKey
    private let offsetMilliseconds: UInt64
    public let cookieLifetime: Duration

    public init(key: SymmetricKey = SymmetricKey(size: .bits256), cookieLifetime: Duration = .seconds(60),
                offsetMilliseconds: UInt64 = UInt64.random(in: 0...(1 << 40))) {
        self.key = key
        self.cookieLifetime = cookieLifetime
        self.offsetMilliseconds = offsetMilliseconds
    }

    public func cookie(for source: Endpoint, now: Instant) -> Token128 {
        let stamp = UInt64(max(0, now.nanoseconds / 1_000_000)) &+ offsetMilliseconds
        return Token128(high: stamp, low: mac(source, stamp: stamp))
    }

    public func issueTime(of cookie: Token128, for source: Endpoint, now: Instant) -> Instant? {
        guard Token128(high: cookie.high, low: mac(source, stamp: cookie.high)).constantTimeEquals(cookie) else { return nil }
        guard cookie.high >= offsetMilliseconds,
              case let (nanoseconds, overflow) = Int64(clamping: cookie.high - offsetMilliseconds).multipliedReportingOverflow(by: 1_000_000),
              !overflow
        else { return nil }
        let issued = Instant(nanoseconds: nanoseconds)
        guard issued <= now, now - issued <= cookieLifetime else { return nil }
        return issued
    }

    private func mac(_ source: Endpoint, stamp: UInt64) -> UInt64 {
        var message = [UInt8]()
        message.reserveCapacity(14)
        withUnsafeBytes(of: source.address.bits.bigEndian) { message.append(contentsOf: $0) }
        withUnsafeBytes(of: source.port.bigEndian) { message.append(contentsOf: $0) }
        withUnsafeBytes(of: stamp.bigEndian) { message.append(contentsOf: $0) }
        let code = HMAC<SHA256>.authenticationCode(for: message, using: key)
        return code.withUnsafeBytes { bytes in bytes.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) } }
    }
}
