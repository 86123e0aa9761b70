import Addressing
import Crypto
import Foundation
import Wire

/// A 256-bit symmetric key, held inline (no heap): its 32 bytes, compared and hashed, and
/// its ``SessionMAC`` ready, so tagging or verifying a datagram allocates nothing. The server
/// keeps one per registered client.
public struct KeyBytes: Hashable, Sendable {
    private let key: Bytes32
    /// The key's HMAC-SHA256 midstates.
    public let mac: SessionMAC

    /// `bytes` must be 32 bytes; shorter input is zero-padded, longer is cut.
    public init(_ bytes: some Collection<UInt8>) {
        key = Bytes32(bytes)
        mac = key.withUnsafeBytes { SessionMAC(key: $0) }
    }

    /// The 32 key bytes.
    public var bytes: [UInt8] { key.array }

    /// The key for swift-crypto (built on demand: chat sealing, not the server's hot path).
    var symmetric: SymmetricKey { SymmetricKey(data: bytes) }

    // The midstates follow from the key.
    public static func == (a: KeyBytes, b: KeyBytes) -> Bool { a.key == b.key }
    public func hash(into hasher: inout Hasher) { hasher.combine(key) }
}

/// The cryptography of the extended dialect, in one place.
///
/// - Registration: the client signs the encoded registration (cookie included) with its
///   Ed25519 key; the server checks it against the key in the message and binds the ID to it.
/// - Session: both sides derive a session key from X25519(client agreement key, server
///   agreement key), salted with the cookie. Every later client→server message carries a
///   counter and a 128-bit HMAC-SHA256 tag over its bytes; the server accepts a counter
///   only if it is higher than the last one (no replay).
/// - Pairs: two clients derive a pair key from X25519 of their agreement keys, bound to
///   both IDs. Chat is sealed with ChaChaPoly (nonce from the message ID and direction);
///   pings, pongs and acks carry HMAC tags under the pair key. The server never has it.
public enum SessionCrypto {
    /// HMAC-SHA256 over `bytes`, cut to 128 bits.
    public static func tag(_ bytes: some Collection<UInt8>, key: KeyBytes) -> Token128 {
        if let tag = bytes.withContiguousStorageIfAvailable({ key.mac.tag(UnsafeRawBufferPointer($0)) }) { return tag }
        return Array(bytes).withUnsafeBytes { key.mac.tag($0) }
    }

    /// Checks a tag made by ``tag(_:key:)`` (constant time).
    public static func verify(_ tag: Token128, over bytes: some Collection<UInt8>, key: KeyBytes) -> Bool {
        self.tag(bytes, key: key).constantTimeEquals(tag)
    }

    /// A client→server session message as sent: `message`, then `counter` and the tag under
    /// the session key over everything before the tag. (`message`'s kind must be a session
    /// kind; ``ExtendedMessage/Authentication``.)
    public static func sealed(_ message: ExtendedMessage, counter: UInt64, key: KeyBytes) -> [UInt8] {
        var w = WireWriter(capacity: 96)
        w.raw(message.encode())
        w.u64(counter)
        let tag = tag(w.bytes, key: key)
        w.u64(tag.high)
        w.u64(tag.low)
        return w.bytes
    }

    /// A peer message as sent: `message`, then the tag under the pair key over it.
    public static func sealed(_ message: ExtendedMessage, key: KeyBytes) -> [UInt8] {
        var bytes = message.encode()
        let tag = tag(bytes, key: key)
        bytes += tag.bytes
        return bytes
    }

    /// Whether the trailing tag of the encoded datagram `bytes` verifies under `key`.
    public static func verifyAuthenticated(_ bytes: [UInt8], key: KeyBytes) -> Bool {
        verifyAuthenticated(bytes, mac: key.mac)
    }

    /// ``verifyAuthenticated(_:key:)`` with the key's midstates alone (what the server keeps).
    public static func verifyAuthenticated(_ bytes: [UInt8], mac: SessionMAC) -> Bool {
        bytes.withUnsafeBytes { verifyAuthenticated($0, mac: mac) }
    }

    /// ``verifyAuthenticated(_:key:)`` on a datagram in place (the server's receive buffer).
    public static func verifyAuthenticated(_ datagram: UnsafeRawBufferPointer, key: KeyBytes) -> Bool {
        verifyAuthenticated(datagram, mac: key.mac)
    }

    /// ``verifyAuthenticated(_:mac:)`` on a datagram in place.
    public static func verifyAuthenticated(_ datagram: UnsafeRawBufferPointer, mac: SessionMAC) -> Bool {
        guard datagram.count > 16, ExtendedMessage.trailerLength(ofKind: datagram[2]) == 16 else { return false }
        let tagStart = datagram.count - 16
        let tag = Token128(high: UInt64(bigEndian: datagram.loadUnaligned(fromByteOffset: tagStart, as: UInt64.self)),
                           low: UInt64(bigEndian: datagram.loadUnaligned(fromByteOffset: tagStart + 8, as: UInt64.self)))
        return mac.isValid(tag, for: UnsafeRawBufferPointer(rebasing: datagram[..<tagStart]))
    }

    /// Encodes a registration signed by `identity`.
    public static func signedRegistration(id: ClientID, cookie: Token128, privateEndpoints: [Endpoint], natKind: NATKind,
                                          identity: IdentityKey, subscribe: Bool = true) -> [UInt8] {
        let bytes = ExtendedMessage.register(id: id, cookie: cookie, privateEndpoints: privateEndpoints, natKind: natKind,
                                             keys: identity.publicKeys, subscribe: subscribe).encode()
        guard let signature = try? identity.signing.signature(for: bytes) else { return bytes }
        return bytes + Array(signature)
    }

