#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization
import Testing
@testable import LineEditor

private let commands = ["@show_list", "@chat", "@exit", "@help"]
/// natchat's shell's commands whose first argument is a peer ID (ChatClient's `Command.peerArgumentNames`).
private let peerArgumentCommands = ["@chat", "@show_list"]
private let peers = ["alice", "bob", "bobby", "한국어"]

private func complete(_ line: String, start: Int, _ text: String, commands: [String] = commands,
                      peerArgumentCommands: [String] = peerArgumentCommands, peers: [String] = peers) -> [String] {
    Completion.candidates(line: line, start: start, text: text, commands: commands, peerArgumentCommands: peerArgumentCommands, peers: peers)
}

// The command words and the peer source live in C globals (readline's model), so these
// tests, including the provider tests in the extension below, run one at a time.
@Suite("Completion", .serialized)
struct CompletionTests {
    @Test func emptyLineOffersEveryCommand() {
        #expect(complete("", start: 0, "") == ["@", "@show_list", "@chat", "@exit", "@help"])
    }

    @Test func commandPrefixes() {
        #expect(complete("@", start: 0, "@") == ["@", "@show_list", "@chat", "@exit", "@help"])
        #expect(complete("@c", start: 0, "@c") == ["@chat", "@chat"])
        #expect(complete("@e", start: 0, "@e") == ["@exit", "@exit"])
        #expect(complete("@sh", start: 0, "@sh") == ["@show_list", "@show_list"])
        #expect(complete("@chat", start: 0, "@chat") == ["@chat", "@chat"])
    }

    @Test func commonPrefixComesFirst() {
        let words = ["@alpha", "@alps", "@alpine"]
        #expect(complete("@al", start: 0, "@al", commands: words) == ["@alp", "@alpha", "@alps", "@alpine"])
        #expect(complete("@alph", start: 0, "@alph", commands: words) == ["@alpha", "@alpha"])
    }

    @Test func noMatch() {
        #expect(complete("@x", start: 0, "@x") == [])
        #expect(complete("x", start: 0, "x") == [])
        #expect(complete("@chat z", start: 6, "z") == [])
    }

    @Test func leadingSpacesBeforeTheCommand() {
        #expect(complete("  @s", start: 2, "@s") == ["@show_list", "@show_list"])
        #expect(complete("  @chat b", start: 8, "b") == ["bob", "bob", "bobby"])
    }

    @Test func peersAfterChat() {
        #expect(complete("@chat ", start: 6, "") == ["", "alice", "bob", "bobby", "한국어"])
        #expect(complete("@chat b", start: 6, "b") == ["bob", "bob", "bobby"])
        #expect(complete("@chat bobb", start: 6, "bobb") == ["bobby", "bobby"])
        #expect(complete("@chat a", start: 6, "a") == ["alice", "alice"])
        #expect(complete("@chat  a", start: 7, "a") == ["alice", "alice"])
        #expect(complete("@chat 한", start: 6, "한") == ["한국어", "한국어"])
    }

    @Test func peersAreNotOfferedAsCommands() {
        #expect(complete("b", start: 0, "b") == [])
        #expect(complete("@chat", start: 0, "@chat", peers: ["@chatty"]) == ["@chat", "@chat"])
    }

    @Test func commandsAreNotOfferedAsPeers() {
        #expect(complete("@chat @", start: 6, "@") == [])
    }

    @Test func nothingAfterThePeerID() {
        #expect(complete("@chat bob ", start: 10, "") == [])
        #expect(complete("@chat bob b", start: 10, "b") == [])
        #expect(complete("@chat bob hello a", start: 16, "a") == [])
    }

    @Test func nothingAfterOtherCommands() {
        #expect(complete("@exit b", start: 6, "b") == [])
        #expect(complete("@help b", start: 6, "b") == [])
        #expect(complete("@chatty b", start: 8, "b") == [])
        #expect(complete("@show_listx b", start: 12, "b") == [])
        #expect(complete("@show_listx ", start: 12, "") == [])
        #expect(complete("@show b", start: 6, "b") == [])
        #expect(complete("show_list b", start: 10, "b") == [])
    }

