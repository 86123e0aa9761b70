/// A sorted set kept as a list of sorted chunks of at most ``chunkCapacity`` elements: a
/// B-tree of height two. Inserting or removing one element costs a binary search over the
/// chunks' last elements, one inside a chunk and a move of at most a chunk's elements, so
/// the work per change stays flat as the set grows (a sorted array moves half of itself per
/// insertion; a dictionary keeps no order). Position queries (``element(at:)``, ``rank(where:)``)
/// add a walk over the chunk counts, a few hundred steps at 100 000 elements.
///
/// Written here because no maintained Swift package offers it: swift-collections' B-tree
/// `SortedSet` is an unreleased prototype behind an "unstable" trait.
public struct SortedChunks<Element: Comparable & Sendable>: Sendable {
    /// Most elements in one chunk; a fuller chunk is split in two.
    public let chunkCapacity: Int
    private var chunks: [[Element]] = []
    /// Each chunk's last (largest) element, so the outer search touches one array.
    private var lasts: [Element] = []
    public private(set) var count = 0
    /// Comparisons made and elements moved so far: the work the structure did, for tests
    /// that bound the cost of a change by counting rather than timing.
    public private(set) var work = 0

    public init(chunkCapacity: Int = 512) {
        self.chunkCapacity = max(4, chunkCapacity)
    }

    public var isEmpty: Bool { count == 0 }

    /// The index of the chunk that holds `element` or would hold it.
    private mutating func chunkIndex(for element: Element) -> Int {
        var low = 0, high = lasts.count
        while low < high {
            let middle = (low + high) / 2
            work += 1
            if lasts[middle] < element { low = middle + 1 } else { high = middle }
        }
        return min(low, max(0, lasts.count - 1))
    }

    /// The first position in `chunk` whose element is not less than `element`.
    private mutating func position(of element: Element, inChunk chunk: Int) -> Int {
        var low = 0, high = chunks[chunk].count
        while low < high {
            let middle = (low + high) / 2
            work += 1
            if chunks[chunk][middle] < element { low = middle + 1 } else { high = middle }
        }
        return low
    }

    /// Inserts `element`; `false` (and no change) when it is already present.
    @discardableResult
    public mutating func insert(_ element: Element) -> Bool {
        guard !chunks.isEmpty else {
            chunks = [[element]]
            lasts = [element]
            count = 1
            return true
        }
        let chunk = chunkIndex(for: element)
        let slot = position(of: element, inChunk: chunk)
        if slot < chunks[chunk].count, chunks[chunk][slot] == element { return false }
        work += chunks[chunk].count - slot
        chunks[chunk].insert(element, at: slot)
        lasts[chunk] = chunks[chunk][chunks[chunk].count - 1]
        count += 1
        if chunks[chunk].count > chunkCapacity { split(chunk) }
        return true
    }

    /// Removes `element`; `false` when it was not present.
    @discardableResult
    public mutating func remove(_ element: Element) -> Bool {
        guard !chunks.isEmpty else { return false }
        let chunk = chunkIndex(for: element)
        let slot = position(of: element, inChunk: chunk)
        guard slot < chunks[chunk].count, chunks[chunk][slot] == element else { return false }
        work += chunks[chunk].count - slot
        chunks[chunk].remove(at: slot)
        count -= 1
        if chunks[chunk].isEmpty {
            work += chunks.count - chunk
            chunks.remove(at: chunk)
            lasts.remove(at: chunk)
        } else {
            lasts[chunk] = chunks[chunk][chunks[chunk].count - 1]
            mergeIfSmall(chunk)
        }
        return true
    }

    public func contains(_ element: Element) -> Bool {
        let chunk = rank(ofChunkFor: element)
        guard chunk < chunks.count else { return false }
        let elements = chunks[chunk]
        var low = 0, high = elements.count
        while low < high {
            let middle = (low + high) / 2
            if elements[middle] < element { low = middle + 1 } else { high = middle }
        }
        return low < elements.count && elements[low] == element
    }

    private func rank(ofChunkFor element: Element) -> Int {
        var low = 0, high = lasts.count
        while low < high {
            let middle = (low + high) / 2
            if lasts[middle] < element { low = middle + 1 } else { high = middle }
        }
        return low
    }

    /// The element at `rank` (0 is the smallest), if there is one.
    public func element(at rank: Int) -> Element? {
        guard rank >= 0, rank < count else { return nil }
        var remaining = rank
        for chunk in chunks {
            if remaining < chunk.count { return chunk[remaining] }
            remaining -= chunk.count
        }
        return nil
    }

    /// How many elements come before the first one for which `isAtOrAfter` holds, where
    /// `isAtOrAfter` is false for a prefix of the order and true for the rest (a partition
    /// point, such as "not less than this prefix").
    public func rank(where isAtOrAfter: (Element) -> Bool) -> Int {
        var low = 0, high = lasts.count
        while low < high {
            let middle = (low + high) / 2
            if isAtOrAfter(lasts[middle]) { high = middle } else { low = middle + 1 }
        }
        guard low < chunks.count else { return count }
        var before = 0
        for index in 0..<low { before += chunks[index].count }
        let chunk = chunks[low]
        var inner = 0, end = chunk.count
        while inner < end {
            let middle = (inner + end) / 2
            if isAtOrAfter(chunk[middle]) { end = middle } else { inner = middle + 1 }
        }
        return before + inner
    }

    /// Up to `limit` elements in order, from rank `start`, while `condition` holds.
    public func elements(from start: Int, limit: Int, while condition: (Element) -> Bool = { _ in true }) -> [Element] {
        guard limit > 0, start >= 0, start < count else { return [] }
        var result: [Element] = []
        var skip = start
        for chunk in chunks {
            if skip >= chunk.count {
                skip -= chunk.count
                continue
            }
            for element in chunk[skip...] {
                guard condition(element) else { return result }
                result.append(element)
                if result.count == limit { return result }
            }
            skip = 0
        }
        return result
    }

    /// Every element in order.
    public var sorted: [Element] { chunks.flatMap { $0 } }

    private mutating func split(_ chunk: Int) {
        let half = chunks[chunk].count / 2
        let upper = Array(chunks[chunk][half...])
        chunks[chunk].removeSubrange(half...)
        work += upper.count + (chunks.count - chunk)
        chunks.insert(upper, at: chunk + 1)
        lasts[chunk] = chunks[chunk][chunks[chunk].count - 1]
        lasts.insert(upper[upper.count - 1], at: chunk + 1)
    }

    /// Joins a chunk that shrank below a quarter of the capacity with a neighbour when the
    /// two fit in one, so that removals cannot leave many tiny chunks behind.
    private mutating func mergeIfSmall(_ chunk: Int) {
        guard chunks[chunk].count < chunkCapacity / 4 else { return }
        let neighbour = chunk + 1 < chunks.count ? chunk + 1 : chunk - 1
        guard neighbour >= 0, neighbour != chunk, chunks[chunk].count + chunks[neighbour].count <= chunkCapacity / 2 * 3 / 2 else { return }
        let (first, second) = (min(chunk, neighbour), max(chunk, neighbour))
        work += chunks[second].count + (chunks.count - second)
        chunks[first].append(contentsOf: chunks[second])
        chunks.remove(at: second)
        lasts.remove(at: second)
        lasts[first] = chunks[first][chunks[first].count - 1]
    }
}
