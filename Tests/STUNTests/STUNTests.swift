import Addressing
import Testing
import STUN
import Wire
import TestSupport

private func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }

private func decodeError(_ bytes: [UInt8]) -> STUN.DecodeError? {
    do {
        _ = try STUN.decode(bytes)
        return nil
    } catch {
        return error
    }
}

/// RFC 5769 §2.2's transaction ID: b7 e7 a7 01 bc 34 d6 86 fa 87 df ae.
private let rfcTransaction = STUN.TransactionID(high: 0xB7E7_A701, low: 0xBC34_D686_FA87_DFAE)
private let rfcTransactionBytes: [UInt8] = [0xB7, 0xE7, 0xA7, 0x01, 0xBC, 0x34, 0xD6, 0x86, 0xFA, 0x87, 0xDF, 0xAE]
private let cookieBytes: [UInt8] = [0x21, 0x12, 0xA4, 0x42]

/// A Binding success response header for `attributes`.
private func response(_ attributes: [UInt8], type: UInt16 = 0x0101) -> [UInt8] {
    [UInt8(type >> 8), UInt8(type & 0xFF), UInt8(attributes.count >> 8), UInt8(attributes.count & 0xFF)]
        + cookieBytes + rfcTransactionBytes + attributes
}

@Suite("STUN encoding (RFC 8489 layout)")
struct STUNEncodingTests {
    @Test func bindingRequestLayout() throws {
        let bytes = STUN.bindingRequest(rfcTransaction)
        #expect(bytes == [0x00, 0x01, 0x00, 0x00] + cookieBytes + rfcTransactionBytes)
        #expect(bytes.count == STUN.headerLength)
        #expect(STUN.looksLikeSTUN(bytes))
        #expect(try STUN.decode(bytes) == .bindingRequest(rfcTransaction))
    }

    @Test func bindingSuccessLayoutMatchesRFC5769() throws {
        // 192.0.2.1:32853 (RFC 5769 §2.2): port 0x8055 ^ 0x2112 = 0xA147,
        // address 0xC0000201 ^ 0x2112A442 = 0xE112A643.
        let bytes = STUN.bindingSuccess(rfcTransaction, mapped: ep("192.0.2.1:32853"))
        #expect(bytes == [0x01, 0x01, 0x00, 0x0C] + cookieBytes + rfcTransactionBytes
            + [0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xA1, 0x47, 0xE1, 0x12, 0xA6, 0x43])
        #expect(STUN.looksLikeSTUN(bytes))
        #expect(try STUN.decode(bytes) == .bindingSuccess(rfcTransaction, mapped: ep("192.0.2.1:32853")))
    }

    @Test(arguments: ["0.0.0.0:1", "255.255.255.255:65535", "33.18.164.66:8466", "10.0.0.5:10081"])
    func bindingSuccessRoundTrip(_ text: String) throws {
        var random = SplitMix64(seed: 7)
        let transaction = STUN.TransactionID.random(using: &random)
        let bytes = STUN.bindingSuccess(transaction, mapped: ep(text))
        #expect(try STUN.decode(bytes) == .bindingSuccess(transaction, mapped: ep(text)))
    }

    @Test func transactionIDsComeFromTheGenerator() {
        var first = SplitMix64(seed: 42), second = SplitMix64(seed: 42)
        let a = STUN.TransactionID.random(using: &first)
        let b = STUN.TransactionID.random(using: &second)
        #expect(a == b)
        #expect(STUN.TransactionID.random(using: &first) != a)
        #expect(STUN.magicCookie == 0x2112_A442)
    }
}

