import Crypto
import MonotonicTime
import Registry
import Wire

/// Stateless address validation: a cookie is HMAC-SHA256(secret, address, port, time
/// bucket) cut to 128 bits. It is valid for the bucket it was made in and the next one,
/// so a challenge answered within one bucket length always passes. The secret is random
/// per process: a restarted server simply challenges again.
public struct HMACAddressValidator: AddressValidator {
    private let key: SymmetricKey
    private let bucket: Duration

    public init(key: SymmetricKey = SymmetricKey(size: .bits256), bucket: Duration = .seconds(30)) {
        self.key = key
        self.bucket = bucket
    }

    public func cookie(for source: Endpoint, now: Instant) -> Token128 {
        cookie(for: source, bucket: bucketIndex(now))
    }

    public func isValid(_ cookie: Token128, for source: Endpoint, now: Instant) -> Bool {
        let current = bucketIndex(now)
        return cookie.constantTimeEquals(self.cookie(for: source, bucket: current))
            || cookie.constantTimeEquals(self.cookie(for: source, bucket: current &- 1))
    }

    private func bucketIndex(_ now: Instant) -> Int64 {
        now.nanoseconds / max(1, bucket.nanosecondsClamped)
    }

    private func cookie(for source: Endpoint, bucket: Int64) -> Token128 {
        var message = [UInt8]()
        message.reserveCapacity(14)
        withUnsafeBytes(of: source.address.bits.bigEndian) { message.append(contentsOf: $0) }
        withUnsafeBytes(of: source.port.bigEndian) { message.append(contentsOf: $0) }
        withUnsafeBytes(of: bucket.bigEndian) { message.append(contentsOf: $0) }
        let mac = Array(HMAC<SHA256>.authenticationCode(for: message, using: key))
        let high = mac[0..<8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let low = mac[8..<16].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        return Token128(high: high, low: low)
    }
}

