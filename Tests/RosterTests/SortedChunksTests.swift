import Testing
import Roster
import TestSupport

@Suite("SortedChunks")
struct SortedChunksTests {
    /// 20 000 random inserts and removes against a plain sorted array: same contents, same
    /// ranks and slices, at every step that matters.
    @Test func behavesLikeASortedSet() {
        var random = SplitMix64(state: 42)
        var chunks = SortedChunks<Int>(chunkCapacity: 8)
        var model: [Int] = []
        for step in 0..<20_000 {
            let value = Int(random.next() % 3_000)
            if random.next() % 3 == 0 {
                let removed = chunks.remove(value)
                let index = model.firstIndex(of: value)
                #expect(removed == (index != nil))
                if let index { model.remove(at: index) }
            } else {
                let inserted = chunks.insert(value)
                #expect(inserted == !model.contains(value))
                if inserted { model.insert(value, at: model.firstIndex { $0 > value } ?? model.count) }
            }
            #expect(chunks.count == model.count)
            if step % 997 == 0 {
                #expect(chunks.sorted == model)
                let probe = Int(random.next() % 3_000)
                #expect(chunks.rank { $0 >= probe } == (model.firstIndex { $0 >= probe } ?? model.count))
                let start = model.isEmpty ? 0 : Int(random.next() % UInt64(model.count))
                #expect(chunks.elements(from: start, limit: 17) == Array(model.dropFirst(start).prefix(17)))
                if !model.isEmpty { #expect(chunks.element(at: start) == model[start]) }
            }
        }
        #expect(chunks.sorted == model)
    }

    @Test func emptyAndBoundaries() {
        var chunks = SortedChunks<Int>()
        #expect(chunks.isEmpty)
        let removedNothing = chunks.remove(1)
        #expect(!removedNothing)
        #expect(!chunks.contains(1))
        #expect(chunks.element(at: 0) == nil)
        #expect(chunks.rank { $0 >= 5 } == 0)
        #expect(chunks.elements(from: 0, limit: 3).isEmpty)
        chunks.insert(5)
        let insertedTwice = chunks.insert(5)
        #expect(!insertedTwice)
        #expect(chunks.elements(from: 0, limit: 3, while: { $0 < 5 }).isEmpty)
        #expect(chunks.elements(from: 1, limit: 3).isEmpty)
        let removed = chunks.remove(5)
        #expect(removed)
        #expect(chunks.isEmpty && chunks.sorted.isEmpty)
    }

    /// The cost of one change, counted (comparisons and elements moved), is the same at
    /// 1 000, 10 000 and 100 000 elements: no part of it walks or moves the whole set.
    @Test func workPerChangeIsFlat() {
        var random = SplitMix64(state: 7)
        var chunks = SortedChunks<UInt64>()
        var averages: [Int: Double] = [:]
        var checkpoints = [1_000, 10_000, 100_000]
        while let target = checkpoints.first {
            while chunks.count < target - 1_000 { chunks.insert(random.next()) }
            let before = chunks.work
            for _ in 0..<1_000 { chunks.insert(random.next()) }
            averages[target] = Double(chunks.work - before) / 1_000
            checkpoints.removeFirst()
        }
        let small = averages[1_000] ?? 0, large = averages[100_000] ?? .infinity
        // Binary searches add a few comparisons per tenfold growth; the moves stay within a chunk.
        #expect(large < small * 2 + 16, "work per insert: \(averages.sorted { $0.key < $1.key })")
        #expect(large < Double(chunks.chunkCapacity) * 2)
    }
}
