import Addressing

/// One page of `@show_list`: which entries it shows, and the line under them.
///
/// The entries are given by position in list order (`id(position)` for `0..<count`), so a
/// page costs only its own entries when there is no prefix, and one pass over the IDs
/// (`hasPrefix`, copying nothing) when there is one. A prefix matches as text, character by
/// character, so "é" matches however it is encoded, and "e" does not match "é".
struct ListPage: Hashable, Sendable {
    /// The positions (in list order) of the entries to show, in order.
    var positions: [Int]
    /// The line after the entries (see ``ListFooter``; `nil` when the whole list fits one
    /// page and no prefix was given).
    var footer: ListFooter?

    /// Page `page` (from 1) of the entries whose ID starts with `prefix` (all when `nil`),
    /// `pageSize` entries a page.
    static func make(count: Int, id: (Int) -> ClientID, prefix: String?, page: Int, pageSize: Int) -> ListPage {
        let size = max(1, pageSize)
        let requested = max(1, page)
        let (skip, overflow) = (requested - 1).multipliedReportingOverflow(by: size)
        let first = overflow ? Int.max : skip
        var positions: [Int] = []
        let total: Int
        if let prefix {
            var matches = 0
            for position in 0..<count where id(position).rawValue.hasPrefix(prefix) {
                if matches >= first, positions.count < size { positions.append(position) }
                matches += 1
            }
            total = matches
        } else {
            total = count
            if first < count { positions = Array(first..<(first + min(size, count - first))) }
        }
        return ListPage(positions: positions,
                        footer: ListFooter(total: total, shown: positions.count, first: first, prefix: prefix, page: requested,
                                           pageSize: size))
    }
}