    @Test func peersAfterShowList() {
        #expect(complete("@show_list ", start: 11, "") == ["", "alice", "bob", "bobby", "한국어"])
        #expect(complete("@show_list b", start: 11, "b") == ["bob", "bob", "bobby"])
        #expect(complete("@show_list bobb", start: 11, "bobb") == ["bobby", "bobby"])
        #expect(complete("@show_list a", start: 11, "a") == ["alice", "alice"])
        #expect(complete("@show_list 한", start: 11, "한") == ["한국어", "한국어"])
        #expect(complete("@show_list z", start: 11, "z") == [])
    }

    @Test func showListWithLeadingSpaces() {
        #expect(complete("  @show_list b", start: 13, "b") == ["bob", "bob", "bobby"])
        #expect(complete("@show_list   a", start: 13, "a") == ["alice", "alice"])
        #expect(complete("   @show_list  ", start: 15, "") == ["", "alice", "bob", "bobby", "한국어"])
    }

    @Test func showListCommonPrefixComesFirst() {
        let ids = ["alpha", "alps", "alpine", "beta"]
        #expect(complete("@show_list al", start: 11, "al", peers: ids) == ["alp", "alpha", "alps", "alpine"])
        #expect(complete("@show_list alph", start: 11, "alph", peers: ids) == ["alpha", "alpha"])
        #expect(complete("@show_list ", start: 11, "", peers: ids) == ["", "alpha", "alps", "alpine", "beta"])
    }

    @Test func nothingForTheShowListPage() {
        // The same word list completes the prefix, so each of these would match if offered.
        let ids = ["alice", "2fast", "12"]
        #expect(complete("@show_list al", start: 11, "al", peers: ids) == ["alice", "alice"])
        #expect(complete("@show_list al 2", start: 14, "2", peers: ids) == [])
        #expect(complete("@show_list al ", start: 14, "", peers: ids) == [])
        #expect(complete("@show_list al  1", start: 15, "1", peers: ids) == [])
        #expect(complete("@show_list al 2 a", start: 16, "a", peers: ids) == [])
        #expect(complete("@show_list al 2 ", start: 16, "", peers: ids) == [])
    }

    @Test func showListPrefixMadeOfDigits() {
        // `@show_list 12 1` filters on "12": the first argument completes even when numeric.
        #expect(complete("@show_list 1", start: 11, "1", peers: ["12", "alice"]) == ["12", "12"])
    }

    @Test func showListIsNotCompletedInsideTheCommandWord() {
        #expect(complete("@show_list", start: 0, "@show_list") == ["@show_list", "@show_list"])
        #expect(complete("@show_list", start: 0, "@show_list", peers: ["@show_listing"]) == ["@show_list", "@show_list"])
    }

    @Test func commandsAreNotOfferedAsShowListPrefixes() {
        #expect(complete("@show_list @", start: 11, "@") == [])
    }

    @Test func noPeersKnown() {
        #expect(complete("@chat ", start: 6, "", peers: []) == [])
        #expect(complete("@chat b", start: 6, "b", peers: []) == [])
        #expect(complete("@show_list ", start: 11, "", peers: []) == [])
        #expect(complete("@show_list b", start: 11, "b", peers: []) == [])
    }

    @Test func listsAreReplacedOnEachCall() {
        #expect(complete("@chat ", start: 6, "", peers: ["zoe"]) == ["zoe", "zoe"])
        #expect(complete("@chat ", start: 6, "", peers: ["amy"]) == ["amy", "amy"])
        #expect(complete("@show_list ", start: 11, "", peers: ["zoe"]) == ["zoe", "zoe"])
        #expect(complete("@", start: 0, "@", commands: ["@only"]) == ["@only", "@only"])
    }

    @Test func commonPrefixNeverSplitsACharacter() {
        // "한국어" and "한글" share "한" and the first byte of their second characters.
        #expect(complete("@chat 한", start: 6, "한", peers: ["한국어", "한글"]) == ["한", "한국어", "한글"])
        #expect(complete("@show_list ", start: 11, "", peers: ["한국어", "한글"]) == ["한", "한국어", "한글"])
        #expect(complete("@chat ", start: 6, "", peers: ["é1", "è2"]) == ["", "é1", "è2"])
        #expect(complete("@", start: 0, "@", commands: ["@éa", "@èb"]) == ["@", "@éa", "@èb"])
        #expect(complete("@", start: 0, "@", commands: ["@éa", "@éb"]) == ["@é", "@éa", "@éb"])
    }

