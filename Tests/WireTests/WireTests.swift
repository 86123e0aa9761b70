import Addressing
import Testing
@testable import Wire

// Helpers -------------------------------------------------------------------------------

func id(_ text: String) -> ClientID { try! ClientID(text) }
func ip(_ text: String) -> IPv4Address { try! IPv4Address(parsing: text) }
func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }

/// The typed error `body` throws, or `nil` when it does not throw.
func wireError<T>(_ body: () throws(WireError) -> T) -> WireError? {
    do {
        _ = try body()
        return nil
    } catch {
        return error
    }
}

func decodeError(_ text: String) -> WireError? {
    wireError { () throws(WireError) in try ClassicMessage.decode(Array(text.utf8)) }
}

// Round trips ---------------------------------------------------------------------------

@Suite("ClassicMessage round trip")
struct RoundTripTests {
    static let messages: [ClassicMessage] = [
        .register(id("client1"), privateAddress: ip("192.168.56.1")),
        .register(id("client1"), privateAddress: ip("10.0.0.5"), offers: ["x1", "ext=2"]),
        .register(id("c"), privateAddress: ip("0.0.0.0"), offers: ["a", "b", "c", "d"]),
        .keepAlive(id("client1")),
        .unregister(id("client1")),
        .peer(id("client1"), ep("192.168.56.1:10081")),
        .peer(id("z"), ep("255.255.255.255:65535")),
        .peerPrivate(id("client2"), ip("10.0.0.5")),
        .unregistered(id("client3"), ep("192.168.56.1:57970")),
        .offline(id("client4"), ep("203.0.113.7:1")),
        .chat(from: id("client2"), text: "I love Network!!"),
        .chat(from: id("client2"), text: "mail me @ a@b.c: at 10:30, ok?  two  spaces "),
        .chat(from: id("client2"), text: "tab\there"),
        .chat(from: id("client2"), text: ""),
        .chat(from: id("한국어"), text: "안녕하세요 👋"),
        .chat(from: id("is"), text: "is unregistered 1.2.3.4:5"),
        .serverNotice("registration refused: ID bob - the ID is in use from another address"),
        .serverNotice(""),
    ]

    @Test("encode then decode gives the same message", arguments: messages)
    func roundTrip(_ message: ClassicMessage) throws {
        let bytes = message.encode()
        #expect(bytes == Array(message.text.utf8))
        #expect(try ClassicMessage.decode(bytes) == message)
        #expect(try ClassicMessage.decode(text: message.text) == message)
    }

    @Test("every case is covered by the round-trip list")
    func everyCaseCovered() {
        var seen = Set<String>()
        for message in Self.messages {
            switch message {
            case .register: seen.insert("register")
            case .keepAlive: seen.insert("keepAlive")
            case .unregister: seen.insert("unregister")
            case .peer: seen.insert("peer")
            case .peerPrivate: seen.insert("peerPrivate")
            case .unregistered: seen.insert("unregistered")
            case .offline: seen.insert("offline")
            case .chat: seen.insert("chat")
            case .serverNotice: seen.insert("serverNotice")
            }
        }
        #expect(seen.count == 9)
    }

    @Test("a datagram of exactly the maximum length decodes")
    func maximumLength() throws {
        let prefix = "client2@chat "
        let text = String(repeating: "x", count: ClassicMessage.maxDatagramLength - prefix.utf8.count)
        let bytes = Array((prefix + text).utf8)
        #expect(bytes.count == 2048)
        #expect(try ClassicMessage.decode(bytes) == .chat(from: id("client2"), text: text))
    }
}

// The seed's exact texts ----------------------------------------------------------------

@Suite("Seed texts")
struct SeedTextTests {
    @Test func registration() throws {
        #expect(try ClassicMessage.decode(text: "client1 192.168.56.1") == .register(id("client1"), privateAddress: ip("192.168.56.1")))
        #expect(ClassicMessage.register(id("client1"), privateAddress: IPv4Address(192, 168, 56, 1)).text == "client1 192.168.56.1")
    }

    @Test func registrationWithOffers() throws {
        #expect(try ClassicMessage.decode(text: "alice 10.0.0.2 nat1 v2") == .register(id("alice"), privateAddress: ip("10.0.0.2"), offers: ["nat1", "v2"]))
        #expect(ClassicMessage.register(id("alice"), privateAddress: ip("10.0.0.2"), offers: ["nat1", "v2"]).text == "alice 10.0.0.2 nat1 v2")
    }

