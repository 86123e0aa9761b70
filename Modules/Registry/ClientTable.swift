import Addressing

extension Registry {
    /// The registered clients, dense: entries in fixed-size chunks (filled in order, so
    /// memory follows the number of clients, and never moved, so growing leaves no old
    /// storage behind in the heap) and a dictionary from ID to position. A removal moves the
    /// last entry into the hole. (A dictionary of entries would write all of its slots, 1.3
    /// to 2.7 per client, each the size of an entry; one growing array would leave its old
    /// buffers in the heap, about as much again.)
    struct ClientTable: Sendable {
        static var chunkSize: Int { 1024 }
        private var chunks: [[Entry]] = []
        /// Chunks allocated, the spare included (for tests of the spare rule).
        var chunkCount: Int { chunks.count }
        private var positions: [ClientID: Int] = [:]
        private(set) var count = 0
        /// This server's own clients by dialect (the rest, `count` minus these, are remote
        /// entries of a cluster), kept as entries come and go so that the admin listener reads
        /// them in O(1) rather than walking 100 000 entries on the event loop.
        private(set) var localClassicCount = 0
        private(set) var localExtendedCount = 0

        private mutating func tally(_ entry: Entry, _ change: Int) {
            guard entry.isLocal else { return }
            if entry.dialect == .extended { localExtendedCount += change } else { localClassicCount += change }
        }

        /// Every entry, in storage order.
        var entries: FlattenSequence<[[Entry]]> { chunks.joined() }

        subscript(id: ClientID) -> Entry? { positions[id].map { self[position: $0] } }

        /// Adds `entry`, or replaces the one with its ID (keyed by the entry itself, so an
        /// entry can never be filed under another ID).
        mutating func store(_ entry: Entry) {
            if let position = positions[entry.id] {
                tally(self[position: position], -1)
                tally(entry, 1)
                self[position: position] = entry
            } else {
                append(entry)
            }
        }

        /// Where `id`'s entry is, if registered (valid until the next removal).
        func position(of id: ClientID) -> Int? { positions[id] }

        /// Where the entry whose ID is exactly `idBytes` (as received, not validated) is.
        func position(idBytes: UnsafeRawBufferPointer) -> Int? {
            guard let position = positions[ClientID(lookingUp: idBytes)],
                  self[position: position].id.rawValue.utf8.elementsEqual(idBytes)
            else { return nil }
            return position
        }

        subscript(position position: Int) -> Entry {
            get { chunks[position / Self.chunkSize][position % Self.chunkSize] }
            set { chunks[position / Self.chunkSize][position % Self.chunkSize] = newValue }
        }

        /// Records the counter of an accepted datagram in place (the per-datagram write).
        mutating func setLastCounter(_ counter: UInt64, at position: Int) {
            chunks[position / Self.chunkSize][position % Self.chunkSize].lastCounter = counter
        }

        private mutating func append(_ entry: Entry) {
            let chunk = count / Self.chunkSize
            if chunk == chunks.count {
                var storage: [Entry] = []
                storage.reserveCapacity(Self.chunkSize)
                chunks.append(storage)
            }
            chunks[chunk].append(entry)
            positions[entry.id] = count
            count += 1
            tally(entry, 1)
        }

        @discardableResult
        mutating func removeValue(forKey id: ClientID) -> Entry? {
            guard let position = positions.removeValue(forKey: id) else { return nil }
            count -= 1
            let last = chunks[count / Self.chunkSize].removeLast()
            // One emptied chunk is kept as a spare, so that a count going back and forth
            // across a chunk boundary does not allocate and free a chunk each time.
            if count % Self.chunkSize == 0, chunks.count > count / Self.chunkSize + 1 { chunks.removeLast() }
            guard position < count else {
                tally(last, -1)
                return last
            }
            let removed = self[position: position]
            tally(removed, -1)
            self[position: position] = last
            positions[last.id] = position
            return removed
        }
    }
}