    @Test func startOutsideTheLine() {
        #expect(complete("@c", start: 5, "") == [])
        #expect(complete("@c", start: -1, "@c") == [])
    }
}

/// A peer provider that records every prefix it is asked with and answers with `answer`.
private final class RecordingProvider: Sendable {
    private let asked = Mutex<[String]>([])
    private let answer: @Sendable (String) -> [String]

    init(_ answer: @escaping @Sendable (String) -> [String]) { self.answer = answer }

    var prefixes: [String] { asked.withLock { $0 } }

    var provider: @Sendable (String) -> [String] {
        { prefix in
            self.asked.withLock { $0.append(prefix) }
            return self.answer(prefix)
        }
    }
}

private func complete(_ line: String, start: Int, _ text: String, commands: [String] = commands,
                      peerArgumentCommands: [String] = peerArgumentCommands,
                      provider: @escaping @Sendable (String) -> [String]) -> [String] {
    Completion.candidates(line: line, start: start, text: text, commands: commands, peerArgumentCommands: peerArgumentCommands,
                          peerCompletion: provider)
}

private func filtering(_ ids: [String]) -> @Sendable (String) -> [String] {
    { prefix in ids.filter { $0.hasPrefix(prefix) } }
}

// Pull-based peer completion: the provider is asked with the typed prefix on each Tab.
extension CompletionTests {
    @Test func providerGetsExactlyTheTypedPrefix() {
        let cases: [(line: String, start: Int, text: String)] = [
            ("@chat bo", 6, "bo"), ("@chat ", 6, ""), ("@chat  al", 7, "al"), ("  @chat b", 8, "b"),
            ("@show_list bo", 11, "bo"), ("@show_list ", 11, ""), ("   @show_list  a", 15, "a"),
            ("@chat 한", 6, "한"), ("@show_list 1", 11, "1"),
        ]
        for item in cases {
            let recorder = RecordingProvider(filtering(peers))
            _ = complete(item.line, start: item.start, item.text, provider: recorder.provider)
            #expect(recorder.prefixes == [item.text], "\(item.line)")
        }
        let recorder = RecordingProvider(filtering(peers))
        #expect(complete("@chat bo", start: 6, "bo", provider: recorder.provider) == ["bob", "bob", "bobby"])
        #expect(recorder.prefixes == ["bo"])
    }

    @Test func providerIsNotAskedForCommandsOrLaterWords() {
        let cases: [(line: String, start: Int, text: String)] = [
            ("", 0, ""), ("@", 0, "@"), ("@c", 0, "@c"), ("@chat", 0, "@chat"), ("  @show_list", 2, "@show_list"),
            ("b", 0, "b"),
            ("@chat bob ", 10, ""), ("@chat bob b", 10, "b"), ("@chat bob hello a", 16, "a"),
            ("@show_list al ", 14, ""), ("@show_list al 2", 14, "2"), ("@show_list al 2 a", 16, "a"),
            ("@exit b", 6, "b"), ("@help ", 6, ""), ("@chatty b", 8, "b"), ("@show_listx b", 12, "b"),
            ("show_list b", 10, "b"),
            ("@c", 5, ""), ("@c", -1, "@c"),
        ]
        for item in cases {
            let recorder = RecordingProvider { _ in ["bob", "@chat", "@chatty"] }
            _ = complete(item.line, start: item.start, item.text, provider: recorder.provider)
            #expect(recorder.prefixes.isEmpty, "\(item.line)")
        }
        // Commands still complete with a provider installed, and none of its words join them.
        let recorder = RecordingProvider { _ in ["@chatty"] }
        #expect(complete("@c", start: 0, "@c", provider: recorder.provider) == ["@chat", "@chat"])
        #expect(recorder.prefixes.isEmpty)
    }

