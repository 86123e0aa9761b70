import Addressing
import Testing

/// The typed error `body` throws, or `nil` when it does not throw.
func addressError<T>(_ body: () throws(AddressError) -> T) -> AddressError? {
    do {
        _ = try body()
        return nil
    } catch {
        return error
    }
}

func idError(_ text: String) -> AddressError? {
    addressError { () throws(AddressError) in try ClientID(text) }
}

@Suite("ClientID")
struct ClientIDTests {
    @Test("valid IDs keep their text", arguments: [
        "client1", "a", "server", "is", "é", "한국어", "👋", "a-b_c.d", "x!#$%^&*()",
        String(repeating: "a", count: 32),
        String(repeating: "한", count: 10) + "ab", // 32 bytes
    ])
    func valid(_ text: String) throws {
        let value = try ClientID(text)
        #expect(value.rawValue == text)
        #expect(value.description == text)
        #expect(ClientID.violation(in: text) == nil)
    }

    @Test func empty() {
        #expect(idError("") == .invalidClientID(.empty))
        #expect(ClientID.violation(in: "") == .empty)
    }

    @Test func lengthCountsUTF8Bytes() {
        #expect(idError(String(repeating: "a", count: 33)) == .invalidClientID(.tooLong(33)))
        #expect(idError(String(repeating: "한", count: 11)) == .invalidClientID(.tooLong(33)))
        #expect(idError(String(repeating: "é", count: 17)) == .invalidClientID(.tooLong(34)))
        #expect(idError(String(repeating: "👋", count: 9)) == .invalidClientID(.tooLong(36)))
        // 8 emoji = 32 bytes: fine.
        #expect(idError(String(repeating: "👋", count: 8)) == nil)
    }

    @Test("forbidden characters", arguments: [
        ("a b", Unicode.Scalar(" ")),
        ("a@b", "@"),
        ("a:b", ":"),
        ("a\tb", "\t"),
        ("a\nb", "\n"),
        ("a\rb", "\r"),
        ("a\u{7F}b", "\u{7F}"),
        ("a\u{0}b", "\u{0}"),
        ("a\u{85}b", "\u{85}"),
        ("a\u{200B}b", "\u{200B}"),
        ("\u{200D}", "\u{200D}"),
        ("a\u{FEFF}", "\u{FEFF}"),
        ("a\u{202E}b", "\u{202E}"),
        ("a\u{A0}b", "\u{A0}"),
        ("a\u{3000}b", "\u{3000}"),
        ("a\u{2028}b", "\u{2028}"),
    ] as [(String, Unicode.Scalar)])
    func forbidden(_ text: String, _ scalar: Unicode.Scalar) {
        #expect(idError(text) == .invalidClientID(.forbiddenCharacter(scalar)))
    }

    @Test func firstForbiddenCharacterIsReported() {
        #expect(idError("a@b c") == .invalidClientID(.forbiddenCharacter("@")))
    }

    @Test func lengthIsCheckedBeforeCharacters() {
        #expect(idError(String(repeating: " ", count: 40)) == .invalidClientID(.tooLong(40)))
    }

    @Test func reserved() throws {
        #expect(ClientID.reserved == ["server"])
        #expect(try ClientID("server").isReserved)
        #expect(try !ClientID("Server").isReserved)
        #expect(try !ClientID("servers").isReserved)
        #expect(try !ClientID("client1").isReserved)
    }

    @Test func ordering() throws {
        let sorted = try ["carol", "Bob", "alice", "bob"].map { try ClientID($0) }.sorted()
        #expect(sorted.map(\.rawValue) == ["Bob", "alice", "bob", "carol"])
    }

    @Test func violationDescriptions() {
        #expect(ClientID.Violation.empty.description == "empty")
        #expect(ClientID.Violation.tooLong(33).description == "33 bytes, more than 32")
        #expect(ClientID.Violation.forbiddenCharacter("\u{200B}").description == "contains forbidden character U+200B")
        #expect(AddressError.invalidClientID(.empty).description == "invalid client ID: empty")
    }
}

@Suite("IPv4Address")
struct IPv4AddressTests {
    @Test("valid dotted quads", arguments: [
        ("0.0.0.0", UInt32(0)),
        ("255.255.255.255", UInt32.max),
        ("10.0.0.1", 0x0A00_0001),
        ("192.168.56.1", 0xC0A8_3801),
        ("1.2.3.4", 0x0102_0304),
        ("001.002.003.004", 0x0102_0304),
    ])
    func valid(_ text: String, _ bits: UInt32) throws {
        let address = try IPv4Address(parsing: text)
        #expect(address.bits == bits)
    }

    @Test("invalid dotted quads", arguments: [
        "", "256.0.0.1", "1.2.3.256", "999.1.1.1", ".1.2.3", "1.2.3.", "1.2.3.4.", "1.2.3.4.5",
        "1.2.3", "1..2.3", "0001.2.3.4", "1.2.3.0004", "a.b.c.d", "1.2.3.x", " 1.2.3.4", "1.2.3.4 ",
        "1,2,3,4", "１.2.3.4", "-1.2.3.4", "+1.2.3.4", "1.2.3.4/24",
    ])
    func invalid(_ text: String) {
        #expect(addressError { () throws(AddressError) in try IPv4Address(parsing: text) } == .invalidAddress(text))
    }

    @Test func octetsAndDescription() {
        let address = IPv4Address(192, 168, 56, 1)
        #expect(address.bits == 0xC0A8_3801)
        #expect(address.octets == (192, 168, 56, 1))
        #expect(address.description == "192.168.56.1")
        #expect(IPv4Address(bits: 0).description == "0.0.0.0")
        #expect(IPv4Address(bits: .max).description == "255.255.255.255")
    }

