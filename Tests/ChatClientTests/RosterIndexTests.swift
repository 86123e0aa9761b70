import Addressing
import Testing
@testable import ChatClient
import TestSupport

private func id(_ text: String) -> ClientID { try! ClientID(text) }

@Suite("RosterIndex")
struct RosterIndexTests {
    private func listed(_ index: RosterIndex) -> [String] { (0..<index.count).map { index[$0].rawValue } }

    @Test func keepsListOrderAndSortedCompletionNames() {
        var index = RosterIndex(selfID: id("alice"))
        for name in ["carol", "alice", "bob", "dave", "aaron"] {
            let added = index.add(id(name))
            #expect(added)
        }
        let addedAgain = index.add(id("bob"))
        #expect(!addedAgain, "a second add of a listed ID changes nothing")
        #expect(listed(index) == ["carol", "alice", "bob", "dave", "aaron"])
        #expect(index.completionNames == ["aaron", "bob", "carol", "dave"], "sorted, without our own ID")

        let removals = [index.remove(id("bob")), index.remove(id("bob")), index.remove(id("zed")), index.remove(id("alice"))]
        #expect(removals == [true, false, false, true])
        #expect(listed(index) == ["carol", "dave", "aaron"])
        #expect(index.completionNames == ["aaron", "carol", "dave"])
        #expect(!index.contains(id("bob")) && index.contains(id("dave")))

        // A returning ID goes to the end of the list, as the server lists it.
        let returned = index.add(id("bob"))
        #expect(returned)
        #expect(listed(index) == ["carol", "dave", "aaron", "bob"])
        #expect(index.completionNames == ["aaron", "bob", "carol", "dave"])
    }

    /// Random joins and leaves against a plain model: the order and the sorted names match.
    @Test func matchesAModelUnderChurn() {
        var random = SplitMix64(state: 0xC0FFEE)
        var index = RosterIndex(selfID: id("p7"))
        var model: [String] = []
        for _ in 0..<5_000 {
            let name = "p\(random.next() % 60)"
            if random.next() % 3 == 0 {
                let removed = index.remove(id(name))
                #expect(removed == model.contains(name))
                model.removeAll { $0 == name }
            } else {
                let added = index.add(id(name))
                #expect(added == !model.contains(name))
                if !model.contains(name) { model.append(name) }
            }
        }
        #expect(listed(index) == model)
        #expect(index.completionNames == model.filter { $0 != "p7" }.sorted())
    }
}