    @Test func providerResultsComeAfterTheirLongestCommonPrefixInProviderOrder() {
        let provider: @Sendable (String) -> [String] = { _ in ["bobby", "bob", "bobcat"] }
        #expect(complete("@chat bo", start: 6, "bo", provider: provider) == ["bob", "bobby", "bob", "bobcat"])
        #expect(complete("@show_list b", start: 11, "b", provider: provider) == ["bob", "bobby", "bob", "bobcat"])
        #expect(complete("@chat bob", start: 6, "bob", provider: { _ in ["bobby"] }) == ["bobby", "bobby"])
        #expect(complete("@chat ", start: 6, "", provider: { _ in ["zoe", "amy"] }) == ["", "zoe", "amy"])
        #expect(complete("@chat 한", start: 6, "한", provider: { _ in ["한국어", "한글"] }) == ["한", "한국어", "한글"])
    }

    @Test func wordsWithoutThePrefixAreNeverOffered() {
        // A sloppy provider that ignores the prefix: only the words that start with it count.
        let everyone: @Sendable (String) -> [String] = { _ in ["alice", "bob", "xbob", "bobby", "@chat", ""] }
        #expect(complete("@chat bo", start: 6, "bo", provider: everyone) == ["bob", "bob", "bobby"])
        #expect(complete("@show_list a", start: 11, "a", provider: everyone) == ["alice", "alice"])
        #expect(complete("@chat z", start: 6, "z", provider: everyone) == [])
        #expect(complete("@chat bo", start: 6, "bo", provider: { _ in ["alice", "Bob", "b"] }) == [])
        // With an empty prefix every word starts with it.
        #expect(complete("@chat ", start: 6, "", provider: { _ in ["b", "a"] }) == ["", "b", "a"])
    }

    @Test func emptyProviderResultGivesNoCandidates() {
        let none: @Sendable (String) -> [String] = { _ in [] }
        #expect(complete("@chat ", start: 6, "", provider: none) == [])
        #expect(complete("@chat b", start: 6, "b", provider: none) == [])
        #expect(complete("@show_list ", start: 11, "", provider: none) == [])
        #expect(complete("@show_list b", start: 11, "b", provider: none) == [])
    }

    @Test func providerIsAskedOnEveryTab() {
        let answers = Mutex(0)
        let provider: @Sendable (String) -> [String] = { _ in
            answers.withLock { count in
                count += 1
                return count == 1 ? ["bob"] : ["bobby"]
            }
        }
        let source = PeerCompletionSource(provider)
        #expect(Completion.candidates(line: "@chat b", start: 6, text: "b", commands: commands,
                                      peerArgumentCommands: peerArgumentCommands, source: source) == ["bob", "bob"])
        #expect(Completion.candidates(line: "@chat b", start: 6, text: "b", commands: commands,
                                      peerArgumentCommands: peerArgumentCommands, source: source) == ["bobby", "bobby"])
        #expect(answers.withLock { $0 } == 2)
    }

    @Test func aProviderMayBlock() {
        let slow: @Sendable (String) -> [String] = { prefix in
            usleep(20_000) // as if waiting for the server
            return ["alice", "bob"].filter { $0.hasPrefix(prefix) }
        }
        #expect(complete("@chat a", start: 6, "a", provider: slow) == ["alice", "alice"])
    }

    @Test func readlineConsoleUsesTheProviderSetLast() async {
        let console = ReadlineConsole(commands: commands, peerArgumentCommands: peerArgumentCommands, historyPath: nil)
        // No provider yet: no peer is offered, commands still are.
        #expect(console.completionCandidates(line: "@chat b", start: 6, text: "b") == [])
        #expect(console.completionCandidates(line: "@e", start: 0, text: "@e") == ["@exit", "@exit"])
        let recorder = RecordingProvider(filtering(peers))
        console.setPeerCompletion(recorder.provider)
        #expect(console.completionCandidates(line: "@chat bo", start: 6, text: "bo") == ["bob", "bob", "bobby"])
        #expect(console.completionCandidates(line: "@chat bob hi", start: 10, text: "hi") == [])
        #expect(recorder.prefixes == ["bo"])
        // Replaced from another thread: the next Tab asks the new provider.
        await Task.detached { console.setPeerCompletion(filtering(["carol"])) }.value
        #expect(console.completionCandidates(line: "@show_list ", start: 11, text: "") == ["carol", "carol"])
        #expect(recorder.prefixes == ["bo"])
    }

    @Test func plainConsoleAcceptsAProvider() {
        let recorder = RecordingProvider(filtering(peers))
        PlainConsole().setPeerCompletion(recorder.provider)
        #expect(recorder.prefixes.isEmpty)
    }
}