    /// Whether the encoded registration `bytes` is signed by the signing key it carries.
    public static func verifyRegistration(_ bytes: [UInt8], keys: PublicKeys, signature: [UInt8]) -> Bool {
        guard bytes.count > 64, let key = try? Curve25519.Signing.PublicKey(rawRepresentation: keys.signing) else { return false }
        return key.isValidSignature(signature, for: Array(bytes[..<(bytes.count - 64)]))
    }

    /// The session key both sides derive after a registration: X25519 of the two keys,
    /// salted with the cookie and the server's fresh nonce (so every session has its own key
    /// and counters of an old one are worthless).
    public static func sessionKey(privateKey: Curve25519.KeyAgreement.PrivateKey, peerPublicKey: [UInt8],
                                  cookie: Token128, nonce: Token128 = .zero, id: ClientID) -> KeyBytes? {
        guard let peer = try? Curve25519.KeyAgreement.PublicKey(rawRepresentation: peerPublicKey),
              let shared = try? privateKey.sharedSecretFromKeyAgreement(with: peer)
        else { return nil }
        let key = shared.hkdfDerivedSymmetricKey(using: SHA256.self, salt: cookie.bytes + nonce.bytes,
                                                 sharedInfo: Array("natchat session v1 \(id)".utf8), outputByteCount: 32)
        return KeyBytes(key.withUnsafeBytes { Array($0) })
    }

    /// The key servers that share a database authenticate their datagrams to each other with:
    /// HKDF-SHA256 of the cluster's shared secret (which any length of random bytes may be).
    public static func clusterKey(secret: [UInt8]) -> KeyBytes {
        let key = HKDF<SHA256>.deriveKey(inputKeyMaterial: SymmetricKey(data: secret), salt: Array("natchat cluster v1".utf8),
                                         info: Array("server datagrams".utf8), outputByteCount: 32)
        return KeyBytes(key.withUnsafeBytes { Array($0) })
    }

    /// The key two clients share, bound to both IDs (in sorted order).
    public static func pairKey(privateKey: Curve25519.KeyAgreement.PrivateKey, peerPublicKey: [UInt8],
                               selfID: ClientID, peerID: ClientID) -> KeyBytes? {
        guard let peer = try? Curve25519.KeyAgreement.PublicKey(rawRepresentation: peerPublicKey),
              let shared = try? privateKey.sharedSecretFromKeyAgreement(with: peer)
        else { return nil }
        let (first, second) = selfID < peerID ? (selfID, peerID) : (peerID, selfID)
        let key = shared.hkdfDerivedSymmetricKey(using: SHA256.self, salt: Array("natchat pair v1".utf8),
                                                 sharedInfo: Array("\(first) \(second)".utf8), outputByteCount: 32)
        return KeyBytes(key.withUnsafeBytes { Array($0) })
    }

    /// Seals chat text from `from` to `to`: ChaChaPoly, nonce = direction byte + message ID,
    /// the IDs and message ID authenticated as associated data.
    public static func seal(_ text: String, from: ClientID, to: ClientID, messageID: UInt64, key: KeyBytes) -> [UInt8]? {
        guard let nonce = try? ChaChaPoly.Nonce(data: nonceBytes(from: from, to: to, messageID: messageID)),
              let box = try? ChaChaPoly.seal(Array(text.utf8), using: key.symmetric, nonce: nonce,
                                             authenticating: associatedData(from: from, to: to, messageID: messageID))
        else { return nil }
        return Array(box.ciphertext) + Array(box.tag)
    }

    /// Opens what ``seal(_:from:to:messageID:key:)`` made; `nil` when forged, altered or not UTF-8.
    public static func open(_ sealed: [UInt8], from: ClientID, to: ClientID, messageID: UInt64, key: KeyBytes) -> String? {
        guard sealed.count >= 16, let nonce = try? ChaChaPoly.Nonce(data: nonceBytes(from: from, to: to, messageID: messageID)),
              let box = try? ChaChaPoly.SealedBox(nonce: nonce, ciphertext: sealed.dropLast(16), tag: sealed.suffix(16)),
              let plain = try? ChaChaPoly.open(box, using: key.symmetric,
                                               authenticating: associatedData(from: from, to: to, messageID: messageID))
        else { return nil }
        return String(validating: Array(plain), as: UTF8.self)
    }

    private static func nonceBytes(from: ClientID, to: ClientID, messageID: UInt64) -> [UInt8] {
        let direction: UInt8 = from < to ? 1 : 2
        var bytes: [UInt8] = [direction, 0, 0, 0]
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: messageID >> UInt64(shift))) }
        return bytes
    }

    private static func associatedData(from: ClientID, to: ClientID, messageID: UInt64) -> [UInt8] {
        Array("natchat chat v1 \(from) \(to) \(messageID)".utf8)
    }
}

extension Token128 {
    /// The 16 bytes, most significant first.
    public var bytes: [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: high >> UInt64(56 - 8 * $0)) }
            + (0..<8).map { UInt8(truncatingIfNeeded: low >> UInt64(56 - 8 * $0)) }
    }

    public init(bytes: some Collection<UInt8>) {
        let array = Array(bytes.prefix(16)) + Array(repeating: 0, count: max(0, 16 - bytes.count))
        self.init(high: array[0..<8].reduce(0) { $0 << 8 | UInt64($1) }, low: array[8..<16].reduce(0) { $0 << 8 | UInt64($1) })
    }
}