@Suite("STUN decoding")
struct STUNDecodingTests {
    /// RFC 5769 §2.2, "Sample IPv4 Response": SOFTWARE, XOR-MAPPED-ADDRESS,
    /// MESSAGE-INTEGRITY and FINGERPRINT.
    @Test func rfc5769SampleIPv4Response() throws {
        let bytes: [UInt8] = [
            0x01, 0x01, 0x00, 0x3C, 0x21, 0x12, 0xA4, 0x42, 0xB7, 0xE7, 0xA7, 0x01, 0xBC, 0x34, 0xD6, 0x86, 0xFA, 0x87, 0xDF, 0xAE,
            0x80, 0x22, 0x00, 0x0B, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63, 0x74, 0x6F, 0x72, 0x20,
            0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xA1, 0x47, 0xE1, 0x12, 0xA6, 0x43,
            0x00, 0x08, 0x00, 0x14, 0x2B, 0x91, 0xF5, 0x99, 0xFD, 0x9E, 0x90, 0xC3, 0x8C, 0x74, 0x89, 0xF9, 0x2A, 0xF9, 0xBA, 0x53,
            0xF0, 0x6B, 0xE7, 0xD7,
            0x80, 0x28, 0x00, 0x04, 0xC0, 0x7D, 0x4C, 0x96,
        ]
        #expect(bytes.count == 20 + 60)
        #expect(try STUN.decode(bytes) == .bindingSuccess(rfcTransaction, mapped: ep("192.0.2.1:32853")))
    }

    @Test func mappedAddressOnly() throws {
        let bytes = response([0x00, 0x01, 0x00, 0x08, 0x00, 0x01, 0x80, 0x55, 0xC0, 0x00, 0x02, 0x01])
        #expect(try STUN.decode(bytes) == .bindingSuccess(rfcTransaction, mapped: ep("192.0.2.1:32853")))
    }

    @Test func unknownAttributesBeforeTheAddress() throws {
        let bytes = response([
            0x80, 0x22, 0x00, 0x05, 0x61, 0x62, 0x63, 0x64, 0x65, 0x00, 0x00, 0x00, // SOFTWARE "abcde" + 3 padding
            0x7F, 0x01, 0x00, 0x00,                                                 // an unknown empty attribute
            0x00, 0x99, 0x00, 0x04, 0x01, 0x02, 0x03, 0x04,                         // an unknown comprehension-required one
            0x00, 0x01, 0x00, 0x08, 0x00, 0x01, 0x80, 0x55, 0xC0, 0x00, 0x02, 0x01,
        ])
        #expect(try STUN.decode(bytes) == .bindingSuccess(rfcTransaction, mapped: ep("192.0.2.1:32853")))
    }

    @Test func xorMappedWinsOverMappedInEitherOrder() throws {
        let plain: [UInt8] = [0x00, 0x01, 0x00, 0x08, 0x00, 0x01, 0x00, 0x50, 0x0A, 0x00, 0x00, 0x01] // 10.0.0.1:80
        let xored: [UInt8] = [0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xA1, 0x47, 0xE1, 0x12, 0xA6, 0x43]
        #expect(try STUN.decode(response(plain + xored)) == .bindingSuccess(rfcTransaction, mapped: ep("192.0.2.1:32853")))
        #expect(try STUN.decode(response(xored + plain)) == .bindingSuccess(rfcTransaction, mapped: ep("192.0.2.1:32853")))
    }

    @Test func ipv6MappingIsIgnored() throws {
        // XOR-MAPPED-ADDRESS, family 0x02, 16 address bytes.
        let ipv6: [UInt8] = [0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xA1, 0x47] + Array(repeating: 0x11, count: 16)
        #expect(try STUN.decode(response(ipv6)) == .other(type: 0x0101, rfcTransaction))
        // An IPv4 one next to it is used.
        let ipv4: [UInt8] = [0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xA1, 0x47, 0xE1, 0x12, 0xA6, 0x43]
        #expect(try STUN.decode(response(ipv6 + ipv4)) == .bindingSuccess(rfcTransaction, mapped: ep("192.0.2.1:32853")))
        #expect(try STUN.decode(response(ipv4 + ipv6)) == .bindingSuccess(rfcTransaction, mapped: ep("192.0.2.1:32853")))
    }