// The commands whose first argument is a peer ID come from the caller (natchat's shell
// passes its command table's); nothing about @chat or @show_list is built in.
extension CompletionTests {
    private static let ircCommands = ["/msg", "/quit", "/who", "/whois"]

    private func irc(_ line: String, start: Int, _ text: String, peerArgumentCommands: [String] = ["/msg"]) -> [String] {
        complete(line, start: start, text, commands: Self.ircCommands, peerArgumentCommands: peerArgumentCommands)
    }

    @Test func customPeerArgumentCommand() {
        #expect(irc("/msg ", start: 5, "") == ["", "alice", "bob", "bobby", "한국어"])
        #expect(irc("/msg b", start: 5, "b") == ["bob", "bob", "bobby"])
        #expect(irc("/msg 한", start: 5, "한") == ["한국어", "한국어"])
        #expect(irc("  /msg   a", start: 9, "a") == ["alice", "alice"])
        #expect(irc("/msg z", start: 5, "z") == [])
        // Its first word still completes as a command, and nothing follows the peer ID.
        #expect(irc("/", start: 0, "/") == ["/", "/msg", "/quit", "/who", "/whois"])
        #expect(irc("/m", start: 0, "/m") == ["/msg", "/msg"])
        #expect(irc("/msg", start: 0, "/msg") == ["/msg", "/msg"])
        #expect(irc("/msg bob ", start: 9, "") == [])
        #expect(irc("/msg bob b", start: 9, "b") == [])
    }

    @Test func onlyTheGivenCommandsTakeAPeer() {
        // natchat's own commands are not special to a console configured without them.
        #expect(irc("@chat ", start: 6, "") == [])
        #expect(irc("@chat b", start: 6, "b") == [])
        #expect(irc("@show_list b", start: 11, "b") == [])
        // Nor are the other commands in the list, nor words that merely start with /msg.
        #expect(irc("/who b", start: 5, "b") == [])
        #expect(irc("/quit b", start: 6, "b") == [])
        #expect(irc("/msgs b", start: 6, "b") == [])
        #expect(irc("/ms b", start: 4, "b") == [])
        #expect(irc("msg b", start: 4, "b") == [])
    }

    @Test func providerIsAskedOnlyAfterTheGivenCommands() {
        let recorder = RecordingProvider(filtering(peers))
        let ask: (String, Int, String) -> [String] = { line, start, text in
            complete(line, start: start, text, commands: Self.ircCommands, peerArgumentCommands: ["/msg"], provider: recorder.provider)
        }
        #expect(ask("@chat b", 6, "b") == [])
        #expect(ask("/who b", 5, "b") == [])
        #expect(recorder.prefixes.isEmpty)
        #expect(ask("/msg bo", 5, "bo") == ["bob", "bob", "bobby"])
        #expect(recorder.prefixes == ["bo"])
    }

    @Test func severalPeerArgumentCommands() {
        let both = ["/msg", "/whois"]
        #expect(irc("/msg b", start: 5, "b", peerArgumentCommands: both) == ["bob", "bob", "bobby"])
        #expect(irc("/whois a", start: 7, "a", peerArgumentCommands: both) == ["alice", "alice"])
        #expect(irc("/who a", start: 5, "a", peerArgumentCommands: both) == [])
        // A command that is a prefix of another: each matches only as a whole word.
        let nested = ["/who", "/whois"]
        #expect(irc("/who a", start: 5, "a", peerArgumentCommands: nested) == ["alice", "alice"])
        #expect(irc("/whois a", start: 7, "a", peerArgumentCommands: nested) == ["alice", "alice"])
        #expect(irc("/whoi a", start: 6, "a", peerArgumentCommands: nested) == [])
    }

    @Test func noPeerArgumentCommands() {
        let recorder = RecordingProvider(filtering(peers))
        #expect(complete("@chat b", start: 6, "b", peerArgumentCommands: [], provider: recorder.provider) == [])
        #expect(complete("@show_list ", start: 11, "", peerArgumentCommands: [], provider: recorder.provider) == [])
        #expect(complete("@c", start: 0, "@c", peerArgumentCommands: [], provider: recorder.provider) == ["@chat", "@chat"])
        #expect(recorder.prefixes.isEmpty)
    }

