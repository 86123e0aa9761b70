import Testing
@testable import LineEditor

private let commands = ["@show_list", "@chat", "@exit", "@help"]
private let peers = ["alice", "bob", "bobby", "한국어"]

private func complete(_ line: String, start: Int, _ text: String, commands: [String] = commands, peers: [String] = peers) -> [String] {
    Completion.candidates(line: line, start: start, text: text, commands: commands, peers: peers)
}

// The completion word lists live in C globals (readline's model), so these tests run one
// at a time.
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

    @Test func startOutsideTheLine() {
        #expect(complete("@c", start: 5, "") == [])
        #expect(complete("@c", start: -1, "@c") == [])
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