    @Test func peerLine() throws {
        #expect(try ClassicMessage.decode(text: "client1 192.168.56.1:10081") == .peer(id("client1"), Endpoint(address: IPv4Address(192, 168, 56, 1), port: 10081)))
        #expect(ClassicMessage.peer(id("client1"), ep("192.168.56.1:10081")).text == "client1 192.168.56.1:10081")
    }

    @Test func unregisteredLine() throws {
        #expect(try ClassicMessage.decode(text: "client3 is unregistered 192.168.56.1:57970") == .unregistered(id("client3"), Endpoint(address: IPv4Address(192, 168, 56, 1), port: 57970)))
        #expect(ClassicMessage.unregistered(id("client3"), ep("192.168.56.1:57970")).text == "client3 is unregistered 192.168.56.1:57970")
    }

    @Test func offlineLine() throws {
        #expect(try ClassicMessage.decode(text: "client3 is off-line 192.168.56.1:57970") == .offline(id("client3"), ep("192.168.56.1:57970")))
        #expect(ClassicMessage.offline(id("client3"), ep("192.168.56.1:57970")).text == "client3 is off-line 192.168.56.1:57970")
    }

    @Test func keepAlive() throws {
        #expect(try ClassicMessage.decode(text: "ID@keepalive") == .keepAlive(id("ID")))
        #expect(ClassicMessage.keepAlive(id("ID")).text == "ID@keepalive")
    }

    @Test func exit() throws {
        #expect(try ClassicMessage.decode(text: "ID @exit") == .unregister(id("ID")))
        #expect(ClassicMessage.unregister(id("ID")).text == "ID @exit")
    }

    @Test func exitWithoutTheSpaceIsNotAnExit() {
        #expect(decodeError("ID@exit") == .unrecognized)
        #expect(decodeError(" @exit") == .invalidClientID(.empty))
        #expect(decodeError("@exit") == .unrecognized)
        #expect(decodeError("a  @exit") == .invalidClientID(.forbiddenCharacter(" ")))
    }

    @Test func privateLine() throws {
        #expect(try ClassicMessage.decode(text: "ID@private:10.0.0.5") == .peerPrivate(id("ID"), IPv4Address(10, 0, 0, 5)))
        #expect(ClassicMessage.peerPrivate(id("ID"), ip("10.0.0.5")).text == "ID@private:10.0.0.5")
    }

    @Test func chat() throws {
        #expect(try ClassicMessage.decode(text: "client2@chat I love Network!!") == .chat(from: id("client2"), text: "I love Network!!"))
        #expect(ClassicMessage.chat(from: id("client2"), text: "I love Network!!").text == "client2@chat I love Network!!")
    }

    @Test func chatTextWithAtColonAndSpaces() throws {
        let text = "meet @ 10:30 at bob@example.org:80  ok @chat @exit"
        #expect(try ClassicMessage.decode(text: "client2@chat " + text) == .chat(from: id("client2"), text: text))
    }

    @Test func chatWithoutSpaceOrText() throws {
        #expect(try ClassicMessage.decode(text: "client2@chat") == .chat(from: id("client2"), text: ""))
        #expect(try ClassicMessage.decode(text: "client2@chat ") == .chat(from: id("client2"), text: ""))
        #expect(decodeError("client2@chatty") == .unrecognized)
    }

    @Test func serverNotice() throws {
        #expect(try ClassicMessage.decode(text: "server@chat registration refused") == .serverNotice("registration refused"))
        #expect(ClassicMessage.serverNotice("hello there").text == "server@chat hello there")
        // A chat "from server" is, on the wire, a server notice.
        #expect(try ClassicMessage.decode(ClassicMessage.chat(from: id("server"), text: "x").encode()) == .serverNotice("x"))
    }

    @Test func serverAsIDInOtherForms() throws {
        // "server" is a valid ID text; only registration refuses it (Registry's job).
        #expect(try ClassicMessage.decode(text: "server@keepalive") == .keepAlive(id("server")))
        #expect(try ClassicMessage.decode(text: "server 1.2.3.4") == .register(id("server"), privateAddress: ip("1.2.3.4")))
    }
}

// Rejections ----------------------------------------------------------------------------