    @Test func successWithoutAddressAndOtherTypes() throws {
        #expect(try STUN.decode(response([])) == .other(type: 0x0101, rfcTransaction))
        // A Binding error response and an indication.
        #expect(try STUN.decode(response([], type: 0x0111)) == .other(type: 0x0111, rfcTransaction))
        #expect(try STUN.decode(response([], type: 0x0011)) == .other(type: 0x0011, rfcTransaction))
        // A request with attributes is still a request.
        #expect(try STUN.decode(response([0x80, 0x22, 0x00, 0x01, 0x61, 0, 0, 0], type: 0x0001)) == .bindingRequest(rfcTransaction))
    }

    @Test func truncatedAttribute() {
        // Declares 8 value bytes, only 4 follow before the end of the message.
        #expect(decodeError(response([0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xA1, 0x47])) == .truncated)
        // Padding of the last attribute beyond the end.
        #expect(decodeError(response([0x80, 0x22, 0x00, 0x05, 0x61, 0x62, 0x63, 0x64])) == .truncated)
        #expect(decodeError(response([0x00, 0x01, 0x01, 0x00, 0, 0, 0, 0])) == .truncated)
    }

    @Test func badAddressAttributes() {
        // Shorter than family + port.
        #expect(decodeError(response([0x00, 0x20, 0x00, 0x02, 0x00, 0x01, 0x00, 0x00])) == .badAttribute)
        // IPv4 family with only 4 bytes.
        #expect(decodeError(response([0x00, 0x01, 0x00, 0x04, 0x00, 0x01, 0x12, 0x34])) == .badAttribute)
    }
}

@Suite("STUN detection")
struct STUNDetectionTests {
    private let valid = STUN.bindingSuccess(rfcTransaction, mapped: ep("192.0.2.1:32853"))

    @Test func shortMessages() {
        #expect(!STUN.looksLikeSTUN([UInt8]()))
        #expect(!STUN.looksLikeSTUN(Array(STUN.bindingRequest(rfcTransaction).prefix(19))))
        for length in 0..<valid.count {
            #expect(decodeError(Array(valid.prefix(length))) == .notSTUN, "prefix \(length)")
        }
    }

    @Test func topBitsSet() {
        for first: UInt8 in [0x40, 0x80, 0xC0, 0xFE] {
            var bytes = STUN.bindingRequest(rfcTransaction)
            bytes[0] = first
            #expect(!STUN.looksLikeSTUN(bytes), "first byte \(first)")
            #expect(decodeError(bytes) == .notSTUN)
        }
        var bytes = STUN.bindingRequest(rfcTransaction)
        bytes[0] = 0x3F
        #expect(STUN.looksLikeSTUN(bytes))
    }

    @Test func badLength() {
        // Not a multiple of 4.
        let odd = [0x00, 0x01, 0x00, 0x02] + cookieBytes + rfcTransactionBytes + [0x00, 0x00]
        #expect(!STUN.looksLikeSTUN(odd))
        // Header length disagrees with the datagram.
        var long = valid
        long.append(contentsOf: [0, 0, 0, 0])
        #expect(!STUN.looksLikeSTUN(long))
        var short = valid
        short[3] = 0x10
        #expect(!STUN.looksLikeSTUN(short))
        #expect(decodeError(short) == .notSTUN)
    }

    @Test func wrongCookie() {
        for index in 4..<8 {
            var bytes = valid
            bytes[index] ^= 0x01
            #expect(!STUN.looksLikeSTUN(bytes), "cookie byte \(index)")
            #expect(decodeError(bytes) == .notSTUN)
        }
    }

    @Test func natchatDialectsAreNotSTUN() {
        #expect(!STUN.looksLikeSTUN(ExtendedMessage.challenge(cookie: Token128(high: 0x2112_A442, low: 0)).encode()))
        #expect(!STUN.looksLikeSTUN(ClassicMessage.keepAlive(try! ClientID("alice")).encode()))
        #expect(!ExtendedMessage.looksExtended(valid))
    }

    @Test func slicesWithOffsetIndices() {
        let padded = [0xAA, 0xBB] + valid
        #expect(STUN.looksLikeSTUN(padded[2...]))
        #expect(!STUN.looksLikeSTUN(padded[1...]))
    }
}

