import Addressing
import ChatRouter
import Wire

/// The registered IDs as the shell shows them, kept up to date one join or leave at a time,
/// so that neither a datagram nor `@show_list` has to sort or copy the whole roster.
///
/// It holds two views of one set of IDs:
/// - list order, the order in which the IDs were added (the server's order, as the peer
///   tables keep it), for `@show_list` and its pages;
/// - the IDs other than our own, sorted, for Tab completion.
///
/// Adding or removing an ID costs a dictionary update, a binary search and an array
/// insertion or removal (a move of pointers, no comparisons beyond the search).
struct RosterIndex: Sendable {
    /// The owner's ID: listed like any other, never offered for completion.
    let selfID: ClientID
    /// IDs in list order, each with the sequence number it was added under (increasing).
    private var listed: [(sequence: UInt64, id: ClientID)] = []
    private var sequenceByID: [ClientID: UInt64] = [:]
    private var nextSequence: UInt64 = 0
    /// The IDs other than ``selfID``, sorted as `ClientID`s sort (by their raw value).
    private(set) var completionNames: [String] = []

    init(selfID: ClientID) {
        self.selfID = selfID
    }

    /// How many IDs are listed.
    var count: Int { listed.count }

    /// The ID at `position` in list order (`0..<count`).
    subscript(position: Int) -> ClientID { listed[position].id }

    func contains(_ id: ClientID) -> Bool { sequenceByID[id] != nil }

    /// Lists `id` last; `false` (and no change) when it is listed already.
    @discardableResult
    mutating func add(_ id: ClientID) -> Bool {
        guard sequenceByID[id] == nil else { return false }
        sequenceByID[id] = nextSequence
        listed.append((nextSequence, id))
        nextSequence += 1
        if id != selfID {
            let name = id.rawValue
            completionNames.insert(name, at: Self.insertionPoint(of: name, in: completionNames))
        }
        return true
    }

    /// Stops listing `id`; `false` (and no change) when it was not listed.
    @discardableResult
    mutating func remove(_ id: ClientID) -> Bool {
        guard let sequence = sequenceByID.removeValue(forKey: id) else { return false }
        // Sequence numbers increase along the list: binary search for the position.
        var low = 0, high = listed.count
        while low < high {
            let middle = (low + high) / 2
            if listed[middle].sequence < sequence { low = middle + 1 } else { high = middle }
        }
        if low < listed.count, listed[low].sequence == sequence { listed.remove(at: low) }
        if id != selfID {
            let name = id.rawValue
            let position = Self.insertionPoint(of: name, in: completionNames)
            if position < completionNames.count, completionNames[position] == name { completionNames.remove(at: position) }
        }
        return true
    }

    /// The first position in `sorted` whose name is not less than `name`.
    private static func insertionPoint(of name: String, in sorted: [String]) -> Int {
        var low = 0, high = sorted.count
        while low < high {
            let middle = (low + high) / 2
            if sorted[middle] < name { low = middle + 1 } else { high = middle }
        }
        return low
    }

    /// Mirrors what `message` did to `router`'s peer table (the router has taken it; it
    /// decided whether the source may change the table).
    mutating func track(_ message: ClassicMessage, in router: ChatRouter) {
        switch message {
        case .peer(let id, _):
            if router.peer(id) != nil { add(id) }
        case .unregistered(let id, _), .offline(let id, _):
            if router.peer(id) == nil { remove(id) }
        default:
            break
        }
    }
}