@Suite("Decoding rejections")
struct RejectionTests {
    @Test func errorDescriptions() {
        #expect(WireError.invalidClientID(.empty).description == "invalid client ID: empty")
        #expect(WireError.invalidPort("65536").description == "invalid port '65536'")
        #expect(WireError.invalidAddress("1.2.3").description == "invalid IPv4 address '1.2.3'")
        #expect(WireError.datagramTooLong(length: 2049, limit: 2048).description == "datagram of 2049 bytes exceeds 2048")
        #expect(WireError.unrecognized.description == "unrecognized message")
    }

    @Test("an address error becomes the decoding error of the same case and text", arguments: [
        AddressError.invalidClientID(.tooLong(33)), .invalidAddress("1.2.3"), .invalidPort("0"),
    ])
    func fromAddressError(_ error: AddressError) {
        let wire = WireError(error)
        #expect(wire.description == error.description)
        switch (error, wire) {
        case (.invalidClientID(let a), .invalidClientID(let b)): #expect(a == b)
        case (.invalidAddress(let a), .invalidAddress(let b)), (.invalidPort(let a), .invalidPort(let b)): #expect(a == b)
        default: Issue.record("\(error) became \(wire)")
        }
    }

    @Test func empty() {
        #expect(wireError { () throws(WireError) in try ClassicMessage.decode([UInt8]()) } == .empty)
        #expect(wireError { () throws(WireError) in try ClassicMessage.decode(text: "") } == .empty)
    }

    @Test func tooLong() {
        let bytes = Array(("client2@chat " + String(repeating: "x", count: 2048)).utf8)
        #expect(wireError { () throws(WireError) in try ClassicMessage.decode(bytes) } == .datagramTooLong(length: 2061, limit: 2048))
        let justOver = [UInt8](repeating: UInt8(ascii: "a"), count: 2049)
        #expect(wireError { () throws(WireError) in try ClassicMessage.decode(justOver) } == .datagramTooLong(length: 2049, limit: 2048))
    }

    @Test("invalid UTF-8", arguments: [
        [0xFF] as [UInt8],
        Array("a@chat ".utf8) + [0xC3],           // truncated 2-byte sequence
        Array("a@chat ".utf8) + [0xC0, 0xAF],     // overlong encoding of '/'
        Array("a@chat ".utf8) + [0xED, 0xA0, 0x80], // UTF-16 surrogate
        [0x61, 0x80, 0x40, 0x6B],                 // stray continuation byte
    ])
    func invalidUTF8(_ bytes: [UInt8]) {
        #expect(wireError { () throws(WireError) in try ClassicMessage.decode(bytes) } == .invalidUTF8)
    }

    @Test("bad client IDs in messages", arguments: [
        ("@keepalive", WireError.invalidClientID(.empty)),
        (String(repeating: "a", count: 33) + "@keepalive", .invalidClientID(.tooLong(33))),
        (String(repeating: "한", count: 11) + " 10.0.0.1", .invalidClientID(.tooLong(33))),
        ("a\tb@keepalive", .invalidClientID(.forbiddenCharacter("\t"))),
        ("a\u{7F}b@keepalive", .invalidClientID(.forbiddenCharacter("\u{7F}"))),
        ("a\u{200B}b@keepalive", .invalidClientID(.forbiddenCharacter("\u{200B}"))),
        ("a:b@keepalive", .invalidClientID(.forbiddenCharacter(":"))),
        ("a b@keepalive", .invalidClientID(.forbiddenCharacter(" "))),
        ("a\nb 1.2.3.4:5", .invalidClientID(.forbiddenCharacter("\n"))),
    ])
    func badIDs(_ text: String, _ expected: WireError) {
        #expect(decodeError(text) == expected)
    }

    @Test("bad IPv4 addresses in messages", arguments: [
        ("alice 256.1.1.1", "256.1.1.1"),
        ("alice .1.2.3", ".1.2.3"),
        ("alice 1.2.3.", "1.2.3."),
        ("alice 1.2.3.4.5", "1.2.3.4.5"),
        ("alice 1.2.3.1000", "1.2.3.1000"),
        ("alice 1.2.x.4", "1.2.x.4"),
        ("alice 1..3.4", "1..3.4"),
        ("alice 1.2.3", "1.2.3"),
        ("alice 256.1.1.1:80", "256.1.1.1"),
        ("alice@private:10.0.0", "10.0.0"),
        ("alice@private:", ""),
        ("alice is unregistered 1.2.3:4", "1.2.3"),
    ])
    func badAddresses(_ text: String, _ bad: String) {
        #expect(decodeError(text) == .invalidAddress(bad))
    }