@Suite("STUN in-place helpers")
struct STUNInPlaceTests {
    @Test func bindingRequestTransactionReadsOnlyRequests() {
        var random = SplitMix64(seed: 11)
        let transaction = STUN.TransactionID.random(using: &random)
        let request = STUN.bindingRequest(transaction)
        #expect(STUN.bindingRequestTransaction(request) == transaction)
        #expect(STUN.bindingRequestTransaction(([0xAA] + request)[1...]) == transaction)
        #expect(STUN.bindingRequestTransaction(STUN.bindingSuccess(transaction, mapped: ep("1.2.3.4:5"))) == nil)
        #expect(STUN.bindingRequestTransaction(response([], type: 0x0011)) == nil)
        #expect(STUN.bindingRequestTransaction(Array(request.prefix(19))) == nil)
        var badCookie = request
        badCookie[7] = 0
        #expect(STUN.bindingRequestTransaction(badCookie) == nil)
        // A request with attributes is still a request.
        #expect(STUN.bindingRequestTransaction(response([0x80, 0x22, 0x00, 0x01, 0x61, 0, 0, 0], type: 0x0001)) == rfcTransaction)
    }

    @Test(arguments: ["192.0.2.1:32853", "0.0.0.0:1", "255.255.255.255:65535"])
    func writeBindingSuccessMatchesTheArrayEncoder(_ text: String) {
        var bytes = [UInt8](repeating: 0xEE, count: STUN.bindingSuccessLength + 3)
        let written = bytes.withUnsafeMutableBytes { STUN.writeBindingSuccess(rfcTransaction, mapped: ep(text), into: $0) }
        #expect(written == STUN.bindingSuccessLength)
        #expect(Array(bytes.prefix(written)) == STUN.bindingSuccess(rfcTransaction, mapped: ep(text)))
        #expect(bytes.suffix(3) == [0xEE, 0xEE, 0xEE], "nothing written past the response")
    }

    @Test func writeBindingSuccessRefusesAShortBuffer() {
        var bytes = [UInt8](repeating: 0xEE, count: STUN.bindingSuccessLength - 1)
        let written = bytes.withUnsafeMutableBytes { STUN.writeBindingSuccess(rfcTransaction, mapped: ep("192.0.2.1:1"), into: $0) }
        #expect(written == 0)
        #expect(bytes.allSatisfy { $0 == 0xEE })
    }
}

/// RFC 5780's CHANGE-REQUEST, which the server's alternate port honours for change-port.
struct STUNChangeRequestTests {
    @Test func encodeAndReadBack() throws {
        var random = SystemRandomNumberGenerator()
        let transaction = STUN.TransactionID.random(using: &random)
        for (changeIP, changePort) in [(false, true), (true, false), (true, true), (false, false)] {
            let bytes = STUN.bindingRequest(transaction, change: .init(changeIP: changeIP, changePort: changePort))
            #expect(bytes.count == 28)
            #expect(STUN.bindingRequestTransaction(bytes) == transaction, "still a Binding request")
            let read = try #require(STUN.changeRequest(bytes))
            #expect(read.0 == transaction)
            #expect(read.1 == .init(changeIP: changeIP, changePort: changePort))
        }
    }

    @Test func noAttributeOrBadInputIsNil() {
        var random = SystemRandomNumberGenerator()
        let transaction = STUN.TransactionID.random(using: &random)
        #expect(STUN.changeRequest(STUN.bindingRequest(transaction)) == nil)
        var wrongLength = STUN.bindingRequest(transaction, change: .init(changePort: true))
        wrongLength[23] = 2  // attribute length 2
        #expect(STUN.changeRequest(wrongLength) == nil)
        var overrun = STUN.bindingRequest(transaction, change: .init(changePort: true))
        overrun[23] = 40
        #expect(STUN.changeRequest(overrun) == nil)
        #expect(STUN.changeRequest([UInt8](repeating: 0, count: 3)) == nil)
        // A success response with the attribute is not a request.
        var response = STUN.bindingRequest(transaction, change: .init(changePort: true))
        response[0] = 0x01; response[1] = 0x01
        #expect(STUN.changeRequest(response) == nil)
    }
}
