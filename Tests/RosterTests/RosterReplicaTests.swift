import Addressing
import Testing
import Roster
import TestSupport
import Wire

private func id(_ text: String) -> ClientID { try! ClientID(text) }
private func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }

private let me = id("me")
private let keysA = PublicKeys(signing: [UInt8](repeating: 1, count: 32), agreement: [UInt8](repeating: 2, count: 32))
private let keysB = PublicKeys(signing: [UInt8](repeating: 3, count: 32), agreement: [UInt8](repeating: 4, count: 32))

private func present(_ name: String, _ version: UInt64, order: UInt64 = 0, port: UInt16 = 1000, keys: PublicKeys? = keysA) -> RosterRecord {
    .present(RosterEntry(info: PeerInfo(id: id(name), publicEndpoint: Endpoint(address: IPv4Address(198, 51, 100, 1), port: port),
                                        keys: keys),
                         order: order, version: version))
}

private func absent(_ name: String, _ version: UInt64, reason: LeaveReason = .unregistered) -> RosterRecord {
    .absent(id(name), version: version, reason: reason, publicEndpoint: ep("198.51.100.1:1000"))
}

private func delta(_ sequence: UInt32, _ records: [RosterRecord], epoch: UInt32 = 1, version: UInt64 = 0, synced: Bool = false,
                   scope: RosterScope = .complete, registered: UInt32 = 0) -> RosterDelta {
    RosterDelta(epoch: epoch, sequence: sequence, version: version, registered: registered, scope: scope, synced: synced,
                records: records)
}

@Suite("RosterReplica")
struct RosterReplicaTests {
    @Test func newerRecordsWinWhateverTheOrderTheyArriveIn() {
        var replica = RosterReplica(selfID: me)
        _ = replica.apply(delta(1, [present("bob", 5, port: 1)], synced: true))
        // A late datagram with an older state of bob changes nothing.
        #expect(replica.apply(delta(2, [present("bob", 3, port: 2)])).isEmpty)
        #expect(replica.peer(id("bob"))?.info.publicEndpoint.port == 1)
        // A newer one moves him.
        let moved = replica.apply(delta(3, [present("bob", 7, port: 3)]))
        #expect(moved.count == 1)
        if case .updated(let info, let previous) = moved.first {
            #expect(info.publicEndpoint.port == 3 && previous.publicEndpoint.port == 1)
        } else {
            Issue.record("expected an update, got \(moved)")
        }
        // He leaves; the late join from before cannot bring him back.
        #expect(replica.apply(delta(4, [absent("bob", 8)])) == [.left(id("bob"), .unregistered, ep("198.51.100.1:1000"))])
        #expect(replica.apply(delta(5, [present("bob", 7, port: 3)])).isEmpty)
        #expect(replica.peer(id("bob")) == nil)
        // Coming back registers anew (a newer version).
        let back = replica.apply(delta(6, [present("bob", 9)]))
        #expect(back.count == 1)
        if case .joined(_, .registered) = back.first {} else { Issue.record("expected news of a registration, got \(back)") }
    }

    @Test func listingsBeforeTheFirstSyncAreNotNews() {
        var replica = RosterReplica(selfID: me)
        let first = replica.apply(delta(1, [present("a", 1), present("me", 2), present("b", 3)]))
        #expect(first.count == 2) // never itself
        #expect(first.allSatisfy { if case .joined(_, .listed) = $0 { true } else { false } })
        #expect(!replica.isSynced)
        let synced = replica.apply(delta(2, [], synced: true, registered: 3))
        #expect(synced == [.synced(registered: 3)])
        #expect(replica.isSynced && replica.registeredCount == 3)
    }

    @Test func keysArePinnedAtFirstSight() {
        var replica = RosterReplica(selfID: me)
        _ = replica.apply(delta(1, [present("bob", 1, keys: keysA)], synced: true))
        #expect(replica.apply(delta(2, [present("bob", 2, port: 9, keys: keysB)])) == [.keyChanged(id("bob"))])
        #expect(replica.peer(id("bob"))?.info.keys == keysA)
        #expect(replica.peer(id("bob"))?.info.publicEndpoint.port == 1000) // the record was not taken
        // A punch naming other keys is reported too; one naming the pinned ones changes nothing.
        var info = PeerInfo(id: id("bob"), publicEndpoint: ep("198.51.100.1:1000"), keys: keysB)
        #expect(replica.learn(info) == [.keyChanged(id("bob"))])
        info.keys = keysA
        #expect(replica.learn(info).isEmpty)
    }

    @Test func acknowledgementsCarryTheLargestAndTheSixtyFourBefore() {
        var replica = RosterReplica(selfID: me)
        #expect(replica.acknowledgement == nil)
        for sequence: UInt32 in [1, 2, 4] { _ = replica.apply(delta(sequence, [])) }
        #expect(replica.acknowledgement?.largest == 4)
        #expect(replica.acknowledgement?.received == 0b110) // 3 missing, 2 and 1 received
        _ = replica.apply(delta(3, []))
        #expect(replica.acknowledgement?.received == 0b111)
        _ = replica.apply(delta(70, []))
        #expect(replica.acknowledgement?.largest == 70)
        #expect(replica.acknowledgement?.received == 0) // 4 is 66 behind: out of the window
        _ = replica.apply(delta(71, []))
        #expect(replica.acknowledgement?.received == 1)
        replica.beginSession()
        #expect(replica.acknowledgement == nil)
    }