    @Test func parsesSubstrings() throws {
        let text = "x10.1.2.3y"
        let inner = text.dropFirst().dropLast()
        #expect(try IPv4Address(parsing: inner) == IPv4Address(10, 1, 2, 3))
    }

    @Test("prefix", arguments: [
        (0, UInt32(0)),
        (-5, UInt32(0)),
        (1, 0x8000_0000),
        (8, 0xC000_0000),
        (16, 0xC0A8_0000),
        (23, 0xC0A8_3800),
        (24, 0xC0A8_3800),
        (25, 0xC0A8_3880),
        (31, 0xC0A8_38FE),
        (32, 0xC0A8_38FF),
        (40, 0xC0A8_38FF),
    ])
    func prefix(_ length: Int, _ expected: UInt32) {
        #expect(IPv4Address(192, 168, 56, 255).prefix(length) == expected)
    }

    @Test func prefixSameAndDifferentNetworks() {
        #expect(IPv4Address(10, 0, 0, 5).prefix(24) == IPv4Address(10, 0, 0, 200).prefix(24))
        #expect(IPv4Address(10, 0, 0, 5).prefix(24) != IPv4Address(10, 0, 1, 5).prefix(24))
        #expect(IPv4Address(10, 0, 0, 5).prefix(16) == IPv4Address(10, 0, 1, 5).prefix(16))
    }

    @Test("private, shared and loopback ranges", arguments: [
        ("10.0.0.0", true), ("10.255.255.255", true), ("9.255.255.255", false), ("11.0.0.0", false),
        ("127.0.0.1", true), ("127.255.255.255", true), ("128.0.0.0", false), ("126.255.255.255", false),
        ("172.16.0.0", true), ("172.31.255.255", true), ("172.15.255.255", false), ("172.32.0.0", false),
        ("192.168.0.0", true), ("192.168.255.255", true), ("192.167.255.255", false), ("192.169.0.0", false),
        ("100.64.0.0", true), ("100.127.255.255", true), ("100.63.255.255", false), ("100.128.0.0", false),
        ("8.8.8.8", false), ("203.0.113.7", false), ("0.0.0.0", false), ("255.255.255.255", false),
        ("169.254.1.1", false),
    ])
    func privateOrLoopback(_ text: String, _ expected: Bool) throws {
        #expect(try IPv4Address(parsing: text).isPrivateOrLoopback == expected)
    }

    @Test func ordering() {
        #expect(IPv4Address(9, 255, 255, 255) < IPv4Address(10, 0, 0, 0))
        #expect(IPv4Address(10, 0, 0, 1) < IPv4Address(10, 0, 0, 2))
        #expect(!(IPv4Address(10, 0, 0, 2) < IPv4Address(10, 0, 0, 2)))
    }
}

@Suite("Endpoint")
struct EndpointTests {
    @Test("valid endpoints", arguments: [
        ("192.168.56.1:10081", IPv4Address(192, 168, 56, 1), UInt16(10081)),
        ("0.0.0.0:1", IPv4Address(0, 0, 0, 0), 1),
        ("255.255.255.255:65535", IPv4Address(255, 255, 255, 255), 65535),
        ("1.2.3.4:00080", IPv4Address(1, 2, 3, 4), 80),
    ])
    func valid(_ text: String, _ address: IPv4Address, _ port: UInt16) throws {
        let endpoint = try Endpoint(parsing: text)
        #expect(endpoint == Endpoint(address: address, port: port))
        #expect(endpoint.address == address)
        #expect(endpoint.port == port)
    }

    @Test func description() {
        #expect(Endpoint(address: IPv4Address(192, 168, 56, 1), port: 57970).description == "192.168.56.1:57970")
    }

    @Test("bad ports", arguments: [
        ("1.2.3.4:0", "0"), ("1.2.3.4:65536", "65536"), ("1.2.3.4:", ""), ("1.2.3.4:ab", "ab"),
        ("1.2.3.4:8o", "8o"), ("1.2.3.4:123456", "123456"), ("1.2.3.4: 80", " 80"), ("1.2.3.4:80 ", "80 "),
        ("1.2.3.4:-80", "-80"), ("1.2.3.4:000000", "000000"),
    ])
    func badPort(_ text: String, _ port: String) {
        #expect(addressError { () throws(AddressError) in try Endpoint(parsing: text) } == .invalidPort(port))
    }

    @Test("bad addresses", arguments: [
        ("1.2.3.4", "1.2.3.4"), ("", ""), (":80", ""), ("1.2.3:80", "1.2.3"), ("1.2.3.4:5:6", "1.2.3.4:5"),
        ("256.1.1.1:80", "256.1.1.1"), ("host:80", "host"),
    ])
    func badAddress(_ text: String, _ bad: String) {
        #expect(addressError { () throws(AddressError) in try Endpoint(parsing: text) } == .invalidAddress(bad))
    }

    @Test func ordering() {
        let a = Endpoint(address: IPv4Address(10, 0, 0, 1), port: 9000)
        let b = Endpoint(address: IPv4Address(10, 0, 0, 1), port: 10000)
        let c = Endpoint(address: IPv4Address(10, 0, 0, 2), port: 1)
        #expect([c, b, a].sorted() == [a, b, c])
    }

    @Test func errorDescriptions() {
        #expect(AddressError.invalidPort("65536").description == "invalid port '65536'")
        #expect(AddressError.invalidAddress("1.2.3").description == "invalid IPv4 address '1.2.3'")
    }
}
