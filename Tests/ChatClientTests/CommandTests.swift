import Addressing
import Testing
@testable import ChatClient

private func parseError(_ line: String) -> Command.ParseError? {
    do {
        _ = try Command.parse(line)
        return nil
    } catch {
        return error
    }
}

private let chatUsage = "@chat <id> <text>"

@Suite("Command.parse")
struct CommandParseTests {
    @Test("blank lines are no command", arguments: ["", " ", "\t", "  \t  "])
    func blank(_ line: String) throws {
        #expect(try Command.parse(line) == nil)
    }

    @Test("simple commands", arguments: [
        ("@show_list", Command.showList()),
        ("  @show_list", .showList()),
        ("@show_list   ", .showList()),
        ("\t@show_list\t", .showList()),
        ("@exit", .exit),
        (" @exit \t", .exit),
        ("@help", .help),
        ("  @help", .help),
    ])
    func simple(_ line: String, _ expected: Command) throws {
        #expect(try Command.parse(line) == expected)
    }

    @Test func chat() throws {
        #expect(try Command.parse("@chat client2 I love Network!!") == .chat(to: ClientID("client2"), text: "I love Network!!"))
        #expect(try Command.parse("  @chat   bob hi") == .chat(to: ClientID("bob"), text: "hi"))
        #expect(try Command.parse("@chat\tbob\thi") == .chat(to: ClientID("bob"), text: "hi"))
        // one separator is dropped; the rest of the text is kept as typed
        #expect(try Command.parse("@chat bob  two spaces ") == .chat(to: ClientID("bob"), text: " two spaces "))
        #expect(try Command.parse("@chat bob a@b: c") == .chat(to: ClientID("bob"), text: "a@b: c"))
        #expect(try Command.parse("@chat bob tab\tinside") == .chat(to: ClientID("bob"), text: "tab\tinside"))
        #expect(try Command.parse("@chat 한국어 안녕") == .chat(to: ClientID("한국어"), text: "안녕"))
    }

    @Test func chatTextAtTheLengthLimit() throws {
        // Command.maxTextBytes = 1024 UTF-8 bytes: fits an extended datagram with its relay envelope
        #expect(Command.maxTextBytes == 1024)
        let longest = String(repeating: "x", count: 1024)
        #expect(try Command.parse("@chat bob " + longest) == .chat(to: ClientID("bob"), text: longest))
        #expect(parseError("@chat bob " + longest + "y") == .usage(chatUsage + " (the text is longer than 1024 bytes)"))
        // the limit counts UTF-8 bytes: 341 × 3 bytes = 1023 fits, 342 × 3 = 1026 is too long
        #expect(try Command.parse("@chat bob " + String(repeating: "한", count: 341)) != nil)
        #expect(parseError("@chat bob " + String(repeating: "한", count: 342)) == .usage(chatUsage + " (the text is longer than 1024 bytes)"))
    }

    static let idTooLong = String(repeating: "a", count: 33)
    static let idWayTooLong = String(repeating: "a", count: 50)
    static let usageCases: [(String, String)] = [
        ("@exit please", "@exit"),
        ("@chat", chatUsage),
        ("@chat   ", chatUsage),
        ("@chat bob", "\(chatUsage) (the text is missing)"),
        ("@chat bob ", "\(chatUsage) (the text is missing)"),
        ("@chat b@d hi", "\(chatUsage) (\"b@d\" is not a valid ID)"),
        ("@chat b:d hi", "\(chatUsage) (\"b:d\" is not a valid ID)"),
        ("@chat \(idTooLong) hi", "\(chatUsage) (\"\(idTooLong)\" is not a valid ID)"),
        ("@chat \(idWayTooLong) hi", "\(chatUsage) (\"\(idWayTooLong.prefix(40))\" is not a valid ID)"),
        ("@chat bob \u{1B}[2J", "\(chatUsage) (the text holds a control character)"),
        ("@chat bob line\rover", "\(chatUsage) (the text holds a control character)"),
        ("@chat bob bell\u{7}", "\(chatUsage) (the text holds a control character)"),
    ]

    @Test("usage errors", arguments: usageCases)
    func usage(_ line: String, _ text: String) {
        #expect(parseError(line) == .usage(text))
    }

    @Test("unknown commands", arguments: [
        ("hello", "hello"),
        ("hello world", "hello"),
        ("@foo bar", "@foo"),
        ("@EXIT", "@EXIT"),
        ("@chatbob hi", "@chatbob"),
        ("exit", "exit"),
        ("@", "@"),
        (String(repeating: "z", count: 60), String(repeating: "z", count: 40)),
    ])
    func unknown(_ line: String, _ word: String) {
        #expect(parseError(line) == .unknown(word))
    }

    @Test func trustAndWhois() throws {
        #expect(try Command.parse("@trust bob") == .trust(ClientID("bob")))
        #expect(try Command.parse("  @whois\tbob  ") == .whois(ClientID("bob")))
        #expect(parseError("@trust") == .usage("@trust <id>"))
        #expect(parseError("@whois bob carol") == .usage("@whois <id>"))
        #expect(parseError("@trust b@b") == .usage("@trust <id> (\"b@b\" is not a valid ID)"))
    }