    @Test func aNewSessionDropsWhatTheResyncDoesNotConfirm() {
        var replica = RosterReplica(selfID: me)
        _ = replica.apply(delta(1, [present("a", 1), present("b", 2), present("c", 3)], synced: true))
        replica.beginSession()
        // The server's new feed lists a and c again (b left while we were away) and is whole.
        let changes = replica.apply(delta(1, [present("a", 1), present("c", 4, port: 7)], synced: true, registered: 3))
        #expect(changes.contains(.left(id("b"), .offline, ep("198.51.100.1:1000"))))
        #expect(replica.peer(id("b")) == nil)
        #expect(replica.peer(id("a")) != nil && replica.peer(id("c"))?.info.publicEndpoint.port == 7)
        #expect(replica.listedIDs == [id("a"), id("c")])
    }

    @Test func aNewEpochStartsVersionsOver() {
        var replica = RosterReplica(selfID: me)
        _ = replica.apply(delta(1, [present("a", 50), absent("gone", 60)], epoch: 1, synced: true))
        // A restarted server numbers from 1: its records must still be taken.
        let changes = replica.apply(delta(1, [present("a", 1, port: 5), present("gone", 2)], epoch: 2))
        #expect(replica.peer(id("a"))?.info.publicEndpoint.port == 5)
        #expect(replica.peer(id("gone")) != nil)
        #expect(changes.count == 2)
    }

    @Test func lookUpAnswersAddOrRemove() {
        var replica = RosterReplica(selfID: me)
        let found = RosterEntry(info: PeerInfo(id: id("zed"), publicEndpoint: ep("192.0.2.1:5"), keys: keysA), order: 4, version: 10)
        #expect(replica.applyLookup(epoch: 1, version: 12, peer: id("zed"), found: found)
                == [.joined(found.info, .answered)])
        // "Not registered" at a later version removes it; at an older one it does not.
        #expect(replica.applyLookup(epoch: 1, version: 9, peer: id("zed"), found: nil).isEmpty)
        #expect(replica.applyLookup(epoch: 1, version: 13, peer: id("zed"), found: nil)
                == [.left(id("zed"), .offline, ep("192.0.2.1:5"))])
    }

    @Test func theInterestScopeKeepsOnlyWhatTheOwnerWants() {
        var replica = RosterReplica(selfID: me)
        _ = replica.apply(delta(1, [present("a", 1), present("b", 2)], synced: true))
        let changes = replica.apply(delta(2, [], version: 3, scope: .interest, registered: 5000))
        #expect(changes.first == .scopeChanged(.interest))
        replica.retain { $0 == id("b") }
        #expect(replica.listedIDs == [id("b")])
        #expect(replica.scope == .interest && replica.registeredCount == 5000)
    }

    @Test func completionsAreSortedAndByPrefix() {
        var replica = RosterReplica(selfID: me)
        let names = ["bob", "bobby", "alice", "bo", "carol", "b\u{e9}a"]
        _ = replica.apply(delta(1, names.enumerated().map { present($0.element, UInt64($0.offset + 1), order: UInt64($0.offset)) }))
        #expect(replica.completions(of: "bo", limit: 10).map(\.rawValue) == ["bo", "bob", "bobby"])
        #expect(replica.completions(of: "bo", limit: 2).map(\.rawValue) == ["bo", "bob"])
        #expect(replica.completions(of: "", limit: 10).count == 6)
        #expect(replica.completions(of: "z", limit: 10).isEmpty)
        // Registration order for listing.
        #expect(replica.listed(from: 1, limit: 2).map(\.rawValue) == ["bobby", "alice"])
    }

    /// 100 000 deltas of one join each, counted: the work of applying one (the ordered views'
    /// comparisons and moves) is as small at 100 000 peers as at 1 000.
    @Test func theWorkPerDeltaDoesNotGrowWithTheRoster() {
        var replica = RosterReplica(selfID: me)
        var random = SplitMix64(state: 3)
        var perDelta: [Int: Double] = [:]
        var previousWork = 0
        for index in 1...100_000 {
            let name = "p\(random.next() % 1_000_000_000)x\(index)"
            _ = replica.apply(delta(UInt32(index), [present(name, UInt64(index), order: UInt64(index))]))
            if [1_000, 10_000, 100_000].contains(index) {
                // Average over the last 1 000 deltas.
                perDelta[index] = Double(replica.work - previousWork) / 1_000
            }
            if index == 9_000 || index == 99_000 { previousWork = replica.work }
        }
        let small = perDelta[1_000] ?? 0, large = perDelta[100_000] ?? .infinity
        #expect(replica.count == 100_000)
        #expect(large < small * 2 + 16, "work per delta: \(perDelta.sorted { $0.key < $1.key })")
    }
}