    @Test("bad ports in messages", arguments: [
        ("alice 1.2.3.4:0", "0"),
        ("alice 1.2.3.4:65536", "65536"),
        ("alice 1.2.3.4:", ""),
        ("alice 1.2.3.4:ab", "ab"),
        ("alice 1.2.3.4:-1", "-1"),
        ("alice 1.2.3.4:+80", "+80"),
        ("alice 1.2.3.4:100000", "100000"),
        ("alice is off-line 1.2.3.4:99999", "99999"),
    ])
    func badPorts(_ text: String, _ bad: String) {
        #expect(decodeError(text) == .invalidPort(bad))
    }

    @Test("unrecognized shapes", arguments: [
        "alice",
        "alice@",
        "alice@unknown",
        "alice@keepalive ",
        "alice@exit",
        "alice@privat:1.2.3.4",
        "alice is gone 1.2.3.4:5",
        "alice is unregistered",
        "alice is unregistered 1.2.3.4:5 extra",
        "alice 10.0.0.1 a b c d e",            // five offers, four allowed
        "alice 10.0.0.1 " + String(repeating: "o", count: 33), // offer too long
        "alice 10.0.0.1  x",                    // empty offer
        "alice 10.0.0.1 ",                      // trailing space: empty offer
        "alice 10.0.0.1 x:y",                   // offer with a forbidden character
    ])
    func unrecognized(_ text: String) {
        #expect(decodeError(text) == .unrecognized)
    }

    @Test("control characters in chat text", arguments: [
        "\u{1B}[2J", "line\nbreak", "carriage\rreturn", "nul\u{0}", "del\u{7F}", "c1\u{85}", "bell\u{7}",
    ])
    func controlInChat(_ text: String) {
        #expect(decodeError("bob@chat " + text) == .controlCharacterInText)
        #expect(decodeError("server@chat " + text) == .controlCharacterInText)
    }
}

// Combining marks at a field start --------------------------------------------------------

@Suite("Grapheme clusters at field boundaries")
struct GraphemeBoundaryTests {
    // The decoder compares Characters (grapheme clusters). A chat text that starts with a
    // combining mark fuses with the separating space into one Character (" \u{301}"), so
    // "alice@chat \u{301}x" no longer has the prefix "chat " and is rejected, although the
    // datagram is a valid chat that our own encoder produces.
    @Test("chat text starting with a combining mark round-trips")
    func chatTextStartingWithCombiningMark() throws {
        let message = ClassicMessage.chat(from: id("alice"), text: "\u{301}x")
        #expect(try ClassicMessage.decode(message.encode()) == message)
    }

    @Test("offer token starting with a combining mark round-trips")
    func offerStartingWithCombiningMark() throws {
        let message = ClassicMessage.register(id("alice"), privateAddress: ip("10.0.0.1"), offers: ["\u{301}x"])
        #expect(try ClassicMessage.decode(message.encode()) == message)
    }
}

extension GraphemeBoundaryTests {
    // U+0D4E MALAYALAM LETTER DOT REPH is a letter (Lo), so ClientID accepts it, but its
    // Grapheme_Cluster_Break is Prepend: it fuses with the character after it. An ID that
    // ends with it swallows the following "@" or " " into one Character, and the decoder,
    // which searches Characters, no longer finds the separator.
    static let prependEndingID = "a\u{0D4E}"

    @Test("an ID ending with a Prepend character is a valid ID")
    func prependIDIsValid() throws {
        #expect(try ClientID(Self.prependEndingID).rawValue.unicodeScalars.count == 2)
    }

    @Test("messages naming an ID that ends with a Prepend character round-trip", arguments: [
        ClassicMessage.keepAlive(id(prependEndingID)),
        .unregister(id(prependEndingID)),
        .register(id(prependEndingID), privateAddress: ip("10.0.0.1")),
        .peer(id(prependEndingID), ep("1.2.3.4:5")),
        .peerPrivate(id(prependEndingID), ip("10.0.0.1")),
        .chat(from: id(prependEndingID), text: "hi"),
    ])
    func prependIDRoundTrip(_ message: ClassicMessage) throws {
        #expect(try ClassicMessage.decode(message.encode()) == message)
    }
}
