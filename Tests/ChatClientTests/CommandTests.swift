import Testing
@testable import ChatClient
import Wire

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
        ("@show_list", Command.showList),
        ("  @show_list", .showList),
        ("@show_list   ", .showList),
        ("\t@show_list\t", .showList),
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
        // 2048 - 32 (longest ID) - "@chat ".count = 2010 bytes
        let longest = String(repeating: "x", count: 2010)
        #expect(try Command.parse("@chat bob " + longest) == .chat(to: ClientID("bob"), text: longest))
        #expect(parseError("@chat bob " + longest + "y") == .usage(chatUsage + " (the text is longer than 2010 bytes)"))
        // the limit counts UTF-8 bytes: 670 × 3 bytes = 2010, one more is too long
        #expect(try Command.parse("@chat bob " + String(repeating: "한", count: 670)) != nil)
        #expect(parseError("@chat bob " + String(repeating: "한", count: 671)) == .usage(chatUsage + " (the text is longer than 2010 bytes)"))
    }

    @Test("usage errors", arguments: [
        ("@show_list now", "@show_list"),
        ("@show_list x y", "@show_list"),
        ("@exit please", "@exit"),
        ("@chat", chatUsage),
        ("@chat   ", chatUsage),
        ("@chat bob", chatUsage + " (the text is missing)"),
        ("@chat bob ", chatUsage + " (the text is missing)"),
        ("@chat b@d hi", chatUsage + " (\"b@d\" is not a valid ID)"),
        ("@chat b:d hi", chatUsage + " (\"b:d\" is not a valid ID)"),
        ("@chat " + String(repeating: "a", count: 33) + " hi", chatUsage + " (\"" + String(repeating: "a", count: 33) + "\" is not a valid ID)"),
        ("@chat " + String(repeating: "a", count: 50) + " hi", chatUsage + " (\"" + String(repeating: "a", count: 40) + "\" is not a valid ID)"),
        ("@chat bob \u{1B}[2J", chatUsage + " (the text holds a control character)"),
        ("@chat bob line\rover", chatUsage + " (the text holds a control character)"),
        ("@chat bob bell\u{7}", chatUsage + " (the text holds a control character)"),
    ])
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

    @Test func errorDescriptions() {
        #expect(Command.ParseError.usage("@exit").description == "usage: @exit")
        #expect(Command.ParseError.unknown("hello").description == "unknown command: hello (try @help)")
    }

    @Test func names() {
        #expect(Command.names == ["@show_list", "@chat", "@exit", "@help"])
        for name in Command.names {
            #expect(Command.helpText.contains(name), "\(name) missing from the help text")
        }
    }
}
