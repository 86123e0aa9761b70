import Crypto
import Testing
import Wire
@testable import Identity
import TestSupport

/// ``SessionMAC`` against swift-crypto's HMAC<SHA256>, the reference: every key and length
/// must give the same first 128 bits.
@Suite struct SessionMACTests {
    static func reference(_ message: [UInt8], key: [UInt8]) -> Token128 {
        let mac = Array(HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: key)))
        return Token128(bytes: mac.prefix(16))
    }

    @Test func matchesSwiftCryptoForEveryLengthAroundTheBlockBoundaries() {
        var random = SplitMix64(state: 1)
        for length in 0...300 {
            let key = (0..<32).map { _ in UInt8.random(in: 0...255, using: &random) }
            let message = (0..<length).map { _ in UInt8.random(in: 0...255, using: &random) }
            let mac = key.withUnsafeBytes { SessionMAC(key: $0) }
            let tag = message.withUnsafeBytes { mac.tag($0) }
            #expect(tag == Self.reference(message, key: key), "length \(length)")
        }
    }

    @Test func matchesSwiftCryptoForShortAndBlockSizedKeys() {
        var random = SplitMix64(state: 2)
        for keyLength in [0, 1, 16, 31, 32, 33, 63, 64] {
            let key = (0..<keyLength).map { _ in UInt8.random(in: 0...255, using: &random) }
            let message = Array("natchat keep-alive".utf8)
            let tag = key.withUnsafeBytes { keyBytes in message.withUnsafeBytes { SessionMAC(key: keyBytes).tag($0) } }
            #expect(tag == Self.reference(message, key: key), "key length \(keyLength)")
        }
    }

    @Test func knownAnswerFromRFC4231TestCase2() {
        // Key "Jefe", data "what do ya want for nothing?": HMAC-SHA256 starts 5bdcc146bf60754e 6a042426089575c7.
        let mac = Array("Jefe".utf8).withUnsafeBytes { SessionMAC(key: $0) }
        let tag = Array("what do ya want for nothing?".utf8).withUnsafeBytes { mac.tag($0) }
        #expect(tag == Token128(high: 0x5BDC_C146_BF60_754E, low: 0x6A04_2426_0895_75C7))
    }

    @Test func verificationRejectsAnyFlippedBitOfTheTag() {
        let key = KeyBytes(Array(repeating: 7, count: 32))
        let message = Array("hello".utf8)
        let tag = SessionCrypto.tag(message, key: key)
        #expect(message.withUnsafeBytes { key.mac.isValid(tag, for: $0) })
        for bit in 0..<128 {
            let flipped = bit < 64 ? Token128(high: tag.high ^ (1 << UInt64(bit)), low: tag.low)
                : Token128(high: tag.high, low: tag.low ^ (1 << UInt64(bit - 64)))
            #expect(!message.withUnsafeBytes { key.mac.isValid(flipped, for: $0) })
        }
    }

    @Test func keyBytesRoundTripsAndComparesByValue() {
        let raw = (0..<32).map { UInt8($0 * 3) }
        #expect(KeyBytes(raw).bytes == raw)
        #expect(KeyBytes(raw) == KeyBytes(raw))
        #expect(KeyBytes(raw) != KeyBytes(raw.reversed()))
        #expect(KeyBytes(raw).mac == KeyBytes(raw).mac)
    }
}