    @Test func wordsThatCanNeverBeAFirstWordAreIgnored() {
        // readline splits words at spaces: an empty word or one holding a space never matches.
        #expect(irc(" b", start: 1, "b", peerArgumentCommands: [""]) == [])
        #expect(irc("/msg b", start: 5, "b", peerArgumentCommands: ["", "/msg"]) == ["bob", "bob", "bobby"])
        #expect(irc("/a b c", start: 5, "c", peerArgumentCommands: ["/a b"]) == [])
        #expect(irc("/a b ", start: 5, "", peerArgumentCommands: ["/a b"]) == [])
        #expect(irc("/a b", start: 3, "b", peerArgumentCommands: ["/a b"]) == [])
    }

    @Test func nonASCIICommandWord() {
        // `start` is a byte offset: "@대화 " is 8 bytes.
        let words = ["@대화", "@끝"]
        #expect(complete("@대화 b", start: 8, "b", commands: words, peerArgumentCommands: ["@대화"]) == ["bob", "bob", "bobby"])
        #expect(complete("@끝 b", start: 5, "b", commands: words, peerArgumentCommands: ["@대화"]) == [])
    }

    @Test func peerArgumentCommandsAreReplacedOnEachCall() {
        #expect(irc("/msg b", start: 5, "b") == ["bob", "bob", "bobby"])
        #expect(complete("/msg b", start: 5, "b") == [])
        #expect(complete("@chat b", start: 6, "b") == ["bob", "bob", "bobby"])
        #expect(irc("@chat b", start: 6, "b") == [])
    }

    @Test func defaultIsNatchatsShell() {
        // Callers that pass no list (the benchmarks) complete after @chat and @show_list.
        #expect(Completion.defaultPeerArgumentCommands == ["@chat", "@show_list"])
        #expect(Completion.candidates(line: "@chat b", start: 6, text: "b", commands: [], peers: peers) == ["bob", "bob", "bobby"])
        #expect(Completion.candidates(line: "@show_list a", start: 11, text: "a", commands: [], peers: peers) == ["alice", "alice"])
        #expect(Completion.candidates(line: "/msg a", start: 5, text: "a", commands: [], peers: peers) == [])
        #expect(Completion.candidates(line: "@chat b", start: 6, text: "b", commands: [], peerCompletion: filtering(peers))
            == ["bob", "bob", "bobby"])
    }

    @Test func readlineConsoleWithCustomCommands() {
        let console = ReadlineConsole(prompt: "irc> ", commands: Self.ircCommands, peerArgumentCommands: ["/msg"], historyPath: nil)
        console.setPeerCompletion(filtering(peers))
        #expect(console.completionCandidates(line: "/msg b", start: 5, text: "b") == ["bob", "bob", "bobby"])
        #expect(console.completionCandidates(line: "/msg bob hi", start: 9, text: "hi") == [])
        #expect(console.completionCandidates(line: "@chat b", start: 6, text: "b") == [])
        #expect(console.completionCandidates(line: "@", start: 0, text: "@") == [])
        #expect(console.completionCandidates(line: "/w", start: 0, text: "/w") == ["/who", "/who", "/whois"])
        // Without the list no word completes to a peer, whatever the provider holds.
        let plain = ReadlineConsole(commands: commands, peerArgumentCommands: [], historyPath: nil)
        plain.setPeerCompletion(filtering(peers))
        #expect(plain.completionCandidates(line: "@chat b", start: 6, text: "b") == [])
        #expect(plain.completionCandidates(line: "@c", start: 0, text: "@c") == ["@chat", "@chat"])
    }
}

@Suite("Line helpers")
struct LineHelperTests {
    @Test func trimmingSpaces() {
        #expect("  hello world \t".trimmingSpaces == "hello world")
        #expect("hello".trimmingSpaces == "hello")
        #expect("   ".trimmingSpaces == "")
        #expect("".trimmingSpaces == "")
        #expect("\t@chat bob hi\t".trimmingSpaces == "@chat bob hi")
    }
}
