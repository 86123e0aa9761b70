import Addressing
import Testing
@testable import Registry
import TestSupport

@Suite("Registry.ClientTable")
struct ClientTableTests {
    private func entry(_ index: Int, privateEndpoints: [Endpoint] = []) -> Registry.Entry {
        Registry.Entry(id: try! ClientID("c\(index)"), publicEndpoint: Endpoint(address: IPv4Address(203, 0, 113, 1), port: UInt16(1000 + index)),
                       privateAddress: IPv4Address(10, 0, 0, UInt8(index % 250)), sequence: UInt64(index),
                       privateEndpoints: privateEndpoints)
    }

    @Test func removalMovesTheLastEntryAndKeepsEveryOtherReachable() {
        var table = Registry.ClientTable()
        for index in 0..<10 { table.store(entry(index)) }
        // Remove from the middle (9, the last, moves into 4's place), the current end (8),
        // and the start, then one that is not there.
        for index in [4, 8, 0] { #expect(table.removeValue(forKey: entry(index).id) == entry(index)) }
        #expect(table.removeValue(forKey: entry(4).id) == nil)
        #expect(table.count == 7)
        for index in 0..<10 {
            let expected = [0, 4, 8].contains(index) ? nil : entry(index)
            #expect(table[entry(index).id] == expected)
            if let position = table.position(of: entry(index).id) { #expect(table[position: position] == entry(index)) }
        }
        #expect(Set(table.entries.map(\.sequence)) == [1, 2, 3, 5, 6, 7, 9])
    }

    /// Joins and leaves at random across several chunks, checked against a plain dictionary
    /// after every step: every entry stays reachable by ID and by position, and the table
    /// holds exactly the model's entries.
    @Test func randomJoinsAndLeavesAcrossChunksMatchADictionary() {
        var random = SplitMix64(seed: 0x5107)
        var table = Registry.ClientTable()
        var model: [ClientID: Registry.Entry] = [:]
        let universe = 3 * Registry.ClientTable.chunkSize + 100
        for step in 0..<20_000 {
            let index = Int(random.next() % UInt64(universe))
            let candidate = entry(index)
            // Fill up for the first half, then drain: the count crosses chunk boundaries both ways.
            let joinChance: UInt64 = step < 10_000 ? 75 : 25
            if random.next() % 100 < joinChance {
                var updated = candidate
                updated.lastCounter = UInt64(step)
                table.store(updated)
                model[updated.id] = updated
            } else {
                #expect(table.removeValue(forKey: candidate.id) == model.removeValue(forKey: candidate.id))
            }
            if step % 500 == 0 || step == 19_999 {
                #expect(table.count == model.count)
                for (id, expected) in model {
                    #expect(table[id] == expected)
                    guard let position = table.position(of: id) else { Issue.record("no position for \(id)"); continue }
                    #expect(table[position: position] == expected)
                }
                #expect(Dictionary(uniqueKeysWithValues: table.entries.map { ($0.id, $0) }) == model)
            }
        }
    }

    @Test func inPlaceCounterUpdateReachesTheEntry() {
        var table = Registry.ClientTable()
        for index in 0..<(Registry.ClientTable.chunkSize + 5) { table.store(entry(index)) }
        let id = entry(Registry.ClientTable.chunkSize + 2).id
        guard let position = table.position(of: id) else { Issue.record("not stored"); return }
        table.setLastCounter(99, at: position)
        #expect(table[id]?.lastCounter == 99)
        #expect(table[entry(0).id]?.lastCounter == 0)
    }

    /// Back and forth across a chunk boundary allocates no chunk after the first crossing
    /// (one emptied chunk is kept), never keeps more than one empty chunk, and a table drained
    /// to nothing takes entries again.
    @Test func theSpareChunkRuleAndDrainingToEmpty() {
        let size = Registry.ClientTable.chunkSize
        var table = Registry.ClientTable()
        for index in 0..<size { table.store(entry(index)) }
        #expect(table.chunkCount == 1)
        for _ in 0..<3 {
            table.store(entry(size))
            #expect(table.chunkCount == 2)
            table.removeValue(forKey: entry(size).id)
            #expect(table.chunkCount == 2) // the emptied second chunk is the spare
        }
        for index in 0..<(2 * size + 10) { table.store(entry(index)) }
        #expect(table.chunkCount == 3)
        for index in 0..<(2 * size + 10) { table.removeValue(forKey: entry(index).id) }
        #expect(table.count == 0)
        #expect(table.chunkCount == 1) // only the spare
        #expect(table[entry(5).id] == nil)
        for index in 0..<3 { table.store(entry(index)) }
        #expect(table.count == 3)
        for index in 0..<3 { #expect(table[entry(index).id] == entry(index)) }
    }

    @Test func storingReplacesInPlaceAndRemovalForgets() {
        var table = Registry.ClientTable()
        for index in 0..<3 { table.store(entry(index)) }
        var changed = entry(1)
        changed.lastCounter = 42
        table.store(changed)
        #expect(table.count == 3)
        #expect(table[changed.id]?.lastCounter == 42)
        table.removeValue(forKey: changed.id)
        #expect(table[changed.id] == nil)
        #expect(table.count == 2)
        #expect(table[entry(2).id] == entry(2))
    }

    @Test func privateEndpointsRoundTripInline() {
        let one = [Endpoint(address: IPv4Address(10, 0, 0, 5), port: 10081)]
        let four = (1...4).map { Endpoint(address: IPv4Address(10, 0, 0, UInt8($0)), port: 10081) }
        #expect(entry(1, privateEndpoints: []).privateEndpoints == [])
        #expect(entry(1, privateEndpoints: one).privateEndpoints == one)
        #expect(entry(1, privateEndpoints: four).privateEndpoints == four)
        var changed = entry(1, privateEndpoints: four)
        changed.privateEndpoints = one
        #expect(changed == entry(1, privateEndpoints: one))
    }

    /// What every registered client costs in the table's array (docs/performance.md has the
    /// byte-by-byte account): a regression here is a regression in memory per client.
    @Test func anEntryStaysSmall() {
        #expect(MemoryLayout<Registry.Entry>.stride <= 240)
        // The events carry entries indirectly, so actions stay the size of a message (130 B).
        #expect(MemoryLayout<Registry.Output>.size <= 136)
    }
}
