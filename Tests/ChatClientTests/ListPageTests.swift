import Addressing
import Testing
@testable import ChatClient

@Suite("ListPage")
struct ListPageTests {
    private static func page(_ names: [String], prefix: String? = nil, page: Int = 1, size: Int) -> ListPage {
        let ids = names.map { try! ClientID($0) }
        return ListPage.make(count: ids.count, id: { ids[$0] }, prefix: prefix, page: page, pageSize: size)
    }

    /// The footer's line as the shell prints it (none when there is no footer).
    private static func footer(_ page: ListPage) -> [String] {
        page.footer.map { ShellFormatter.lines(for: .listFooter($0)) } ?? []
    }

    @Test func positionsAndFooters() {
        let names = (1...7).map { "c\($0)" }
        #expect(Self.page(names, size: 7) == ListPage(positions: Array(0..<7), footer: nil))
        #expect(Self.page(names, size: 100) == ListPage(positions: Array(0..<7), footer: nil))
        let second = Self.page(names, page: 2, size: 3)
        #expect(second.positions == [3, 4, 5])
        #expect(Self.footer(second) == ["-- 4-6 of 7; @show_list 3 for the next page, @show_list <prefix> to filter --"])
        let third = Self.page(names, page: 3, size: 3)
        #expect(third.positions == [6])
        #expect(Self.footer(third) == ["-- 7 of 7, the last page; @show_list <prefix> to filter --"])
        let beyond = Self.page(names, page: 2, size: 7)
        #expect(beyond.positions == [])
        #expect(Self.footer(beyond) == ["-- no page 2: 7 clients, 1 page of 7 --"])
        let solo = Self.page(["solo"], page: 2, size: 5)
        #expect(solo.positions == [])
        #expect(Self.footer(solo) == ["-- no page 2: 1 client, 1 page of 5 --"])
    }

    @Test func hugePagesDoNotOverflow() {
        let names = ["a", "b"]
        #expect(Self.page(names, page: Int.max, size: Int.max).positions == [])
        #expect(Self.page(names, prefix: "a", page: Int.max, size: 2).positions == [])
        #expect(Self.page(names, page: 1, size: Int.max) == ListPage(positions: [0, 1], footer: nil))
    }

    @Test func prefixMatchesAsText() {
        // "é" written as one scalar and as "e" + combining acute are the same text.
        let names = ["e\u{301}va", "\u{E9}mile", "eve", "zoe"]
        #expect(Self.page(names, prefix: "\u{E9}", size: 10).positions == [0, 1])
        #expect(Self.page(names, prefix: "e\u{301}", size: 10).positions == [0, 1])
        #expect(Self.page(names, prefix: "e", size: 10).positions == [2])
        let eve = Self.page(names, prefix: "eve", size: 10)
        #expect(eve.positions == [2])
        #expect(Self.footer(eve) == ["-- 1 of 1 starting with eve --"])
    }
}