    @Test func statusAndPing() throws {
        #expect(try Command.parse("@status") == .status)
        #expect(try Command.parse(" @status \t") == .status)
        #expect(parseError("@status bob") == .usage("@status"))
        #expect(try Command.parse("@ping bob") == .ping(ClientID("bob")))
        #expect(try Command.parse("@ping\tbob ") == .ping(ClientID("bob")))
        #expect(parseError("@ping") == .usage("@ping <id>"))
        #expect(parseError("@ping bob carol") == .usage("@ping <id>"))
        #expect(parseError("@ping b@b") == .usage("@ping <id> (\"b@b\" is not a valid ID)"))
    }

    @Test func errorDescriptions() {
        #expect(Command.ParseError.usage("@exit").description == "usage: @exit")
        #expect(Command.ParseError.unknown("hello").description == "unknown command: hello (try @help)")
    }

    @Test func names() {
        #expect(Command.names == ["@show_list", "@chat", "@whois", "@trust", "@ping", "@status", "@exit", "@help"])
        for name in Command.names {
            #expect(Command.helpText.contains(name), "\(name) missing from the help text")
        }
    }

    @Test func peerArgumentNames() {
        // The ReadlineConsole completes the word after these from the roster.
        #expect(Command.peerArgumentNames == ["@show_list", "@chat", "@whois", "@trust", "@ping"])
        #expect(Command.peerArgumentNames.allSatisfy(Command.names.contains))
    }
}

@Suite("Command.parse grapheme boundaries")
struct CommandGraphemeTests {
    // parse splits the line on Characters. A text that starts with a combining mark fuses
    // with the space before it (" \u{301}" is one Character), so the space is not seen as
    // the separator: the whole rest of the line is taken as the ID and the text as missing.
    // The wire codec has the same problem (see WireTests "Grapheme clusters at field boundaries").
    @Test func chatTextStartingWithACombiningMark() throws {
        #expect(try Command.parse("@chat bob \u{301}x") == .chat(to: ClientID("bob"), text: "\u{301}x"))
    }
}

@Suite("Command.parse @show_list")
struct ShowListParseTests {
    static let usage = "@show_list [<id prefix>] [<page>]"

    @Test("pages and prefixes", arguments: [
        ("@show_list", Command.showList(prefix: nil, page: 1)),
        ("@show_list 1", .showList(page: 1)),
        ("@show_list 2", .showList(page: 2)),
        ("  @show_list\t 17 ", .showList(page: 17)),
        ("@show_list 007", .showList(page: 7)),
        ("@show_list 1000000000", .showList(page: 1_000_000_000)),
        ("@show_list bo", .showList(prefix: "bo", page: 1)),
        ("@show_list bo 3", .showList(prefix: "bo", page: 3)),
        ("@show_list\tbo\t3", .showList(prefix: "bo", page: 3)),
        // a prefix made of digits is written with its page number
        ("@show_list 42 1", .showList(prefix: "42", page: 1)),
        ("@show_list -1", .showList(prefix: "-1", page: 1)),
        ("@show_list 한국 2", .showList(prefix: "한국", page: 2)),
        ("@show_list server", .showList(prefix: "server", page: 1)),
        ("@show_list \(String(repeating: "p", count: 32))", .showList(prefix: String(repeating: "p", count: 32), page: 1)),
    ])
    func parses(_ line: String, _ expected: Command) throws {
        #expect(try Command.parse(line) == expected)
    }

    @Test("usage errors", arguments: [
        ("@show_list 0", "(pages start at 1)"),
        ("@show_list 000", "(pages start at 1)"),
        ("@show_list bo 0", "(pages start at 1)"),
        ("@show_list 1000000001", "(no page is that far)"),
        ("@show_list 99999999999999999999999999", "(no page is that far)"),
        ("@show_list bo x", "(the second argument must be a page number)"),
        ("@show_list bo -1", "(the second argument must be a page number)"),
        ("@show_list bo 2x", "(the second argument must be a page number)"),
        ("@show_list 1 2 3", "(too many arguments)"),
        ("@show_list a b c", "(too many arguments)"),
        ("@show_list a@b", "(no ID holds \"@\")"),
        ("@show_list a:b 2", "(no ID holds \":\")"),
        ("@show_list \u{1B}[2J", "(no ID holds U+1B)"),
        ("@show_list a\u{A0}b", "(no ID holds U+A0)"),
        ("@show_list \(String(repeating: "p", count: 33))", "(the prefix is longer than an ID can be)"),
    ])
    func usage(_ line: String, _ why: String) {
        #expect(parseError(line) == .usage("\(Self.usage) \(why)"))
        #expect(parseError(line)?.description == "usage: \(Self.usage) \(why)")
    }

    @Test func helpExplainsPagingAndPrefixes() {
        #expect(Command.helpText.contains("@show_list <n>"))
        #expect(Command.helpText.contains("@show_list <prefix>"))
    }
}
