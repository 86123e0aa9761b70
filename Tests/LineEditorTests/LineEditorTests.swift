#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization
import Testing
@testable import LineEditor

private let commands = ["@show_list", "@chat", "@exit", "@help"]
private let peers = ["alice", "bob", "bobby", "한국어"]

private func complete(_ line: String, start: Int, _ text: String, commands: [String] = commands, peers: [String] = peers) -> [String] {
    Completion.candidates(line: line, start: start, text: text, commands: commands, peers: peers)
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

private func complete(_ line: String, start: Int, _ text: String, provider: @escaping @Sendable (String) -> [String]) -> [String] {
    Completion.candidates(line: line, start: start, text: text, commands: commands, peerCompletion: provider)
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
        #expect(Completion.candidates(line: "@chat b", start: 6, text: "b", commands: commands, source: source) == ["bob", "bob"])
        #expect(Completion.candidates(line: "@chat b", start: 6, text: "b", commands: commands, source: source) == ["bobby", "bobby"])
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
        let console = ReadlineConsole(commands: commands, historyPath: nil)
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
